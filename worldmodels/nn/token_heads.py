"""Pieces shared by the transformer world models over tokens (IRIS, Δ-IRIS): the causal
transformer config a world-model config describes, reward-sign classes, and sampling
of categorical heads."""

from __future__ import annotations

import torch

from .transformer import TransformerConfig

Tensor = torch.Tensor
REWARD_CLASSES = 3
END_CLASSES = 2


def causal_transformer_config(cfg) -> TransformerConfig:
    """The causal :class:`TransformerConfig` a world-model config describes: ``cfg`` has
    ``tokens_per_block``, ``max_blocks``, ``num_layers``, ``num_heads``, ``embed_dim``, the
    three dropout rates and ``impl``."""
    return TransformerConfig(
        tokens_per_block=cfg.tokens_per_block, max_blocks=cfg.max_blocks, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, embed_dim=cfg.embed_dim, embed_pdrop=cfg.embed_pdrop,
        resid_pdrop=cfg.resid_pdrop, attn_pdrop=cfg.attn_pdrop, attention="causal", impl=cfg.impl)


def reward_sign_labels(rewards: Tensor) -> Tensor:
    """``sign(r) + 1`` as int64 classes ``{0, 1, 2}`` for rewards ``{< 0, 0, > 0}``."""
    return (torch.sign(rewards) + 1).long()


def rewards_from_logits(logits: Tensor) -> Tensor:
    """Reward-sign logits ``[..., 3]`` -> the argmax class mapped to ``{-1., 0., 1.}`` ``[...]``."""
    return (logits.argmax(-1) - 1).float()


def sample_rewards(logits: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Reward-sign logits ``[B, 3]`` -> float ``[B]`` in ``{-1, 0, 1}``: a sample of the
    class (IRIS and Δ-IRIS sample imagined rewards: a reward given 30% odds is then drawn
    30% of the time rather than never), or the argmax when ``greedy``."""
    return (sample_tokens(logits, 1.0, greedy, generator) - 1).float()


def sample_ends(logits: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """End logits ``[B, 2]`` -> bool ``[B]``: a sample (as IRIS and Δ-IRIS draw imagined
    episode ends, so an end the model gives 20% odds happens in 20% of the rollouts), or
    the argmax when ``greedy``."""
    return sample_tokens(logits, 1.0, greedy, generator).bool()


def sample_tokens(logits: Tensor, temperature: float = 1.0, greedy: bool = False,
                  generator: torch.Generator | None = None) -> Tensor:
    """``logits [B, C]`` -> int64 ``[B]``: the argmax when ``greedy``, else a sample of
    ``softmax(logits / temperature)`` drawn with ``generator``."""
    if greedy:
        return logits.argmax(-1)
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (or pass greedy=True).")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


__all__ = ["END_CLASSES", "REWARD_CLASSES", "causal_transformer_config", "reward_sign_labels", "rewards_from_logits",
           "sample_ends", "sample_rewards", "sample_tokens"]
