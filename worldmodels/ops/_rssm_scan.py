"""The ``"scan"`` path of ``rssm_observe``: the posterior recurrence over the whole
sequence as one custom op with a hand-written backward.

What runs where (time-major ``[T, B, ...]`` buffers inside the ops):

* outside, with autograd and batched over all ``T * B`` rows: the action part of the
  input projection ``(a_t keep_t) W_a^T + b_in``, the embedding projection
  ``E = embed W_qe^T + b_qh`` and the prior head (it reads ``h_t`` only, so it
  leaves the loop);
* ``worldmodels::rssm_observe_scan`` (forward, no autograd graph): per step, the reset,
  ``u = z' W_z^T + in_proj_t``, LayerNorm + SiLU, the block GRU (split into
  ``x W_x`` and a per-block ``h W_h``), the posterior head and the sample; it saves
  the normalised activations and their reciprocal standard deviations;
* ``worldmodels::rssm_observe_scan_backward``: recomputes the gates batched, runs the
  reverse recurrence (only data gradients per step) and forms every weight gradient
  as one GEMM or reduction over all ``T * B`` rows afterwards.

LayerNorm backward used throughout, for ``y = x_hat w + b`` with
``x_hat = (u - mean) rstd``: ``du = rstd (g - mean(g) - x_hat mean(g x_hat))``,
``g = dy w``. SiLU: ``d silu(y) / dy = s (1 + y (1 - s))``, ``s = sigmoid(y)``.
Straight-through sample: ``d logits = (1 - unimix) p_s (dz - <dz, p_s>)`` with
``p_s = softmax(logits)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
OP = "worldmodels::rssm_observe_scan"


def _normalise(u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x_hat, rstd)`` of a LayerNorm over the last dimension (rstd keeps it as 1)."""
    x_hat, _, rstd = torch.native_layer_norm(u, (u.shape[-1],), None, None, eps)
    return x_hat, rstd


def _norm_backward(g: Tensor, x_hat: Tensor, rstd: Tensor) -> Tensor:
    """Gradient w.r.t. the LayerNorm input given ``g`` w.r.t. ``x_hat``."""
    centred = g - g.mean(-1, keepdim=True)
    return torch.addcmul(centred, x_hat, (g * x_hat).mean(-1, keepdim=True), value=-1) * rstd


def _silu_grad(y: Tensor) -> Tensor:
    s = torch.sigmoid(y)
    return s * (1 + y * (1 - s))


def _gru_views(gru_weight: Tensor) -> tuple[Tensor, Tensor]:
    """``W_h [G, Hg, 3Hg]`` (state rows) and ``W_x [I, G * 3Hg]`` (input rows)."""
    groups, rows, cols = gru_weight.shape
    hg = cols // 3
    w_x = gru_weight[:, hg:, :].permute(1, 0, 2).reshape(rows - hg, groups * cols)
    return gru_weight[:, :hg, :], w_x


def _shifted_bias(gru_norm_bias: Tensor) -> Tensor:
    """The GRU norm bias with ``-1`` on the update third, so ``sigmoid`` gives the update."""
    hg = gru_norm_bias.shape[-1] // 3
    shifted = gru_norm_bias.clone()
    shifted[:, 2 * hg:] -= 1
    return shifted


def _block_parts(x: Tensor, hp: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor) -> Tensor:
    """GRU pre-activations ``[B, G, 3Hg]`` = ``[h_g, x] W_g + b_g``."""
    groups, hg, cols = w_h.shape
    parts = torch.addmm(bias.reshape(-1), x, w_x).view(-1, groups, cols)
    if groups == 1:
        return parts.add_(torch.mm(hp, w_h[0]).unsqueeze(1))
    state = torch.bmm(hp.view(-1, groups, hg).transpose(0, 1), w_h)
    return parts.add_(state.transpose(0, 1))


def _gates(phat: Tensor, norm_weight: Tensor, shifted_bias: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(reset, c, update, cand)`` from the normalised GRU pre-activations ``[..., G, 3Hg]``."""
    pre = torch.addcmul(shifted_bias, phat, norm_weight).unflatten(-1, (3, -1))
    sig = torch.sigmoid(pre)
    reset, c, update = sig[..., 0, :], pre[..., 1, :], sig[..., 2, :]
    return reset, c, update, torch.tanh(reset * c)


@torch.library.custom_op(OP, mutates_args=())
def scan_forward(
    in_proj: Tensor, embed_proj: Tensor, first: Tensor, noise: Tensor, h0: Tensor, z0: Tensor,
    initial_deter: Tensor, w_z: Tensor, in_norm_weight: Tensor, in_norm_bias: Tensor,
    gru_weight: Tensor, gru_bias: Tensor, gru_norm_weight: Tensor, gru_norm_bias: Tensor,
    post_weight: Tensor, post_norm_weight: Tensor, post_norm_bias: Tensor,
    post_out_weight: Tensor, post_out_bias: Tensor, stoch: int, unimix: float, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The posterior recurrence (time-major). Returns ``deter [T, B, H]``,
    ``post [T, B, S*K]``, ``sample [T, B, S*K]`` and what the backward needs:
    ``h' , z'`` (states after the reset), ``x_hat, rstd`` of the input norm, of the
    GRU norm (``[T, B, G, 3Hg]``, ``[T, B, G, 1]``) and of the posterior norm."""
    from ._rssm_loop import sampler

    steps, batch = first.shape
    sample_fn = sampler("auto", in_proj.device)
    w_h, w_x = _gru_views(gru_weight)
    shifted = _shifted_bias(gru_norm_bias)
    groups, hg = w_h.shape[0], w_h.shape[1]
    out = _allocate(in_proj, embed_proj, h0, z0, groups, hg)
    deter, post, sample, hp_all, zp_all, xhat, xrstd, phat, prstd, qhat, qrstd = out
    resets = first.any(dim=1).tolist()
    h, z = h0, z0
    for t in range(steps):
        if resets[t]:
            h = torch.where(first[t].unsqueeze(-1), initial_deter, h)
            z = z.masked_fill(first[t].unsqueeze(-1), 0)
        hp_all[t], zp_all[t] = h, z
        xhat[t], xrstd[t] = _normalise(torch.addmm(in_proj[t], z, w_z.t()), eps)
        x = F.silu(torch.addcmul(in_norm_bias, xhat[t], in_norm_weight))
        phat[t], prstd[t] = _normalise(_block_parts(x, h, w_x, w_h, gru_bias), eps)
        _, _, update, cand = _gates(phat[t], gru_norm_weight, shifted)
        h = torch.lerp(h.view(batch, groups, hg), cand, update).view(batch, -1)
        deter[t] = h
        qhat[t], qrstd[t] = _normalise(torch.addmm(embed_proj[t], h, post_weight.t()), eps)
        hidden = F.silu(torch.addcmul(post_norm_bias, qhat[t], post_norm_weight))
        torch.addmm(post_out_bias, hidden, post_out_weight.t(), out=post[t])
        logits = post[t].view(batch, stoch, -1)
        z = sample_fn(logits, unimix, noise[t]).reshape(batch, -1).to(z.dtype)
        sample[t] = z
    return tuple(out)


def _allocate(in_proj, embed_proj, h0, z0, groups, hg):
    steps, batch, inputs = in_proj.shape
    new = in_proj.new_empty
    sk = z0.shape[1]
    return [new(steps, batch, h0.shape[1]), new(steps, batch, sk), new(steps, batch, sk),
            new(steps, batch, h0.shape[1]), new(steps, batch, sk),
            new(steps, batch, inputs), new(steps, batch, 1),
            new(steps, batch, groups, 3 * hg), new(steps, batch, groups, 1),
            new(steps, batch, embed_proj.shape[2]), new(steps, batch, 1)]


@scan_forward.register_fake
def _(in_proj, embed_proj, first, noise, h0, z0, initial_deter, w_z, in_norm_weight, in_norm_bias,
      gru_weight, gru_bias, gru_norm_weight, gru_norm_bias, post_weight, post_norm_weight,
      post_norm_bias, post_out_weight, post_out_bias, stoch, unimix, eps):
    groups, hg = gru_weight.shape[0], gru_weight.shape[2] // 3
    return tuple(_allocate(in_proj, embed_proj, h0, z0, groups, hg))
