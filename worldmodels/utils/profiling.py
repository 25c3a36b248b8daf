"""NVTX ranges for Nsight Systems that cost nothing when they cannot be recorded.

``nvtx_range("forward")`` is both a context manager and a decorator. It emits an
NVTX push/pop only when CUDA is available and the ``nvtx`` package (or torch's own
``torch.cuda.nvtx``) can be used; otherwise it is a shared no-op context.

Profile a run with::

    nsys profile -t cuda,nvtx -o wm_profile python -m worldmodels.train train.max_steps=50
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable


@functools.lru_cache(maxsize=1)
def _backend() -> tuple[Callable[[str], object], Callable[[], object]] | None:
    """(push, pop) of an available NVTX backend, or None when ranges are no-ops."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    try:
        import nvtx

        return (lambda name: nvtx.push_range(name, domain="worldmodels")), (
            lambda: nvtx.pop_range(domain="worldmodels")
        )
    except ImportError:
        return torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop


def nvtx_enabled() -> bool:
    """Whether :func:`nvtx_range` records anything in this process."""
    return _backend() is not None


class nvtx_range(contextlib.ContextDecorator):
    """Mark a named phase (``data``, ``forward``, ``backward``, ``optimizer``, ...).

    Usable as ``with nvtx_range("forward"): ...`` or as ``@nvtx_range("collect")``.
    Stateless, so one instance may be re-entered (recursion, threads).
    """

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "nvtx_range":
        backend = _backend()
        if backend is not None:
            backend[0](self.name)
        return self

    def __exit__(self, *exc) -> bool:
        backend = _backend()
        if backend is not None:
            backend[1]()
        return False
