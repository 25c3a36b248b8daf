"""IRIS as an offline open-loop frame predictor (issue 20's cross-family table).

The family's own parts, trained as IRIS trains them: the discrete autoencoder
(:class:`~worldmodels.nn.tokenizer.Tokenizer`, its own loss and AdamW) and the
transformer world model (:class:`~worldmodels.algos.iris.world_model.IrisWorldModel`,
its own loss and AdamW) on the tokens of the current tokenizer, computed without
gradient. The data has no rewards or episode ends inside a window, so the world model's
reward and end heads are trained on zeros (their loss terms vanish after a few updates)
and every frame counts as real (``mask_padding`` all True).

IRIS trains its tokenizer on batches of single frames drawn apart from the world
model's sequences; here each update's tokenizer batch is ``tokenizer_frames`` frames
drawn from the window (all of them when the window has fewer).

    model = build_openloop((3, 64, 64), num_actions=15, size="tiny", seed=0, device="cpu")
    losses = model.train_step(frames, actions)          # frames [B, T, 3, 64, 64] in [0, 1]
    predicted = model.rollout(frames[:, :4], actions[:, 3:3 + 15], horizon=16)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...errors import WorldModelsError
from ...nn.kv_cache import KVCache
from ...nn.tokenizer import Tokenizer, TokenizerConfig
from ...rl.imagination_agent import OptimConfig
from ...rl.token_openloop import OpenLoopSize, TokenizerWorldModelOpenLoop
from ...training.openloop import check_rollout_inputs, check_window, unknown_size
from .world_model import IrisWorldModel, IrisWorldModelConfig

Tensor = torch.Tensor


# tiny: 5 levels (64x64 -> 4x4 = 16 tokens, as IRIS) 8 channels wide at full resolution and
# 32 at 4x4 (IRIS: 64 at every level; the full-resolution convolutions dominate a CPU
# update), 128 codes with dead codes restarted (not in IRIS: without it a short run uses
# few codes), iris_tiny's 2-layer world model of width 64 and lr 1e-3.
# small: IRIS's 16 tokens of 512 codes with a narrower autoencoder and a 4-layer world
# model, IRIS's learning rate 1e-4. No LPIPS term (its weights are not shipped).
SIZES = {
    "tiny": OpenLoopSize(
        tokenizer={"z_channels": 32, "ch": 8, "ch_mult": (1, 2, 2, 4, 4), "num_res_blocks": 1,
                   "attn_resolutions": (), "vocab_size": 128, "dead_threshold": 0.5},
        world_model={"max_blocks": 16, "num_layers": 2, "num_heads": 2, "embed_dim": 64},
        optim={"tokenizer": OptimConfig(lr=1e-3), "world_model": OptimConfig(lr=1e-3, weight_decay=0.01)},
        tokenizer_frames=32),
    "small": OpenLoopSize(
        tokenizer={"z_channels": 128, "ch": 32, "ch_mult": (1, 1, 1, 1, 1), "num_res_blocks": 2,
                   "attn_resolutions": (8,), "vocab_size": 512, "dead_threshold": 0.5},
        world_model={"max_blocks": 20, "num_layers": 4, "num_heads": 4, "embed_dim": 256},
        optim={"tokenizer": OptimConfig(lr=1e-4), "world_model": OptimConfig(lr=1e-4, weight_decay=0.01)},
        tokenizer_frames=128),
}


class IrisOpenLoop(TokenizerWorldModelOpenLoop):
    """IRIS's tokenizer and world model as an open-loop predictor (the
    ``OpenLoopModel`` protocol of :mod:`worldmodels.training.openloop`)."""

    name = "iris"

    def __init__(self, tokenizer: Tokenizer, world_model: IrisWorldModel, size: OpenLoopSize, seed: int,
                 device: str | torch.device):
        c = tokenizer.config
        super().__init__(tokenizer, world_model, size, seed, device, (c.in_channels, c.resolution, c.resolution))

    def _tokenizer_batch(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """``observations [1, N, C, H, W]``: ``tokenizer_frames`` frames of the window drawn
        without replacement (all of them when the window holds fewer)."""
        flat = frames.flatten(0, 1)
        if len(flat) > self.tokenizer_frames:
            picked = torch.randperm(len(flat), generator=self.generator)[: self.tokenizer_frames]
            flat = flat[picked.to(flat.device)]
        return {"observations": flat.unsqueeze(0)}

    def _world_model_batch(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        zeros = torch.zeros(actions.shape, device=self.device)
        return {"obs_tokens": self.tokenizer.encode(frames).tokens, "actions": actions, "rewards": zeros,
                "ends": zeros.bool(), "mask_padding": torch.ones_like(zeros, dtype=torch.bool)}

    def _metrics(self, tokenizer: Mapping[str, Tensor], world_model: Mapping[str, Tensor]) -> dict[str, float]:
        return {"tokenizer/reconstruction": float(tokenizer["reconstruction"]),
                "world_model/loss_obs": float(world_model["loss_obs"])}

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Open loop: the ``K`` context frames are tokenized and fed with their actions
        through the world model's KV caches; then each predicted frame's tokens are
        generated one at a time, each the **argmax** of its logits (deterministic), after
        the action ``actions[:, K - 1 + i]``, and decoded by the tokenizer. The context
        held is at most the trained window (the world model's positions beyond it are
        untrained): when it is full, the caches restart from the last frames' tokens.
        Returns ``[B, horizon, C, H, W]`` in [0, 1]."""
        check_window(context, actions, self.frame_shape, self.world_model.config.num_actions)
        check_rollout_inputs(context, actions, horizon)
        context, actions = context.to(self.device), actions.to(self.device)
        self.tokenizer.eval()
        self.world_model.eval()
        tokens = list(self.tokenizer.encode(context).tokens.unbind(1))
        limit = self.context_limit()
        held = self._prime(tokens[-(limit - 1):], actions[:, max(0, len(tokens) - limit + 1):len(tokens) - 1])
        first = len(tokens)
        for step in range(horizon):
            if held == limit:
                start = len(tokens) - (limit - 1)
                held = self._prime(tokens[start:], actions[:, start:len(tokens) - 1])
            next_tokens, _, _ = self.world_model.step(actions[:, len(tokens) - 1], greedy=True)
            tokens.append(next_tokens)
            held += 1
        return self.tokenizer.decode_tokens(torch.stack(tokens[first:], dim=1))

    def _prime(self, tokens: list[Tensor], actions: Tensor) -> int:
        """Fresh caches holding frames ``tokens`` (``[B, K]`` each) and the ``actions
        [B, n - 1]`` between them (the last frame's action not fed); returns ``n``."""
        caches: list[KVCache] = self.world_model.reset_imagination(tokens[0])
        if len(tokens) > 1:
            rest = torch.cat([actions.unsqueeze(-1), torch.stack(tokens[1:], dim=1)], dim=2).flatten(1)
            self.world_model(rest, caches)
        return len(tokens)


def build_openloop(frame_shape: tuple[int, int, int], num_actions: int, size: str, seed: int,
                   device: str) -> IrisOpenLoop:
    """IRIS at ``size`` (``tiny`` or ``small``) for ``frame_shape (C, H, W)`` square frames."""
    if size not in SIZES:
        raise WorldModelsError(unknown_size(size))
    channels, height, width = frame_shape
    if height != width:
        raise WorldModelsError(f"IRIS needs square frames, got {height}x{width}.")
    settings = SIZES[size]
    torch.manual_seed(seed)
    tok = TokenizerConfig(resolution=height, in_channels=channels, **settings.tokenizer)
    wm = IrisWorldModelConfig(num_actions=num_actions, vocab_size=tok.vocab_size, tokens_per_obs=tok.tokens_per_frame,
                              **settings.world_model)
    return IrisOpenLoop(Tokenizer(tok), IrisWorldModel(wm), settings, seed, device)


__all__ = ["SIZES", "IrisOpenLoop", "build_openloop"]
