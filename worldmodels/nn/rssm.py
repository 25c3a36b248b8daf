"""DreamerV3's recurrent state-space model as a module (Hafner et al. 2023).

The maths lives in :mod:`worldmodels.ops.rssm` (observe/imagine, with fast paths);
this module owns the parameters, their DreamerV3-style initialisation and the KL
losses. With unimix probabilities ``q = post``, ``p = prior`` (``S`` variables of
``K`` classes, summed over both)::

    dyn = KL(sg(q) || p),   rep = KL(q || sg(p))
    loss = dyn_scale * max(dyn, free_nats) + rep_scale * max(rep, free_nats)

per step (free bits: below ``free_nats`` a term has no gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..ops.rssm import (ImagineStep, Imagination, RSSMImaginer, RSSMObservation, RSSMParams, initial_state,
                        prior_head, rssm_imagine_step, rssm_observe)

Tensor = torch.Tensor
INITIALS = ("learned", "zeros")


@dataclass
class RSSMConfig:
    """Sizes of the RSSM (small defaults; the paper's presets live in ``configs/size``)."""

    deter: int = 128          # H
    stoch: int = 8            # S categorical variables
    classes: int = 8          # K classes each
    hidden: int = 128         # I = U: input projection and head widths
    blocks: int = 2           # G GRU blocks (deter % blocks == 0)
    embed_dim: int = 64       # E
    action_dim: int = 4       # A (0 allowed)
    unimix: float = 0.01
    initial: str = "learned"  # "learned": h_0 = tanh(w), w learned (zero init), z_0 = prior mode at h_0; "zeros"
    impl: str = "auto"
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.initial not in INITIALS:
            raise ValueError(f"initial={self.initial!r} is not one of {INITIALS}.")
        for name in ("deter", "stoch", "hidden", "blocks", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.classes < 2 or self.action_dim < 0:
            raise ValueError(f"classes={self.classes} must be >= 2 and action_dim={self.action_dim} >= 0.")
        if self.deter % self.blocks:
            raise ValueError(f"deter={self.deter} must be a multiple of blocks={self.blocks}.")
        if not 0.0 <= self.unimix < 1.0:
            raise ValueError(f"unimix={self.unimix} must be in [0, 1).")


class RSSMState(NamedTuple):
    deter: Tensor  # [B, H]
    stoch: Tensor  # [B, S, K]


class KLLoss(NamedTuple):
    loss: Tensor  # [...] dyn_scale * max(dyn, free) + rep_scale * max(rep, free)
    dyn: Tensor   # [...] KL(sg(post) || prior), before free bits
    rep: Tensor   # [...] KL(post || sg(prior)), before free bits


def unimix_log_probs(logits: Tensor, unimix: float) -> Tensor:
    """``log((1 - unimix) softmax(logits) + unimix / K)`` over the last dim, in fp32."""
    log_soft = torch.log_softmax(logits.float(), dim=-1)
    if unimix == 0:
        return log_soft
    uniform = torch.full_like(log_soft, math.log(unimix / logits.shape[-1]))
    return torch.logaddexp(log_soft + math.log1p(-unimix), uniform)


def categorical_kl_loss(post_logits: Tensor, prior_logits: Tensor, *, unimix: float = 0.01, free_nats: float = 1.0,
                        dyn_scale: float = 0.5, rep_scale: float = 0.1) -> KLLoss:
    """DreamerV3's balanced KL with free bits; logits ``[..., S, K]`` -> ``[...]`` (fp32)."""
    if post_logits.shape != prior_logits.shape or post_logits.dim() < 2:
        raise ValueError(f"post and prior logits must share a shape [..., S, K], got {tuple(post_logits.shape)} "
                         f"and {tuple(prior_logits.shape)}.")
    log_q, log_p = unimix_log_probs(post_logits, unimix), unimix_log_probs(prior_logits, unimix)
    q = log_q.exp()
    dyn = (q.detach() * (log_q.detach() - log_p)).sum((-2, -1))
    rep = (q * (log_q - log_p.detach())).sum((-2, -1))
    loss = dyn_scale * dyn.clamp(min=free_nats) + rep_scale * rep.clamp(min=free_nats)
    return KLLoss(loss, dyn, rep)


def fan_avg_normal_(tensor: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """Truncated normal (at 2 std) with variance ``1 / mean(fan_in, fan_out)`` (DreamerV3)."""
    std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978  # std of N(0,1) truncated at +-2
    return nn.init.trunc_normal_(tensor, 0.0, std, -2.0 * std, 2.0 * std)


def _param_table(c: RSSMConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every parameter: shape and init (``"w"``: fan-avg, ``"0"``: zeros, ``"1"``: ones)."""
    sk, hg, u = c.stoch * c.classes, c.deter // c.blocks, c.hidden
    return {
        "in_weight": ((u, sk + c.action_dim), "w"), "in_bias": ((u,), "0"),
        "in_norm_weight": ((u,), "1"), "in_norm_bias": ((u,), "0"),
        "gru_weight": ((c.blocks, hg + u, 3 * hg), "w"), "gru_bias": ((c.blocks, 3 * hg), "0"),
        "gru_norm_weight": ((c.blocks, 3 * hg), "1"), "gru_norm_bias": ((c.blocks, 3 * hg), "0"),
        "prior_weight": ((u, c.deter), "w"), "prior_bias": ((u,), "0"),
        "prior_norm_weight": ((u,), "1"), "prior_norm_bias": ((u,), "0"),
        "prior_out_weight": ((sk, u), "w"), "prior_out_bias": ((sk,), "0"),
        "post_weight": ((u, c.deter), "w"), "post_embed_weight": ((u, c.embed_dim), "w"), "post_bias": ((u,), "0"),
        "post_norm_weight": ((u,), "1"), "post_norm_bias": ((u,), "0"),
        "post_out_weight": ((sk, u), "w"), "post_out_bias": ((sk,), "0"),
    }


class RSSM(nn.Module):
    """DreamerV3 RSSM: ``observe`` (posterior scan), ``imagine_step``/``imagine`` (prior),
    ``kl_loss``. Parameters are raw ``nn.Parameter``s named as :class:`RSSMParams`."""

    def __init__(self, config: RSSMConfig):
        super().__init__()
        self.config = config
        for name, (shape, _) in _param_table(config).items():
            setattr(self, name, nn.Parameter(torch.empty(shape)))
        if config.initial == "learned":
            self.initial = nn.Parameter(torch.zeros(config.deter))
        else:
            self.register_buffer("initial", torch.zeros(config.deter))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        with torch.no_grad():
            for name, (shape, kind) in _param_table(c).items():
                param = getattr(self, name)
                if kind == "w" and name == "gru_weight":
                    fan_avg_normal_(param, shape[1], shape[2])
                elif kind == "w":
                    fan_avg_normal_(param, shape[1], shape[0])
                else:
                    param.fill_(1.0 if kind == "1" else 0.0)
            self.initial.zero_()

    def params(self) -> RSSMParams:
        """The parameters as the ops take them. ``initial="learned"``: ``initial_deter =
        tanh(initial)`` and ``initial_stoch`` the one-hot mode of the prior at it (no
        gradient), as DreamerV3's 2023 code (``RSSM.initial``: ``stoch = get_stoch(deter)``);
        ``"zeros"``: both zero (``initial_stoch`` None)."""
        c = self.config
        tensors = {name: getattr(self, name) for name in _param_table(c)}
        if c.initial != "learned":
            return RSSMParams(**tensors, initial_deter=self.initial, stoch=c.stoch, classes=c.classes, eps=c.eps)
        params = RSSMParams(**tensors, initial_deter=torch.tanh(self.initial), stoch=c.stoch, classes=c.classes,
                            eps=c.eps)
        with torch.no_grad():
            logits = prior_head(params.initial_deter, params)
            # One-hot of the argmax without a host synchronisation (the imaginer captures this in a CUDA graph).
            mode = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return params._replace(initial_stoch=mode)

    def initial_state(self, batch: int) -> RSSMState:
        """``(h_0 [B, H], z_0 [B, S, K])`` (``h_0`` differentiable when learned; ``z_0`` the
        prior's mode at ``h_0`` when learned, else zeros)."""
        return RSSMState(*initial_state(self.params(), batch))

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state=None, **noise) -> RSSMObservation:
        """Posterior scan, see :func:`worldmodels.ops.rssm.rssm_observe` (``noise``/``seed``/
        ``generator`` keywords pass through). ``action[:, t]`` precedes observation ``t``."""
        return rssm_observe(embed, action, is_first, self.params(), unimix=self.config.unimix, state=state,
                            impl=self.config.impl, **noise)

    def last_state(self, observation: RSSMObservation) -> RSSMState:
        """The state after the last step, to carry into the next chunk."""
        return RSSMState(observation.deter[:, -1], observation.stoch[:, -1])

    def imagine_step(self, state, action: Tensor, **noise) -> ImagineStep:
        """One prior step from ``state = (h, z)`` with ``action [B, A]``."""
        return rssm_imagine_step(state[0], state[1], action, self.params(), unimix=self.config.unimix,
                                 impl=self.config.impl, **noise)

    def imagine(self, state, actions: Tensor, noise: Tensor | None = None) -> RSSMObservation:
        """Open-loop prior rollout over ``actions [B, T, A]`` (with autograd); ``noise``
        uniform ``[B, T, S, K]`` or None. Returns an :class:`RSSMObservation` whose
        ``stoch`` are prior samples and ``post_logits`` equal ``prior_logits``."""
        if actions.dim() != 3:
            raise ValueError(f"actions must be [B, T, A], got shape {tuple(actions.shape)}.")
        params, (deter, stoch) = self.params(), state
        deters, stochs, priors = [], [], []
        for t in range(actions.shape[1]):
            step_noise = None if noise is None else noise[:, t]
            deter, stoch, prior = rssm_imagine_step(deter, stoch, actions[:, t], params, unimix=self.config.unimix,
                                                    noise=step_noise, impl=self.config.impl)
            deters.append(deter), stochs.append(stoch), priors.append(prior)
        prior_seq = torch.stack(priors, 1)
        return RSSMObservation(torch.stack(deters, 1), torch.stack(stochs, 1), prior_seq, prior_seq)

    def imaginer(self, use_graph: bool | None = None) -> RSSMImaginer:
        """A no-grad horizon roller for the actor-critic (CUDA-graph captured on CUDA)."""
        return RSSMImaginer(self.params, unimix=self.config.unimix, impl=self.config.impl, use_graph=use_graph)

    @staticmethod
    def features(deter: Tensor, stoch: Tensor) -> Tensor:
        """``[h, flat(z)]``: ``[..., H], [..., S, K] -> [..., H + S*K]`` (the heads' input)."""
        return torch.cat([deter, stoch.flatten(-2).to(deter.dtype)], dim=-1)

    def kl_loss(self, post_logits: Tensor, prior_logits: Tensor, free_nats: float = 1.0, dyn_scale: float = 0.5,
                rep_scale: float = 0.1) -> KLLoss:
        """:func:`categorical_kl_loss` with this RSSM's unimix."""
        return categorical_kl_loss(post_logits, prior_logits, unimix=self.config.unimix, free_nats=free_nats,
                                   dyn_scale=dyn_scale, rep_scale=rep_scale)


__all__ = ["RSSM", "RSSMConfig", "RSSMState", "KLLoss", "categorical_kl_loss", "unimix_log_probs", "Imagination"]
