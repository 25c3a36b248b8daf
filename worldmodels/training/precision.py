"""Device and mixed-precision choices for a run.

``precision=auto`` means bf16 autocast on CUDA devices that support it, fp16 autocast
with gradient scaling on older CUDA devices, and plain fp32 on the CPU.

``precision=bf16`` on the CPU is bf16 autocast: convolutions and matrix products run in
bf16 (oneDNN), on AMX tiles or AVX512-BF16 where the CPU has them
(:func:`cpu_bf16_units`) and emulated, usually slower than fp32, where it has neither.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES:
        raise ValueError(f"device={name!r} is not one of {DEVICES} (or 'cuda:N').")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or auto.")
    return device


@dataclass(frozen=True)
class Precision:
    """How a forward pass runs: the autocast dtype (None: off) on a device type."""

    device_type: str
    autocast_dtype: torch.dtype | None

    @property
    def needs_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)

    def __str__(self) -> str:
        name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        return f"{name} on {self.device_type}"


@functools.lru_cache(maxsize=None)
def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 units from ``/proc/cpuinfo``: ``"amx"`` (AMX tiles),
    ``"avx512_bf16"``, or None (none, or not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return None
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else None


@functools.lru_cache(maxsize=None)
def _warn_emulated_bf16() -> None:
    """Once a process: the config check and the run both resolve the precision."""
    warnings.warn("precision=bf16 on a CPU without AMX or AVX512-BF16 runs bf16 emulated, usually slower than "
                  "fp32.", stacklevel=3)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Turn the ``precision`` config value into a :class:`Precision` for ``device``."""
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r} is not one of {PRECISIONS}.")
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return Precision(device.type, None)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Precision(device.type, dtype)
    if name == "fp32":
        return Precision(device.type, None)
    if name == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("precision=bf16 but this GPU does not support bfloat16; use fp16 or auto.")
        if device.type == "cpu" and cpu_bf16_units() is None:
            _warn_emulated_bf16()
        return Precision(device.type, torch.bfloat16)
    if not cuda:
        raise ValueError("precision=fp16 needs a CUDA device; use fp32 or bf16 on the CPU.")
    return Precision(device.type, torch.float16)
