"""One open-loop evaluation for every family: a world model seen as an offline,
action-conditioned frame predictor, and the scores it is judged by.

A family takes part by offering an :class:`OpenLoopModel` (its ``openloop`` entry in
:mod:`worldmodels.algos.registry`). :func:`score_rollouts` rolls it out from ``K`` given
frames for ``H`` steps with the recorded actions and scores, per sequence and step
ahead, PSNR and SSIM of

- the model (``psnr``, ``ssim``);
- copying the last given frame (``copy_last_*``: what a model that learned nothing about
  motion scores);
- the same model fed shuffled actions (``shuffled_*``: the actions that drive the
  predictions, permuted over all sequences and steps); ``delta_psnr`` = model -
  shuffled shows whether the model uses the action at all (zero for an action-free
  model).

This module is a shared layer: it imports no family.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import WorldModelsError
from ..ops.image_quality import psnr_ref, ssim_ref

# The per-sequence scores of :func:`score_rollouts`, in the order tables print them.
SCORES = ("psnr", "ssim", "copy_last_psnr", "copy_last_ssim", "shuffled_psnr", "shuffled_ssim", "delta_psnr")
SIZES = ("tiny", "small")


@runtime_checkable
class OpenLoopModel(Protocol):
    """A family's world model seen as an offline action-conditioned frame predictor."""
    name: str             # the family's name in the table, e.g. "dreamerv3"
    uses_actions: bool    # False for VTA (action-free): the table says so

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...   # the table's parameter count

    def train_step(self, frames: Tensor, actions: Tensor) -> dict[str, float]:
        """One optimiser update (it owns its optimisers) on windows ``frames [B, T, C, H, W]``
        float in [0, 1] and ``actions [B, T]`` int64, where ``actions[:, t]`` is the action
        taken at frame t (it leads from frame t to frame t+1; the last one is unused by
        models that only predict inside the window). Returns scalar losses for logging."""

    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Open loop, under torch.no_grad: ``context [B, K, C, H, W]`` in [0, 1] are the
        given frames, ``actions [B, K + horizon - 1]`` the actions at the K given frames and
        at the first horizon-1 predicted ones; prediction i (0-based) is the frame that
        follows ``actions[:, K - 1 + i]``. Returns ``[B, horizon, C, H, W]`` in [0, 1].
        Deterministic where the family allows (the mode / mean of each step's prior, or
        argmax tokens; say in the docstring which)."""


def unknown_size(size: str) -> str:
    """The one-line message for a ``size`` no adapter knows (adapters raise it as a
    :class:`~worldmodels.errors.WorldModelsError`)."""
    return f"size={size!r} is not one of {', '.join(SIZES)}."


def parameter_count(model: OpenLoopModel) -> int:
    """The number of trainable numbers of ``model`` (each parameter counted once)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def shuffle_actions(actions: Tensor, seed: int) -> Tensor:
    """The same actions in a seeded random order over all sequences and steps."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(actions.numel(), generator=generator).to(actions.device)
    return actions.flatten()[order].view_as(actions)


def image_scores(guess: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """PSNR and SSIM ``[B, H]`` of each predicted frame ``guess [B, H, C, H_img, W_img]``
    against ``truth`` (both in [0, 1])."""
    guess, truth = guess.float(), truth.float()
    return psnr_ref(guess, truth), ssim_ref(guess, truth)


def check_rollout(prediction: Tensor, truth: Tensor, name: str) -> Tensor:
    """``prediction`` unchanged when it is ``truth``'s shape, finite and in [0, 1]; else
    a ValueError naming the model and what is wrong."""
    if tuple(prediction.shape) != tuple(truth.shape):
        raise ValueError(f"{name}: rollout returned shape {tuple(prediction.shape)}, expected {tuple(truth.shape)}.")
    if not torch.isfinite(prediction).all() or prediction.min() < 0 or prediction.max() > 1:
        raise ValueError(f"{name}: rollout values must be finite and in [0, 1] (got min {float(prediction.min()):.3g}, "
                         f"max {float(prediction.max()):.3g}).")
    return prediction


@torch.no_grad()
def score_rollouts(model: OpenLoopModel, frames: Tensor, actions: Tensor, stack: int, seed: int
                   ) -> tuple[dict[str, Tensor], Tensor]:
    """Per-sequence scores ``[B, H]`` keyed by :data:`SCORES` and the model's rollout
    ``[B, H, C, H_img, W_img]``.

    ``frames [B, K + H, C, H_img, W_img]`` in [0, 1]: the ``K = stack`` given frames, then
    the ``H`` true frames that follow; ``actions [B, K + H - 1]``: the action at each frame
    but the last (:meth:`OpenLoopModel.rollout`). The shuffled run permutes, with
    ``seed``, the ``H`` actions that drive the predictions (``actions[:, K - 1:]``); the
    context's own actions stay as recorded.
    """
    if frames.dim() != 5 or not 1 <= stack < frames.shape[1]:
        raise ValueError(f"frames must be [B, K + H, C, H, W] with 1 <= K={stack} < K + H, got {tuple(frames.shape)}.")
    horizon = frames.shape[1] - stack
    if tuple(actions.shape) != (frames.shape[0], stack + horizon - 1):
        raise ValueError(f"actions must be [B, K + H - 1] = [{frames.shape[0]}, {stack + horizon - 1}], got "
                         f"{tuple(actions.shape)}.")
    context, truth = frames[:, :stack], frames[:, stack:].float()
    name = str(getattr(model, "name", type(model).__name__))
    prediction = check_rollout(model.rollout(context, actions, horizon), truth, name)
    driving = shuffle_actions(actions[:, stack - 1:], seed)
    shuffled_actions = torch.cat([actions[:, :stack - 1], driving], 1)
    shuffled = check_rollout(model.rollout(context, shuffled_actions, horizon), truth, name)
    copy_last = context[:, -1:].expand_as(truth)
    scores = {}
    for prefix, guess in (("", prediction), ("copy_last_", copy_last), ("shuffled_", shuffled)):
        scores[f"{prefix}psnr"], scores[f"{prefix}ssim"] = image_scores(guess, truth)
    scores["delta_psnr"] = scores["psnr"] - scores["shuffled_psnr"]
    return scores, prediction


def mean_and_ci95(values: Tensor) -> dict[str, list[float]]:
    """``values [N, H]`` (N sequences) -> ``mean`` and ``ci95`` (1.96 standard errors
    over the sequences; 0 for a single one) per step ahead."""
    values = values.double()
    if values.shape[0] > 1:
        half_width = 1.96 * values.std(0, unbiased=True) / math.sqrt(values.shape[0])
    else:
        half_width = torch.zeros_like(values[0])
    return {"mean": values.mean(0).tolist(), "ci95": half_width.tolist()}


def check_window(frames: Tensor, actions: Tensor, frame_shape: tuple[int, int, int], num_actions: int) -> None:
    """A ``train_step``'s inputs: ``frames [B, T, C, H, W]`` floating and ``actions [B, T']``
    int64 in ``[0, num_actions)``, the same B; a one-line WorldModelsError otherwise."""
    if frames.dim() != 5 or tuple(frames.shape[2:]) != tuple(frame_shape) or not frames.is_floating_point():
        raise WorldModelsError(f"frames must be float [B, T, {', '.join(map(str, frame_shape))}] in [0, 1], got "
                               f"{list(frames.shape)} {frames.dtype}.")
    if actions.dim() != 2 or actions.dtype != torch.int64 or actions.shape[0] != frames.shape[0]:
        raise WorldModelsError(f"actions must be int64 [B={frames.shape[0]}, T], got {list(actions.shape)} "
                               f"{actions.dtype}.")
    if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= num_actions):
        raise WorldModelsError(f"actions must lie in [0, {num_actions}), got [{int(actions.min())}, "
                               f"{int(actions.max())}].")


def check_rollout_inputs(context: Tensor, actions: Tensor, horizon: int) -> None:
    """A ``rollout``'s inputs: ``actions [B, K + horizon - 1]`` for ``context [B, K, ...]``,
    ``horizon >= 1``; a one-line WorldModelsError otherwise."""
    if horizon < 1:
        raise WorldModelsError(f"horizon={horizon} must be >= 1.")
    expected = context.shape[1] + horizon - 1
    if actions.dim() != 2 or actions.shape[1] != expected:
        raise WorldModelsError(f"rollout: actions must be [B, K + horizon - 1] = [B, {expected}] for "
                               f"K={context.shape[1]}, horizon={horizon}; got {list(actions.shape)}.")


def clipped_step(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter], loss: Tensor,
                 max_grad_norm: float | None) -> None:
    """Backward, clip the gradient norm of ``parameters`` to ``max_grad_norm`` (None: no
    clip), step: one update of one optimiser of an adapter."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    optimizer.step()


__all__ = ["SCORES", "SIZES", "OpenLoopModel", "check_rollout", "check_rollout_inputs", "check_window", "clipped_step",
           "image_scores", "mean_and_ci95", "parameter_count", "score_rollouts", "shuffle_actions", "unknown_size"]
