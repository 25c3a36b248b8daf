"""Triton kernels of the GRU scans: the fused recurrent step and a grouped GEMM.

``fused_step_kernel`` (no LayerNorm): one program owns a tile of ``BM`` batch rows x
``BN`` hidden units of one group and computes the recurrent GEMM for the three gate
columns of those units (r|z|n for the classic cell, r|c|u for the block cell), then
applies the gates in the epilogue and stores the next state and what backward needs.
One launch per time step.

``group_matmul_kernel``: ``out[g] = a[g] @ w[g] (+ bias)`` over strided views, for the
LayerNorm variants (the row-wise LayerNorm+gates kernel of ``kernels/gru_gates.py``
follows it) and for the backward recurrence ``dh += dp @ W^T``.

All maths in float32 (float64 when the buffers are float64); ``tl.dot`` with IEEE
precision so the fused path matches the reference at fp32 tolerances.
"""

from __future__ import annotations

import triton
import triton.language as tl

CLASSIC, BLOCK = 0, 1


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _recurrent_tiles(h_prev, hp_stride, w, w_sg, w_sk, w_sn, rows, cols, g, B, Hg, K,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The three [BM, BN] accumulators h_prev[rows, g*Hg + k] @ w[g, k, i*Hg + cols]."""
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    row_ok, col_ok = rows < B, cols < Hg
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        a = tl.load(h_prev + rows[:, None] * hp_stride + g * Hg + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_base = w + g * w_sg + ks[:, None] * w_sk
        w_mask = k_ok[:, None] & col_ok[None, :]
        w0 = tl.load(w_base + cols[None, :] * w_sn, mask=w_mask, other=0.0)
        w1 = tl.load(w_base + (Hg + cols[None, :]) * w_sn, mask=w_mask, other=0.0)
        w2 = tl.load(w_base + (2 * Hg + cols[None, :]) * w_sn, mask=w_mask, other=0.0)
        acc0 += tl.dot(a, w0, input_precision="ieee")
        acc1 += tl.dot(a, w1, input_precision="ieee")
        acc2 += tl.dot(a, w2, input_precision="ieee")
    return acc0, acc1, acc2


@triton.jit
def fused_step_kernel(h_prev, hp_stride, w, w_sg, w_sk, w_sn, bias, xin, states, gates, aux,
                      t, T, B, G, Hg, CELL: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One recurrent step without LayerNorm, for a [BM rows x BN units] tile of group g.

    classic (G = 1): r = s(gi_r + gh_r), z = s(gi_z + gh_z), n = tanh(gi_n + r gh_n),
        h' = (1 - z) n + z h; stores gates r|z|n and aux = gh_n.
    block: v = xp + h_g W_h[g]; reset = s(v_r), cand = tanh(reset v_c),
        update = s(v_u - 1), h' = update cand + (1 - update) h; gates reset|cand|update,
        aux = v_c.
    """
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    g = tl.program_id(2)
    acc0, acc1, acc2 = _recurrent_tiles(h_prev, hp_stride, w, w_sg, w_sk, w_sn, rows, cols, g, B, Hg, Hg,
                                        BM, BN, BK)
    col_ok = cols < Hg
    mask = (rows < B)[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc0 += tl.load(bias + cols, mask=col_ok, other=0.0)[None, :]
        acc1 += tl.load(bias + Hg + cols, mask=col_ok, other=0.0)[None, :]
        acc2 += tl.load(bias + 2 * Hg + cols, mask=col_ok, other=0.0)[None, :]
    rt = rows[:, None] * T + t
    wide = (rt * G + g) * 3 * Hg + cols[None, :]
    x0 = tl.load(xin + wide, mask=mask, other=0.0).to(tl.float32)
    x1 = tl.load(xin + wide + Hg, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xin + wide + 2 * Hg, mask=mask, other=0.0).to(tl.float32)
    hp = tl.load(h_prev + rows[:, None] * hp_stride + g * Hg + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if CELL == 0:
        a0 = _sigmoid(x0 + acc0)
        a1 = _sigmoid(x1 + acc1)
        a2 = _tanh(x2 + a0 * acc2)
        out = (1.0 - a1) * a2 + a1 * hp
        keep = acc2
    else:
        a0 = _sigmoid(x0 + acc0)
        keep = x1 + acc1
        a1 = _tanh(a0 * keep)
        a2 = _sigmoid(x2 + acc2 - 1.0)
        out = a2 * a1 + (1.0 - a2) * hp
    narrow = rt * (G * Hg) + g * Hg + cols[None, :]
    tl.store(states + narrow, out, mask=mask)
    tl.store(aux + narrow, keep, mask=mask)
    tl.store(gates + wide, a0, mask=mask)
    tl.store(gates + wide + Hg, a1, mask=mask)
    tl.store(gates + wide + 2 * Hg, a2, mask=mask)


@triton.jit
def group_matmul_kernel(a, a_sg, a_sm, a_sk, w, w_sg, w_sk, w_sn, bias, out, o_sg, o_sm, M, N, K,
                        HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out[g, m, n] = sum_k a[g, m, k] w[g, k, n] (+ bias[n]) over strided operands."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    g = tl.program_id(2)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        a_t = tl.load(a + g * a_sg + rows[:, None] * a_sm + ks[None, :] * a_sk,
                      mask=(rows < M)[:, None] & (ks < K)[None, :], other=0.0)
        w_t = tl.load(w + g * w_sg + ks[:, None] * w_sk + cols[None, :] * w_sn,
                      mask=(ks < K)[:, None] & (cols < N)[None, :], other=0.0)
        acc += tl.dot(a_t, w_t, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias + cols, mask=cols < N, other=0.0)[None, :]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    tl.store(out + g * o_sg + rows[:, None] * o_sm + cols[None, :], acc, mask=mask)


# ---------------------------------------------------------------- launchers

def _tile(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(n)))


def launch_fused_step(cell, h_prev, w, w_strides, bias, xin, states, gates, aux, t, groups, hg):
    """Launch ``fused_step_kernel`` for step ``t``; ``w_strides`` = (group, k, n) strides
    of the recurrent weight seen as ``[G, Hg, 3Hg]``."""
    batch, steps = states.shape[0], states.shape[1]
    bm, bn, bk = _tile(batch, 16, 64), _tile(hg, 16, 64), _tile(hg, 16, 32)
    grid = (triton.cdiv(batch, bm), triton.cdiv(hg, bn), groups)
    fused_step_kernel[grid](
        h_prev, h_prev.stride(0), w, *w_strides, bias if bias is not None else xin, xin, states, gates, aux,
        t, steps, batch, groups, hg, CELL=cell, HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk)


def launch_group_matmul(a, a_strides, w, w_strides, out, out_strides, m, n, k, groups, bias=None):
    """``out[g] = a[g] @ w[g] (+ bias)``; strides are (group, row, col) of each operand
    (``out``'s column stride must be 1)."""
    bm, bn, bk = _tile(m, 16, 64), _tile(n, 16, 64), _tile(k, 16, 32)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), groups)
    group_matmul_kernel[grid](
        a, *a_strides, w, *w_strides, bias if bias is not None else out, out, *out_strides, m, n, k,
        HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk)
