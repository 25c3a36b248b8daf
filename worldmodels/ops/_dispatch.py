"""Choosing an implementation for an op: ``impl="auto" | "triton" | "cpp" | "ref"``.

``auto`` picks Triton for CUDA tensors, the C++ extension for CPU tensors where the
op has a C++ path that wins, else the pure-PyTorch reference. Asking explicitly for
a path that cannot run raises :class:`ImplUnavailableError` saying how to get it.
Triton kernels run on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``), which the test-suite uses to check them without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .._ext import BUILD_HINT, extension, notify_fallback

IMPLS = ("auto", "triton", "cpp", "ref")


class ImplUnavailableError(RuntimeError):
    """The requested implementation cannot run here."""


@functools.lru_cache(maxsize=1)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(device: torch.device) -> bool:
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def cpp_has(symbol: str) -> bool:
    module = extension()
    return module is not None and hasattr(module, symbol)


@torch.compiler.assume_constant_result
def resolve_impl(
    op: str,
    impl: str,
    device: torch.device,
    *,
    triton: bool,
    cpp_symbol: str | None = None,
    cpu_auto: str = "cpp",
) -> str:
    """The implementation ``op`` runs with on ``device``. A constant under
    ``torch.compile`` (Dynamo cannot trace the cached extension lookup).

    Args:
        op: the op's public name, for messages.
        impl: what the caller asked for.
        triton: whether the op has a Triton path.
        cpp_symbol: the attribute of ``worldmodels._C`` that implements it, if any.
        cpu_auto: what ``auto`` prefers on the CPU ("cpp" or "ref"); "cpp" falls back
            to "ref" with a one-line notice when the extension is missing.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {IMPLS}.")
    if impl == "auto":
        if device.type == "cuda" and triton and triton_installed():
            return "triton"
        if device.type == "cpu" and cpu_auto == "cpp" and cpp_symbol is not None:
            if cpp_has(cpp_symbol):
                return "cpp"
            notify_fallback(op)
        return "ref"
    if impl == "triton":
        if not triton:
            raise ImplUnavailableError(f"{op} has no Triton path; use impl='auto' or 'ref'.")
        if not triton_installed():
            raise ImplUnavailableError(f"{op}: impl='triton' needs the triton package (pip install triton).")
        if not triton_runs_on(device):
            raise ImplUnavailableError(
                f"{op}: impl='triton' needs CUDA tensors (got {device}); on the CPU, Triton kernels run "
                "only under its interpreter (TRITON_INTERPRET=1), which is meant for tests."
            )
        return "triton"
    if impl == "cpp":
        if cpp_symbol is None:
            raise ImplUnavailableError(f"{op} has no C++ path; use impl='auto' or 'ref'.")
        if device.type != "cpu":
            raise ImplUnavailableError(f"{op}: impl='cpp' runs on CPU tensors, got {device}.")
        if not cpp_has(cpp_symbol):
            raise ImplUnavailableError(f"{op}: impl='cpp' needs the C++ extension worldmodels._C; {BUILD_HINT}.")
        return "cpp"
    return "ref"
