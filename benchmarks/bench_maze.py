"""Maze raycaster: C++ extension vs the NumPy reference, and end-to-end generation.

The render rows time :func:`worldmodels.envs.maze.render` on the same scene: 64
policy episodes x 100 frames in 11x11 mazes (the poses are made once per process).
The reference row runs once per size (it is slow); each C++ row stores frames/s and
its speed-up over the reference measured in this process on the same inputs. The
generate rows time :func:`generate_episodes` (maze, Python policy, C++ render),
what the dataset generator spends per episode.

    pytest benchmarks/bench_maze.py --benchmark-only
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from worldmodels import _ext
from worldmodels.envs import maze as mz

EPISODES, LENGTH, CELLS = 64, 100, 11
FRAMES = EPISODES * LENGTH
SIZES = [32, 64]
THREADS = [1, 2]
_REFERENCE_SECONDS: dict[int, float] = {}

needs_cpp = pytest.mark.skipif(
    not (_ext.has_extension() and hasattr(_ext.extension(), "maze_render")),
    reason="worldmodels._C with maze_render not built",
)


@functools.lru_cache(maxsize=None)
def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Mazes [E, n, n] and policy poses [E, T, 3] shared by every render row."""
    data = mz.generate_episodes(EPISODES, LENGTH, size=8, maze_cells=CELLS, seed=0, impl="ref")
    return data.mazes.numpy(), data.poses.numpy()


def _render(size: int, impl: str, num_threads: int | None = None) -> np.ndarray:
    mazes, poses = _scene()
    return mz.render(mazes, poses, size, num_threads=num_threads, impl=impl)


def _run_reference(size: int) -> None:
    start = time.perf_counter()
    _render(size, "ref")
    _REFERENCE_SECONDS[size] = time.perf_counter() - start


def _reference_seconds(size: int) -> float:
    """Seconds of one reference render of this size (measured once per process)."""
    if size not in _REFERENCE_SECONDS:
        _run_reference(size)
    return _REFERENCE_SECONDS[size]


def _info(size: int) -> dict:
    return {"episodes": EPISODES, "seq_len": LENGTH, "maze_cells": CELLS, "size": size,
            "fov": mz.DEFAULT_FOV, "dtype": "uint8", "frames": FRAMES}


@pytest.mark.parametrize("size", SIZES)
def test_render_reference(record_env, size):
    _scene()  # not part of the timing
    record_env.group = f"maze render {size}x{size}"
    record_env.extra_info.update(_info(size), impl="ref", threads=1)
    record_env.pedantic(_run_reference, args=(size,), rounds=1, iterations=1)
    record_env.extra_info["frames_per_s"] = FRAMES / _REFERENCE_SECONDS[size]


@needs_cpp
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
def test_render_cpp(record_env, size, threads):
    record_env.group = f"maze render {size}x{size}"
    record_env.extra_info.update(_info(size), impl="cpp", threads=threads)
    reference = _reference_seconds(size)
    record_env(_render, size, "cpp", threads)
    stats = getattr(record_env.stats, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        record_env.extra_info["frames_per_s"] = FRAMES / stats.median
        record_env.extra_info["reference_s"] = reference
        record_env.extra_info["speedup_vs_ref"] = reference / stats.median


@needs_cpp
@pytest.mark.parametrize("size", SIZES)
def test_generate_episodes(record_env, size):
    record_env.group = f"maze generate {size}x{size}"
    record_env.extra_info.update(_info(size), impl="cpp", threads=2)
    record_env.pedantic(mz.generate_episodes, args=(EPISODES, LENGTH),
                        kwargs={"size": size, "maze_cells": CELLS, "seed": 1, "num_threads": 2,
                                "impl": "cpp"}, rounds=3, iterations=1)
    stats = getattr(record_env.stats, "stats", None)
    if stats is not None:
        record_env.extra_info["frames_per_s"] = FRAMES / stats.median
