"""Triton time loops of the GRU scans (CUDA; CPU tensors under TRITON_INTERPRET=1).

Same contract and buffers as ``_gru_cpp.py``. Launches per step:

- forward without LayerNorm: ONE launch of ``fused_step_kernel`` (recurrent GEMM
  tile for the r|z|n or r|c|u columns of the same units + gates in the epilogue);
- forward with LayerNorm: ``group_matmul_kernel`` (the recurrent GEMM) then the
  row-wise LayerNorm+gates kernel (LayerNorm needs the whole ``3H``/``3Hg`` row);
- backward: the row-wise gate (+LayerNorm) backward kernel, then
  ``group_matmul_kernel`` for ``dp @ W^T``.

The kernels are imported on first use, so that ``triton.jit`` sees the
``TRITON_INTERPRET`` setting of the process (see ``tests/ops/conftest.py``).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _kernels():
    from worldmodels.kernels import gru, gru_gates

    return gru, gru_gates


def _or(t: Tensor, fallback: Tensor) -> Tensor:
    """A valid pointer for an absent (empty) buffer; the kernel never reads it."""
    return t if t.numel() else fallback


def _h_prev(h0: Tensor, states: Tensor, t: int) -> Tensor:
    return h0 if t == 0 else states[:, t - 1]


def classic_forward_loop(gi, h0, w_hh, b_hh, ln_w, ln_b, eps, states, gates, ghn, xhat, rstd) -> None:
    gru, gates_k = _kernels()
    batch, steps, hidden = states.shape
    if ln_w.numel() == 0:
        strides = (0, w_hh.stride(1), w_hh.stride(0))  # w_hh^T seen as [1, H, 3H]
        for t in range(steps):
            gru.launch_fused_step(gru.CLASSIC, _h_prev(h0, states, t), w_hh, strides, b_hh, gi, states, gates,
                                  ghn, t, 1, hidden)
        return
    gh = gi.new_empty(batch, 3 * hidden)
    block = gates_k.row_block(hidden)
    for t in range(steps):
        h_prev = _h_prev(h0, states, t)
        gru.launch_group_matmul(h_prev, (0, h_prev.stride(0), 1), w_hh, (0, w_hh.stride(1), w_hh.stride(0)),
                                gh, (0, 3 * hidden), batch, 3 * hidden, hidden, 1, bias=b_hh)
        gates_k.classic_gates_fwd_kernel[(batch,)](
            gi, gh, h_prev, h_prev.stride(0), states, gates, ghn, ln_w, ln_b, xhat, rstd,
            t, steps, hidden, eps, LN=True, BLOCK=block)


def classic_backward_loop(grad, h0, w_hh, ln_w, states, gates, ghn, xhat, rstd, dgi, dgh, dgh_hat) -> Tensor:
    gru, gates_k = _kernels()
    batch, steps, hidden = states.shape
    carry, rec = grad.new_zeros(batch, hidden), grad.new_zeros(batch, hidden)
    ln = ln_w.numel() > 0
    block = gates_k.row_block(hidden)
    for t in range(steps - 1, -1, -1):
        h_prev = _h_prev(h0, states, t)
        gates_k.classic_gates_bwd_kernel[(batch,)](
            grad, carry, rec, h_prev, h_prev.stride(0), gates, ghn, _or(ln_w, gates), _or(xhat, gates),
            _or(rstd, gates), dgi, dgh, _or(dgh_hat, dgh), t, steps, hidden, LN=ln, BLOCK=block)
        gru.launch_group_matmul(dgh[:, t], (0, steps * 3 * hidden, 1), w_hh, (0, hidden, 1),
                                rec, (0, hidden), batch, hidden, 3 * hidden, 1)
    return carry + rec


def block_forward_loop(xp, h0, w_h, ln_w, ln_b, eps, states, gates, cval, xhat, rstd) -> None:
    gru, gates_k = _kernels()
    batch, steps, hidden = states.shape
    groups, hg = w_h.shape[0], w_h.shape[1]
    strides = (w_h.stride(0), w_h.stride(1), w_h.stride(2))
    if ln_w.numel() == 0:
        for t in range(steps):
            gru.launch_fused_step(gru.BLOCK, _h_prev(h0, states, t), w_h, strides, None, xp, states, gates,
                                  cval, t, groups, hg)
        return
    p = xp.new_empty(groups, batch, 3 * hg)
    block = gates_k.row_block(hg)
    for t in range(steps):
        h_prev = _h_prev(h0, states, t)
        gru.launch_group_matmul(h_prev, (hg, h_prev.stride(0), 1), w_h, strides, p, (batch * 3 * hg, 3 * hg),
                                batch, 3 * hg, hg, groups)
        gates_k.block_gates_fwd_kernel[(batch, groups)](
            xp, p, h_prev, h_prev.stride(0), states, gates, cval, ln_w, ln_b, xhat, rstd,
            t, steps, batch, groups, hg, eps, LN=True, BLOCK=block)


def block_backward_loop(grad, h0, w_h, ln_w, states, gates, cval, xhat, rstd, dp, dp_hat) -> Tensor:
    gru, gates_k = _kernels()
    batch, steps, hidden = states.shape
    groups, hg = w_h.shape[0], w_h.shape[1]
    carry, rec = grad.new_zeros(batch, hidden), grad.new_zeros(groups, batch, hg)
    ln = ln_w.numel() > 0
    block = gates_k.row_block(hg)
    w_t = (w_h.stride(0), w_h.stride(2), w_h.stride(1))  # W_h[g]^T seen as [G, 3Hg, Hg]
    for t in range(steps - 1, -1, -1):
        h_prev = _h_prev(h0, states, t)
        gates_k.block_gates_bwd_kernel[(batch, groups)](
            grad, carry, rec, h_prev, h_prev.stride(0), gates, cval, _or(ln_w, gates), _or(xhat, gates),
            _or(rstd, gates), dp, _or(dp_hat, dp), t, steps, batch, groups, hg, LN=ln, BLOCK=block)
        gru.launch_group_matmul(dp[:, t], (3 * hg, steps * groups * 3 * hg, 1), w_h, w_t, rec,
                                (batch * hg, hg), batch, hg, 3 * hg, groups)
    return carry + rec.transpose(0, 1).reshape(batch, hidden)
