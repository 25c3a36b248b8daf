"""Open-loop rollouts of a next-frame predictor and the baselines they are judged against.

A rollout starts from the K true frames of a held-out stack and feeds the model its own
predictions for ``horizon`` steps, with the recorded actions. Beside it, per horizon:

- ``copy_last``: the last true frame of the stack repeated (a model that learned nothing
  about motion scores this);
- ``shuffled``: the same model fed the actions of other sequences and steps (a random
  permutation of all the rollout actions); ``delta_psnr`` = model - shuffled shows
  whether the model uses the action at all.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from ...ops.image_quality import psnr_ref, ssim_ref

COLUMNS = ("step", "horizon", "psnr", "ssim", "copy_last_psnr", "copy_last_ssim", "shuffled_psnr", "shuffled_ssim",
           "delta_psnr")


@torch.no_grad()
def open_loop(model: nn.Module, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Predicted frames ``[B, H, C, H_img, W_img]`` from ``context [B, K, ...]`` in [0, 1]
    and ``actions [B, H]``; each step sees the last K frames, predicted ones included."""
    stack, predictions = context, []
    for step in range(actions.shape[1]):
        frame = model.predict(stack, actions[:, step])
        predictions.append(frame)
        stack = torch.cat([stack[:, 1:], frame[:, None]], 1)
    return torch.stack(predictions, 1)


def shuffle_actions(actions: torch.Tensor, seed: int) -> torch.Tensor:
    """The same actions in a seeded random order over all sequences and steps."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(actions.numel(), generator=generator).to(actions.device)
    return actions.flatten()[order].view_as(actions)


@torch.no_grad()
def rollout_scores(model: nn.Module, frames: torch.Tensor, actions: torch.Tensor, stack: int, seed: int
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sequence scores ``[B, H]`` of the model, copy-last and shuffled actions on
    ``frames [B, K + H, C, H_img, W_img]`` in [0, 1] with ``actions [B, H]``, keyed by the
    :data:`COLUMNS` names; and the model's rollout ``[B, H, C, H_img, W_img]``."""
    context, truth = frames[:, :stack], frames[:, stack:].float()
    prediction = open_loop(model, context, actions)
    shuffled = open_loop(model, context, shuffle_actions(actions, seed))
    copy_last = context[:, -1:].expand_as(truth)
    scores = {}
    for prefix, guess in (("", prediction), ("copy_last_", copy_last), ("shuffled_", shuffled)):
        scores[f"{prefix}psnr"], scores[f"{prefix}ssim"] = psnr_ref(guess.float(), truth), ssim_ref(guess.float(), truth)
    scores["delta_psnr"] = scores["psnr"] - scores["shuffled_psnr"]
    return scores, prediction


def rollout_table(model: nn.Module, frames: torch.Tensor, actions: torch.Tensor, stack: int, seed: int
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`rollout_scores` averaged over the sequences: ``[H]`` per name."""
    scores, prediction = rollout_scores(model, frames, actions, stack, seed)
    return {name: value.mean(0) for name, value in scores.items()}, prediction


def append_rollout_csv(path: Path, step: int, table: dict[str, torch.Tensor]) -> Path:
    """Append one row per horizon (1-based) to ``path`` (header written once)."""
    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(COLUMNS)
        for h in range(len(table["psnr"])):
            writer.writerow([step, h + 1, *(f"{float(table[name][h]):.5f}" for name in COLUMNS[2:])])
    return path


__all__ = ["COLUMNS", "append_rollout_csv", "open_loop", "rollout_scores", "rollout_table", "shuffle_actions"]
