"""IRIS's transformer world model over interleaved observation and action tokens.

A frame is ``K`` observation tokens (codes of the tokenizer, ``[0, vocab_size)``)
followed by one action token (``[0, num_actions)``); a sequence of ``T`` frames is
``L = T * (K + 1)`` tokens, and absolute position ``p`` holds slot ``p % (K + 1)`` of
its frame (slot ``K`` is the action). The transformer uses plain causal attention: with
frame-block-causal attention an observation token would see the next one, its target.

Three heads (``Linear -> ReLU -> Linear`` each) read the transformer output ``h_p``:

* observations: logits of the token at ``p + 1``, trained where that token is an
  observation token (every slot but ``K - 1``): token ``j + 1`` of a frame from slot
  ``j``, token 0 of the next frame from the action slot;
* rewards: 3 logits for ``sign(r_t) + 1`` (classes for -1, 0, +1), from the action slot;
* ends: 2 logits for the episode ending at ``t``, from the action slot.

The loss is ``CE_obs + CE_rewards + CE_ends``, each a mean over the unpadded targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.kv_cache import KVCache
from ...nn.token_heads import (  # noqa: F401  (re-exported)
    END_CLASSES,
    REWARD_CLASSES,
    causal_transformer_config,
    reward_sign_labels,
    rewards_from_logits,
    sample_ends,
    sample_rewards,
    sample_tokens,
)
from ...nn.transformer import Transformer, TransformerConfig, init_gpt_weights_

Tensor = torch.Tensor
IGNORE = -100


@dataclass
class IrisWorldModelConfig:
    num_actions: int                  # A, the action vocabulary
    vocab_size: int = 512             # V, the tokenizer's codebook size
    tokens_per_obs: int = 16          # K; a frame is K + 1 tokens
    max_blocks: int = 20              # frames of context (and of an imagination's KV cache)
    num_layers: int = 10
    num_heads: int = 4
    embed_dim: int = 256
    embed_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    impl: str = "auto"                # attention implementation, see worldmodels.nn.transformer

    def __post_init__(self) -> None:
        for name in ("num_actions", "vocab_size", "tokens_per_obs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IrisWorldModelConfig: {name} must be an int >= 1, got {value!r}.")
        self.transformer()

    @property
    def tokens_per_block(self) -> int:
        return self.tokens_per_obs + 1

    def transformer(self) -> TransformerConfig:
        """The causal :class:`TransformerConfig` over frames of ``K + 1`` tokens."""
        return causal_transformer_config(self)


class WorldModelOutput(NamedTuple):
    """Per-position outputs for ``tokens [B, L]``; index ``i`` is absolute position
    ``p = past_length + i``. Every head runs at every position; the meaningful entries
    are those the module docstring names (see :meth:`IrisWorldModel.slots`)."""

    logits_obs: Tensor       # [B, L, V]: logits of token p + 1 (an observation token unless slot(p) == K - 1)
    logits_rewards: Tensor   # [B, L, 3]: reward-sign logits, meaningful where slot(p) == K
    logits_ends: Tensor      # [B, L, 2]: end logits, meaningful where slot(p) == K
    hidden: Tensor           # [B, L, E]: the transformer output


def _head(embed_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, out_dim))


def _masked_ce(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and accuracy over the labels that are not ``IGNORE``
    (both 0 when there are none); ``logits [..., C]``, ``labels [...]``."""
    logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    valid = labels != IGNORE
    count = valid.sum().clamp(min=1)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / count
    correct = (logits.detach().argmax(-1) == labels) & valid
    return loss, correct.sum().float() / count


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values & mask).sum().float() / mask.sum().clamp(min=1)


class IrisWorldModel(nn.Module):
    """Token embeddings (observations ``[V, E]``, actions ``[A, E]``), a learned
    positional embedding ``[max_tokens, E]``, a causal :class:`Transformer` and the
    observation, reward and end heads (see the module docstring). IRIS init."""

    def __init__(self, config: IrisWorldModelConfig):
        super().__init__()
        self.config = config
        tconfig = config.transformer()
        embed = tconfig.embed_dim
        self.max_tokens = tconfig.max_tokens
        self.obs_embedding = nn.Embedding(config.vocab_size, embed)
        self.action_embedding = nn.Embedding(config.num_actions, embed)
        self.pos_embedding = nn.Embedding(tconfig.max_tokens, embed)
        self.transformer = Transformer(tconfig)
        self.head_obs = _head(embed, config.vocab_size)
        self.head_rewards = _head(embed, REWARD_CLASSES)
        self.head_ends = _head(embed, END_CLASSES)
        init_gpt_weights_(self)
        self._imagination: list[KVCache] | None = None

    def slots(self, length: int, past_length: int = 0, device: torch.device | str | None = None) -> Tensor:
        """Slot within its frame, ``[length]`` int64, of positions ``past_length ..``;
        slot ``K`` is the action token."""
        return (torch.arange(length, device=device) + past_length) % self.config.tokens_per_block

    @staticmethod
    def interleave(obs_tokens: Tensor, actions: Tensor) -> Tensor:
        """``obs_tokens [B, T, K]``, ``actions [B, T]`` -> ``[B, T * (K + 1)]``, frame by frame."""
        return torch.cat([obs_tokens, actions.unsqueeze(-1).to(obs_tokens.dtype)], dim=2).flatten(1)

    def embed(self, tokens: Tensor, past_length: int = 0) -> Tensor:
        """``tokens [B, L]`` at positions ``past_length ..`` -> ``[B, L, E]``: the
        observation or action embedding (by slot) plus the positional embedding."""
        length = tokens.shape[1]
        is_action = (self.slots(length, past_length, tokens.device) == self.config.tokens_per_obs)[:, None]
        obs = self.obs_embedding(tokens.masked_fill(is_action.T, 0))
        act = self.action_embedding(tokens.masked_fill(~is_action.T, 0))
        positions = torch.arange(past_length, past_length + length, device=tokens.device)
        return torch.where(is_action, act, obs) + self.pos_embedding(positions)

    def forward(self, tokens: Tensor, kv_caches: list[KVCache] | None = None,
                past_length: int | None = None) -> WorldModelOutput:
        """Run the world model on ``tokens [B, L]`` int64 (interleaved, see :meth:`interleave`).

        Args:
            tokens: the tokens at absolute positions ``past_length .. past_length + L - 1``;
                ``past_length + L <= max_tokens``.
            kv_caches: one :class:`KVCache` per layer holding the earlier tokens; the new
                ones are appended (decoding). None: ``tokens`` are the whole context.
            past_length: the position of ``tokens[:, 0]``; None for the caches' length
                (0 without caches). With caches it must equal their length.
        Returns:
            :class:`WorldModelOutput` with ``[B, L, ...]`` tensors aligned with ``tokens``.
        """
        past_length = self._check_tokens(tokens, kv_caches, past_length)
        hidden = self.transformer(self.embed(tokens, past_length), kv_caches)
        return WorldModelOutput(self.head_obs(hidden), self.head_rewards(hidden), self.head_ends(hidden), hidden)

    def _check_tokens(self, tokens: Tensor, kv_caches: list[KVCache] | None, past_length: int | None) -> int:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.int64:
            got = f"{list(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"IrisWorldModel expects tokens [B, L] int64, got {got}.")
        cached = kv_caches[0].length if kv_caches else 0
        if past_length is None:
            past_length = cached
        if kv_caches is not None and past_length != cached:
            raise ValueError(f"IrisWorldModel: past_length={past_length} differs from the caches' length {cached}.")
        if past_length < 0 or past_length + tokens.shape[1] > self.max_tokens:
            raise ValueError(f"IrisWorldModel: positions {past_length} .. {past_length + tokens.shape[1] - 1} "
                             f"must lie in [0, max_tokens={self.max_tokens}).")
        return past_length

    # ------------------------------------------------------------------ training

    def next_obs_logits(self, logits_obs: Tensor, frames: int) -> Tensor:
        """``logits_obs [B, T * (K + 1), V]`` of a whole sequence -> ``[B, T * K - 1, V]``:
        the predictions of observation tokens ``1 .. T * K - 1`` of the flattened
        ``obs_tokens [B, T * K]`` (every slot but ``K - 1``, the last action dropped)."""
        batch, _, vocab = logits_obs.shape
        k = self.config.tokens_per_obs
        per_frame = logits_obs.reshape(batch, frames, k + 1, vocab)
        keep = torch.cat([per_frame[:, :, : k - 1], per_frame[:, :, k:]], dim=2)
        return keep.reshape(batch, frames * k, vocab)[:, :-1]

    def compute_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """IRIS world-model loss on a batch of token sequences.

        Args:
            batch: ``obs_tokens [B, T, K]`` int64, ``actions [B, T]`` int64 (taken after
                frame ``t``), ``rewards [B, T]`` float, ``ends [B, T]`` bool/int,
                ``mask_padding [B, T]`` bool (False for padding frames, whose targets
                are ignored).
        Returns:
            ``(loss, metrics)``: ``loss = loss_obs + loss_rewards + loss_ends``; metrics hold
            the three parts, ``next_token_accuracy`` (all observation targets),
            ``reward_accuracy``, ``end_accuracy`` and, on the targets of frames ``1 ..
            T - 1`` whose frame and previous frame are real, ``copy_token_accuracy`` (the
            baseline that repeats the previous frame) and ``next_frame_token_accuracy``
            (the model's accuracy on those same targets).
        """
        obs_tokens, actions, valid = self._check_batch(batch)
        frames = obs_tokens.shape[1]
        out = self(self.interleave(obs_tokens, actions))
        logits_next = self.next_obs_logits(out.logits_obs, frames)
        targets = obs_tokens.masked_fill(~valid.unsqueeze(-1), IGNORE).flatten(1)[:, 1:]
        loss_obs, token_accuracy = _masked_ce(logits_next, targets)
        action_slot = self.config.tokens_per_obs
        logits_rewards = out.logits_rewards.unflatten(1, (frames, -1))[:, :, action_slot]
        logits_ends = out.logits_ends.unflatten(1, (frames, -1))[:, :, action_slot]
        labels_rewards = reward_sign_labels(batch["rewards"]).masked_fill(~valid, IGNORE)
        labels_ends = batch["ends"].long().masked_fill(~valid, IGNORE)
        loss_rewards, reward_accuracy = _masked_ce(logits_rewards, labels_rewards)
        loss_ends, end_accuracy = _masked_ce(logits_ends, labels_ends)
        loss = loss_obs + loss_rewards + loss_ends
        metrics = {"loss_obs": loss_obs.detach(), "loss_rewards": loss_rewards.detach(),
                   "loss_ends": loss_ends.detach(), "next_token_accuracy": token_accuracy,
                   "reward_accuracy": reward_accuracy, "end_accuracy": end_accuracy}
        metrics.update(self._copy_baseline(obs_tokens, valid, logits_next.detach()))
        return loss, metrics

    def _copy_baseline(self, obs_tokens: Tensor, valid: Tensor, logits_next: Tensor) -> dict[str, Tensor]:
        """Accuracies of the model and of "next frame = this frame" on the tokens of
        frames ``1 .. T - 1`` whose frame and previous frame are not padding, and the
        same on the *changed* frames among them (at least one token differs from the
        previous frame's; ``changed_frames`` is their fraction)."""
        batch, frames, k = obs_tokens.shape
        predicted = torch.cat([logits_next.new_zeros(batch, 1, dtype=torch.int64), logits_next.argmax(-1)], dim=1)
        predicted = predicted.view(batch, frames, k)[:, 1:]
        pairs = valid[:, 1:] & valid[:, :-1]
        target, copy = obs_tokens[:, 1:], obs_tokens[:, :-1]
        changed = pairs & (copy != target).any(-1)
        mask, mask_changed = (m.unsqueeze(-1).expand(-1, -1, k) for m in (pairs, changed))
        return {"copy_token_accuracy": _masked_mean(copy == target, mask),
                "next_frame_token_accuracy": _masked_mean(predicted == target, mask),
                "copy_token_accuracy_changed": _masked_mean(copy == target, mask_changed),
                "next_frame_token_accuracy_changed": _masked_mean(predicted == target, mask_changed),
                "changed_frames": changed.sum().float() / pairs.sum().clamp(min=1)}

    @torch.no_grad()
    def predict_next_tokens(self, obs_tokens: Tensor, actions: Tensor) -> Tensor:
        """Most likely tokens of frames ``1 .. T - 1``, ``[B, T - 1, K]``, each token
        predicted from the real tokens before it (teacher forcing): ``obs_tokens [B, T, K]``,
        ``actions [B, T]``."""
        batch, frames, k = obs_tokens.shape
        out = self(self.interleave(obs_tokens, actions))
        logits_next = self.next_obs_logits(out.logits_obs, frames)
        predicted = torch.cat([obs_tokens[:, :1, 0], logits_next.argmax(-1)], dim=1)
        return predicted.view(batch, frames, k)[:, 1:]

    def _check_batch(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(obs_tokens, actions, mask_padding as bool)`` after shape and dtype checks."""
        missing = sorted({"obs_tokens", "actions", "rewards", "ends", "mask_padding"} - set(batch))
        if missing:
            raise KeyError(f"IrisWorldModel.compute_loss: the batch lacks {missing}.")
        obs_tokens, actions = batch["obs_tokens"], batch["actions"]
        k = self.config.tokens_per_obs
        if obs_tokens.dim() != 3 or obs_tokens.shape[2] != k or obs_tokens.dtype != torch.int64:
            raise ValueError(f"obs_tokens must be [B, T, {k}] int64, got {list(obs_tokens.shape)} {obs_tokens.dtype}.")
        batch_frames = tuple(obs_tokens.shape[:2])
        for name in ("actions", "rewards", "ends", "mask_padding"):
            if tuple(batch[name].shape) != batch_frames:
                raise ValueError(f"{name} must be [B, T] = {list(batch_frames)}, got {list(batch[name].shape)}.")
        if actions.dtype != torch.int64:
            raise ValueError(f"actions must be int64 action indices, got {actions.dtype}.")
        if batch_frames[1] > self.config.max_blocks:
            raise ValueError(f"T={batch_frames[1]} frames exceed max_blocks={self.config.max_blocks}.")
        return obs_tokens, actions, batch["mask_padding"].bool()

    # --------------------------------------------------------------- imagination

    @torch.no_grad()
    def reset_imagination(self, obs_tokens: Tensor) -> list[KVCache]:
        """Start imagined rollouts from ``obs_tokens [B, K]`` int64 (a first frame): fresh
        KV caches (one per layer, ``max_tokens`` long) are filled with it, kept for
        :meth:`step` and returned. Call ``eval()`` first for dropout-free rollouts."""
        k = self.config.tokens_per_obs
        if not isinstance(obs_tokens, Tensor) or obs_tokens.dim() != 2 or obs_tokens.shape[1] != k:
            got = list(obs_tokens.shape) if isinstance(obs_tokens, Tensor) else type(obs_tokens).__name__
            raise ValueError(f"reset_imagination expects obs_tokens [B, {k}] int64, got {got}.")
        weight = self.pos_embedding.weight
        caches = self.transformer.make_kv_caches(obs_tokens.shape[0], weight.device, weight.dtype)
        self(obs_tokens, caches)
        self._imagination = caches
        return caches

    @torch.no_grad()
    def step(self, action: Tensor, *, temperature: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One imagined environment step from the cached context.

        Feeds ``action [B]`` int64, then samples the ``K`` tokens of the next frame one
        at a time (each fed back through the KV caches): ``K + 1`` tokens per step, so
        ``max_blocks - 1`` steps fit after :meth:`reset_imagination`.

        Returns:
            ``(next_obs_tokens [B, K] int64, reward [B] float32 in {-1, 0, 1}, done [B] bool)``:
            the reward sign and the end are sampled from their heads as in IRIS (argmax
            only when ``greedy``), so a reward or an end the model gives 30% odds happens
            in 30% of the rollouts.
        """
        caches = self._imagination_caches(action)
        out = self(action.unsqueeze(1), caches)
        reward = sample_rewards(out.logits_rewards[:, -1].float(), greedy, generator)
        done = sample_ends(out.logits_ends[:, -1].float(), greedy, generator)
        tokens = []
        for _ in range(self.config.tokens_per_obs):
            token = sample_tokens(out.logits_obs[:, -1], temperature, greedy, generator)
            tokens.append(token)
            out = self(token.unsqueeze(1), caches)
        return torch.stack(tokens, dim=1), reward, done

    def _imagination_caches(self, action: Tensor) -> list[KVCache]:
        caches = self._imagination
        if caches is None:
            raise RuntimeError("IrisWorldModel.step: no imagination in progress; call reset_imagination(obs_tokens).")
        batch = caches[0].keys.shape[0]
        if not isinstance(action, Tensor) or action.shape != (batch,) or action.dtype != torch.int64:
            got = f"{list(action.shape)} {action.dtype}" if isinstance(action, Tensor) else type(action).__name__
            raise ValueError(f"IrisWorldModel.step expects action [{batch}] int64, got {got}.")
        used, per_step = caches[0].length, self.config.tokens_per_block
        if used + per_step > self.max_tokens:
            raise RuntimeError(f"IrisWorldModel.step: the imagination holds {used} tokens and a step adds "
                               f"{per_step}, past max_tokens={self.max_tokens} (max_blocks={self.config.max_blocks}); "
                               "call reset_imagination(obs_tokens) to start again.")
        return caches


__all__ = [
    "IrisWorldModel",
    "IrisWorldModelConfig",
    "WorldModelOutput",
    "reward_sign_labels",
    "rewards_from_logits",
    "sample_tokens",
]
