"""Straight-through samplers: DreamerV3's categorical with unimix and VTA's
Gumbel-sigmoid boundary sampler under segment constraints.

Every sampler takes either ``noise`` (uniform in [0, 1), the shape of the draws)
or a ``seed``; with the same noise tensor every implementation returns the same
samples. References (``*_ref``) are the specification.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Uniform noise is clamped to [UNIFORM_MIN, UNIFORM_MAX] so that the Gumbel and
# logistic transforms stay finite.
UNIFORM_MIN = 1e-20
UNIFORM_MAX = 1.0 - 2.0**-24
# Logit given to a boundary decision the constraints fixed: log(0.999 / 0.001).
CONSTRAINED_LOGIT = math.log(999.0)


def _uniform(shape, like: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is None:
        noise = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)
    return noise.float().clamp(UNIFORM_MIN, UNIFORM_MAX)


class CategoricalSample(NamedTuple):
    sample: Tensor  # one-hot forward, d sample / d probs = identity backward
    probs: Tensor   # the unimix probabilities


def st_categorical_ref(
    logits: Tensor,
    unimix: float = 0.01,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CategoricalSample:
    """Straight-through one-hot sample of ``Categorical(probs)`` with unimix.

    ``probs = (1 - unimix) * softmax(logits) + unimix / K``; the index is
    ``argmax(log probs + g)`` with Gumbel noise ``g = -log(-log(u))`` (Gumbel-max, an
    exact sample); the output is ``one_hot + probs - stop_gradient(probs)``.

    Args:
        logits: ``[..., K]`` floating (e.g. ``[B, 32, 32]`` for DreamerV3's latents).
        unimix: uniform mixing weight in [0, 1).
        noise: uniform ``[..., K]`` in [0, 1), or None to draw it (``generator``).
    Returns:
        ``(sample, probs)``, both ``[..., K]`` in the dtype of ``logits``; maths in fp32.
    """
    classes = logits.shape[-1]
    probs = (1.0 - unimix) * torch.softmax(logits.float(), dim=-1) + unimix / classes
    u = _uniform(logits.shape, logits, noise, generator)
    index = (torch.log(probs) - torch.log(-torch.log(u))).argmax(dim=-1)
    hard = F.one_hot(index, classes).to(probs.dtype)
    sample = hard + probs - probs.detach()
    return CategoricalSample(sample.to(logits.dtype), probs.to(logits.dtype))


class BoundarySample(NamedTuple):
    mask: Tensor       # [B, T] hard 0/1 forward; straight-through where not constrained
    probs: Tensor      # [B, T] relaxed sample sigmoid((logit + logistic noise) / beta)
    log_probs: Tensor  # [B, T, 2] log p(no boundary), log p(boundary) after constraints


def check_segment_limits(seq_len: int, seg_len: int, seg_num: int) -> None:
    """Raise ValueError when no mask of ``seq_len`` steps can satisfy the limits."""
    if seq_len < 1:
        raise ValueError(f"the sequence must have T >= 1 steps, got T={seq_len}.")
    if seg_len < 1 or seg_num < 1:
        raise ValueError(f"seg_len={seg_len} and seg_num={seg_num} must both be >= 1.")
    if seg_len * seg_num < seq_len:
        raise ValueError(
            f"seg_len={seg_len} x seg_num={seg_num} = {seg_len * seg_num} < T={seq_len}: "
            "no segmentation of the sequence satisfies both limits."
        )


def boundary_constraints(proposal: Tensor, seg_len: int, seg_num: int) -> tuple[Tensor, Tensor]:
    """Where the segment limits force or forbid a boundary, given proposed decisions.

    Scans ``t = 0 .. T-1`` with the count of segments so far and the length of the
    current one. Step 0 always starts a segment. A boundary is forced when the
    current segment already has ``seg_len`` steps, and forbidden when starting one
    would leave too few segments to cover the rest: ``(seg_num - count) * seg_len <
    T - t`` (this includes ``count == seg_num``). Elsewhere ``proposal`` decides.

    Args:
        proposal: bool ``[B, T]``.
    Returns:
        ``(forced, forbidden)``, bool ``[B, T]``, disjoint.
    """
    batch, steps = proposal.shape
    check_segment_limits(steps, seg_len, seg_num)
    forced = torch.zeros_like(proposal, dtype=torch.bool)
    forbidden = torch.zeros_like(forced)
    count = torch.zeros(batch, dtype=torch.long, device=proposal.device)
    length = torch.zeros_like(count)
    for t in range(steps):
        if t == 0:
            force_t = torch.ones_like(forced[:, 0])
            forbid_t = torch.zeros_like(force_t)
        else:
            force_t = length >= seg_len
            forbid_t = ~force_t & ((seg_num - count) * seg_len < steps - t)
        forced[:, t], forbidden[:, t] = force_t, forbid_t
        boundary = force_t | (~forbid_t & proposal[:, t])
        count = count + boundary.long()
        length = torch.where(boundary, torch.ones_like(length), length + 1)
    return forced, forbidden


def boundary_sample_ref(
    logits: Tensor,
    beta: float,
    seg_len: int,
    seg_num: int,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> BoundarySample:
    """VTA's boundary sampler: Gumbel-sigmoid with temperature ``beta``, hard forward
    and soft backward, under the segment limits of :func:`boundary_constraints`.

    With logistic noise ``l = log u - log(1 - u)`` (the difference of two Gumbels),
    the relaxed sample is ``y = sigmoid((logits + l) / beta)`` and the proposal is
    ``logits + l > 0`` (an exact Bernoulli(sigmoid(logits)) draw). The mask is the
    constrained decision, plus ``y - stop_gradient(y)`` where no constraint applied.

    Args:
        logits: boundary log-odds ``[B, T]`` (floating).
        beta: temperature > 0.
        seg_len: the longest segment; seg_num: the most segments per sequence.
        noise: uniform ``[B, T]`` in [0, 1), or None to draw it (``generator``).
    Returns:
        :class:`BoundarySample` with ``mask``, ``probs`` ``[B, T]`` and ``log_probs``
        ``[B, T, 2]`` (from the logits with constrained steps set to
        ``±CONSTRAINED_LOGIT``), in the dtype of ``logits``.
    """
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0.")
    u = _uniform(logits.shape, logits, noise, generator)
    shifted = logits.float() + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(shifted / beta)
    forced, forbidden = boundary_constraints(shifted.detach() > 0, seg_len, seg_num)
    free = ~(forced | forbidden)
    hard = (forced | (free & (shifted > 0))).float()
    mask = hard + (soft - soft.detach()) * free
    probs = torch.where(free, soft, hard)
    fixed = torch.where(forced, CONSTRAINED_LOGIT, -CONSTRAINED_LOGIT)
    constrained = torch.where(free, logits.float(), fixed)
    log_probs = torch.stack([F.logsigmoid(-constrained), F.logsigmoid(constrained)], dim=-1)
    dtype = logits.dtype
    return BoundarySample(mask.to(dtype), probs.to(dtype), log_probs.to(dtype))
