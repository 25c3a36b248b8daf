"""One generic optimisation step for any component with ``compute_loss``.

A *component* is an ``nn.Module`` with ``compute_loss(batch) -> (loss, metrics)``,
where ``loss`` is a scalar tensor and ``metrics`` maps names to scalar tensors or
floats. :func:`train_step` runs the micro-batches of one update under autocast,
scales and accumulates gradients, clips them and steps the optimiser.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ContextManager, Protocol

import torch
from torch import nn

from ..utils.profiling import nvtx_range
from .precision import Precision


class Component(Protocol):
    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]: ...

    def parameters(self): ...


@dataclass
class StepResult:
    """What one update did. ``finite`` is False when the loss was NaN/inf; the
    optimiser was then not stepped."""

    loss: float
    grad_norm: float
    finite: bool
    metrics: dict[str, float] = field(default_factory=dict)


def train_step(
    component: Component,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    *,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    grad_clip: float | None = None,
    reduce_values: Callable[[torch.Tensor], torch.Tensor] | None = None,
    defer_sync: Callable[[], ContextManager] | None = None,
) -> StepResult:
    """One optimiser update over ``micro_batches`` (gradient accumulation).

    The loss of each micro-batch is divided by their number, so the update equals
    that of one batch made of all of them (for mean-reduced losses). Parameter groups
    with a ``max_grad_norm`` entry are clipped to it separately first; the returned
    ``grad_norm`` is the global norm after that. ``reduce_values`` (data-parallel runs:
    the mean over ranks) maps the loss and metrics before they are read, so that every
    rank sees the same loss and skips a non-finite update together. ``defer_sync`` (DDP's
    ``no_sync``) holds back the gradient all-reduce for every micro-batch but the last.
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch.")
    optimizer.zero_grad(set_to_none=True)
    count = len(micro_batches)
    loss_sum = torch.zeros(())
    metric_sums: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(micro_batches):
        deferred = defer_sync() if defer_sync is not None and index < count - 1 else contextlib.nullcontext()
        with deferred:
            with nvtx_range("forward"), precision.autocast():
                loss, metrics = component.compute_loss(batch)
            with nvtx_range("backward"):
                scaler.scale(loss / count).backward()
        loss_sum = loss_sum.to(loss.device) + loss.detach().float()
        for name, value in metrics.items():
            value = torch.as_tensor(value, device=loss.device).detach().float()
            metric_sums[name] = metric_sums.get(name, 0) + value
    names = list(metric_sums)
    values = torch.stack([loss_sum] + [metric_sums[n] for n in names]).div(count)
    values = (values if reduce_values is None else reduce_values(values)).tolist()
    loss_value, metric_values = values[0], dict(zip(names, values[1:]))
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, float("nan"), False, metric_values)
    with nvtx_range("optimizer"):
        scaler.unscale_(optimizer)
        clip_groups_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = grad_clip if grad_clip and grad_clip > 0 else math.inf
        grad_norm = float(nn.utils.clip_grad_norm_(params, max_norm))
        scaler.step(optimizer)
        scaler.update()
    return StepResult(loss_value, grad_norm, True, metric_values)


def clip_groups_(optimizer: torch.optim.Optimizer) -> None:
    """Clip each parameter group that sets ``max_grad_norm`` to that norm on its own
    (DreamerV3 clips its world model, actor and critic separately), before the global
    ``grad_clip`` of :func:`train_step` applies to all parameters together. Groups that
    share a ``clip_group`` name are clipped as one (a component split into groups with
    and without weight decay)."""
    clipped: dict[Any, tuple[list, float]] = {}
    for index, group in enumerate(optimizer.param_groups):
        max_norm = group.get("max_grad_norm")
        if max_norm:
            params, _ = clipped.setdefault(group.get("clip_group", index), ([], float(max_norm)))
            params.extend(group["params"])
    for params, max_norm in clipped.values():
        nn.utils.clip_grad_norm_(params, max_norm)
