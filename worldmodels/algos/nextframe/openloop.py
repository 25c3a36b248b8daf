"""The next-frame U-Net as an :class:`~worldmodels.training.openloop.OpenLoopModel`, for
the cross-family open-loop table (``python -m worldmodels.compare_openloop``).

The model of ``+exp=nextframe_coinrun``: :class:`NextFramePredictor` over a stack of
:data:`STACK` = 4 frames (the experiment's ``data.stack``), L1 + 0.2 (1 - SSIM), Adam at
1e-3 with the gradient norm clipped at 1. Each update takes one stack from each window
(frames t-3..t, action t, target t+1, with t drawn from the adapter's own seeded
generator): a batch of 16 windows is the experiment's batch of 16 stacks. Every stack of
each window would cost the U-Net (T - 4) times as much per update, several times the
other families' cost at the table's budget. A rollout reads the last 4 given frames (a
context shorter than 4 is an error).

Sizes: ``tiny`` (the table's CPU default) has the experiment's widths 24-48-64-96;
``small`` the model's default widths 32-64-128-256.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import WorldModelsError
from ...training.openloop import clipped_step, unknown_size
from .model import NextFrameConfig, NextFramePredictor
from .rollout import StackRollout

STACK = 4
LR, GRAD_CLIP = 1e-3, 1.0   # configs/exp/nextframe_coinrun.yaml's train.lr and train.grad_clip
SIZES = {"tiny": [24, 48, 64, 96], "small": [32, 64, 128, 256]}


def sample_stacks(frames: Tensor, actions: Tensor, stack: int, generator: torch.Generator) -> dict[str, Tensor]:
    """One stack from each window ``frames [B, T, ...]``, ``actions [B, T]``, ending at a
    frame ``t`` drawn uniformly from ``stack - 1 .. T - 2``: ``frames [B, stack, ...]``,
    ``actions [B]`` (action ``t``) and ``target [B, ...]`` (frame ``t + 1``)."""
    batch, steps = frames.shape[:2]
    if steps <= stack:
        raise ValueError(f"windows of {steps} frames hold no stack of {stack} frames and a target.")
    ends = torch.randint(stack - 1, steps - 1, (batch,), generator=generator).to(frames.device)
    rows = torch.arange(batch, device=frames.device)
    window = ends[:, None] + torch.arange(1 - stack, 1, device=frames.device)
    return {"frames": frames[rows[:, None], window], "actions": actions[rows, ends], "target": frames[rows, ends + 1]}


class NextFrameOpenLoop(StackRollout):
    """The U-Net trained on one stack of each window per update; ``rollout`` is
    deterministic (the predictor draws nothing): each step's clamped prediction joins the
    stack."""

    def __init__(self, frame_shape: tuple[int, int, int], num_actions: int, widths: list[int], seed: int,
                 device: str):
        channels, height, width = frame_shape
        if height != width:
            raise ValueError(f"the predictor takes square frames, got {height}x{width}.")
        self.device = torch.device(device)
        model = NextFramePredictor(NextFrameConfig(image_size=height, channels=channels, stack=STACK,
                                                   num_actions=num_actions, widths=list(widths))).to(self.device)
        super().__init__(model, STACK, name="nextframe")
        self.optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        self.generator = torch.Generator().manual_seed(seed)

    def train_step(self, frames: Tensor, actions: Tensor) -> dict[str, float]:
        self.model.train()
        batch = sample_stacks(frames.to(self.device), actions.to(self.device), STACK, self.generator)
        loss, metrics = self.model.compute_loss(batch)
        clipped_step(self.optimizer, self.model.parameters(), loss, GRAD_CLIP)
        return {"loss": float(loss.detach()), **{name: float(value) for name, value in metrics.items()}}

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        self.model.eval()
        return super().rollout(context.to(self.device), actions.to(self.device), horizon).to(context.device)


def build_openloop(frame_shape: tuple[int, int, int], num_actions: int, size: str, seed: int,
                   device: str) -> NextFrameOpenLoop:
    """The registry's ``openloop`` builder (:mod:`worldmodels.algos.registry`)."""
    if size not in SIZES:
        raise WorldModelsError(unknown_size(size))
    torch.manual_seed(seed)
    return NextFrameOpenLoop(tuple(frame_shape), num_actions, SIZES[size], seed, device)


__all__ = ["NextFrameOpenLoop", "SIZES", "STACK", "build_openloop", "sample_stacks"]
