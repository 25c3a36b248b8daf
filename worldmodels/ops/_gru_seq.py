"""Sequence-level halves of the fused GRU scans, shared by the C++ and Triton paths.

Forward: the input projections of all steps in one GEMM (and the LayerNorm of the
classic cell's ``gi``, which does not depend on the state), then the backend's time
loop. Backward: the backend's reverse loop yields the pre-activation gradients of
every step; the weight gradients are then ONE GEMM each over all ``B*T`` rows,
never per step::

    dW_hh = sum_t dgh_t^T h_{t-1}      dW_ih = sum_t dgi_t^T x_t      dx = dgi W_ih
    dW_h[g] = sum_t h_{t-1,g}^T dp_{t,g}   dW_x[g] = sum_t x_t^T dp_{t,g}

A backend is a module with ``classic_forward_loop``, ``classic_backward_loop``,
``block_forward_loop`` and ``block_backward_loop`` (see ``_gru_cpp.py``).
Low-precision inputs (bf16/fp16; float64 on the Triton path) are computed in float32; saved activations are
float32 then, and gradients are cast back to each input's dtype.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
_BACKENDS = {"cpp": "._gru_cpp", "triton": "._gru_triton"}


def backend(impl: str):
    """The module holding ``impl``'s time loops (imported on first use)."""
    if impl not in _BACKENDS:
        raise ValueError(f"gru scan: no fused backend {impl!r}; expected one of {sorted(_BACKENDS)}.")
    return importlib.import_module(_BACKENDS[impl], __package__)


def compute_dtype(dtype: torch.dtype, impl: str) -> torch.dtype:
    """float64 stays float64 on the C++ path; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 and impl == "cpp" else torch.float32


def _up(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.detach().to(dtype).contiguous()


def _cast(t: Tensor | None, like: Tensor | None, x: Tensor) -> Tensor:
    """``t`` in ``like``'s dtype; an empty tensor (``x``'s dtype) stands for an absent input."""
    if like is None or t is None:
        return x.new_empty(0)
    return t.to(like.dtype)


def _outputs(states: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(states in the input dtype, compute-dtype states kept for backward or empty)``."""
    if states.dtype == dtype:
        return states, _empty(states)
    return states.to(dtype), states


def layer_norm_stats(v: Tensor, weight: Tensor, bias: Tensor | None, eps: float):
    """LayerNorm over the last dim: ``(out, xhat, rstd)`` with ``out = xhat w + b``."""
    var, mean = torch.var_mean(v, dim=-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    xhat = (v - mean) * rstd
    out = xhat * weight if bias is None else torch.addcmul(bias, xhat, weight)
    return out, xhat, rstd.squeeze(-1)


def layer_norm_input_grad(dy: Tensor, xhat: Tensor, rstd: Tensor, weight: Tensor) -> Tensor:
    """``dx = rstd (g - mean(g) - xhat mean(g xhat))`` with ``g = dy w``."""
    g = dy * weight
    m1 = g.mean(-1, keepdim=True)
    m2 = (g * xhat).mean(-1, keepdim=True)
    return rstd.unsqueeze(-1) * (g - m1 - xhat * m2)


def _ln_rows(ln_weight, ln_bias, index, dtype):
    """Weight and bias rows of one LayerNorm (bias zeros when absent), or empties."""
    if ln_weight is None:
        return torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype)
    w = ln_weight[index].reshape(-1)
    b = torch.zeros_like(w) if ln_bias is None else ln_bias[index].reshape(-1)
    return w.contiguous(), b.contiguous()


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


# ---------------------------------------------------------------- classic cell

def classic_forward(x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, impl):
    """Returns ``(states, states_c, gates, ghn, xhat_i, rstd_i, xhat_h, rstd_h)``:
    ``states [B,T,H]`` in ``x``'s dtype, the rest in the compute dtype (``states_c``:
    the states for backward, empty when the dtypes agree; the last four empty without
    LayerNorm)."""
    in_dtype, dtype = x.dtype, compute_dtype(x.dtype, impl)
    x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias = (
        _up(t, dtype) for t in (x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias))
    (batch, steps, _), hidden = x.shape, h0.shape[1]
    gi = F.linear(x, w_ih, b_ih)
    xhat_i, rstd_i, xhat_h, rstd_h = (_empty(x) for _ in range(4))
    if ln_weight is not None:
        gi, xhat_i, rstd_i = layer_norm_stats(gi, ln_weight[0], None if ln_bias is None else ln_bias[0], eps)
        xhat_h, rstd_h = x.new_empty(batch, steps, 3 * hidden), x.new_empty(batch, steps)
    states = x.new_empty(batch, steps, hidden)
    gates, ghn = x.new_empty(batch, steps, 3 * hidden), x.new_empty(batch, steps, hidden)
    ln_w, ln_b = _ln_rows(ln_weight, ln_bias, 1, dtype)
    backend(impl).classic_forward_loop(gi.contiguous(), h0, w_hh, b_hh, ln_w, ln_b, eps,
                                       states, gates, ghn, xhat_h, rstd_h)
    return (*_outputs(states, in_dtype), gates, ghn, xhat_i, rstd_i, xhat_h, rstd_h)


def classic_backward(grad, x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, states, saved, impl):
    """Gradients ``(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dln_weight, dln_bias)`` in the
    inputs' dtypes; empty tensors for absent inputs. ``saved`` is the forward's tail."""
    dtype = compute_dtype(x.dtype, impl)
    states_c, gates, ghn, xhat_i, rstd_i, xhat_h, rstd_h = saved
    states = states_c if states_c.numel() else states
    originals = (x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias)
    x, h0, w_ih, w_hh, ln_weight, grad, states = (
        _up(t, dtype) for t in (x, h0, w_ih, w_hh, ln_weight, grad, states))
    (batch, steps, inputs), hidden = x.shape, h0.shape[1]
    ln = ln_weight is not None
    dgi, dgh = x.new_empty(batch, steps, 3 * hidden), x.new_empty(batch, steps, 3 * hidden)
    dgh_hat = x.new_empty(batch, steps, 3 * hidden) if ln else _empty(x)
    ln_w, _ = _ln_rows(ln_weight, None, 1, dtype)
    dh0 = backend(impl).classic_backward_loop(grad, h0, w_hh, ln_w, states, gates, ghn, xhat_h, rstd_h,
                                              dgi, dgh, dgh_hat)
    h_prev = torch.cat([h0.unsqueeze(1), states[:, :-1]], dim=1).reshape(-1, hidden)
    dgh2 = dgh.reshape(-1, 3 * hidden)
    dw_hh, db_hh = dgh2.t() @ h_prev, dgh2.sum(0)
    dln_w = dln_b = None
    if ln:
        dgi2, dgh_hat2 = dgi.reshape(-1, 3 * hidden), dgh_hat.reshape(-1, 3 * hidden)
        xi2, xh2 = xhat_i.reshape(-1, 3 * hidden), xhat_h.reshape(-1, 3 * hidden)
        dln_w = torch.stack([(dgi2 * xi2).sum(0), (dgh_hat2 * xh2).sum(0)])
        dln_b = torch.stack([dgi2.sum(0), dgh_hat2.sum(0)])
        dgi = layer_norm_input_grad(dgi, xhat_i, rstd_i, ln_weight[0])
    dgi2 = dgi.reshape(-1, 3 * hidden)
    dx = (dgi2 @ w_ih).view(batch, steps, inputs)
    dw_ih, db_ih = dgi2.t() @ x.reshape(-1, inputs), dgi2.sum(0)
    grads = (dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dln_w, dln_b)
    return tuple(_cast(g, like, originals[0]) for g, like in zip(grads, originals))


# ---------------------------------------------------------------- block cell

def _split_block(weight: Tensor, hg: int):
    """``(w_h [G,Hg,3Hg], w_x_flat [I, G*3Hg])`` from ``weight [G, Hg+I, 3Hg]``."""
    groups, rows, width = weight.shape
    w_h = weight[:, :hg].contiguous()
    w_x = weight[:, hg:].permute(1, 0, 2).reshape(rows - hg, groups * width)
    return w_h, w_x


def block_forward(x, h0, weight, bias, ln_weight, ln_bias, eps, impl):
    """Returns ``(states, states_c, gates, cval, xhat, rstd)`` (``states_c`` as in
    :func:`classic_forward`; the last two empty without LayerNorm)."""
    in_dtype, dtype = x.dtype, compute_dtype(x.dtype, impl)
    x, h0, weight, bias, ln_weight, ln_bias = (_up(t, dtype) for t in (x, h0, weight, bias, ln_weight, ln_bias))
    (batch, steps, _), hidden = x.shape, h0.shape[1]
    groups, hg = weight.shape[0], weight.shape[2] // 3
    w_h, w_x = _split_block(weight, hg)
    xp = x @ w_x if bias is None else torch.addmm(bias.reshape(-1), x.reshape(batch * steps, -1), w_x)
    xp = xp.reshape(batch, steps, groups * 3 * hg)
    xhat, rstd = _empty(x), _empty(x)
    if ln_weight is not None:
        xhat, rstd = x.new_empty(batch, steps, groups * 3 * hg), x.new_empty(batch, steps, groups)
    states, cval = x.new_empty(batch, steps, hidden), x.new_empty(batch, steps, hidden)
    gates = x.new_empty(batch, steps, groups * 3 * hg)
    ln_w, ln_b = _ln_rows(ln_weight, ln_bias, slice(None), dtype)
    backend(impl).block_forward_loop(xp, h0, w_h, ln_w, ln_b, eps, states, gates, cval, xhat, rstd)
    return (*_outputs(states, in_dtype), gates, cval, xhat, rstd)


def block_backward(grad, x, h0, weight, bias, ln_weight, ln_bias, states, saved, impl):
    """Gradients ``(dx, dh0, dweight, dbias, dln_weight, dln_bias)`` in the inputs'
    dtypes (empty tensors for absent inputs)."""
    dtype = compute_dtype(x.dtype, impl)
    states_c, gates, cval, xhat, rstd = saved
    states = states_c if states_c.numel() else states
    originals = (x, h0, weight, bias, ln_weight, ln_bias)
    x, h0, weight, ln_weight, grad, states = (_up(t, dtype) for t in (x, h0, weight, ln_weight, grad, states))
    batch, steps, inputs = x.shape
    groups, hg = weight.shape[0], weight.shape[2] // 3
    width = groups * 3 * hg
    w_h, w_x = _split_block(weight, hg)
    ln = ln_weight is not None
    dp = x.new_empty(batch, steps, width)
    dp_hat = x.new_empty(batch, steps, width) if ln else _empty(x)
    ln_w, _ = _ln_rows(ln_weight, None, slice(None), dtype)
    dh0 = backend(impl).block_backward_loop(grad, h0, w_h, ln_w, states, gates, cval, xhat, rstd, dp, dp_hat)
    rows = batch * steps
    h_prev = torch.cat([h0.unsqueeze(1), states[:, :-1]], dim=1).reshape(rows, groups, hg)
    dp3 = dp.reshape(rows, groups, 3 * hg)
    dw_h = torch.bmm(h_prev.permute(1, 2, 0), dp3.transpose(0, 1))  # [G, Hg, 3Hg]
    x2, dp2 = x.reshape(rows, inputs), dp.reshape(rows, width)
    dw_x = (x2.t() @ dp2).view(inputs, groups, 3 * hg).transpose(0, 1)  # [G, I, 3Hg]
    dweight = torch.cat([dw_h, dw_x], dim=1)
    dbias = dp2.sum(0).view(groups, 3 * hg)
    dx = (dp2 @ w_x.t()).view(batch, steps, inputs)
    dln_w = dln_b = None
    if ln:
        dh2 = dp_hat.reshape(rows, width)
        dln_w = (dh2 * xhat.reshape(rows, width)).sum(0).view(groups, 3 * hg)
        dln_b = dh2.sum(0).view(groups, 3 * hg)
    grads = (dx, dh0, dweight, dbias, dln_w, dln_b)
    return tuple(_cast(g, like, originals[0]) for g, like in zip(grads, originals))
