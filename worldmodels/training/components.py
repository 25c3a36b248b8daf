"""Checkpoints per component, and new runs that start from saved weights.

A model made of named parts (IRIS and Δ-IRIS: ``tokenizer``, ``world_model``,
``actor_critic``) lists them with ``components() -> dict[str, nn.Module]``. Beside
``checkpoints/last.pt`` (everything a resume needs), the loop then writes each part's
weights on their own::

    checkpoints/<component>/last.pt            at every checkpoint
    checkpoints/<component>/step_<N>.pt        every train.snapshot_every steps (kept)

``init.path`` starts a *new* run from saved weights (a resume restores everything
instead): a run directory (its ``checkpoints/last.pt``), a full checkpoint
(``last.pt``, ``best.pt``) or one component file; ``init.components`` names the parts to
take (``null``: every part the file holds). The optimiser, the data and the step start
afresh. Files are read with ``torch.load(weights_only=True)`` like every checkpoint.

    python -m worldmodels.train +exp=iris_atari init.path=runs/<run> init.components=[tokenizer]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .contract import HasComponents

WHOLE_MODEL = "model"  # the key of a model without components in :func:`read_weights`


def model_components(model: nn.Module) -> dict[str, nn.Module] | None:
    """The model's named parts (:class:`~worldmodels.training.contract.HasComponents`), or
    ``None`` when it does not list any."""
    return dict(model.components()) if isinstance(model, HasComponents) else None


def save_components(ckpt_dir: str | Path, model: nn.Module, step: int, config: dict[str, Any],
                    snapshot: bool = False) -> list[Path]:
    """Write ``<ckpt_dir>/<name>/last.pt`` for each component (and ``step_<step>.pt``
    when ``snapshot``), atomically; nothing for a model without components."""
    components = model_components(model)
    if not components:
        return []
    paths = []
    for name, module in components.items():
        state = {"component": name, "step": int(step), "model": module.state_dict(), "config": config}
        folder = Path(ckpt_dir) / name
        paths.append(save_checkpoint(folder / "last.pt", state))
        if snapshot:
            paths.append(save_checkpoint(folder / f"step_{int(step):07d}.pt", state))
    return paths


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or ``<path>/checkpoints/last.pt`` for a run directory."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoints" / "last.pt"
        if not inside.is_file():
            raise CheckpointError(f"init.path={path} is a directory without checkpoints/last.pt; "
                                  "give a run directory or a checkpoint file.")
        return inside
    return path


def read_weights(path: str | Path, names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """State dicts by component from a checkpoint file or run directory.

    A component file gives ``{its name: weights}``; a full checkpoint is split by the
    top-level prefixes of its keys among ``names`` (``tokenizer.encoder.w`` ->
    ``tokenizer``); with ``names=None`` the whole state dict is returned under ``"model"``.
    """
    file = checkpoint_file(path)
    state = load_checkpoint(file)
    if "model" not in state:
        raise CheckpointError(f"checkpoint {file} holds no model weights.")
    if "component" in state:
        return {str(state["component"]): state["model"]}
    weights = state["model"]
    if names is None:
        return {WHOLE_MODEL: weights}
    split: dict[str, dict[str, Any]] = {}
    for key, value in weights.items():
        head, _, rest = key.partition(".")
        if head in names and rest:
            split.setdefault(head, {})[rest] = value
    return split


def load_initial_weights(model: nn.Module, path: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """Load the parts ``names`` (``None``: all that the file holds) of the checkpoint at
    ``path`` into ``model``; returns the names loaded. Raises :class:`CheckpointError`
    naming the file and the part when a part is missing or its shapes differ."""
    file = checkpoint_file(path)
    components = model_components(model)
    if components is None:
        if names:
            raise CheckpointError(f"init.components={list(names)}: this model has no components; "
                                  "leave init.components null to load the whole model.")
        weights = read_weights(file)
        state = weights[WHOLE_MODEL] if WHOLE_MODEL in weights else _only(weights, file)
        _load(model, state, file, "the model")
        return [WHOLE_MODEL]
    unknown = sorted(set(names or ()) - set(components))
    if unknown:
        raise CheckpointError(f"init.components has {unknown}; this model's components are {sorted(components)}.")
    weights = read_weights(file, list(components))
    chosen = list(names) if names else [name for name in components if name in weights]
    missing = [name for name in chosen if name not in weights]
    if missing or not chosen:
        raise CheckpointError(f"checkpoint {file} holds {sorted(weights) or 'none'} of the components "
                              f"{sorted(components)}; asked for {missing or sorted(components)}.")
    for name in chosen:
        _load(components[name], weights[name], file, f"component {name!r}")
    return chosen


def _only(weights: dict[str, dict[str, Any]], file: Path) -> dict[str, Any]:
    if len(weights) != 1:
        raise CheckpointError(f"checkpoint {file} holds several components; load it into a model that has them.")
    return next(iter(weights.values()))


def _load(module: nn.Module, state: dict[str, Any], file: Path, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise CheckpointError(f"{what} of checkpoint {file} does not fit this model ({detail}); "
                              "build the model with the configuration it was trained with.") from error
