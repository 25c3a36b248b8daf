"""Triton kernels of the straight-through samplers (see ``worldmodels.ops.sampling``).

* ``st_categorical``: one program per block of rows of K classes. The forward pass
  does softmax (fp32), unimix, Gumbel-max and writes the one-hot sample and the
  probabilities in one pass; the backward pass recomputes the softmax from the
  logits and writes ``grad_logits = (1 - unimix) * p * (g - sum(g * p))``.
* ``boundary_sample``: one program per block of rows, a loop over the T steps that
  carries the segment count and the current segment's length; the backward pass is
  elementwise.

Uniform noise is either read from a tensor or drawn with Philox inside the kernel
(``tl.rand(seed, i)``, ``i`` the element's linear index in the row-major input), and
clamped to ``[UNIFORM_MIN, UNIFORM_MAX]`` like the references do. Only jit functions
and their launchers live here; this module is imported lazily by the ops (Triton's
interpreter switch, ``TRITON_INTERPRET``, is read when the kernels are decorated).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worldmodels.ops.sampling import CONSTRAINED_LOGIT, UNIFORM_MAX, UNIFORM_MIN

_U_MIN = tl.constexpr(UNIFORM_MIN)
_U_MAX = tl.constexpr(UNIFORM_MAX)
_FIXED_LOGIT = tl.constexpr(CONSTRAINED_LOGIT)


def _interpreting(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


# --------------------------------------------------------------------------- helpers


@triton.jit
def _uniform(noise_ptr, seed, offsets, valid, HAS_NOISE: tl.constexpr):
    """Uniform fp32 in [UNIFORM_MIN, UNIFORM_MAX] at int64 ``offsets``."""
    if HAS_NOISE:
        u = tl.load(noise_ptr + offsets, mask=valid, other=0.5).to(tl.float32)
    else:
        u = tl.rand(seed, offsets)
    return tl.minimum(tl.maximum(u, _U_MIN), _U_MAX)


@triton.jit
def _log_sigmoid_pair(c):
    """(log sigmoid(-c), log sigmoid(c)) = min(+-c, 0) - log1p(exp(-|c|)), with a
    series for log1p of small arguments."""
    e = tl.exp(-tl.abs(c))
    tail = tl.where(e < 1e-3, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.minimum(-c, 0.0) - tail, tl.minimum(c, 0.0) - tail


@triton.jit
def _logistic_shift(x, u):
    """``x + log u - log(1 - u)``: the logit plus logistic noise."""
    return x + tl.log(u) - tl.log(1.0 - u)


# ------------------------------------------------------------------ st_categorical


@triton.jit
def _softmax_rows(logits_ptr, offsets, valid, in_class):
    """Row softmax in fp32 of a [BLOCK_R, BLOCK_K] tile (padding classes get 0)."""
    x = tl.load(logits_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    x = tl.where(in_class, x, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _st_categorical_fwd_kernel(
    logits_ptr, noise_ptr, sample_ptr, probs_ptr, rows, seed, keep, floor,
    K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, HAS_NOISE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_K)
    in_class = col[None, :] < K
    valid = (row[:, None] < rows) & in_class
    offsets = row[:, None] * K + col[None, :]
    probs = keep * _softmax_rows(logits_ptr, offsets, valid, in_class) + floor
    u = _uniform(noise_ptr, seed, offsets, valid, HAS_NOISE)
    score = tl.log(probs) - tl.log(-tl.log(u))
    # NaN/inf logits make the row's probs NaN: its argmax is then arbitrary, its sample NaN
    score = tl.where(in_class & (score == score), score, float("-inf"))
    index = tl.argmax(score, axis=1, tie_break_left=True)
    hard = (col[None, :] == index[:, None]).to(tl.float32)
    hard = tl.where(probs == probs, hard, probs)
    tl.store(sample_ptr + offsets, hard.to(sample_ptr.dtype.element_ty), mask=valid)
    tl.store(probs_ptr + offsets, probs.to(probs_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _st_categorical_bwd_kernel(
    logits_ptr, grad_sample_ptr, grad_probs_ptr, grad_logits_ptr, rows, keep,
    K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_GS: tl.constexpr, HAS_GP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_K)
    in_class = col[None, :] < K
    valid = (row[:, None] < rows) & in_class
    offsets = row[:, None] * K + col[None, :]
    p = _softmax_rows(logits_ptr, offsets, valid, in_class)
    g = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    if HAS_GS:
        g += tl.load(grad_sample_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    if HAS_GP:
        g += tl.load(grad_probs_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    dot = tl.sum(g * p, axis=1)
    grad = keep * p * (g - dot[:, None])
    tl.store(grad_logits_ptr + offsets, grad.to(grad_logits_ptr.dtype.element_ty), mask=valid)


def _categorical_blocks(classes: int, tensor: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_K, num_warps): ~2K elements per program on a GPU; under the
    interpreter, whose cost is per program and per op, tiles of ~64K elements."""
    block_k = triton.next_power_of_2(classes)
    if _interpreting(tensor):
        return max(1, (1 << 16) // block_k), block_k, 4
    block_r = max(1, min(128, 2048 // block_k))
    return block_r, block_k, 4 if block_r * block_k <= 4096 else 8


def st_categorical_forward(logits: torch.Tensor, unimix: float, noise: torch.Tensor | None,
                           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. ``logits [..., K]`` (made contiguous), ``noise`` the
    same shape or None (Philox with ``seed``). Returns ``(sample, probs)`` like logits."""
    logits = logits.contiguous()
    classes = logits.shape[-1]
    rows = logits.numel() // classes
    sample, probs = torch.empty_like(logits), torch.empty_like(logits)
    if noise is not None:
        noise = noise.contiguous()
    block_r, block_k, warps = _categorical_blocks(classes, logits)
    grid = (triton.cdiv(rows, block_r),)
    _st_categorical_fwd_kernel[grid](
        logits, noise if noise is not None else logits, sample, probs, rows, seed,
        1.0 - unimix, unimix / classes,
        K=classes, BLOCK_R=block_r, BLOCK_K=block_k, HAS_NOISE=noise is not None, num_warps=warps,
    )
    return sample, probs


def st_categorical_backward(grad_sample: torch.Tensor | None, grad_probs: torch.Tensor | None,
                            logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Launch the backward kernel; missing gradients count as zero."""
    logits = logits.contiguous()
    classes = logits.shape[-1]
    rows = logits.numel() // classes
    grad_logits = torch.empty_like(logits)
    gs = grad_sample.contiguous() if grad_sample is not None else None
    gp = grad_probs.contiguous() if grad_probs is not None else None
    block_r, block_k, warps = _categorical_blocks(classes, logits)
    grid = (triton.cdiv(rows, block_r),)
    _st_categorical_bwd_kernel[grid](
        logits, gs if gs is not None else logits, gp if gp is not None else logits,
        grad_logits, rows, 1.0 - unimix,
        K=classes, BLOCK_R=block_r, BLOCK_K=block_k,
        HAS_GS=gs is not None, HAS_GP=gp is not None, num_warps=warps,
    )
    return grad_logits


# ----------------------------------------------------------------- boundary_sample


@triton.jit
def _boundary_fwd_kernel(
    logits_ptr, noise_ptr, mask_ptr, probs_ptr, log_probs_ptr, soft_ptr, free_ptr,
    B, T, seed, beta, seg_len, seg_num,
    BLOCK_B: tl.constexpr, HAS_NOISE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    valid = row < B
    count = tl.zeros((BLOCK_B,), dtype=tl.int32)   # segments so far
    length = tl.zeros((BLOCK_B,), dtype=tl.int32)  # steps in the current segment
    for t in range(T):
        offsets = row * T + t
        x = tl.load(logits_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        u = _uniform(noise_ptr, seed, offsets, valid, HAS_NOISE)
        shifted = _logistic_shift(x, u)
        soft = tl.sigmoid(shifted / beta)
        forced = (length >= seg_len) | (t == 0)
        forbidden = (~forced) & ((seg_num - count) * seg_len < T - t)
        free = ~(forced | forbidden)
        boundary = forced | (free & (shifted > 0))
        hard = boundary.to(tl.float32)
        probs = tl.where(free, soft, hard)
        mask = tl.where(x != x, x, hard)  # a NaN logit stays visible, as in the reference
        c = tl.where(free, x, tl.where(forced, _FIXED_LOGIT, -_FIXED_LOGIT))
        lp_no, lp_yes = _log_sigmoid_pair(c)
        out_ty = mask_ptr.dtype.element_ty
        tl.store(mask_ptr + offsets, mask.to(out_ty), mask=valid)
        tl.store(probs_ptr + offsets, probs.to(out_ty), mask=valid)
        tl.store(log_probs_ptr + 2 * offsets, lp_no.to(out_ty), mask=valid)
        tl.store(log_probs_ptr + 2 * offsets + 1, lp_yes.to(out_ty), mask=valid)
        tl.store(soft_ptr + offsets, probs, mask=valid)
        tl.store(free_ptr + offsets, free, mask=valid)
        count += boundary.to(tl.int32)
        length = tl.where(boundary, 1, length + 1)


@triton.jit
def _boundary_bwd_kernel(
    grad_mask_ptr, grad_probs_ptr, grad_log_probs_ptr, logits_ptr, soft_ptr, free_ptr,
    grad_logits_ptr, N, beta,
    BLOCK: tl.constexpr, HAS_GM: tl.constexpr, HAS_GP: tl.constexpr, HAS_GLP: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < N
    x = tl.load(logits_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    soft = tl.load(soft_ptr + offsets, mask=valid, other=0.5)
    free = tl.load(free_ptr + offsets, mask=valid, other=0).to(tl.int1)
    g = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_GM:
        g += tl.load(grad_mask_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    if HAS_GP:
        g += tl.load(grad_probs_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    grad = g * (1.0 - soft) * soft / beta
    if HAS_GLP:
        g0 = tl.load(grad_log_probs_ptr + 2 * offsets, mask=valid, other=0.0).to(tl.float32)
        g1 = tl.load(grad_log_probs_ptr + 2 * offsets + 1, mask=valid, other=0.0).to(tl.float32)
        e = tl.exp(-tl.abs(x))  # sigmoid(+-x) from one exp
        big, small = 1.0 / (1.0 + e), e / (1.0 + e)
        grad += g1 * tl.where(x >= 0, small, big) - g0 * tl.where(x >= 0, big, small)
    grad = tl.where(free, grad, 0.0)
    tl.store(grad_logits_ptr + offsets, grad.to(grad_logits_ptr.dtype.element_ty), mask=valid)


def boundary_forward(logits: torch.Tensor, noise: torch.Tensor | None, seed: int, beta: float,
                     seg_len: int, seg_num: int):
    """Launch the forward scan. ``logits [B, T]``; returns ``(mask, probs, log_probs
    [B, T, 2], soft [B, T] (probs in fp32, for the backward pass), free bool [B, T])``."""
    logits = logits.contiguous()
    batch, steps = logits.shape
    mask, probs = torch.empty_like(logits), torch.empty_like(logits)
    log_probs = logits.new_empty(batch, steps, 2)
    soft = torch.empty(batch, steps, device=logits.device, dtype=torch.float32)
    free = torch.empty(batch, steps, device=logits.device, dtype=torch.bool)
    if noise is not None:
        noise = noise.contiguous()
    block_b = min(1 << 17 if _interpreting(logits) else 64, triton.next_power_of_2(batch))
    grid = (triton.cdiv(batch, block_b),)
    _boundary_fwd_kernel[grid](
        logits, noise if noise is not None else logits, mask, probs, log_probs, soft, free,
        batch, steps, seed, beta, seg_len, seg_num,
        BLOCK_B=block_b, HAS_NOISE=noise is not None, num_warps=1 if block_b <= 64 else 4,
    )
    return mask, probs, log_probs, soft, free


def boundary_backward(grad_mask, grad_probs, grad_log_probs, logits: torch.Tensor,
                      soft: torch.Tensor, free: torch.Tensor, beta: float) -> torch.Tensor:
    """Launch the elementwise backward; missing gradients count as zero."""
    logits = logits.contiguous()
    numel = logits.numel()
    grad_logits = torch.empty_like(logits)
    grads = [g.contiguous() if g is not None else None for g in (grad_mask, grad_probs, grad_log_probs)]
    block = 1 << 17 if _interpreting(logits) else 1024
    grid = (triton.cdiv(numel, block),)
    _boundary_bwd_kernel[grid](
        *(g if g is not None else logits for g in grads), logits, soft.contiguous(), free.contiguous(),
        grad_logits, numel, beta,
        BLOCK=block, HAS_GM=grads[0] is not None, HAS_GP=grads[1] is not None,
        HAS_GLP=grads[2] is not None, num_warps=4,
    )
    return grad_logits
