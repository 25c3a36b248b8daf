"""Building blocks of VTA's hierarchical RSSM: the boundary detector, the Gaussian
latent heads, the bounded log-odds and the Bernoulli KL."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

Tensor = torch.Tensor
DETECTOR_NORMS = ("group", "none")


class GaussianHead(nn.Module):
    """Features -> diagonal Normal over ``size`` units (std >= ``min_std``)."""

    def __init__(self, in_size: int, hidden: int, size: int, min_std: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_size, hidden), nn.ELU(), nn.Linear(hidden, 2 * size))
        self.min_std = min_std

    def forward(self, x: Tensor) -> Normal:
        mean, raw_std = self.net(x).chunk(2, dim=-1)
        return Normal(mean, F.softplus(raw_std) + self.min_std)


def soft_bound(logits: Tensor, bound: float | None) -> Tensor:
    """``bound * tanh(logits / bound)``: log-odds kept inside ``(-bound, bound)``, the
    identity near 0, so every boundary probability stays above ``sigmoid(-bound)``.

    This bounds the probabilities, not the gradient: tanh saturates as the sigmoid
    does, so once the raw log-odds run far past ``bound`` their gradient vanishes all
    the same. What keeps the detector trainable is its normalised hidden layers
    (:class:`BoundaryDetector`) and the cost of over-long segments in ``KL_mask``."""
    return logits if bound is None else bound * torch.tanh(logits / bound)


class BoundaryDetector(nn.Module):
    """Posterior boundary log-odds ``[B, L]`` from embeddings ``[B, L, F]``: a stack of
    non-causal Conv1d layers (kernel 3, so ``m_t`` sees the frames around ``t``), then
    a kernel-3 output layer.

    With ``norm="group"`` every hidden layer is Conv1d without bias -> GroupNorm with
    one channel per group -> ELU: each feature is centred and scaled over the frames of
    its own sequence. The original VTA code normalises these layers too (BatchNorm,
    over the batch); normalising over time instead keeps the detector independent of
    the batch and makes it compare frames from the first update, so the log-odds differ
    between frames and the shared boundary rate cannot race to -30 on its own (what an
    un-normalised stack does within ~20 Adam steps, freezing the detector).
    ``norm="none"``: plain Conv1d layers with biases. The output bias starts at the
    log-odds of ``init_rate``, the boundary rate the detector starts from.

    The convolutions pad by repeating the end frames, not with zeros: zero padding
    marks the frames near either end of the sequence, and a detector that can tell
    where it is fires by position (a boundary on the window's first frames) instead
    of by content. With ``layers`` hidden layers a frame sees ``layers + 1`` frames on
    each side, so VTA keeps at least that many frames before (``init_size``) and after
    (``algo.margin``) the modelled window.
    """

    def __init__(self, in_size: int, hidden: int, layers: int, norm: str = "group", init_rate: float = 0.5):
        super().__init__()
        if not 0 < init_rate < 1:
            raise ValueError(f"the detector's initial boundary rate {init_rate} must lie in (0, 1).")
        if norm not in DETECTOR_NORMS:
            raise ValueError(f"detector norm={norm!r} is not one of {DETECTOR_NORMS}.")
        blocks: list[nn.Module] = []
        for index in range(layers):
            width_in = in_size if index == 0 else hidden
            blocks.append(nn.Conv1d(width_in, hidden, 3, padding=1, bias=norm == "none", padding_mode="replicate"))
            if norm == "group":
                blocks.append(nn.GroupNorm(hidden, hidden))
            blocks.append(nn.ELU())
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.Conv1d(hidden, 1, 3, padding=1, padding_mode="replicate")
        nn.init.constant_(self.out.bias, math.log(init_rate / (1 - init_rate)))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x.transpose(1, 2))).squeeze(1)


def bernoulli_log_probs(logits: Tensor) -> Tensor:
    """``[log p(m = 0), log p(m = 1)]`` ``[..., 2]`` from log-odds ``[...]``."""
    return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)


def bernoulli_kl(q_log_probs: Tensor, p_log_probs: Tensor) -> Tensor:
    """``KL(q || p)`` of two-class distributions given as log-probabilities ``[..., 2]``
    (a class with ``q = 0`` contributes nothing, so point masses are allowed)."""
    q_log_probs = q_log_probs.clamp_min(-1e4)  # log 0 -> a finite stand-in: 0 * finite = 0
    return (q_log_probs.exp() * (q_log_probs - p_log_probs)).sum(-1)
