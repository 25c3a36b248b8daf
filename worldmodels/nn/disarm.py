"""DisARM: an unbiased, low-variance gradient of ``E_{b ~ Bernoulli(sigmoid(a))}[f(b)]``
for factorised Bernoulli variables (Dong, Mnih & Tucker, NeurIPS 2020).

Two antithetic draws share one uniform ``u``: ``b = [u < sigmoid(a)]`` and ``b~ = [1 - u <
sigmoid(a)]``. With ``f`` evaluated once at each,

    g_t = 1/2 (f(b) - f(b~)) (-1)^{b~_t} [b_t != b~_t] sigmoid(|a_t|)

is an unbiased estimate of ``d E[f] / d a_t`` for every ``t`` at once. Unlike a
straight-through gradient it measures what a decision changes instead of the loss's
slope at the sampled value, so it stays right when ``f`` reacts to a flip in a way a
linearisation misses (VTA's boundaries: restarting a level).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def antithetic_pair(logits: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Two bool draws ``(b, b~)`` of ``Bernoulli(sigmoid(logits))`` from one uniform."""
    probs = torch.sigmoid(logits.detach().float())
    u = torch.rand(probs.shape, generator=generator, device=probs.device)
    return u < probs, (1 - u) < probs


def disarm_surrogate(logits: Tensor, first: Tensor, second: Tensor, f_first: Tensor, f_second: Tensor) -> Tensor:
    """A scalar whose gradient with respect to ``logits`` is the DisARM estimate of
    ``d sum_n E[f_n] / d logits`` and whose value is 0.

    Args:
        logits: ``[N, T]`` log-odds (the graph leads to them).
        first, second: the antithetic draws ``[N, T]`` bool of :func:`antithetic_pair`.
        f_first, f_second: ``[N]`` the objective of each row at each draw (detached).
    """
    sign = torch.where(second, -1.0, 1.0)
    flipped = (first != second).float()
    weight = 0.5 * (f_first - f_second).detach().unsqueeze(-1) * sign * flipped
    weight = weight * torch.sigmoid(logits.detach().float().abs())
    surrogate = (weight * logits.float()).sum()
    return surrogate - surrogate.detach()
