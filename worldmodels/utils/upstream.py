"""Reading the state dicts of other projects' checkpoints (the official IRIS and Δ-IRIS
ones), shared by the families' importers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WorldModelsError


class UpstreamImportError(WorldModelsError, ValueError):
    """An upstream state dict that does not have the layout an importer knows."""


def load_upstream_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """An official checkpoint file (a plain state dict of tensors), read with ``weights_only=True``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UpstreamImportError(f"{path} is not a state dict of tensors (an upstream `last.pt`).")
    return dict(state)


__all__ = ["UpstreamImportError", "load_upstream_state_dict"]
