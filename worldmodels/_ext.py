"""Access to the compiled extension ``worldmodels._C``.

The package works without it: ``impl="auto"`` falls back to the pure-Python paths
and a one-line notice says so once per process. ``impl="cpp"`` without the
extension raises :class:`ExtensionUnavailableError` with the way to build it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

BUILD_HINT = (
    "reinstall from the repository with `pip install -e .` "
    "(needs a C++17 compiler and CMake >= 3.18)"
)


class ExtensionUnavailableError(RuntimeError):
    """The C++ extension was asked for explicitly but could not be imported."""


@functools.lru_cache(maxsize=None)
def _import_extension() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("worldmodels._C"), ""
    except ImportError as error:  # not built, or built for another Python
        return None, str(error)


def extension() -> ModuleType | None:
    """The extension module, or ``None`` when it is not available."""
    return _import_extension()[0]


def has_extension() -> bool:
    return extension() is not None


def require_extension(what: str) -> ModuleType:
    """The extension, or an error naming ``what`` needed it and how to build it."""
    module, reason = _import_extension()
    if module is None:
        raise ExtensionUnavailableError(
            f"{what} needs the C++ extension worldmodels._C, which is not available "
            f"({reason}); {BUILD_HINT}, or use impl='ref'."
        )
    return module


@functools.lru_cache(maxsize=None)
def notify_fallback(what: str) -> None:
    """Say once per process and op that the pure-Python path is used instead."""
    reason = _import_extension()[1]
    print(
        f"worldmodels: C++ extension not available ({reason}); {what} uses the "
        "pure-Python path.",
        file=sys.stderr,
    )
