"""Open-loop rollouts of a next-frame predictor and the baselines they are judged against.

A rollout starts from the K true frames of a held-out stack and feeds the model its own
predictions for ``horizon`` steps, with the recorded actions. Beside it, per horizon:

- ``copy_last``: the last true frame of the stack repeated (a model that learned nothing
  about motion scores this);
- ``shuffled``: the same model fed the actions of other sequences and steps (a random
  permutation of all the rollout actions); ``delta_psnr`` = model - shuffled shows
  whether the model uses the action at all.

The scoring is the one every family's open-loop model shares
(:func:`worldmodels.training.openloop.score_rollouts`); :class:`StackRollout` presents
a frame-stack predictor to it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from ...training.openloop import SCORES, score_rollouts, shuffle_actions

COLUMNS = ("step", "horizon", *SCORES)


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


class StackRollout:
    """A frame-stack predictor (``predict(stack, action)``) as the open-loop model of
    :mod:`worldmodels.training.openloop`: it reads the last ``stack`` given frames and
    the actions from the last given frame on (the earlier ones it never sees)."""

    def __init__(self, model: nn.Module, stack: int, name: str = "nextframe"):
        self.model, self.stack, self.name, self.uses_actions = model, stack, name, True

    def parameters(self):
        return self.model.parameters()

    def rollout(self, context: torch.Tensor, actions: torch.Tensor, horizon: int) -> torch.Tensor:
        if context.shape[1] < self.stack:
            raise ValueError(f"the predictor stacks {self.stack} frames; got a context of {context.shape[1]}.")
        given = context.shape[1]
        return open_loop(self.model, context[:, given - self.stack:], actions[:, given - 1:given - 1 + horizon])


@torch.no_grad()
def rollout_scores(model: nn.Module, frames: torch.Tensor, actions: torch.Tensor, stack: int, seed: int
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sequence scores ``[B, H]`` of the model, copy-last and shuffled actions on
    ``frames [B, K + H, C, H_img, W_img]`` in [0, 1] with ``actions [B, H]`` (the action
    at each of the frames K-1 .. K+H-2), keyed by the :data:`COLUMNS` names; and the
    model's rollout ``[B, H, C, H_img, W_img]``
    (:func:`worldmodels.training.openloop.score_rollouts`)."""
    context_actions = actions.new_zeros(actions.shape[0], stack - 1)   # never read: the stack holds the frames
    return score_rollouts(StackRollout(model, stack), frames, torch.cat([context_actions, actions], 1), stack, seed)


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


__all__ = ["COLUMNS", "StackRollout", "append_rollout_csv", "open_loop", "rollout_scores", "rollout_table",
           "shuffle_actions"]
