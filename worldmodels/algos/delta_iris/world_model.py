"""Δ-IRIS's world model: a causal transformer over frame embeddings, actions and the
tokenizer's delta tokens.

Block ``t`` of a sequence is ``K + 2`` inputs: the *continuous* embedding of frame
``x_t`` (a residual CNN, flattened, projected to ``E`` when needed, LayerNorm; slot
0), the action ``a_t`` (slot 1) and the ``K`` tokens ``z_{t+1}`` that encode how
``x_{t+1}`` differs from ``x_t`` under ``a_t`` (slots ``2 .. K + 1``). The last block of
a training sequence has no next frame; its token slots hold code 0 and predict nothing.

Heads (``Linear -> ReLU -> Linear``) on the transformer output ``h``:

* latents: ``z_{t+1}[j]`` from slot ``1 + j`` (the action slot predicts the first token,
  token slot ``j`` the next one), ``j = 0 .. K - 1``;
* rewards: from the action slot: ``reward_bins`` logits of a two-hot symlog
  distribution (Crafter) or 3 logits of ``sign(r) + 1`` (Atari, ``reward_bins = 0``);
* ends: 2 logits from the action slot.

Loss: ``latents_weight * CE_latents + rewards_weight * L_rewards + ends_weight * CE_ends``,
each a mean over the targets whose frames are real (``mask_padding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import nn

from ...nn.delta_tokenizer import valid_pairs
from ...nn.distributions import TwoHotSymlog
from ...nn.frame_cnn import check_levels, frame_encoder
from ...nn.kv_cache import KVCache
from ...nn.token_heads import (
    END_CLASSES,
    REWARD_CLASSES,
    causal_transformer_config,
    reward_sign_labels,
    sample_ends,
    sample_rewards,
    sample_tokens,
)
from ...nn.tokenizer import as_unit_frames
from ...nn.transformer import Transformer, TransformerConfig, init_gpt_weights_

Tensor = torch.Tensor
FRAME_SLOT, ACTION_SLOT = 0, 1


@dataclass
class DeltaWorldModelConfig:
    num_actions: int
    vocab_size: int = 1024            # the tokenizer's codes
    tokens_per_frame: int = 4         # K
    in_channels: int = 3
    resolution: int = 64
    max_blocks: int = 21              # frames of context
    num_layers: int = 3
    num_heads: int = 8
    embed_dim: int = 512
    embed_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    impl: str = "auto"                # attention implementation
    frame_channels: int = 32          # the frame-embedding CNN
    frame_latent_dim: int = 8
    frame_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    frame_down: tuple[int, ...] = (1, 0, 1, 1, 0)
    reward_bins: int = 255            # two-hot symlog bins; 0: reward-sign classes
    latents_weight: float = 1.0
    rewards_weight: float = 1.0
    ends_weight: float = 1.0

    def __post_init__(self) -> None:
        self.frame_mult, self.frame_down = tuple(self.frame_mult), tuple(self.frame_down)
        for name in ("num_actions", "vocab_size", "tokens_per_frame", "in_channels", "resolution",
                     "frame_channels", "frame_latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DeltaWorldModelConfig: {name} must be an int >= 1, got {value!r}.")
        if self.reward_bins == 1 or self.reward_bins < 0:
            raise ValueError(f"DeltaWorldModelConfig: reward_bins={self.reward_bins} must be 0 (sign classes) "
                             "or >= 2 (two-hot symlog).")
        check_levels(self.frame_mult, self.frame_down, self.resolution, "DeltaWorldModelConfig")
        self.transformer()

    @property
    def tokens_per_block(self) -> int:
        return self.tokens_per_frame + 2

    @property
    def frame_features(self) -> int:
        side = self.resolution // 2 ** sum(self.frame_down)
        return self.frame_latent_dim * side * side

    def transformer(self) -> TransformerConfig:
        """The causal :class:`TransformerConfig` over blocks of ``2 + K`` positions."""
        return causal_transformer_config(self)


class StepOutput(NamedTuple):
    """What one imagined step predicts."""

    tokens: Tensor   # [B, K] int64: the delta tokens of the next frame
    reward: Tensor   # [B] float: the two-hot mean, or a sampled sign in {-1, 0, 1} (as Δ-IRIS)
    done: Tensor     # [B] bool: sampled from the end head (argmax when greedy)


def _head(embed_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, out_dim))


class DeltaWorldModel(nn.Module):
    """See the module docstring. Inputs are embeddings, so positions are added here
    (a learned ``[max_tokens, E]`` table) before the causal :class:`Transformer`."""

    def __init__(self, config: DeltaWorldModelConfig):
        super().__init__()
        self.config = config
        tconfig = config.transformer()
        embed = tconfig.embed_dim
        self.max_tokens = tconfig.max_tokens
        cnn = frame_encoder(config.in_channels, config.frame_latent_dim, config.frame_channels,
                            config.frame_mult, config.frame_down)
        project = nn.Identity() if config.frame_features == embed else nn.Linear(config.frame_features, embed)
        flatten = Rearrange("n c h w -> n (h w c)")   # Δ-IRIS's order, so its weights import as they are
        self.frame_embedding = nn.Sequential(cnn, flatten, project, nn.LayerNorm(embed))
        self.action_embedding = nn.Embedding(config.num_actions, embed)
        self.latent_embedding = nn.Embedding(config.vocab_size, embed)
        self.pos_embedding = nn.Embedding(tconfig.max_tokens, embed)
        self.transformer = Transformer(tconfig)
        self.head_latents = _head(embed, config.vocab_size)
        self.head_rewards = _head(embed, config.reward_bins or REWARD_CLASSES)
        self.head_ends = _head(embed, END_CLASSES)
        init_gpt_weights_(self)
        self._caches: list[KVCache] | None = None
        self._pending: Tensor | None = None

    # ------------------------------------------------------------------ embedding

    def embed_frames(self, frames: Tensor) -> Tensor:
        """``frames [B, T, C, R, R]`` (uint8 or [0, 1]) -> ``[B, T, E]``."""
        c = self.config
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"frames must be [B, T, {c.in_channels}, {c.resolution}, {c.resolution}], "
                             f"got {list(frames.shape)}.")
        unit = as_unit_frames(frames).flatten(0, 1)
        return self.frame_embedding(unit).unflatten(0, frames.shape[:2])   # [0, 1] in, as Δ-IRIS

    def sequence(self, frames: Tensor, actions: Tensor, latent_tokens: Tensor) -> Tensor:
        """Inputs ``[B, T * (K + 2), E]`` (positions not added): ``frames [B, T, ...]``,
        ``actions [B, T]`` int64, ``latent_tokens [B, T, K]`` or ``[B, T - 1, K]`` int64
        (then the last block's token slots hold code 0)."""
        batch, steps = actions.shape
        tokens = latent_tokens
        if tokens.shape[1] == steps - 1:
            tokens = torch.cat([tokens, tokens.new_zeros(batch, 1, tokens.shape[2])], dim=1)
        parts = [self.embed_frames(frames).unsqueeze(2), self.action_embedding(actions).unsqueeze(2),
                 self.latent_embedding(tokens)]
        return torch.cat(parts, dim=2).flatten(1, 2)

    def forward(self, inputs: Tensor, kv_caches: list[KVCache] | None = None) -> Tensor:
        """Transformer outputs ``[B, L, E]`` for embedded ``inputs [B, L, E]`` at positions
        following the caches (0 without caches)."""
        past = kv_caches[0].length if kv_caches else 0
        if past + inputs.shape[1] > self.max_tokens:
            raise ValueError(f"DeltaWorldModel: positions {past} .. {past + inputs.shape[1] - 1} exceed "
                             f"max_tokens={self.max_tokens} (max_blocks={self.config.max_blocks}).")
        positions = torch.arange(past, past + inputs.shape[1], device=inputs.device)
        return self.transformer(inputs + self.pos_embedding(positions), kv_caches)

    # ------------------------------------------------------------------ training

    def compute_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Δ-IRIS world-model loss.

        Args:
            batch: ``observations [B, T, C, R, R]``, ``actions [B, T]`` int64,
                ``rewards [B, T]``, ``ends [B, T]``, ``mask_padding [B, T]`` and
                ``latent_tokens [B, T - 1, K]`` (the tokenizer's tokens of frames ``1 ..
                T - 1`` given their predecessors).
        Returns:
            ``(loss, metrics)``: ``loss_latents``, ``loss_rewards``, ``loss_ends``,
            ``latent_accuracy`` beside ``majority_latent_accuracy`` (always predicting
            the batch's most frequent token), ``reward_accuracy`` (sign, with a dead zone
            of 0.5 for two-hot rewards) and ``end_accuracy``.
        """
        actions, latents, mask = self._check_batch(batch)
        c = self.config
        logits_latents, action_hidden = self.predict(batch["observations"], actions, latents)
        pairs = valid_pairs(mask)
        labels = latents[pairs]
        predicted = logits_latents[pairs]
        if labels.numel():
            loss_latents = F.cross_entropy(predicted.flatten(0, 1).float(), labels.flatten())
            latent_accuracy = (predicted.detach().argmax(-1) == labels).float().mean()
            majority = (labels == torch.mode(labels.flatten()).values).float().mean()
        else:
            loss_latents = latent_accuracy = majority = logits_latents.sum() * 0.0
        action_hidden = action_hidden[mask]
        loss_rewards, reward_accuracy = self._reward_loss(self.head_rewards(action_hidden), batch["rewards"][mask])
        logits_ends = self.head_ends(action_hidden).float()
        ends = batch["ends"][mask].long()
        if ends.numel():
            loss_ends = F.cross_entropy(logits_ends, ends)
            end_accuracy = (logits_ends.detach().argmax(-1) == ends).float().mean()
        else:
            loss_ends = end_accuracy = logits_ends.sum() * 0.0
        loss = c.latents_weight * loss_latents + c.rewards_weight * loss_rewards + c.ends_weight * loss_ends
        metrics = {"loss_latents": loss_latents.detach(), "loss_rewards": loss_rewards.detach(),
                   "loss_ends": loss_ends.detach(), "latent_accuracy": latent_accuracy.detach(),
                   "majority_latent_accuracy": majority, "reward_accuracy": reward_accuracy,
                   "end_accuracy": end_accuracy.detach()}
        return loss, metrics

    def predict(self, frames: Tensor, actions: Tensor, latent_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced predictions for ``frames [B, T, ...]``, ``actions [B, T]``,
        ``latent_tokens [B, T - 1, K]``: ``(logits_latents [B, T - 1, K, V]`` (entry ``[t, j]``
        predicts ``latent_tokens[t, j]``), ``action_hidden [B, T, E])`` (the transformer
        output at each action slot, read by the reward and end heads)."""
        c = self.config
        hidden = self(self.sequence(frames, actions, latent_tokens))
        blocks = hidden.unflatten(1, (actions.shape[1], c.tokens_per_block))
        logits = self.head_latents(blocks[:, :-1, ACTION_SLOT:ACTION_SLOT + c.tokens_per_frame])
        return logits, blocks[:, :, ACTION_SLOT]

    def _reward_loss(self, logits: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, sign accuracy)`` of reward logits ``[N, bins]`` against ``rewards [N]``."""
        if rewards.numel() == 0:
            zero = logits.sum() * 0.0
            return zero, zero.detach()
        labels = reward_sign_labels(rewards)
        if self.config.reward_bins:
            dist = TwoHotSymlog(logits.float())
            loss = -dist.log_prob(rewards.float()).mean()
            mean = dist.mean().detach()
            predicted = torch.where(mean.abs() < 0.5, 1, torch.sign(mean).long() + 1)
        else:
            loss = F.cross_entropy(logits.float(), labels)
            predicted = logits.detach().argmax(-1)
        return loss, (predicted == labels).float().mean()

    def _check_batch(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        missing = sorted({"observations", "actions", "rewards", "ends", "mask_padding", "latent_tokens"} - set(batch))
        if missing:
            raise KeyError(f"DeltaWorldModel.compute_loss: the batch lacks {missing}.")
        actions, latents = batch["actions"], batch["latent_tokens"]
        if actions.dim() != 2 or actions.dtype != torch.int64:
            raise ValueError(f"actions must be [B, T] int64, got {list(actions.shape)} {actions.dtype}.")
        batch_size, steps = actions.shape
        k = self.config.tokens_per_frame
        if tuple(latents.shape) != (batch_size, steps - 1, k) or latents.dtype != torch.int64:
            raise ValueError(f"latent_tokens must be [B, T - 1, K] = [{batch_size}, {steps - 1}, {k}] int64, "
                             f"got {list(latents.shape)} {latents.dtype}.")
        for name in ("rewards", "ends", "mask_padding"):
            if tuple(batch[name].shape) != (batch_size, steps):
                raise ValueError(f"{name} must be [B, T] = [{batch_size}, {steps}], got {list(batch[name].shape)}.")
        if steps > self.config.max_blocks:
            raise ValueError(f"T={steps} frames exceed max_blocks={self.config.max_blocks}.")
        return actions, latents, batch["mask_padding"].bool()

    # ------------------------------------------------------------------ imagination

    @torch.no_grad()
    def reset_imagination(self, frames: Tensor, actions: Tensor, latent_tokens: Tensor) -> list[KVCache]:
        """Fill fresh KV caches with a real context: ``frames [B, T, C, R, R]``,
        ``actions [B, T - 1]`` and ``latent_tokens [B, T - 1, K]`` (``T >= 1``): every
        block of the first ``T - 1`` frames, then the embedding of the last frame. Call
        ``eval()`` first for dropout-free rollouts."""
        batch, steps = frames.shape[:2]
        k = self.config.tokens_per_frame
        if tuple(actions.shape) != (batch, steps - 1) or tuple(latent_tokens.shape) != (batch, steps - 1, k):
            raise ValueError(f"reset_imagination: frames {list(frames.shape[:2])} need actions [B, T - 1] and "
                             f"latent_tokens [B, T - 1, {k}], got {list(actions.shape)} and "
                             f"{list(latent_tokens.shape)}.")
        weight = self.pos_embedding.weight
        caches = self.transformer.make_kv_caches(batch, weight.device, weight.dtype)
        last = self.embed_frames(frames[:, -1:])
        if steps > 1:
            context = self.sequence(frames[:, :-1], actions, latent_tokens)
            last = torch.cat([context, last], dim=1)
        self(last, caches)
        self._caches, self._pending = caches, None
        return caches

    @torch.no_grad()
    def step(self, action: Tensor, *, temperature: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None) -> StepOutput:
        """Feed ``action [B]`` int64 after the last observed frame, predict reward and
        end from it, then sample the ``K`` delta tokens of the next frame one at a time.
        Decode the frame with the tokenizer and pass it to :meth:`observe_frame` before
        the next step."""
        caches = self._check_step(action)
        hidden = self(self.action_embedding(action).unsqueeze(1), caches)[:, -1]
        logits_rewards = self.head_rewards(hidden).float()
        if self.config.reward_bins:
            reward = TwoHotSymlog(logits_rewards).mean()
        else:
            reward = sample_rewards(logits_rewards, greedy, generator)
        done = sample_ends(self.head_ends(hidden).float(), greedy, generator)
        tokens = []
        for index in range(self.config.tokens_per_frame):
            token = sample_tokens(self.head_latents(hidden), temperature, greedy, generator)
            tokens.append(token)
            if index + 1 < self.config.tokens_per_frame:
                hidden = self(self.latent_embedding(token).unsqueeze(1), caches)[:, -1]
        self._pending = tokens[-1]
        return StepOutput(torch.stack(tokens, dim=1), reward, done)

    @torch.no_grad()
    def observe_frame(self, frame: Tensor) -> None:
        """Feed the last token of the step and the embedding of the new ``frame [B, C, R, R]``."""
        if self._caches is None or self._pending is None:
            raise RuntimeError("DeltaWorldModel.observe_frame: call step(action) first.")
        inputs = torch.cat([self.latent_embedding(self._pending).unsqueeze(1),
                            self.embed_frames(frame.unsqueeze(1))], dim=1)
        self(inputs, self._caches)
        self._pending = None

    def _check_step(self, action: Tensor) -> list[KVCache]:
        caches = self._caches
        if caches is None:
            raise RuntimeError("DeltaWorldModel.step: no imagination in progress; call reset_imagination first.")
        if self._pending is not None:
            raise RuntimeError("DeltaWorldModel.step: the previous step's frame was not observed; "
                               "call observe_frame(frame) first.")
        batch = caches[0].keys.shape[0]
        if not isinstance(action, Tensor) or action.shape != (batch,) or action.dtype != torch.int64:
            got = f"{list(action.shape)} {action.dtype}" if isinstance(action, Tensor) else type(action).__name__
            raise ValueError(f"DeltaWorldModel.step expects action [{batch}] int64, got {got}.")
        used, per_step = caches[0].length, self.config.tokens_per_block
        if used + per_step > self.max_tokens:
            raise RuntimeError(f"DeltaWorldModel.step: the context holds {used} tokens and a step needs {per_step} "
                               f"more, past max_tokens={self.max_tokens}; call reset_imagination to start again.")
        return caches


__all__ = ["DeltaWorldModel", "DeltaWorldModelConfig", "StepOutput"]
