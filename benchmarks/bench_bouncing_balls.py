"""Bouncing-balls generation: C++ extension vs the NumPy reference, end to end.

Each row times the public ``generate()`` (initial-state sampling, physics and
rendering, uint8 frames) on 512 sequences x 100 frames. The reference rows run
once (they are slow); each C++ row stores frames/s and its speed-up over the
reference measured in this process on the same inputs (same seed and settings).
One extra pair times VTA's variant: 32x32, 3 RGB balls that change colour at
every wall hit (per-frame colours), C++ on 2 threads.

    pytest benchmarks/bench_bouncing_balls.py --benchmark-only
"""

from __future__ import annotations

import time

import pytest

from worldmodels import _ext
from worldmodels.envs.bouncing_balls import generate

BATCH, SEQ_LEN = 512, 100
SIZES = [32, 64]
BALLS = [1, 3]
THREADS = [1, 2]
RECOLOR = {"channels": 3, "recolor_on_wall_hit": True}
RECOLOR_SIZE, RECOLOR_BALLS, RECOLOR_THREADS = 32, 3, 2
_REFERENCE_SECONDS: dict[tuple, float] = {}

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")


def _generate(size: int, num_balls: int, impl: str, num_threads: int | None = None,
              **options):
    return generate(BATCH, SEQ_LEN, num_balls=num_balls, size=size, dtype="uint8", seed=0,
                    num_threads=num_threads, impl=impl, **options)


def _run_reference(size: int, num_balls: int, **options) -> None:
    start = time.perf_counter()
    _generate(size, num_balls, "ref", **options)
    _REFERENCE_SECONDS[size, num_balls, tuple(options.items())] = time.perf_counter() - start


def _reference_seconds(size: int, num_balls: int, **options) -> float:
    """Seconds of one reference run of this shape (measured once per process)."""
    key = (size, num_balls, tuple(options.items()))
    if key not in _REFERENCE_SECONDS:
        _run_reference(size, num_balls, **options)
    return _REFERENCE_SECONDS[key]


def _shape_info(size: int, num_balls: int, **options) -> dict:
    return {"batch": BATCH, "seq_len": SEQ_LEN, "size": size, "num_balls": num_balls,
            "channels": 1, "dtype": "uint8", "frames": BATCH * SEQ_LEN, **options}


def _record_speedup(record_env, reference: float) -> None:
    stats = getattr(record_env.stats, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        record_env.extra_info["frames_per_s"] = BATCH * SEQ_LEN / stats.median
        record_env.extra_info["reference_s"] = reference
        record_env.extra_info["speedup_vs_ref"] = reference / stats.median


@pytest.mark.parametrize("num_balls", BALLS)
@pytest.mark.parametrize("size", SIZES)
def test_reference(record_env, size, num_balls):
    record_env.group = f"bouncing_balls {size}x{size} balls={num_balls}"
    record_env.extra_info.update(_shape_info(size, num_balls), impl="ref", threads=1)
    record_env.pedantic(_run_reference, args=(size, num_balls), rounds=1, iterations=1)
    seconds = _REFERENCE_SECONDS[size, num_balls, ()]
    record_env.extra_info["frames_per_s"] = BATCH * SEQ_LEN / seconds


@needs_cpp
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("num_balls", BALLS)
@pytest.mark.parametrize("size", SIZES)
def test_cpp(record_env, size, num_balls, threads):
    record_env.group = f"bouncing_balls {size}x{size} balls={num_balls}"
    record_env.extra_info.update(_shape_info(size, num_balls), impl="cpp", threads=threads)
    reference = _reference_seconds(size, num_balls)
    record_env(_generate, size, num_balls, "cpp", threads)
    _record_speedup(record_env, reference)


_RECOLOR_GROUP = f"bouncing_balls {RECOLOR_SIZE}x{RECOLOR_SIZE} balls={RECOLOR_BALLS} rgb recolor"


def test_reference_recolor(record_env):
    record_env.group = _RECOLOR_GROUP
    record_env.extra_info.update(_shape_info(RECOLOR_SIZE, RECOLOR_BALLS, **RECOLOR),
                                 impl="ref", threads=1)
    record_env.pedantic(_run_reference, args=(RECOLOR_SIZE, RECOLOR_BALLS), kwargs=RECOLOR,
                        rounds=1, iterations=1)
    seconds = _reference_seconds(RECOLOR_SIZE, RECOLOR_BALLS, **RECOLOR)
    record_env.extra_info["frames_per_s"] = BATCH * SEQ_LEN / seconds


@needs_cpp
def test_cpp_recolor(record_env):
    record_env.group = _RECOLOR_GROUP
    record_env.extra_info.update(_shape_info(RECOLOR_SIZE, RECOLOR_BALLS, **RECOLOR),
                                 impl="cpp", threads=RECOLOR_THREADS)
    reference = _reference_seconds(RECOLOR_SIZE, RECOLOR_BALLS, **RECOLOR)
    record_env(_generate, RECOLOR_SIZE, RECOLOR_BALLS, "cpp", RECOLOR_THREADS, **RECOLOR)
    _record_speedup(record_env, reference)
