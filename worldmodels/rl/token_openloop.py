"""What IRIS's and Δ-IRIS's open-loop adapters share: a discrete tokenizer and a
transformer world model trained apart, each with its own AdamW and gradient clip, seen
as the ``OpenLoopModel`` of :mod:`worldmodels.training.openloop`.

A family subclasses :class:`TokenizerWorldModelOpenLoop` with its batches
(``_tokenizer_batch``, ``_world_model_batch``), the metrics it reports
(``_metrics``) and its ``rollout``; the update, the window checks and the context limit
are here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import WorldModelsError
from ..training.openloop import check_window, clipped_step
from .imagination_agent import component_adamw

Tensor = torch.Tensor


@dataclass(frozen=True)
class OpenLoopSize:
    """The settings of one size: tokenizer and world-model config fields, the
    :class:`~worldmodels.rl.imagination_agent.OptimConfig` of each (keys ``tokenizer``
    and ``world_model``), and how many frames of a window the tokenizer trains on."""

    tokenizer: dict = field(default_factory=dict)
    world_model: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    tokenizer_frames: int = 32


class TokenizerWorldModelOpenLoop:
    """A tokenizer and a world model (with ``config.num_actions``, ``config.max_blocks``
    and ``compute_loss(batch) -> (loss, metrics)``), trained one update each per
    ``train_step``: the tokenizer on its batch, then the world model on the window's
    tokens from the just-updated tokenizer."""

    name = ""
    uses_actions = True
    min_window = 1      # frames a training window needs

    def __init__(self, tokenizer: nn.Module, world_model: nn.Module, size: OpenLoopSize, seed: int,
                 device: str | torch.device, frame_shape: tuple[int, int, int]):
        self.tokenizer, self.world_model = tokenizer.to(device), world_model.to(device)
        self.device = torch.device(device)
        self.frame_shape = frame_shape
        self.optim = size.optim
        self.optimizers = {"tokenizer": component_adamw(self.tokenizer, size.optim["tokenizer"]),
                           "world_model": component_adamw(self.world_model, size.optim["world_model"])}
        self.tokenizer_frames = size.tokenizer_frames
        self.generator = torch.Generator().manual_seed(seed)
        self.trained_window = 0   # the longest window trained on: rollouts keep at most this many frames

    def parameters(self) -> Iterator[nn.Parameter]:
        return itertools.chain(self.tokenizer.parameters(), self.world_model.parameters())

    def train_step(self, frames: Tensor, actions: Tensor) -> dict[str, float]:
        """One tokenizer update, then one world-model update (see the class docstring) on
        ``frames [B, T, C, H, W]`` in [0, 1] and ``actions [B, T]``."""
        self.check_training_window(frames, actions)
        frames, actions = frames.to(self.device), actions.to(self.device)
        self.tokenizer.train()
        self.world_model.train()
        tok_loss, tok_metrics = self.tokenizer.compute_loss(self._tokenizer_batch(frames, actions))
        clipped_step(self.optimizers["tokenizer"], self.tokenizer.parameters(), tok_loss, self.optim["tokenizer"].max_grad_norm)
        with torch.no_grad():
            self.tokenizer.eval()      # its codebook statistics follow its own batches only, as the agents
            batch = self._world_model_batch(frames, actions)
            self.tokenizer.train()
        wm_loss, wm_metrics = self.world_model.compute_loss(batch)
        clipped_step(self.optimizers["world_model"], self.world_model.parameters(), wm_loss,
                     self.optim["world_model"].max_grad_norm)
        self.trained_window = max(self.trained_window, frames.shape[1])
        return {"loss": float(tok_loss.detach() + wm_loss.detach()), "tokenizer/loss": float(tok_loss.detach()),
                "world_model/loss": float(wm_loss.detach()), **self._metrics(tok_metrics, wm_metrics)}

    def check_training_window(self, frames: Tensor, actions: Tensor) -> None:
        """A one-line WorldModelsError unless ``actions`` is ``[B, T]`` for ``frames`` and
        ``min_window <= T <= max_blocks``."""
        check_window(frames, actions, self.frame_shape, self.world_model.config.num_actions)
        steps, blocks = frames.shape[1], self.world_model.config.max_blocks
        if actions.shape[1] != steps or not self.min_window <= steps <= blocks:
            raise WorldModelsError(f"train_step: frames {list(frames.shape[:2])} need {self.min_window} <= T <= "
                                   f"max_blocks={blocks} and actions [B, T], got T={steps} and actions "
                                   f"{list(actions.shape)}.")

    def context_limit(self) -> int:
        """Frames the caches may hold: the trained window, at most ``max_blocks``, at least 2."""
        blocks = self.world_model.config.max_blocks
        return max(2, min(blocks, self.trained_window or blocks))

    def _tokenizer_batch(self, frames: Tensor, actions: Tensor) -> Any:
        raise NotImplementedError

    def _world_model_batch(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """The world model's batch, built under no_grad with the tokenizer in eval mode."""
        raise NotImplementedError

    def _metrics(self, tokenizer: Mapping[str, Tensor], world_model: Mapping[str, Tensor]) -> dict[str, float]:
        return {}


__all__ = ["OpenLoopSize", "TokenizerWorldModelOpenLoop"]
