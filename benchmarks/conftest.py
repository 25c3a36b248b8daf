"""Shared helpers of the benchmark suites: the machine and library versions.

Every row records them in ``benchmark.extra_info`` so figures from different
machines and runs can be told apart (see ``benchmarks/results/``).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import numpy as np
import pytest
import torch

from worldmodels.training.precision import cpu_bf16_units

@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device = "cpu") -> str:
    """A human name of ``device``: the GPU's name for CUDA, else the CPU model."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return cpu_name()


def environment_info(device: str | torch.device = "cpu") -> dict:
    """Fields every benchmark row stores: device, core count, threads and versions."""
    return {
        "device": device_name(device),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_bf16_units(),
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


@pytest.fixture
def record_env(benchmark):
    """Fill the row's extra_info with :func:`environment_info`; returns the benchmark."""
    benchmark.extra_info.update(environment_info())
    return benchmark


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` (synchronised on CUDA): the anchors' timer."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def finish_row(benchmark, anchor_name: str, anchor_seconds: float) -> float | None:
    """Store the anchor's time and the speed-up of a row; returns its median seconds
    (None under ``--benchmark-disable``)."""
    stats = getattr(benchmark.stats, "stats", None)
    if stats is None:
        return None
    benchmark.extra_info[f"{anchor_name}_s"] = anchor_seconds
    benchmark.extra_info[f"speedup_vs_{anchor_name}"] = anchor_seconds / stats.median
    return stats.median


def pytest_collection_modifyitems(items):
    """Mark every row that needs CUDA ``gpu`` (see tests/conftest.py)."""
    for item in items:
        reasons = " ".join(str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
        if "cuda" in reasons.lower() or "cuda" in item.name.lower():
            item.add_marker(pytest.mark.gpu)
