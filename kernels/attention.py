"""Triton kernels of frame-block-causal attention (see ``worldmodels.ops.attention``).

Query ``i`` (absolute position ``kv_offset + i``) sees key ``j`` iff ``j // block <=
(kv_offset + i) // block``. FlashAttention-2 style: no ``T x T`` matrix is stored.

* ``_fwd_kernel``: one program per (query tile, batch x head). It streams the key
  tiles up to the frontier of its last query (tiles wholly above it are skipped),
  keeps the running row maximum and sum (online softmax, base 2) and stores the output
  and the row logsumexp (natural log, fp32). Tiles that every row sees fully are run
  without the mask. With ``kv_offset > 0`` and no logsumexp it is the decode kernel:
  the newest queries against a key/value cache read in place through its strides.
* Backward: ``_delta_kernel`` computes ``delta = rowsum(dO * O)``; ``_dkdv_kernel``
  (one program per key tile, looping over the query tiles that see it) recomputes
  ``P = exp(S - lse)`` and accumulates ``dV = P^T dO`` and ``dK = scale dS^T Q`` with
  ``dS = P (dP - delta)``, ``dP = dO V^T``; ``_dq_kernel`` (one program per query
  tile) accumulates ``dQ = scale dS K``.

Operands are read in their dtype (fp16/bf16/fp32); scores, softmax statistics and
accumulators are fp32; ``P`` and ``dS`` are cast to the operand dtype for the second
products, as in FlashAttention. fp32 products use IEEE precision (no TF32). Head dims
are powers of two in [16, 128]; any sequence length (tail tiles are masked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# The same constants inside @triton.jit code, which reads only constexpr globals.
LOG2E_C = tl.constexpr(LOG2E)
LN2_C = tl.constexpr(LN2)
HEAD_DIMS = (16, 32, 64, 128)


# --------------------------------------------------------------------------- helpers


@triton.jit
def _load_rows(base, rows, n_rows, stride_t, cols):
    """The ``[len(rows), HEAD_DIM]`` tile ``base[rows, cols]`` (rows past ``n_rows`` are 0)."""
    return tl.load(base + rows[:, None] * stride_t + cols[None, :], mask=(rows < n_rows)[:, None], other=0.0)


@triton.jit
def _load_cols(base, rows, n_rows, stride_t, cols):
    """The transposed tile ``base[rows, cols]^T``: ``[HEAD_DIM, len(rows)]``."""
    return tl.load(base + rows[None, :] * stride_t + cols[:, None], mask=(rows < n_rows)[None, :], other=0.0)


@triton.jit
def _dot(a, b, WIDEN: tl.constexpr):
    """``a @ b`` accumulated in fp32. ``WIDEN``: cast the operands to fp32 first (exact for
    bf16), for Triton's NumPy interpreter, which has no bf16 products."""
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _visible(q_pos, keys, n_keys, block):
    """``[len(q_pos), len(keys)]``: key ``j`` is in the frame of query ``i`` or before it."""
    return ((keys[None, :] // block) <= (q_pos[:, None] // block)) & (keys < n_keys)[None, :]


@triton.jit
def _frontier(pos, n_keys, block):
    """One past the last key that absolute position ``pos`` sees."""
    return tl.minimum(n_keys, (pos // block + 1) * block)


# --------------------------------------------------------------------------- forward


@triton.jit
def _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sk_t, sv_t, q_pos, lo, hi, n_keys, block, qk_scale,
               cols, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, WIDEN: tl.constexpr):
    """Online softmax over key tiles ``[lo, hi)``; scores in base-2 units."""
    for start in range(lo, hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k_t = _load_cols(k_base, keys, n_keys, sk_t, cols)
        s = _dot(q, k_t, WIDEN) * qk_scale
        if MASKED:
            s = tl.where(_visible(q_pos, keys, n_keys, block), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, keys, n_keys, sv_t, cols)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, WIDEN)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
    H, Tq, Tk, kv_offset, block, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STORE_LSE: tl.constexpr,
    WIDEN: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + b * sq_b + h * sq_h, rows, Tq, sq_t, cols)
    q_pos = kv_offset + rows
    first = kv_offset + pid_m * BLOCK_M
    last = kv_offset + tl.minimum((pid_m + 1) * BLOCK_M, Tq) - 1
    full_end = _frontier(first, Tk, block) // BLOCK_N * BLOCK_N
    kv_end = _frontier(last, Tk, block)
    k_base, v_base = K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sk_t, sv_t, q_pos, 0, full_end, Tk,
                               block, qk_scale, cols, BLOCK_N, False, WIDEN)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, k_base, v_base, sk_t, sv_t, q_pos, full_end, kv_end, Tk,
                               block, qk_scale, cols, BLOCK_N, True, WIDEN)
    out = acc / l_i[:, None]
    o_ptrs = O + b * so_b + h * so_h + rows[:, None] * so_t + cols[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(rows < Tq)[:, None])
    if STORE_LSE:
        lse = (m_i + tl.log2(l_i)) * LN2_C
        tl.store(LSE + bh.to(tl.int64) * Tq + rows, lse, mask=rows < Tq)


# -------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(O, DO, DELTA, so_b, so_h, so_t, sd_b, sd_h, sd_t, H, T,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    o = _load_rows(O + b * so_b + h * so_h, rows, T, so_t, cols).to(tl.float32)
    do = _load_rows(DO + b * sd_b + h * sd_h, rows, T, sd_t, cols).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * T + rows, tl.sum(o * do, 1), mask=rows < T)


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sd_b, sd_h, sd_t,
    H, T, block, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDEN: tl.constexpr,
):
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, HEAD_DIM)
    k = _load_rows(K + b * sk_b + h * sk_h, keys, T, sk_t, cols)
    v = _load_rows(V + b * sv_b + h * sv_h, keys, T, sv_t, cols)
    q_base, do_base = Q + b * sq_b + h * sq_h, DO + b * sd_b + h * sd_h
    stats = bh.to(tl.int64) * T
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    q_lo = (pid_n * BLOCK_N) // block * block // BLOCK_M * BLOCK_M  # first query tile that sees a key here
    for start in range(q_lo, T, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        q_t = _load_cols(q_base, rows, T, sq_t, cols)
        do = _load_rows(do_base, rows, T, sd_t, cols)
        lse = tl.load(LSE + stats + rows, mask=rows < T, other=0.0)
        delta = tl.load(DELTA + stats + rows, mask=rows < T, other=0.0)
        s_t = _dot(k, q_t, WIDEN) * qk_scale
        seen = (keys[:, None] // block <= rows[None, :] // block) & (rows < T)[None, :]
        p_t = tl.exp2(tl.where(seen, s_t - lse[None, :] * LOG2E_C, float("-inf")))
        dv += _dot(p_t.to(do.dtype), do, WIDEN)
        dp_t = _dot(v, tl.trans(do), WIDEN)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q_t.dtype), tl.trans(q_t), WIDEN)
    out_rows = bh.to(tl.int64) * T * HEAD_DIM + keys[:, None] * HEAD_DIM + cols[None, :]
    valid = (keys < T)[:, None]
    tl.store(DK + out_rows, (dk * sm_scale).to(DK.dtype.element_ty), mask=valid)
    tl.store(DV + out_rows, dv.to(DV.dtype.element_ty), mask=valid)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sd_b, sd_h, sd_t,
    H, T, block, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDEN: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + b * sq_b + h * sq_h, rows, T, sq_t, cols)
    do = _load_rows(DO + b * sd_b + h * sd_h, rows, T, sd_t, cols)
    stats = bh.to(tl.int64) * T
    lse2 = tl.load(LSE + stats + rows, mask=rows < T, other=0.0) * LOG2E_C
    delta = tl.load(DELTA + stats + rows, mask=rows < T, other=0.0)
    k_base, v_base = K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
    kv_end = _frontier(tl.minimum((pid_m + 1) * BLOCK_M, T) - 1, T, block)
    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    for start in range(0, kv_end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k_t = _load_cols(k_base, keys, T, sk_t, cols)
        v_t = _load_cols(v_base, keys, T, sv_t, cols)
        s = _dot(q, k_t, WIDEN) * qk_scale
        p = tl.exp2(tl.where(_visible(rows, keys, T, block), s - lse2[:, None], float("-inf")))
        dp = _dot(do, v_t, WIDEN)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k_t.dtype), tl.trans(k_t), WIDEN)
    out_rows = stats * HEAD_DIM + rows[:, None] * HEAD_DIM + cols[None, :]
    tl.store(DQ + out_rows, (dq * sm_scale).to(DQ.dtype.element_ty), mask=(rows < T)[:, None])


# ------------------------------------------------------------------------- launchers


def _interpreting(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its last dim is dense (any other strides are passed to the
    kernels), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _launch_options(x: torch.Tensor, head_dim: int) -> dict:
    if _interpreting(x):
        return {}
    wide = head_dim == 128 or x.dtype == torch.float32
    return {"num_warps": 4, "num_stages": 2 if wide else 3}


def _widen(x: torch.Tensor) -> bool:
    """Whether the products are taken in fp32 (bf16 under the interpreter, see ``_dot``)."""
    return _interpreting(x) and x.dtype == torch.bfloat16


def _fwd_tiles_for(x: torch.Tensor, head_dim: int, queries: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N). Under the interpreter, small unequal tiles so that tests
    cross tile edges with few programs."""
    if _interpreting(x):
        return 32, 16
    block_m = 64 if head_dim == 128 or x.dtype == torch.float32 else 128
    return min(block_m, max(16, triton.next_power_of_2(queries))), 64 if head_dim <= 64 else 32


def _bwd_tiles_for(x: torch.Tensor, head_dim: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the backward kernels (the owned tile is the larger)."""
    if _interpreting(x):
        return 16, 32
    return (32, 64) if head_dim <= 64 and x.dtype != torch.float32 else (16, 32)


def _launch_fwd(q, k, v, out, lse, tk: int, kv_offset: int, block: int, scale: float) -> None:
    batch, heads, tq, head_dim = q.shape
    block_m, block_n = _fwd_tiles_for(q, head_dim, tq)
    grid = (triton.cdiv(tq, block_m), batch * heads)
    _fwd_kernel[grid](
        q, k, v, out, lse if lse is not None else out,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        heads, tq, tk, kv_offset, block, scale * LOG2E,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, STORE_LSE=lse is not None,
        WIDEN=_widen(q), **_launch_options(q, head_dim),
    )


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Training forward: ``q, k, v [B, H, T, Dh]`` (any strides). Returns ``(out
    [B, H, T, Dh] contiguous, in q's dtype; lse [B, H, T] fp32)``."""
    q, k, v = (_rows_contiguous(x) for x in (q, k, v))
    batch, heads, steps, _ = q.shape
    out = q.new_empty(q.shape)
    lse = torch.empty(batch, heads, steps, device=q.device, dtype=torch.float32)
    _launch_fwd(q, k, v, out, lse, steps, 0, block, scale)
    return out, lse


def attention_decode_forward(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                             cache_len: int, block: int, scale: float) -> torch.Tensor:
    """The newest ``Tq = q.shape[2]`` queries at positions ``cache_len - Tq ..
    cache_len - 1`` against the first ``cache_len`` rows of the caches (read in
    place). Returns ``out [B, H, Tq, Dh]`` contiguous."""
    q, k_cache, v_cache = (_rows_contiguous(x) for x in (q, k_cache, v_cache))
    out = q.new_empty(q.shape)
    _launch_fwd(q, k_cache, v_cache, out, None, cache_len, cache_len - q.shape[2], block, scale)
    return out


def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor, block: int,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, contiguous, in the dtype of q, from the saved ``out`` and ``lse``."""
    grad_out, q, k, v, out = (_rows_contiguous(x) for x in (grad_out, q, k, v, out))
    batch, heads, steps, head_dim = q.shape
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    block_m, block_n = _bwd_tiles_for(q, head_dim)
    options = _launch_options(q, head_dim)
    _delta_kernel[(triton.cdiv(steps, block_n), batch * heads)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), heads, steps,
        HEAD_DIM=head_dim, BLOCK_M=block_n, **options,
    )
    dq, dk, dv = (q.new_empty(q.shape) for _ in range(3))
    operands = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    scalars = (heads, steps, block, scale * LOG2E, scale)
    _dkdv_kernel[(triton.cdiv(steps, block_n), batch * heads)](
        q, k, v, grad_out, lse, delta, dk, dv, *operands, *scalars,
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, WIDEN=_widen(q), **options,
    )
    _dq_kernel[(triton.cdiv(steps, block_n), batch * heads)](
        q, k, v, grad_out, lse, delta, dq, *operands, *scalars,
        HEAD_DIM=head_dim, BLOCK_M=block_n, BLOCK_N=block_m, WIDEN=_widen(q), **options,
    )
    return dq, dk, dv
