"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values tagged with
``format``/``version``, so a truncated file or a file from elsewhere is reported
with the file's name instead of failing somewhere deep in a ``load_state_dict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import WorldModelsError
from ..utils.atomic import atomic_write
from .interrupt import sigint_deferred

FORMAT = "worldmodels-checkpoint"
VERSION = 1


class CheckpointError(WorldModelsError, RuntimeError):
    """A checkpoint file is missing, unreadable, or not one of ours."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync,
    then ``os.replace``; a crash mid-write never leaves a half-written ``path``, and a
    Ctrl-C during the write takes effect once the file is in place."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with sigint_deferred():
        return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated
    or corrupt, or when it is a valid torch file that is not a worldmodels checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch reports bad files with many exception types
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(error).__name__}: {_first_line(error)}); "
            "the file is truncated, corrupt or holds objects that are not safe to load."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a worldmodels checkpoint (no format={FORMAT!r} tag); "
            "it was written by another program."
        )
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, this package reads {VERSION}.")
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""
