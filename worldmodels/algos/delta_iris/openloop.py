"""Δ-IRIS as an offline open-loop frame predictor (issue 20's cross-family table).

The family's own parts, trained as Δ-IRIS trains them, each with its own loss and
AdamW: the context-aware tokenizer (:class:`~worldmodels.nn.delta_tokenizer.DeltaTokenizer`:
frame ``t`` is encoded given frame ``t - 1`` and the action ``a_{t-1}``, and decoded
with them) and the world model (:class:`~worldmodels.algos.delta_iris.world_model.DeltaWorldModel`)
on the delta tokens of the current tokenizer, computed without gradient. The data has
no rewards or episode ends inside a window, so the reward-sign and end heads are
trained on zeros and every frame counts as real.

Δ-IRIS trains its tokenizer on sequences of its own (``tokenizer_sequence_length``);
here each update's tokenizer batch is a random run of ``tokenizer_frames`` consecutive
frames of each window (the whole window when it is shorter).

    model = build_openloop((3, 64, 64), num_actions=15, size="tiny", seed=0, device="cpu")
    losses = model.train_step(frames, actions)          # frames [B, T, 3, 64, 64] in [0, 1]
    predicted = model.rollout(frames[:, :4], actions[:, :4 + 16 - 1], horizon=16)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...errors import WorldModelsError
from ...nn.delta_tokenizer import DeltaTokenizer, DeltaTokenizerConfig
from ...rl.imagination_agent import OptimConfig
from ...rl.token_openloop import OpenLoopSize, TokenizerWorldModelOpenLoop
from ...training.openloop import check_rollout_inputs, check_window, unknown_size
from .world_model import DeltaWorldModel, DeltaWorldModelConfig

Tensor = torch.Tensor


# tiny: three halvings (64x64 -> 8x8 latents, 2x2 = 4 tokens of 64 codes) 8 channels wide at
# full resolution and 32 at 8x8 (the full-resolution convolutions dominate a CPU update),
# delta_iris_tiny's 2-layer world model of width 64 and lr 1e-3. small: Δ-IRIS's published
# Crafter networks (4 tokens of 1024 codes, 3 layers of width 512) with reward-sign
# classes, lr 1e-4.
SIZES = {
    "tiny": OpenLoopSize(
        tokenizer={"tokens_per_frame": 4, "vocab_size": 64, "code_dim": 16, "latent_dim": 8, "channels": 8,
                   "mult": (1, 2, 4), "down": (1, 1, 1), "frame_channels": 8, "frame_latent_dim": 4,
                   "decay": 0.9},
        world_model={"max_blocks": 16, "num_layers": 2, "num_heads": 2, "embed_dim": 64, "frame_channels": 8,
                     "frame_latent_dim": 2, "frame_mult": (1, 2, 4), "frame_down": (1, 1, 1), "reward_bins": 0},
        optim={"tokenizer": OptimConfig(lr=1e-3, weight_decay=0.01),
               "world_model": OptimConfig(lr=1e-3, weight_decay=0.01)},
        tokenizer_frames=4),
    "small": OpenLoopSize(
        tokenizer={"tokens_per_frame": 4, "vocab_size": 1024},
        world_model={"max_blocks": 21, "reward_bins": 0},
        optim={"tokenizer": OptimConfig(lr=1e-4, weight_decay=0.01),
               "world_model": OptimConfig(lr=1e-4, weight_decay=0.01)},
        tokenizer_frames=8),
}


class DeltaIrisOpenLoop(TokenizerWorldModelOpenLoop):
    """Δ-IRIS's tokenizer and world model as an open-loop predictor (the
    ``OpenLoopModel`` protocol of :mod:`worldmodels.training.openloop`). Its tokenizer
    trains on ``tokenizer_frames`` consecutive frames of every window, its world model on
    the window's delta tokens."""

    name = "delta_iris"
    min_window = 2      # a delta token encodes a frame given the one before

    def __init__(self, tokenizer: DeltaTokenizer, world_model: DeltaWorldModel, size: OpenLoopSize, seed: int,
                 device: str | torch.device):
        c = tokenizer.config
        super().__init__(tokenizer, world_model, size, seed, device, (c.in_channels, c.resolution, c.resolution))

    def _tokenizer_batch(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """``tokenizer_frames`` consecutive frames of every window, from one random start."""
        length = min(self.tokenizer_frames, frames.shape[1])
        start = int(torch.randint(frames.shape[1] - length + 1, (), generator=self.generator))
        window = slice(start, start + length)
        mask = torch.ones(frames.shape[0], length, dtype=torch.bool, device=self.device)
        return {"observations": frames[:, window], "actions": actions[:, window], "mask_padding": mask}

    def _world_model_batch(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        tokens = self.tokenizer.encode(frames[:, :-1], actions[:, :-1], frames[:, 1:]).tokens
        zeros = torch.zeros(actions.shape, device=self.device)
        return {"observations": frames, "actions": actions, "rewards": zeros, "ends": zeros.bool(),
                "mask_padding": torch.ones_like(zeros, dtype=torch.bool), "latent_tokens": tokens}

    def _metrics(self, tokenizer: Mapping[str, Tensor], world_model: Mapping[str, Tensor]) -> dict[str, float]:
        return {"tokenizer/l2": float(tokenizer["l2"]), "world_model/loss_latents": float(world_model["loss_latents"])}

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Open loop: the delta tokens of the ``K`` context frames (each given its
        predecessor and action) fill the world model's KV caches; then, for prediction
        ``i``, the action ``actions[:, K - 1 + i]`` is fed, the next frame's delta tokens
        are generated one at a time as the **argmax** of their logits (deterministic),
        and the frame is decoded from the previous (predicted) frame, that action and
        the tokens, and fed back. The context held is at most the trained window: when
        it is full, the caches restart from the last frames. Returns
        ``[B, horizon, C, H, W]`` in [0, 1]."""
        check_window(context, actions, self.frame_shape, self.world_model.config.num_actions)
        check_rollout_inputs(context, actions, horizon)
        context, actions = context.to(self.device), actions.to(self.device)
        self.tokenizer.eval()
        self.world_model.eval()
        steps = context.shape[1]
        frames = list(context.unbind(1))
        tokens = []
        if steps > 1:
            encoding = self.tokenizer.encode(context[:, :-1], actions[:, : steps - 1], context[:, 1:])
            tokens = list(encoding.tokens.unbind(1))
        limit = self.context_limit()
        held = self._prime(frames, tokens, actions, limit - 1)
        for _ in range(horizon):
            if held == limit:
                held = self._prime(frames, tokens, actions, limit - 1)
            action = actions[:, len(frames) - 1]
            out = self.world_model.step(action, greedy=True)
            frame = self.tokenizer.decode_tokens(frames[-1][:, None], action[:, None], out.tokens[:, None])[:, 0]
            self.world_model.observe_frame(frame)
            frames.append(frame)
            tokens.append(out.tokens)
            held += 1
        return torch.stack(frames[steps:], dim=1)

    def _prime(self, frames: list[Tensor], tokens: list[Tensor], actions: Tensor, count: int) -> int:
        """Fresh caches holding the last ``count`` of ``frames`` with the actions and
        delta tokens between them (``tokens[t]`` encodes ``frames[t + 1]``); returns how
        many frames they hold."""
        count = min(count, len(frames))
        start = len(frames) - count
        k = self.world_model.config.tokens_per_frame
        between = (torch.stack(tokens[start:], dim=1) if count > 1
                   else torch.zeros(len(actions), 0, k, dtype=torch.int64, device=self.device))
        self.world_model.reset_imagination(torch.stack(frames[start:], dim=1), actions[:, start:len(frames) - 1],
                                           between)
        return count


def build_openloop(frame_shape: tuple[int, int, int], num_actions: int, size: str, seed: int,
                   device: str) -> DeltaIrisOpenLoop:
    """Δ-IRIS at ``size`` (``tiny`` or ``small``) for ``frame_shape (C, H, W)`` square frames."""
    if size not in SIZES:
        raise WorldModelsError(unknown_size(size))
    channels, height, width = frame_shape
    if height != width:
        raise WorldModelsError(f"Δ-IRIS needs square frames, got {height}x{width}.")
    settings = SIZES[size]
    torch.manual_seed(seed)
    tok = DeltaTokenizerConfig(num_actions=num_actions, resolution=height, in_channels=channels,
                               **settings.tokenizer)
    wm = DeltaWorldModelConfig(num_actions=num_actions, vocab_size=tok.vocab_size,
                               tokens_per_frame=tok.tokens_per_frame, in_channels=channels, resolution=height,
                               **settings.world_model)
    return DeltaIrisOpenLoop(DeltaTokenizer(tok), DeltaWorldModel(wm), settings, seed, device)


__all__ = ["SIZES", "DeltaIrisOpenLoop", "build_openloop"]
