"""Row-wise Triton kernels of the GRU scans: LayerNorm + gates, forward and backward.

One program owns one batch row (classic cell, ``3H`` pre-activations) or one (batch
row, group) pair (block cell, ``3Hg``), so the LayerNorm statistics are program-local
(``BLOCK = next_power_of_2(H or Hg)`` lanes per gate). The forward kernels follow the
recurrent GEMM of ``kernels/gru.py`` when LayerNorm is on; the backward kernels run
every step (they also add the carried and recurrent gradients), followed by the
``dp @ W^T`` GEMM. Buffer layouts as in ``csrc/gru.cpp``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .gru import _sigmoid, _tanh


@triton.jit
def _ln_forward(v0, v1, v2, mask, n, eps):
    """LayerNorm statistics over the three masked segments: (xhat0, xhat1, xhat2, rstd)."""
    mean = (tl.sum(v0, 0) + tl.sum(v1, 0) + tl.sum(v2, 0)) / n
    d0 = tl.where(mask, v0 - mean, 0.0)
    d1 = tl.where(mask, v1 - mean, 0.0)
    d2 = tl.where(mask, v2 - mean, 0.0)
    var = (tl.sum(d0 * d0, 0) + tl.sum(d1 * d1, 0) + tl.sum(d2 * d2, 0)) / n
    rstd = 1.0 / tl.sqrt(var + eps)
    return d0 * rstd, d1 * rstd, d2 * rstd, rstd


@triton.jit
def _ln_backward(g0, g1, g2, x0, x1, x2, w, j, width, mask, rstd, n):
    """Input gradient of LayerNorm for the three segments (dy = g, weight rows w + i*width)."""
    g0 = g0 * tl.load(w + j, mask=mask, other=0.0)
    g1 = g1 * tl.load(w + width + j, mask=mask, other=0.0)
    g2 = g2 * tl.load(w + 2 * width + j, mask=mask, other=0.0)
    m1 = (tl.sum(g0, 0) + tl.sum(g1, 0) + tl.sum(g2, 0)) / n
    m2 = (tl.sum(g0 * x0, 0) + tl.sum(g1 * x1, 0) + tl.sum(g2 * x2, 0)) / n
    return rstd * (g0 - m1 - x0 * m2), rstd * (g1 - m1 - x1 * m2), rstd * (g2 - m1 - x2 * m2)


@triton.jit
def _store3(base, width, j, mask, v0, v1, v2):
    tl.store(base + j, v0, mask=mask)
    tl.store(base + width + j, v1, mask=mask)
    tl.store(base + 2 * width + j, v2, mask=mask)


@triton.jit
def _load3(base, width, j, mask):
    return (tl.load(base + j, mask=mask, other=0.0), tl.load(base + width + j, mask=mask, other=0.0),
            tl.load(base + 2 * width + j, mask=mask, other=0.0))


@triton.jit
def classic_gates_fwd_kernel(gi, gh, h_prev, hp_stride, states, gates, ghn, ln_w, ln_b, xhat, rstd,
                             t, T, H, eps, LN: tl.constexpr, BLOCK: tl.constexpr):
    """Row b: gh -> LayerNorm (optional) -> gates; gi is already normalised."""
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    mask = j < H
    row = b * T + t
    i0, i1, i2 = _load3(gi + row * 3 * H, H, j, mask)
    h0, h1, h2 = _load3(gh + b * 3 * H, H, j, mask)
    if LN:
        x0, x1, x2, rs = _ln_forward(h0, h1, h2, mask, 3 * H, eps)
        _store3(xhat + row * 3 * H, H, j, mask, x0, x1, x2)
        tl.store(rstd + row, rs)
        w0, w1, w2 = _load3(ln_w, H, j, mask)
        c0, c1, c2 = _load3(ln_b, H, j, mask)
        h0, h1, h2 = x0 * w0 + c0, x1 * w1 + c1, x2 * w2 + c2
    r = _sigmoid(i0 + h0)
    z = _sigmoid(i1 + h1)
    n = _tanh(i2 + r * h2)
    hp = tl.load(h_prev + b * hp_stride + j, mask=mask, other=0.0)
    tl.store(states + row * H + j, (1.0 - z) * n + z * hp, mask=mask)
    _store3(gates + row * 3 * H, H, j, mask, r, z, n)
    tl.store(ghn + row * H + j, h2, mask=mask)


@triton.jit
def classic_gates_bwd_kernel(grad, carry, rec, h_prev, hp_stride, gates, ghn, ln_w, xhat, rstd,
                             dgi, dgh, dgh_hat, t, T, H, LN: tl.constexpr, BLOCK: tl.constexpr):
    """Row b: total state gradient -> gate gradients -> LayerNorm backward (optional)."""
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    mask = j < H
    row = b * T + t
    dh = (tl.load(grad + row * H + j, mask=mask, other=0.0) + tl.load(carry + b * H + j, mask=mask, other=0.0)
          + tl.load(rec + b * H + j, mask=mask, other=0.0))
    r, z, n = _load3(gates + row * 3 * H, H, j, mask)
    hn = tl.load(ghn + row * H + j, mask=mask, other=0.0)
    hp = tl.load(h_prev + b * hp_stride + j, mask=mask, other=0.0)
    tl.store(carry + b * H + j, dh * z, mask=mask)
    dan = dh * (1.0 - z) * (1.0 - n * n)
    dar = dan * hn * r * (1.0 - r)
    daz = dh * (hp - n) * z * (1.0 - z)
    _store3(dgi + row * 3 * H, H, j, mask, dar, daz, dan)
    g0, g1, g2 = dar, daz, dan * r
    if LN:
        _store3(dgh_hat + row * 3 * H, H, j, mask, g0, g1, g2)
        x0, x1, x2 = _load3(xhat + row * 3 * H, H, j, mask)
        g0, g1, g2 = _ln_backward(g0, g1, g2, x0, x1, x2, ln_w, j, H, mask, tl.load(rstd + row), 3 * H)
    _store3(dgh + row * 3 * H, H, j, mask, g0, g1, g2)


@triton.jit
def block_gates_fwd_kernel(xp, p, h_prev, hp_stride, states, gates, cval, ln_w, ln_b, xhat, rstd,
                           t, T, B, G, Hg, eps, LN: tl.constexpr, BLOCK: tl.constexpr):
    """(row b, group g): v = p + xp -> LayerNorm (optional) -> reset/cand/update."""
    b, g = tl.program_id(0), tl.program_id(1)
    j = tl.arange(0, BLOCK)
    mask = j < Hg
    row = b * T + t
    wide = (row * G + g) * 3 * Hg
    p0, p1, p2 = _load3(p + (g * B + b) * 3 * Hg, Hg, j, mask)
    x0, x1, x2 = _load3(xp + wide, Hg, j, mask)
    v0, v1, v2 = p0 + x0, p1 + x1, p2 + x2
    if LN:
        n0, n1, n2, rs = _ln_forward(v0, v1, v2, mask, 3 * Hg, eps)
        _store3(xhat + wide, Hg, j, mask, n0, n1, n2)
        tl.store(rstd + row * G + g, rs)
        w0, w1, w2 = _load3(ln_w + g * 3 * Hg, Hg, j, mask)
        c0, c1, c2 = _load3(ln_b + g * 3 * Hg, Hg, j, mask)
        v0, v1, v2 = n0 * w0 + c0, n1 * w1 + c1, n2 * w2 + c2
    reset = _sigmoid(v0)
    cand = _tanh(reset * v1)
    update = _sigmoid(v2 - 1.0)
    hp = tl.load(h_prev + b * hp_stride + g * Hg + j, mask=mask, other=0.0)
    narrow = row * G * Hg + g * Hg + j
    tl.store(states + narrow, update * cand + (1.0 - update) * hp, mask=mask)
    _store3(gates + wide, Hg, j, mask, reset, cand, update)
    tl.store(cval + narrow, v1, mask=mask)


@triton.jit
def block_gates_bwd_kernel(grad, carry, rec, h_prev, hp_stride, gates, cval, ln_w, xhat, rstd, dp, dp_hat,
                           t, T, B, G, Hg, LN: tl.constexpr, BLOCK: tl.constexpr):
    """(row b, group g): total state gradient -> gate gradients -> LayerNorm backward."""
    b, g = tl.program_id(0), tl.program_id(1)
    j = tl.arange(0, BLOCK)
    mask = j < Hg
    row = b * T + t
    wide = (row * G + g) * 3 * Hg
    narrow = row * G * Hg + g * Hg + j
    state = b * G * Hg + g * Hg + j
    dh = (tl.load(grad + narrow, mask=mask, other=0.0) + tl.load(carry + state, mask=mask, other=0.0)
          + tl.load(rec + (g * B + b) * Hg + j, mask=mask, other=0.0))
    reset, cand, update = _load3(gates + wide, Hg, j, mask)
    c = tl.load(cval + narrow, mask=mask, other=0.0)
    hp = tl.load(h_prev + b * hp_stride + g * Hg + j, mask=mask, other=0.0)
    tl.store(carry + state, dh * (1.0 - update), mask=mask)
    dpre = dh * update * (1.0 - cand * cand)
    g0 = dpre * c * reset * (1.0 - reset)
    g1 = dpre * reset
    g2 = dh * (cand - hp) * update * (1.0 - update)
    if LN:
        _store3(dp_hat + wide, Hg, j, mask, g0, g1, g2)
        x0, x1, x2 = _load3(xhat + wide, Hg, j, mask)
        g0, g1, g2 = _ln_backward(g0, g1, g2, x0, x1, x2, ln_w + g * 3 * Hg, j, Hg, mask,
                                  tl.load(rstd + row * G + g), 3 * Hg)
    _store3(dp + wide, Hg, j, mask, g0, g1, g2)


def row_block(width: int) -> int:
    """Lanes per gate segment of the row kernels."""
    return max(16, triton.next_power_of_2(width))
