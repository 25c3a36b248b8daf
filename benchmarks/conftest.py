"""Shared helpers of the benchmark suites: the machine and library versions.

Every row records them in ``benchmark.extra_info`` so figures from different
machines and runs can be told apart (see ``benchmarks/results/``).
"""

from __future__ import annotations

import functools
import os
import platform

import numpy as np
import pytest
import torch


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
