"""Shared fixtures: composing the Hydra config in-process for fast tests.

Without a GPU, Triton kernels are tested on CPU tensors in Triton's interpreter. Its
switch is read when ``triton`` and its ``@triton.jit`` functions are first imported
(torch may import triton early), so it is set here, before anything else loads.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

# Settings that make any experiment a smoke run: narrow, CPU, tiny batches, no progress bar.
SMOKE = [
    "size=tiny",
    "device=cpu",
    "train.batch_size=2",
    "env.eval_sequences=2",
    "train.log_every=1",
    "train.eval_every=4",
    "train.checkpoint_every=4",
    "train.progress=false",
]
# The fastest whole run, for tests of the trainer itself: a tiny VAE on few frames.
TINY = ["+exp=vae_balls", *SMOKE, "env.seq_len=4", "env.chunk_sequences=8", "env.refresh_steps=3"]


def compose_config(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_module("worldmodels.configs", version_base=None):
        return compose("config", list(overrides))


@pytest.fixture
def tiny_config():
    def make(*overrides):
        return compose_config(TINY + list(overrides))

    return make


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def smoke_overrides():
    """:data:`SMOKE`: shrink any experiment (give ``+exp=...`` yourself, or none for the default)."""
    return list(SMOKE)


@pytest.fixture
def config_from():
    """Compose the config from an explicit list of overrides."""
    return compose_config


@pytest.fixture
def without_extension():
    """Run ``body`` in a fresh interpreter where ``worldmodels._C`` cannot be imported.

    ``body`` may call ``try_cpp(fn)``, which prints ``CPP-ERROR: <message>`` when ``fn``
    raises :class:`ExtensionUnavailableError`. Returns the completed process.
    """
    import sys
    import textwrap
    from pathlib import Path

    prelude = textwrap.dedent(
        """
        import sys
        sys.modules["worldmodels._C"] = None  # make the extension unimportable
        from worldmodels._ext import ExtensionUnavailableError

        def try_cpp(fn):
            try:
                fn()
            except ExtensionUnavailableError as error:
                print("CPP-ERROR:", error)
        """
    )
    repo = Path(__file__).resolve().parents[1]

    def run(body: str) -> subprocess.CompletedProcess:
        code = prelude + textwrap.dedent(body)
        return subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)

    return run


def pytest_collection_modifyitems(items):
    """Mark every test that needs CUDA (a ``skipif`` naming CUDA, or ``cuda`` in its id)
    ``gpu``, so ``pytest -m gpu`` runs exactly the CUDA tests (benchmarks/gpu_suite.sh)."""
    for item in items:
        reasons = " ".join(str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
        if "cuda" in reasons.lower() or "cuda" in item.name.lower():
            item.add_marker(pytest.mark.gpu)
