"""Straight-through samplers: DreamerV3's categorical with unimix and VTA's
Gumbel-sigmoid boundary sampler under segment constraints.

Every sampler takes either ``noise`` (uniform in [0, 1), the shape of the draws)
or a ``seed``; with the same noise tensor every implementation returns the same
samples. References (``*_ref``) are the specification.

Non-finite logits are not checked (that would synchronise the GPU); every path
propagates them as the reference does. ``st_categorical``: a row with a NaN or +inf
logit has NaN probabilities and a NaN sample; a -inf logit is a class of probability
``unimix / K``. ``boundary_sample``: a NaN logit gives a NaN mask at its step (and NaN
probs and log_probs there unless a segment limit fixed the step) and counts as no
boundary for the limits; +-inf logits are certain decisions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._dispatch import resolve_impl

Tensor = torch.Tensor

# Uniform noise is clamped to [UNIFORM_MIN, UNIFORM_MAX] so that the Gumbel and
# logistic transforms stay finite.
UNIFORM_MIN = 1e-20
UNIFORM_MAX = 1.0 - 2.0**-24
# Logit given to a boundary decision the constraints fixed: log(0.999 / 0.001).
CONSTRAINED_LOGIT = math.log(999.0)


def _compute_dtype(logits: Tensor) -> torch.dtype:
    """The references' maths dtype: fp32, or fp64 for fp64 inputs (so that gradcheck
    can test them); the fast paths always compute in fp32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _uniform(shape, like: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """The clamped uniforms (fp32 values) in the maths dtype of ``like``."""
    if noise is None:
        noise = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)
    return noise.float().clamp(UNIFORM_MIN, UNIFORM_MAX).to(_compute_dtype(like))


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
        ``(sample, probs)``, both ``[..., K]`` in the dtype of ``logits``; maths in fp32
        (fp64 for fp64 logits).
    """
    _check_categorical(logits, unimix, noise, None)
    classes = logits.shape[-1]
    probs = (1.0 - unimix) * torch.softmax(logits.to(_compute_dtype(logits)), dim=-1) + unimix / classes
    u = _uniform(logits.shape, logits, noise, generator)
    index = (torch.log(probs) - torch.log(-torch.log(u))).argmax(dim=-1)
    hard = F.one_hot(index, classes).to(probs.dtype)
    # Parenthesised so that the forward value is exactly one-hot (hard + 0).
    sample = hard + (probs - probs.detach())
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
        ``±CONSTRAINED_LOGIT``), in the dtype of ``logits``; maths in fp32 (fp64 for
        fp64 logits).
    """
    _check_boundary(logits, beta, seg_len, seg_num, noise, None)
    u = _uniform(logits.shape, logits, noise, generator)
    shifted = logits.to(u.dtype) + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(shifted / beta)
    forced, forbidden = boundary_constraints(shifted.detach() > 0, seg_len, seg_num)
    free = ~(forced | forbidden)
    hard = (forced | (free & (shifted > 0))).to(u.dtype)
    mask = hard + (soft - soft.detach()) * free
    probs = torch.where(free, soft, hard)
    fixed = torch.where(forced, CONSTRAINED_LOGIT, -CONSTRAINED_LOGIT)
    constrained = torch.where(free, logits.to(u.dtype), fixed)
    log_probs = torch.stack([F.logsigmoid(-constrained), F.logsigmoid(constrained)], dim=-1)
    dtype = logits.dtype
    return BoundarySample(mask.to(dtype), probs.to(dtype), log_probs.to(dtype))


# ------------------------------------------------------------------ public ops

_SEED_LIMIT = 2**63


def _check_floating(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}.")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: logits must be floating point, got dtype {logits.dtype}; "
                        "cast with .float().")


def _check_noise_and_seed(name: str, logits: Tensor, noise: Tensor | None, seed: int | None) -> None:
    """Noise like ``logits`` (same shape and device, floating) or a seed in [0, 2**63), not both."""
    if noise is not None and seed is not None:
        raise ValueError(f"{name}: pass either seed or noise, not both.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < _SEED_LIMIT):
        raise ValueError(f"{name}: seed must be an int in [0, 2**63), got {seed!r}.")
    if noise is None:
        return
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise TypeError(f"{name}: noise must be a floating tensor of uniforms in [0, 1).")
    if noise.shape != logits.shape:
        raise ValueError(f"{name}: noise has shape {list(noise.shape)}, logits {list(logits.shape)}; "
                         "they must match.")
    if noise.device != logits.device:
        raise ValueError(f"{name}: noise is on {noise.device}, logits on {logits.device}.")


def _check_categorical(logits: Tensor, unimix: float, noise: Tensor | None, seed: int | None) -> None:
    name = "st_categorical"
    _check_floating(name, logits)
    if logits.dim() < 1 or logits.numel() == 0:
        raise ValueError(f"{name}: logits must be [..., K] with K >= 1 and at least one row, "
                         f"got shape {list(logits.shape)}.")
    if not 0.0 <= float(unimix) < 1.0:
        raise ValueError(f"{name}: unimix={unimix} must lie in [0, 1).")
    _check_noise_and_seed(name, logits, noise, seed)


def _check_boundary(logits: Tensor, beta: float, seg_len: int, seg_num: int,
                    noise: Tensor | None, seed: int | None) -> None:
    name = "boundary_sample"
    _check_floating(name, logits)
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be [B, T], got shape {list(logits.shape)}.")
    if logits.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (B=0).")
    if not math.isfinite(float(beta)) or beta <= 0:
        raise ValueError(f"{name}: beta={beta} must be a finite temperature > 0.")
    for key, value in (("seg_len", seg_len), ("seg_num", seg_num)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: {key} must be an int, got {value!r}.")
    check_segment_limits(logits.shape[1], seg_len, seg_num)
    _check_noise_and_seed(name, logits, noise, seed)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def _kernel_seed(seed: int | None, noise: Tensor | None) -> int:
    """The Philox seed: ``seed``, or one drawn from torch's global CPU generator (so
    ``torch.manual_seed`` makes the draw reproducible); 0, unused and without a draw,
    when ``noise`` is given (so ``torch.compile`` traces the call without a graph break)."""
    if seed is not None:
        return seed
    if noise is not None:
        return 0
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def st_categorical(
    logits: Tensor,
    unimix: float = 0.01,
    *,
    seed: int | None = None,
    noise: Tensor | None = None,
    impl: str = "auto",
) -> CategoricalSample:
    """Straight-through one-hot sample with unimix (DreamerV3's discrete latents).

    Same maths as :func:`st_categorical_ref`: ``probs = (1 - unimix) softmax(logits) +
    unimix / K``; ``sample = one_hot(argmax(log probs - log(-log u))) + probs -
    sg(probs)``, so ``d sample / d probs = I`` and ``d L / d logits = (1 - unimix) *
    p * (g - sum_k g_k p_k)`` with ``p = softmax(logits)``, ``g = dL/dsample + dL/dprobs``.

    Args:
        logits: ``[..., K]`` floating (fp32/bf16/fp16/fp64; maths in fp32), e.g.
            ``[B, 32, 32]``.
        unimix: uniform mixing weight in [0, 1).
        seed: Philox seed in [0, 2**63) for the noise drawn inside the kernel (the
            reference path seeds a ``torch.Generator`` with it instead).
        noise: uniforms ``[..., K]`` in [0, 1) on the device of ``logits``; with the
            same noise every path returns the same sample. Neither seed nor noise: a
            seed is drawn from torch's global generator.
        impl: "auto" (Triton on CUDA, the reference on CPU), "triton" or "ref".
    Returns:
        :class:`CategoricalSample` ``(sample, probs)``, both ``[..., K]`` in the dtype
        of ``logits``; the sample is exactly one-hot in the forward pass.
    """
    _check_categorical(logits, unimix, noise, seed)
    path = resolve_impl("st_categorical", impl, logits.device, triton=True, cpp_symbol=None, cpu_auto="ref")
    if path == "ref":
        return st_categorical_ref(logits, unimix, noise, _generator(seed, logits.device))
    from . import _sampling_custom as custom

    sample, probs = custom.st_categorical_fwd(logits, float(unimix), noise, _kernel_seed(seed, noise))
    return CategoricalSample(sample, probs)


def boundary_sample(
    logits: Tensor,
    beta: float,
    seg_len: int,
    seg_num: int,
    *,
    seed: int | None = None,
    noise: Tensor | None = None,
    impl: str = "auto",
) -> BoundarySample:
    """VTA's Gumbel-sigmoid boundary sampler under segment limits (hard forward,
    straight-through soft backward); same outputs as :func:`boundary_sample_ref`.

    ``y = sigmoid((logits + log u - log(1 - u)) / beta)``; the proposal ``logits +
    logistic > 0`` is an exact Bernoulli(sigmoid(logits)) draw; step 0 starts a
    segment, a boundary is forced once the current segment has ``seg_len`` steps and
    forbidden when too few segments would remain (see :func:`boundary_constraints`).

    Args:
        logits: boundary log-odds ``[B, T]``, floating (maths in fp32).
        beta: temperature > 0. seg_len, seg_num: the longest segment and the most
            segments (``seg_len * seg_num >= T``).
        seed, noise: as in :func:`st_categorical` (noise ``[B, T]``).
        impl: "auto" (Triton on CUDA, C++ on CPU, else the reference), "triton",
            "cpp" or "ref".
    Returns:
        :class:`BoundarySample` ``(mask [B, T], probs [B, T], log_probs [B, T, 2])``
        in the dtype of ``logits``.
    """
    _check_boundary(logits, beta, seg_len, seg_num, noise, seed)
    path = resolve_impl("boundary_sample", impl, logits.device, triton=True,
                        cpp_symbol="boundary_sample_forward", cpu_auto="cpp")
    if path == "ref":
        return boundary_sample_ref(logits, beta, seg_len, seg_num, noise,
                                   _generator(seed, logits.device))
    from . import _sampling_custom as custom

    op = custom.BOUNDARY_OPS[path]
    mask, probs, log_probs, _u, _free = op(logits, noise, _kernel_seed(seed, noise), float(beta),
                                           seg_len, seg_num)
    return BoundarySample(mask, probs, log_probs)
