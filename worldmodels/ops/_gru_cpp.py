"""C++ time loops of the GRU scans (CPU): GEMMs in PyTorch, gate maths in C++.

Per forward step: one recurrent GEMM into a reused buffer (``addmm``/``bmm`` with
``out=``), then ``stepper.step(t)`` of ``worldmodels._C`` applies LayerNorm and the
gates for all batch rows (OpenMP over rows when it pays) and stores the activations
backward needs. Per backward step: ``stepper.step(t)`` runs the gate and LayerNorm
backward, then one GEMM sends the pre-activation gradient back through the
recurrent weights. The loops share the buffer layouts of ``csrc/gru.cpp``; the
sequence-level GEMMs (input projections, weight gradients) are in ``_gru_seq.py``.

Every function here takes float32 or float64 contiguous tensors (``_gru_seq``
upcasts other dtypes) and writes into the buffers it is given.
"""

from __future__ import annotations

import numpy as np
import torch

from .._ext import require_extension

Tensor = torch.Tensor


def _np(t: Tensor) -> np.ndarray:
    """A NumPy view sharing ``t``'s memory (``t`` must be contiguous)."""
    if t.numel() == 0:
        return np.empty(0, dtype=np.float32 if t.dtype == torch.float32 else np.float64)
    return t.detach().numpy()


def _stepper(name: str, dtype: torch.dtype):
    suffix = {torch.float32: "F32", torch.float64: "F64"}[dtype]
    return getattr(require_extension("the GRU scan's C++ path"), f"{name}{suffix}")


def _threads() -> int:
    """OpenMP threads of the gate loops (used only when a step has >= 65536 elements)."""
    return torch.get_num_threads()


def classic_forward_loop(gi, h0, w_hh, b_hh, ln_w, ln_b, eps, states, gates, ghn, xhat, rstd) -> None:
    """Fills ``states [B,T,H]`` and the saved activations; ``gi [B,T,3H]`` is the
    normalised input projection, ``ln_w``/``ln_b`` the LayerNorm of ``gh`` ([3H] or empty)."""
    batch, steps, hidden = states.shape
    gh = gi.new_empty(batch, 3 * hidden)
    keep = [gi, gh, h0, states, gates, ghn, ln_w, ln_b, xhat, rstd]
    stepper = _stepper("GruClassicForward", gi.dtype)(
        keep, *(_np(t) for t in keep), float(eps), _threads())
    w_t = w_hh.t()
    for t in range(steps):
        h_prev = h0 if t == 0 else states[:, t - 1]
        if b_hh is None:
            torch.mm(h_prev, w_t, out=gh)
        else:
            torch.addmm(b_hh, h_prev, w_t, out=gh)
        stepper.step(t)


def classic_backward_loop(grad, h0, w_hh, ln_w, states, gates, ghn, xhat, rstd, dgi, dgh, dgh_hat) -> Tensor:
    """Reverse recurrence: fills ``dgi``, ``dgh`` (and ``dgh_hat`` with LayerNorm),
    each ``[B,T,3H]``; returns the gradient of ``h0``."""
    batch, steps, hidden = states.shape
    carry = grad.new_zeros(batch, hidden)
    rec = grad.new_zeros(batch, hidden)
    keep = [grad, h0, states, gates, ghn, ln_w, xhat, rstd, carry, rec, dgi, dgh, dgh_hat]
    stepper = _stepper("GruClassicBackward", grad.dtype)(keep, *(_np(t) for t in keep), _threads())
    for t in range(steps - 1, -1, -1):
        stepper.step(t)
        torch.mm(dgh[:, t], w_hh, out=rec)
    return carry + rec


def block_forward_loop(xp, h0, w_h, ln_w, ln_b, eps, states, gates, cval, xhat, rstd) -> None:
    """Fills ``states [B,T,H]`` and the saved activations; ``xp [B,T,G*3Hg]`` is the
    input projection plus bias, ``w_h [G,Hg,3Hg]`` the recurrent blocks."""
    batch, steps, hidden = states.shape
    groups, hg = w_h.shape[0], w_h.shape[1]
    p = xp.new_empty(groups, batch, 3 * hg)
    keep = [xp, p, h0, states, gates, cval, ln_w, ln_b, xhat, rstd]
    stepper = _stepper("GruBlockForward", xp.dtype)(keep, *(_np(t) for t in keep), float(eps), _threads())
    for t in range(steps):
        h_prev = h0 if t == 0 else states[:, t - 1]
        if groups == 1:
            torch.mm(h_prev, w_h[0], out=p[0])
        else:
            torch.bmm(h_prev.view(batch, groups, hg).transpose(0, 1), w_h, out=p)
        stepper.step(t)


def block_backward_loop(grad, h0, w_h, ln_w, states, gates, cval, xhat, rstd, dp, dp_hat) -> Tensor:
    """Reverse recurrence: fills ``dp`` (and ``dp_hat`` with LayerNorm), each
    ``[B,T,G*3Hg]``; returns the gradient of ``h0``."""
    batch, steps, hidden = states.shape
    groups, hg = w_h.shape[0], w_h.shape[1]
    carry = grad.new_zeros(batch, hidden)
    rec = grad.new_zeros(groups, batch, hg)
    keep = [grad, h0, states, gates, cval, ln_w, xhat, rstd, carry, rec, dp, dp_hat]
    stepper = _stepper("GruBlockBackward", grad.dtype)(keep, *(_np(t) for t in keep), _threads())
    w_t = w_h.transpose(1, 2)
    for t in range(steps - 1, -1, -1):
        stepper.step(t)
        if groups == 1:
            torch.mm(dp[:, t], w_t[0], out=rec[0])
        else:
            torch.bmm(dp[:, t].view(batch, groups, 3 * hg).transpose(0, 1), w_t, out=rec)
    return carry + rec.transpose(0, 1).reshape(batch, hidden)
