"""The ``"triton"`` / ``"cpp"`` paths of the RSSM ops: a Python loop over time that
calls the fast paths of the block GRU cell and the straight-through sampler
(``worldmodels.ops.gru.block_gru_cell`` / ``worldmodels.ops.sampling.st_categorical``),
with autograd through their registered ops. The embedding and action projections
run once before the loop, the prior head once after it.

The GRU and sampler fast paths are looked up when called, so this module works
(through the references) before they exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import ImplUnavailableError, triton_runs_on
from .._ext import has_extension

Tensor = torch.Tensor


def _fast_gru():
    from . import gru

    return getattr(gru, "block_gru_cell", None)


def _fast_sampler():
    from . import sampling

    return getattr(sampling, "st_categorical", None)


def has_fast_parts(impl: str, device: torch.device) -> bool:
    """Whether the GRU cell and the sampler both have public fast paths for ``impl``."""
    if _fast_gru() is None or _fast_sampler() is None:
        return False
    if impl == "triton":
        return triton_runs_on(device)
    return impl == "cpp" and device.type == "cpu" and has_extension()


def part_impls(impl: str) -> tuple[str, str]:
    """``(GRU impl, sampler impl)`` of a loop path: the sampler has no C++ path, so
    under ``"cpp"`` it takes its own ``"auto"`` choice for CPU tensors."""
    return impl, ("auto" if impl == "cpp" else impl)


def require_fast_parts(impl: str, device: torch.device) -> None:
    if has_fast_parts(impl, device):
        return
    if _fast_gru() is None or _fast_sampler() is None:
        raise ImplUnavailableError(
            f"rssm: impl={impl!r} needs worldmodels.ops.gru.block_gru_cell and "
            "worldmodels.ops.sampling.st_categorical, which this install lacks; use impl='scan' or 'ref'."
        )
    where = "CUDA tensors (or TRITON_INTERPRET=1 on the CPU)" if impl == "triton" else "CPU tensors and worldmodels._C"
    raise ImplUnavailableError(f"rssm: impl={impl!r} needs {where}, got {device}; use impl='auto' or 'ref'.")


def sampler(impl: str, device: torch.device):
    """``f(logits, unimix, noise) -> one-hot ST sample``, the sampler's ``impl`` path
    (``"auto"``: its own choice) or the reference when the fast op is missing."""
    fast = _fast_sampler()
    if fast is None or impl == "ref":
        from .sampling import st_categorical_ref

        return lambda logits, unimix, noise: st_categorical_ref(logits, unimix, noise)[0]
    return lambda logits, unimix, noise: fast(logits, unimix, noise=noise, impl=impl)[0]


def gru_cell(impl: str):
    """``f(x, h, weight, bias, ln_weight, ln_bias, eps)``: the block GRU's ``impl`` path."""
    fast = _fast_gru()
    if fast is None or impl == "ref":
        from .gru import block_gru_cell_ref

        return block_gru_cell_ref
    return lambda *args: fast(*args, impl=impl)


def _input_proj(stoch_flat: Tensor, action_proj: Tensor, p) -> Tensor:
    """``silu(LN_in(z W_z^T + action_proj))``; ``action_proj`` holds ``a W_a^T + b_in``."""
    from .rssm import norm_silu

    u = torch.addmm(action_proj, stoch_flat, p.in_weight[:, : stoch_flat.shape[1]].t())
    return norm_silu(u, p.in_norm_weight, p.in_norm_bias, p.eps)


def observe_loop(embed, action, first, params, unimix: float, state, noise: Tensor, impl: str):
    """``rssm_observe`` as a loop over ``T`` of the ``impl`` fast paths (inputs checked)."""
    from .rssm import RSSMObservation, embed_projection, initial_state, post_head, prior_head, reset_stoch_projection

    p, sk = params, params.stoch * params.classes
    gru_impl, sample_impl = part_impls(impl)
    cell, sample = gru_cell(gru_impl), sampler(sample_impl, embed.device)
    keep = (~first).to(action.dtype).unsqueeze(-1)
    action_proj = F.linear(action * keep, p.in_weight[:, sk:], p.in_bias)
    reset_proj = reset_stoch_projection(first, p, action_proj.dtype)
    if reset_proj is not None:
        action_proj = action_proj + reset_proj
    embed_proj = embed_projection(embed, p)
    deter, stoch = initial_state(p, first.shape[0]) if state is None else state[:2]
    resets = first.any(dim=0).tolist()
    deters, stochs, posts = [], [], []
    for t in range(first.shape[1]):
        if resets[t]:
            deter = torch.where(first[:, t, None], p.initial_deter.to(deter.dtype), deter)
            stoch = stoch * keep[:, t, :, None]
        x = _input_proj(stoch.flatten(1), action_proj[:, t], p).to(deter.dtype)  # bf16 under autocast
        deter = cell(x, deter, p.gru_weight, p.gru_bias, p.gru_norm_weight, p.gru_norm_bias, p.eps)
        post = post_head(deter, embed_proj[:, t], p)
        stoch = sample(post, unimix, noise[:, t])
        deters.append(deter), stochs.append(stoch), posts.append(post)
    deter_seq = torch.stack(deters, dim=1)
    return RSSMObservation(deter_seq, torch.stack(stochs, dim=1), prior_head(deter_seq, p), torch.stack(posts, dim=1))


def imagine_step_fast(deter, stoch, action, params, unimix: float, noise: Tensor, impl: str,
                      stoch_index: Tensor | None = None):
    """One prior step with split input weights (no concatenation) and the ``impl`` parts;
    with ``stoch_index`` the one-hot columns of the input weight are gathered."""
    from .onehot_linear import onehot_linear
    from .rssm import ImagineStep, norm_silu, prior_head

    p, sk = params, params.stoch * params.classes
    if stoch_index is None:
        action_proj = F.linear(action, p.in_weight[:, sk:], p.in_bias)
        x = _input_proj(stoch.flatten(1), action_proj, p)
    else:
        u = onehot_linear(action, stoch_index, p.in_weight[:, sk:], p.in_weight[:, :sk], p.in_bias)
        x = norm_silu(u, p.in_norm_weight, p.in_norm_bias, p.eps)
    gru_impl, sample_impl = part_impls(impl)
    x = x.to(deter.dtype)  # bf16 under autocast; the fast cells take one dtype
    deter = gru_cell(gru_impl)(x, deter, p.gru_weight, p.gru_bias, p.gru_norm_weight, p.gru_norm_bias, p.eps)
    prior = prior_head(deter, p)
    return ImagineStep(deter, sampler(sample_impl, deter.device)(prior, unimix, noise), prior)
