"""Backward of ``worldmodels::rssm_observe_scan`` (see :mod:`._rssm_scan` for the maths)
and the autograd registration that connects the two ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._rssm_scan import _gates, _gru_views, _norm_backward, _shifted_bias, _silu_grad, scan_forward

Tensor = torch.Tensor
BACKWARD_OP = "worldmodels::rssm_observe_scan_backward"


def _recompute(saved: dict) -> dict:
    """Batched over ``T``: the SiLU inputs/derivatives and the GRU gate coefficients."""
    y = torch.addcmul(saved["in_norm_bias"], saved["xhat"], saved["in_norm_weight"])
    q = torch.addcmul(saved["post_norm_bias"], saved["qhat"], saved["post_norm_weight"])
    reset, c, update, cand = _gates(saved["phat"], saved["gru_norm_weight"], _shifted_bias(saved["gru_norm_bias"]))
    hp = saved["hp"].view(update.shape)
    slope = update * (1 - cand * cand)
    # d h / d [r, c, u] pre-activations, laid out [T, B, G, 3, Hg]
    coeff = torch.stack([slope * c * reset * (1 - reset), slope * reset, (cand - hp) * update * (1 - update)], dim=-2)
    return {
        "x": F.silu(y), "dx": _silu_grad(y) * saved["in_norm_weight"], "dsilu_x": _silu_grad(y),
        "q": F.silu(q), "dq": _silu_grad(q) * saved["post_norm_weight"], "dsilu_q": _silu_grad(q),
        "coeff": coeff, "keep_h": 1 - update,
    }


def _reverse(g_deter, g_post, g_sample, saved: dict, rec: dict, stoch: int, unimix: float) -> dict:
    """The reverse recurrence: per step data gradients only; returns the per-step
    gradients the weight GEMMs need and those of the initial state."""
    first = saved["first"]
    steps, batch = first.shape
    w_h, w_x = _gru_views(saved["gru_weight"])
    groups, hg = w_h.shape[0], w_h.shape[1]
    soft = torch.softmax(saved["post"].view(steps, batch, stoch, -1), dim=-1)  # fp32/fp64 as the sampler
    soft_mix = soft * (1 - unimix)
    new = g_deter.new_empty
    grads = {"post": new(g_post.shape), "qa": new(saved["qhat"].shape), "q": new(saved["qhat"].shape),
             "pn": new(saved["phat"].shape), "parts": new(saved["phat"].shape),
             "x": new(saved["xhat"].shape), "u": new(saved["xhat"].shape), "hp": new(g_deter.shape)}
    resets = first.any(dim=1).tolist()
    gh_next, gz_next = torch.zeros_like(g_deter[0]), torch.zeros_like(g_sample[0])
    w_ht = w_h.transpose(1, 2)
    for t in reversed(range(steps)):
        gz = (g_sample[t] + gz_next).view(batch, stoch, -1)
        dot = (gz * soft[t]).sum(-1, keepdim=True)
        gpost = torch.addcmul(g_post[t].view(gz.shape), soft_mix[t], gz - dot).view(batch, -1)
        grads["post"][t] = gpost
        torch.mm(gpost, saved["post_out_weight"], out=grads["qa"][t])
        grads["q"][t] = _norm_backward(grads["qa"][t] * rec["dq"][t], saved["qhat"][t], saved["qrstd"][t])
        gh = torch.addmm(g_deter[t] + gh_next, grads["q"][t], saved["post_weight"]).view(batch, groups, 1, hg)
        grads["pn"][t] = (gh * rec["coeff"][t]).view(batch, groups, 3 * hg)
        gparts = _norm_backward(grads["pn"][t] * saved["gru_norm_weight"], saved["phat"][t], saved["prstd"][t])
        grads["parts"][t] = gparts
        ghp = gh.view(batch, groups, hg) * rec["keep_h"][t]
        if groups == 1:
            ghp = torch.addmm(ghp.view(batch, hg), gparts.view(batch, -1), w_ht[0])
        else:
            ghp = ghp + torch.bmm(gparts.transpose(0, 1), w_ht).transpose(0, 1)
        grads["hp"][t] = ghp.reshape(batch, -1)
        torch.mm(gparts.view(batch, -1), w_x.t(), out=grads["x"][t])
        grads["u"][t] = _norm_backward(grads["x"][t] * rec["dx"][t], saved["xhat"][t], saved["xrstd"][t])
        gh_next, gz_next = grads["hp"][t], torch.mm(grads["u"][t], saved["w_z"])
        if resets[t]:
            gh_next = gh_next.masked_fill(first[t].unsqueeze(-1), 0)
            gz_next = gz_next.masked_fill(first[t].unsqueeze(-1), 0)
    grads["h0"], grads["z0"] = gh_next, gz_next
    return grads


def _weight_grads(saved: dict, rec: dict, grads: dict) -> list[Tensor]:
    """Every parameter gradient as one GEMM or reduction over the ``T * B`` rows."""
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    steps, batch, groups, cols = saved["phat"].shape
    hg = cols // 3
    rows = steps * batch
    gy = grads["x"] * rec["dsilu_x"]
    gq = grads["qa"] * rec["dsilu_q"]
    parts = grads["parts"].view(rows, groups, cols)
    g_wh = torch.bmm(saved["hp"].view(rows, groups, hg).permute(1, 2, 0), parts.transpose(0, 1))
    g_wx = torch.mm(flat(rec["x"]).t(), parts.view(rows, -1)).view(-1, groups, cols).transpose(0, 1)
    first = saved["first"].unsqueeze(-1)
    g_init = (grads["hp"] * first).sum((0, 1))
    return [
        torch.mm(flat(grads["u"]).t(), flat(saved["zp"])),                 # w_z
        (gy * saved["xhat"]).sum((0, 1)), gy.sum((0, 1)),                   # in norm
        torch.cat([g_wh, g_wx], dim=1), grads["parts"].sum((0, 1)),         # gru weight, bias
        (grads["pn"] * saved["phat"]).sum((0, 1)), grads["pn"].sum((0, 1)),  # gru norm
        torch.mm(flat(grads["q"]).t(), flat(saved["deter"])),              # post weight
        (gq * saved["qhat"]).sum((0, 1)), gq.sum((0, 1)),                   # post norm
        torch.mm(flat(grads["post"]).t(), flat(rec["q"])), grads["post"].sum((0, 1)),  # post out
        g_init,
    ]


_SAVED = ("first", "hp", "zp", "xhat", "xrstd", "phat", "prstd", "qhat", "qrstd", "deter", "post",
          "w_z", "in_norm_weight", "in_norm_bias", "gru_weight", "gru_norm_weight", "gru_norm_bias",
          "post_weight", "post_norm_weight", "post_norm_bias", "post_out_weight")


@torch.library.custom_op(BACKWARD_OP, mutates_args=())
def scan_backward(
    g_deter: Tensor, g_post: Tensor, g_sample: Tensor, first: Tensor, hp: Tensor, zp: Tensor,
    xhat: Tensor, xrstd: Tensor, phat: Tensor, prstd: Tensor, qhat: Tensor, qrstd: Tensor,
    deter: Tensor, post: Tensor, w_z: Tensor, in_norm_weight: Tensor, in_norm_bias: Tensor,
    gru_weight: Tensor, gru_norm_weight: Tensor, gru_norm_bias: Tensor, post_weight: Tensor,
    post_norm_weight: Tensor, post_norm_bias: Tensor, post_out_weight: Tensor, stoch: int, unimix: float,
) -> list[Tensor]:
    """Gradients of ``rssm_observe_scan`` w.r.t. ``in_proj, embed_proj, h0, z0`` and the
    weights ``initial_deter, w_z, in norm (2), gru weight, bias, norm (2), post weight,
    post norm (2), post out weight, bias`` (in that order)."""
    values = (first, hp, zp, xhat, xrstd, phat, prstd, qhat, qrstd, deter, post, w_z, in_norm_weight,
              in_norm_bias, gru_weight, gru_norm_weight, gru_norm_bias, post_weight, post_norm_weight,
              post_norm_bias, post_out_weight)
    saved = dict(zip(_SAVED, values))
    rec = _recompute(saved)
    grads = _reverse(g_deter, g_post, g_sample, saved, rec, stoch, unimix)
    weights = _weight_grads(saved, rec, grads)
    return [grads["u"], grads["q"], grads["h0"].clone(), grads["z0"].clone(), weights[-1], *weights[:-1]]


@scan_backward.register_fake
def _(g_deter, g_post, g_sample, first, hp, zp, xhat, xrstd, phat, prstd, qhat, qrstd, deter, post, w_z,
      in_norm_weight, in_norm_bias, gru_weight, gru_norm_weight, gru_norm_bias, post_weight,
      post_norm_weight, post_norm_bias, post_out_weight, stoch, unimix):
    like = [xhat, qhat, g_deter[0], g_sample[0], deter[0, 0], w_z, in_norm_weight, in_norm_bias, gru_weight,
            gru_norm_weight, gru_norm_weight, gru_norm_bias, post_weight, post_norm_weight, post_norm_bias,
            post_out_weight, post_out_weight[:, 0]]
    return [torch.empty_like(t) for t in like]


def _setup_context(ctx, inputs, output):
    (in_proj, embed_proj, first, noise, h0, z0, initial_deter, w_z, in_nw, in_nb, gru_w, gru_b, gru_nw, gru_nb,
     post_w, post_nw, post_nb, post_ow, post_ob, stoch, unimix, eps) = inputs
    deter, post, _, hp, zp, xhat, xrstd, phat, prstd, qhat, qrstd = output
    ctx.save_for_backward(first, hp, zp, xhat, xrstd, phat, prstd, qhat, qrstd, deter, post, w_z, in_nw, in_nb,
                          gru_w, gru_nw, gru_nb, post_w, post_nw, post_nb, post_ow)
    ctx.stoch, ctx.unimix = stoch, unimix


def _backward(ctx, g_deter, g_post, g_sample, *unused):
    saved = ctx.saved_tensors
    deter, post = saved[9], saved[10]
    g_deter = torch.zeros_like(deter) if g_deter is None else g_deter.contiguous()
    g_post = torch.zeros_like(post) if g_post is None else g_post.contiguous()
    g_sample = torch.zeros_like(post) if g_sample is None else g_sample.contiguous()
    out = scan_backward(g_deter, g_post, g_sample, *saved, ctx.stoch, ctx.unimix)
    g_in, g_embed, g_h0, g_z0, g_init, g_wz, g_inw, g_inb, g_gw, g_gb, g_gnw, g_gnb, g_pw, g_pnw, g_pnb, g_pow, g_pob = out
    return (g_in, g_embed, None, None, g_h0, g_z0, g_init, g_wz, g_inw, g_inb, g_gw, g_gb, g_gnw, g_gnb,
            g_pw, g_pnw, g_pnb, g_pow, g_pob, None, None, None)


scan_forward.register_autograd(_backward, setup_context=_setup_context)


def observe_scan(embed: Tensor, action: Tensor, first: Tensor, params, unimix: float, state, noise: Tensor):
    """``rssm_observe`` through the scan ops (inputs already checked; ``first`` bool)."""
    from .rssm import RSSMObservation, embed_projection, initial_state, prior_head, reset_stoch_projection

    p = params
    dtype = torch.float64 if p.in_weight.dtype == torch.float64 else torch.float32
    cast = lambda t: t.to(dtype)  # noqa: E731
    sk = p.stoch * p.classes
    first_t = first.t().contiguous()
    keep = (~first_t).to(action.dtype).unsqueeze(-1)
    in_proj = F.linear(action.transpose(0, 1) * keep, p.in_weight[:, sk:], p.in_bias)
    reset_proj = reset_stoch_projection(first_t, p, in_proj.dtype)
    if reset_proj is not None:
        in_proj = in_proj + reset_proj
    embed_proj = embed_projection(embed.transpose(0, 1), p)
    h0, z0 = initial_state(p, first.shape[0]) if state is None else state[:2]
    weights = (p.initial_deter, p.in_weight[:, :sk], p.in_norm_weight, p.in_norm_bias, p.gru_weight, p.gru_bias,
               p.gru_norm_weight, p.gru_norm_bias, p.post_weight, p.post_norm_weight, p.post_norm_bias,
               p.post_out_weight, p.post_out_bias)
    deter, post, sample = scan_forward(
        cast(in_proj).contiguous(), cast(embed_proj).contiguous(), first_t,
        noise.transpose(0, 1).float().contiguous(), cast(h0).contiguous(), cast(z0).flatten(1).contiguous(),
        *[cast(w).contiguous() for w in weights], p.stoch, float(unimix), float(p.eps))[:3]
    out_dtype = p.in_weight.dtype
    shape = (*first.shape, p.stoch, p.classes)
    deter = deter.transpose(0, 1).to(out_dtype).contiguous()
    return RSSMObservation(
        deter,
        sample.transpose(0, 1).to(out_dtype).reshape(shape),
        prior_head(deter, p),
        post.transpose(0, 1).to(out_dtype).reshape(shape),
    )
