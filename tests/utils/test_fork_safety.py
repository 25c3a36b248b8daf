"""OpenBLAS's worker threads stopped before native code forks from several threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worldmodels.utils.fork_safety import loaded_openblas, stop_openblas_threads


def test_the_loaded_openblas_libraries_are_found_by_name():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    paths = loaded_openblas()
    assert paths == sorted(set(paths))
    assert all(Path(p).is_file() and "openblas" in Path(p).name.lower() for p in paths)
    scipy_libs = Path(scipy_linalg.__file__).parents[2] / "scipy.libs"   # site-packages/scipy.libs
    bundled = {p.resolve() for p in scipy_libs.glob("*openblas*.so*")}
    if not bundled:
        pytest.skip("this scipy is not linked to a bundled OpenBLAS")
    assert bundled <= {Path(p).resolve() for p in paths}


def test_blas_gives_the_same_answers_after_its_threads_are_stopped_twice():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 200))
    sym = a @ a.T + np.eye(200)
    before_np, before_sp = np.linalg.eigvalsh(sym), scipy_linalg.eigvalsh(sym)
    count = stop_openblas_threads()
    assert count == stop_openblas_threads() == len(loaded_openblas()) >= 1
    np.testing.assert_allclose(np.linalg.eigvalsh(sym), before_np, rtol=1e-10)
    np.testing.assert_allclose(scipy_linalg.eigvalsh(sym), before_sp, rtol=1e-10)
    np.testing.assert_allclose(a @ a.T, sym - np.eye(200), rtol=1e-10, atol=1e-10)
