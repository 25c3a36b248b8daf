"""DreamerV3's recurrent state-space model (Hafner et al. 2023): observe and imagine.

State: deterministic ``h [B, H]`` and stochastic ``z [B, S, K]`` (S categorical
variables of K classes, straight-through one-hot samples). One step, with
``LN`` a LayerNorm with affine parameters and ``[.,.]`` concatenation::

    reset (observe only, where is_first[:, t]):  h <- h_0,  z <- z_0,  a_t <- 0
    x_t      = silu(LN_in(W_in [flat(z_{t-1}), a_t] + b_in))             [B, I]
    h_t      = BlockGRU(x_t, h_{t-1})                                     [B, H]
    prior_t  = W_po silu(LN_p(W_ph h_t + b_ph)) + b_po                    [B, S, K]
    post_t   = W_qo silu(LN_q(W_qh h_t + E_t)) + b_qo,  E = embed W_qe^T + b_qh
    z_t      = ST-Categorical(post_t, unimix)    (observe; prior_t in imagination)

with ``h_0 = params.initial_deter`` (the RSSM module passes ``tanh`` of a learned
vector), ``z_0 = params.initial_stoch`` (a constant one-hot ``[S, K]``; the RSSM module
passes the prior's mode at ``h_0``, as DreamerV3's 2023 code) or zeros when it is None,
and BlockGRU the block-diagonal cell of :mod:`worldmodels.ops.gru`. ``z_0`` carries no
gradient (an argmax); the fast paths add its input projection ``W_z z_0`` at the reset
rows instead of feeding it through the scan.
The ST sample is ``one_hot(argmax(log p + Gumbel(noise))) + p - sg(p)`` with
``p = (1 - unimix) softmax(logits) + unimix / K`` (:mod:`worldmodels.ops.sampling`).

Convention: ``action[:, t]`` is the action taken *before* observation ``t``
(DreamerV3's ``prev_action``); it is zeroed where ``is_first[:, t]``.

Noise: every implementation draws the uniform noise of the whole call up front,
``[B, T, S, K]`` (observe) or ``[B, S, K]`` (imagine step), from ``noise``, a
``seed`` or ``generator``, so equal noise gives equal samples in every ``impl``.

Implementations (``impl=``): ``"ref"`` the eager reference below; ``"scan"`` one
custom op over the whole sequence with a hand-written backward whose weight
gradients are single GEMMs over all ``T * B`` rows and whose prior head runs once
after the loop (:mod:`._rssm_scan`); ``"triton"`` / ``"cpp"`` a Python loop over
``T`` of the GRU cell and sampler fast paths of that name (:mod:`._rssm_loop`).
``"auto"``: ``"triton"`` for CUDA tensors when the GRU and sampler have Triton
paths, else ``"scan"`` (the fastest measured on the CPU, see
``benchmarks/bench_rssm.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._rssm_check import RSSMDims, check_imagine, check_observe, params_dims  # noqa: F401
from ._rssm_graph import Imagination, RSSMImaginer  # noqa: F401
from .gru import block_gru_cell_ref
from .sampling import st_categorical_ref

Tensor = torch.Tensor
RSSM_IMPLS = ("auto", "triton", "cpp", "scan", "ref")


PRIOR_MATRICES = ("in_weight", "gru_weight", "prior_weight", "prior_out_weight")


class RSSMParams(NamedTuple):
    """The RSSM's parameters (shapes with I input width, G GRU blocks, H = G * Hg,
    U head width, E embedding width, A action width, S x K latents)."""

    in_weight: Tensor          # [I, S*K + A]  columns: flat stoch | action
    in_bias: Tensor            # [I]
    in_norm_weight: Tensor     # [I]
    in_norm_bias: Tensor       # [I]
    gru_weight: Tensor         # [G, Hg + I, 3 Hg]
    gru_bias: Tensor           # [G, 3 Hg]
    gru_norm_weight: Tensor    # [G, 3 Hg]
    gru_norm_bias: Tensor      # [G, 3 Hg]
    prior_weight: Tensor       # [U, H]
    prior_bias: Tensor         # [U]
    prior_norm_weight: Tensor  # [U]
    prior_norm_bias: Tensor    # [U]
    prior_out_weight: Tensor   # [S*K, U]
    prior_out_bias: Tensor     # [S*K]
    post_weight: Tensor        # [U, H]   W_qh
    post_embed_weight: Tensor  # [U, E]   W_qe
    post_bias: Tensor          # [U]      b_qh
    post_norm_weight: Tensor   # [U]
    post_norm_bias: Tensor     # [U]
    post_out_weight: Tensor    # [S*K, U]
    post_out_bias: Tensor      # [S*K]
    initial_deter: Tensor      # [H]      h_0 used at resets and without a state
    stoch: int                 # S
    classes: int               # K
    eps: float = 1e-3          # LayerNorm epsilon (all four norms)
    initial_stoch: Tensor | None = None  # [S, K] z_0 at resets (no gradient), None: zeros

    def tensors(self) -> dict[str, Tensor]:
        """The tensor fields by name (without ``stoch``, ``classes``, ``eps``)."""
        return {k: v for k, v in self._asdict().items() if isinstance(v, Tensor)}

    def with_matrices_in(self, dtype: torch.dtype) -> RSSMParams:
        """These parameters with the prior step's matrices (``in_weight``, ``gru_weight``,
        ``prior_weight``, ``prior_out_weight``) in ``dtype``; norms, biases and the initial
        state stay. Under autocast a rollout casts them once: the step reads slices and
        reshapes of them, which autocast's weight cache does not keep, so it would cast
        them again every step (the same values either way)."""
        return self._replace(**{k: getattr(self, k).to(dtype) for k in PRIOR_MATRICES})


class RSSMObservation(NamedTuple):
    deter: Tensor         # [B, T, H]     h_t
    stoch: Tensor         # [B, T, S, K]  z_t (straight-through one-hot, posterior)
    prior_logits: Tensor  # [B, T, S, K]
    post_logits: Tensor   # [B, T, S, K]


class ImagineStep(NamedTuple):
    deter: Tensor         # [B, H]
    stoch: Tensor         # [B, S, K] (straight-through one-hot, prior)
    prior_logits: Tensor  # [B, S, K]


def draw_noise(shape, device, noise: Tensor | None = None, seed: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """Uniform ``[0, 1)`` noise of ``shape``: ``noise`` itself, else drawn from a
    generator seeded with ``seed``, else from ``generator`` (or the global one)."""
    if noise is not None:
        return noise
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def norm_silu(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``silu(LayerNorm(x) * weight + bias)`` over the last dimension."""
    return F.silu(F.layer_norm(x, (x.shape[-1],), weight, bias, eps))


def prior_head(deter: Tensor, p: RSSMParams) -> Tensor:
    """``W_po silu(LN_p(W_ph h + b_ph)) + b_po``: ``[..., H] -> [..., S, K]``."""
    hidden = norm_silu(F.linear(deter, p.prior_weight, p.prior_bias), p.prior_norm_weight, p.prior_norm_bias, p.eps)
    logits = F.linear(hidden, p.prior_out_weight, p.prior_out_bias)
    return logits.unflatten(-1, (p.stoch, p.classes))


def embed_projection(embed: Tensor, p: RSSMParams) -> Tensor:
    """``E = embed W_qe^T + b_qh`` for all steps at once: ``[..., E] -> [..., U]``."""
    return F.linear(embed, p.post_embed_weight, p.post_bias)


def post_head(deter: Tensor, embed_proj: Tensor, p: RSSMParams) -> Tensor:
    """``W_qo silu(LN_q(W_qh h + E_t)) + b_qo``: ``[..., H], [..., U] -> [..., S, K]``."""
    pre = F.linear(deter, p.post_weight) + embed_proj
    hidden = norm_silu(pre, p.post_norm_weight, p.post_norm_bias, p.eps)
    return F.linear(hidden, p.post_out_weight, p.post_out_bias).unflatten(-1, (p.stoch, p.classes))


def core_step_ref(deter: Tensor, stoch: Tensor, action: Tensor, p: RSSMParams) -> Tensor:
    """Input projection and GRU: ``(h [B, H], z [B, S, K], a [B, A]) -> h' [B, H]``."""
    inputs = torch.cat([stoch.flatten(1), action], dim=-1)
    x = norm_silu(F.linear(inputs, p.in_weight, p.in_bias), p.in_norm_weight, p.in_norm_bias, p.eps)
    return block_gru_cell_ref(x, deter, p.gru_weight, p.gru_bias, p.gru_norm_weight, p.gru_norm_bias, p.eps)


def initial_state(params: RSSMParams, batch: int) -> tuple[Tensor, Tensor]:
    """``(h_0 [B, H], z_0 [B, S, K])`` (``z_0`` zeros without ``initial_stoch``); ``h_0``
    keeps its gradient path."""
    deter = params.initial_deter.unsqueeze(0).expand(batch, -1)
    if params.initial_stoch is None:
        return deter, params.initial_deter.new_zeros(batch, params.stoch, params.classes)
    return deter, params.initial_stoch.detach().to(deter.dtype).unsqueeze(0).expand(batch, -1, -1)


def reset_state(deter: Tensor, stoch: Tensor, action: Tensor, first: Tensor, params: RSSMParams):
    """Replace ``(h, z, a)`` by ``(h_0, z_0, 0)`` in the rows where ``first [B]`` is True."""
    keep = (~first).to(deter.dtype).unsqueeze(-1)
    deter = torch.where(first.unsqueeze(-1), params.initial_deter.to(deter.dtype), deter)
    stoch = stoch * keep.unsqueeze(-1)
    if params.initial_stoch is not None:
        stoch = stoch + (1 - keep.unsqueeze(-1)) * params.initial_stoch.detach().to(stoch.dtype)
    return deter, stoch, action * keep


def reset_stoch_projection(first: Tensor, params: RSSMParams, dtype: torch.dtype) -> Tensor | None:
    """``W_z flat(z_0)`` in the rows where ``first [...]`` is True, else 0: ``[..., I]``
    (what ``z_0`` adds to the input projection after a reset); None without ``initial_stoch``.
    The fast paths zero ``z`` at resets and add this to their precomputed action projection."""
    if params.initial_stoch is None:
        return None
    sk = params.stoch * params.classes
    z0 = F.linear(params.initial_stoch.detach().reshape(sk).to(dtype), params.in_weight[:, :sk].to(dtype))
    return first.unsqueeze(-1).to(dtype) * z0


def rssm_observe_ref(embed: Tensor, action: Tensor, is_first: Tensor, params: RSSMParams, *,
                     unimix: float = 0.01, state: tuple[Tensor, Tensor] | None = None,
                     noise: Tensor | None = None, generator: torch.Generator | None = None) -> RSSMObservation:
    """Posterior scan over a sequence (the specification; see the module docstring).

    Args:
        embed: ``[B, T, E]`` encoder features; action: ``[B, T, A]`` (A may be 0),
            ``action[:, t]`` taken before observation ``t``; is_first: ``[B, T]`` bool
            (or 0/1). params: :class:`RSSMParams`; unimix: uniform mix of the sampler.
        state: ``(h [B, H], z [B, S, K])`` carried from the previous chunk, or None
            for ``(h_0, 0)``.
        noise: uniform ``[B, T, S, K]``, or None to draw it from ``generator``.
    Returns:
        :class:`RSSMObservation` of ``[B, T, ...]`` tensors.
    """
    dims, first = check_observe(embed, action, is_first, params, state, noise, None)
    batch, steps = first.shape
    noise = draw_noise((batch, steps, dims.stoch, dims.classes), embed.device, noise, None, generator)
    deter, stoch = initial_state(params, batch) if state is None else state[:2]
    embed_proj = embed_projection(embed, params)
    out = {"deter": [], "stoch": [], "prior_logits": [], "post_logits": []}
    for t in range(steps):
        deter, stoch, act = reset_state(deter, stoch, action[:, t], first[:, t], params)
        deter = core_step_ref(deter, stoch, act, params)
        post = post_head(deter, embed_proj[:, t], params)
        stoch = st_categorical_ref(post, unimix, noise[:, t]).sample
        for key, value in zip(out, (deter, stoch, prior_head(deter, params), post)):
            out[key].append(value)
    return RSSMObservation(**{k: torch.stack(v, dim=1) for k, v in out.items()})


def rssm_imagine_step_ref(deter: Tensor, stoch: Tensor, action: Tensor, params: RSSMParams, *,
                          unimix: float = 0.01, noise: Tensor | None = None,
                          generator: torch.Generator | None = None) -> ImagineStep:
    """One prior step: ``(h [B, H], z [B, S, K], a [B, A]) -> (h', z' ~ prior, prior logits)``.

    No reset is applied (imagination never starts an episode). ``noise`` is uniform
    ``[B, S, K]`` or None to draw it from ``generator``.
    """
    dims = check_imagine(deter, stoch, action, params, noise, None)
    noise = draw_noise((deter.shape[0], dims.stoch, dims.classes), deter.device, noise, None, generator)
    deter = core_step_ref(deter, stoch, action, params)
    prior = prior_head(deter, params)
    return ImagineStep(deter, st_categorical_ref(prior, unimix, noise).sample, prior)


def resolve_rssm_impl(impl: str, device: torch.device) -> str:
    """The path ``rssm_observe``/``rssm_imagine_step`` runs with (see the module docstring)."""
    from . import _rssm_loop

    if impl not in RSSM_IMPLS:
        raise ValueError(f"rssm: impl={impl!r} is not one of {RSSM_IMPLS}.")
    if impl == "auto":
        return "triton" if device.type == "cuda" and _rssm_loop.has_fast_parts("triton", device) else "scan"
    if impl in ("triton", "cpp"):
        _rssm_loop.require_fast_parts(impl, device)
    return impl


def rssm_observe(embed: Tensor, action: Tensor, is_first: Tensor, params: RSSMParams, *,
                 unimix: float = 0.01, state: tuple[Tensor, Tensor] | None = None,
                 seed: int | None = None, noise: Tensor | None = None,
                 generator: torch.Generator | None = None, impl: str = "auto") -> RSSMObservation:
    """Fast posterior scan; same arguments and results as :func:`rssm_observe_ref`
    plus ``seed`` (an alternative to ``noise``/``generator``) and ``impl``."""
    dims, first = check_observe(embed, action, is_first, params, state, noise, seed)
    noise = draw_noise((*first.shape, dims.stoch, dims.classes), embed.device, noise, seed, generator)
    path = resolve_rssm_impl(impl, embed.device)
    if path == "ref":
        return rssm_observe_ref(embed, action, first, params, unimix=unimix, state=state, noise=noise)
    if path == "scan":
        from ._rssm_scan_bwd import observe_scan

        return observe_scan(embed, action, first, params, unimix, state, noise)
    from ._rssm_loop import observe_loop

    return observe_loop(embed, action, first, params, unimix, state, noise, path)


def rssm_imagine_step(deter: Tensor, stoch: Tensor, action: Tensor, params: RSSMParams, *,
                      unimix: float = 0.01, seed: int | None = None, noise: Tensor | None = None,
                      generator: torch.Generator | None = None, impl: str = "auto",
                      stoch_index: Tensor | None = None) -> ImagineStep:
    """Fast prior step; same as :func:`rssm_imagine_step_ref` plus ``seed`` and ``impl``
    (``"scan"`` means the split-weight eager step, which avoids the concatenations).

    ``stoch_index [B, S]``: the class indices of ``stoch`` when it is exactly one-hot
    (:func:`~worldmodels.ops.onehot_linear.onehot_index`; imagined samples are). The
    fast paths then gather the input weight's columns instead of multiplying by the
    one-hot (:func:`~worldmodels.ops.onehot_linear.onehot_linear`), which gives ``stoch``
    no gradient: pass it only where none is needed. The reference ignores it."""
    dims = check_imagine(deter, stoch, action, params, noise, seed)
    noise = draw_noise((deter.shape[0], dims.stoch, dims.classes), deter.device, noise, seed, generator)
    path = resolve_rssm_impl(impl, deter.device)
    if path == "ref":
        return rssm_imagine_step_ref(deter, stoch, action, params, unimix=unimix, noise=noise)
    from ._rssm_loop import imagine_step_fast

    return imagine_step_fast(deter, stoch, action, params, unimix, noise, "ref" if path == "scan" else path,
                             stoch_index)
