"""Output distributions of DreamerV3's heads (Hafner et al. 2023).

* :class:`TwoHotSymlog`: reward and critic heads, a softmax over bins evenly spaced
  in symlog space, trained with a two-hot cross-entropy.
* :class:`SymlogMSE`: vector observations, squared error in symlog space.
* :class:`MSE`: images, squared error summed over ``(H, W, C)``.

Both squared-error heads return the full sum of squared errors as their negative
log-likelihood (no factor 1/2), as danijar/dreamerv3 (``MSEDist``/``SymlogDist``,
2023 code) and NM512/dreamerv3-torch (``MSEDist``/``SymlogDist``) do; halving it
would double the weight of the KL, reward and continue terms against reconstruction.
* :class:`Bernoulli`: the continue head.
* :class:`OneHotDist`: discrete actions, a categorical with 1% uniform mixing.
* :class:`BoundedNormal`: continuous actions, ``tanh`` mean and a bounded std.

The maths runs in fp32 (fp64 for fp64 inputs); results come back in that dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.sampling import st_categorical

Tensor = torch.Tensor


def _maths(x: Tensor) -> Tensor:
    """``x`` in the maths dtype: fp64 stays fp64, everything else becomes fp32."""
    return x if x.dtype == torch.float64 else x.float()


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``, elementwise (any shape, floating)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """``sign(x) * (exp(|x|) - 1)``, the inverse of :func:`symlog`, elementwise."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symlog_bins(num_bins: int = 255, low: float = -20.0, high: float = 20.0, *, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``num_bins`` values evenly spaced over ``[low, high]`` (in symlog space), ``[K]``."""
    if num_bins < 2 or not low < high:
        raise ValueError(f"need num_bins >= 2 and low < high, got num_bins={num_bins}, low={low}, high={high}.")
    # low + (high - low) * i / (K - 1) in fp64, so that a symmetric range has an exact 0 bin.
    fractions = torch.arange(num_bins, device=device, dtype=torch.float64) / (num_bins - 1)
    return (low + (high - low) * fractions).to(dtype)


def two_hot(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of ``x [...]`` over sorted ``bins [K]`` -> weights ``[..., K]``.

    With ``b_i <= x < b_{i+1}`` the weights are ``w_{i+1} = (x - b_i) / (b_{i+1} - b_i)``
    and ``w_i = 1 - w_{i+1}`` (the closer bin gets more), so ``sum_k w_k b_k = x``;
    ``x`` outside ``[b_0, b_{K-1}]`` is clamped first (all weight on the edge bin).
    """
    x = x.to(bins.dtype).clamp(bins[0], bins[-1])
    below = (torch.searchsorted(bins, x.detach().contiguous(), right=True) - 1).clamp(0, bins.numel() - 2)
    low, high = bins[below], bins[below + 1]
    upper = (x - low) / (high - low)
    weights = torch.zeros(*x.shape, bins.numel(), dtype=bins.dtype, device=bins.device)
    weights.scatter_(-1, below.unsqueeze(-1), (1.0 - upper).unsqueeze(-1))
    weights.scatter_(-1, (below + 1).unsqueeze(-1), upper.unsqueeze(-1))
    return weights


class TwoHotSymlog:
    """Softmax over bins ``b`` evenly spaced in symlog space (DreamerV3 reward/critic).

    Args:
        logits: ``[..., K]`` floating; ``K`` bins spanning ``[low, high]``.
    ``mean() = symexp(sum_k softmax(logits)_k b_k)`` ``[...]``;
    ``log_prob(y) = sum_k twohot(symlog(y))_k log_softmax(logits)_k`` ``[...]``.
    """

    def __init__(self, logits: Tensor, low: float = -20.0, high: float = 20.0):
        self.logits = _maths(logits)
        self.bins = symlog_bins(logits.shape[-1], low, high, device=logits.device, dtype=self.logits.dtype)

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)

    def mean(self) -> Tensor:
        """``symexp(E[b])``, ``[...]``."""
        return symexp((self.probs * self.bins).sum(-1))

    def mode(self) -> Tensor:
        """Same as :meth:`mean` (as in DreamerV3)."""
        return self.mean()

    def log_prob(self, y: Tensor) -> Tensor:
        """Two-hot cross-entropy term for targets ``y [...]`` (raw, not symlog'ed) -> ``[...]``."""
        if y.shape != self.logits.shape[:-1]:
            raise ValueError(f"targets must have shape {tuple(self.logits.shape[:-1])}, got {tuple(y.shape)}.")
        target = two_hot(symlog(_maths(y.detach())), self.bins)
        return (target * torch.log_softmax(self.logits, dim=-1)).sum(-1)


class SymlogMSE:
    """Gaussian-like head in symlog space: ``pred [..., *event]`` with ``dims`` event axes.

    ``log_prob(y) = -sum_event (pred - symlog(y))^2`` (full sum of squared errors, as the
    references); ``mode() = symexp(pred)``.
    """

    def __init__(self, pred: Tensor, dims: int = 1):
        self.pred, self.dims = _maths(pred), dims

    def mode(self) -> Tensor:
        return symexp(self.pred)

    def mean(self) -> Tensor:
        return self.mode()

    def log_prob(self, y: Tensor) -> Tensor:
        """``y`` shaped like ``pred`` -> ``[...]`` (the leading axes)."""
        _check_like(y, self.pred)
        return -(self.pred - symlog(_maths(y))).square().sum(tuple(range(-self.dims, 0)))


class MSE:
    """Image head: ``pred [..., H, W, C]`` (with ``dims=3`` event axes) in target units.

    ``log_prob(x) = -sum_{H,W,C} (pred - x)^2`` (full sum of squared errors, as the
    references); ``mode() = mean() = pred``.
    """

    def __init__(self, pred: Tensor, dims: int = 3):
        self.pred, self.dims = _maths(pred), dims

    def mode(self) -> Tensor:
        return self.pred

    def mean(self) -> Tensor:
        return self.pred

    def log_prob(self, x: Tensor) -> Tensor:
        """``x`` shaped like ``pred`` -> ``[...]`` (the leading axes)."""
        _check_like(x, self.pred)
        return -(self.pred - _maths(x)).square().sum(tuple(range(-self.dims, 0)))


def _check_like(target: Tensor, pred: Tensor) -> None:
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match prediction shape {tuple(pred.shape)}.")


class Bernoulli:
    """Continue head from ``logits [...]``: ``p = sigmoid(logits)``.

    ``log_prob(c) = c log p + (1 - c) log(1 - p)`` elementwise for float ``c`` in {0, 1};
    ``mean() = p``; ``mode() = 1[p > 0.5]``.
    """

    def __init__(self, logits: Tensor):
        self.logits = _maths(logits)

    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def mode(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean().detach(), generator=generator)

    def log_prob(self, c: Tensor) -> Tensor:
        _check_like(c, self.logits)
        return -F.binary_cross_entropy_with_logits(self.logits, _maths(c), reduction="none")


class OneHotDist:
    """Categorical over the last axis of ``logits [..., K]`` with uniform mixing.

    ``probs = (1 - unimix) softmax(logits) + unimix / K``. ``sample()`` is a
    straight-through one-hot (forward one-hot, ``d sample / d probs = I``), via
    :func:`worldmodels.ops.sampling.st_categorical`.
    """

    def __init__(self, logits: Tensor, unimix: float = 0.01):
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix={unimix} must be in [0, 1).")
        self.logits, self.unimix = logits, unimix
        log_probs = torch.log_softmax(_maths(logits), dim=-1)
        if unimix > 0:
            uniform = torch.full_like(log_probs, math.log(unimix / logits.shape[-1]))
            log_probs = torch.logaddexp(log_probs + math.log1p(-unimix), uniform)
        self.log_probs = log_probs

    @property
    def probs(self) -> Tensor:
        return self.log_probs.exp()

    def sample(self, *, seed: int | None = None, noise: Tensor | None = None) -> Tensor:
        """Straight-through one-hot ``[..., K]`` (dtype of ``logits``); ``seed``/``noise`` as in
        :func:`~worldmodels.ops.sampling.st_categorical`."""
        return st_categorical(self.logits, self.unimix, seed=seed, noise=noise).sample

    def mode(self) -> Tensor:
        """One-hot of ``argmax(logits)`` ``[..., K]`` (no gradient)."""
        return F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).to(self.log_probs.dtype)

    def log_prob(self, onehot: Tensor) -> Tensor:
        """``sum_k onehot_k log probs_k`` ``[...]``."""
        _check_like(onehot, self.logits)
        return (_maths(onehot) * self.log_probs).sum(-1)

    def entropy(self) -> Tensor:
        """``-sum_k probs_k log probs_k`` ``[...]``."""
        return -(self.probs * self.log_probs).sum(-1)


def bound_action(action: Tensor, absmax: float = 1.0) -> Tensor:
    """``a * sg(absmax / max(absmax, |a|))`` elementwise: the forward value is ``a``
    clipped to ``[-absmax, absmax]``, and the gradient passes scaled by the (stopped)
    factor instead of vanishing outside the bounds. NM512/dreamerv3-torch applies it to
    the actor's samples (``ContDist(absmax=1.0)``), danijar/dreamerv3 (2023) to the
    RSSM's action input (``action_clip: 1.0``)."""
    if absmax <= 0:
        raise ValueError(f"absmax={absmax} must be > 0.")
    return action * (absmax / action.detach().abs().clamp(min=absmax))


class BoundedNormal:
    """Diagonal Gaussian over actions ``[..., A]`` with a bounded mean and std.

    ``mean = tanh(mean_raw)``, ``std = (max_std - min_std) sigmoid(std_raw + 2) + min_std``.
    Samples are not bounded here (see :func:`bound_action`). ``log_prob``/``entropy``
    sum over ``A``.
    """

    def __init__(self, mean_raw: Tensor, std_raw: Tensor, min_std: float = 0.1, max_std: float = 1.0):
        if mean_raw.shape != std_raw.shape:
            raise ValueError(f"mean_raw {tuple(mean_raw.shape)} and std_raw {tuple(std_raw.shape)} must match.")
        if not 0.0 < min_std <= max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got min_std={min_std}, max_std={max_std}.")
        self.mean_ = torch.tanh(_maths(mean_raw))
        self.std = (max_std - min_std) * torch.sigmoid(_maths(std_raw) + 2.0) + min_std

    def mean(self) -> Tensor:
        return self.mean_

    def mode(self) -> Tensor:
        return self.mean_

    def rsample(self, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised ``mean + std * eps``, ``eps ~ N(0, I)`` (or the given ``noise``)."""
        if noise is None:
            noise = torch.randn(self.mean_.shape, generator=generator, device=self.mean_.device,
                                dtype=self.mean_.dtype)
        return self.mean_ + self.std * noise

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.rsample(generator=generator).detach()

    def log_prob(self, action: Tensor) -> Tensor:
        """``sum_a [-0.5 ((x_a - mean_a) / std_a)^2 - log std_a - 0.5 log 2 pi]`` ``[...]``."""
        _check_like(action, self.mean_)
        z = (_maths(action) - self.mean_) / self.std
        return (-0.5 * z.square() - torch.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        """``sum_a [0.5 log(2 pi e) + log std_a]`` ``[...]``."""
        return (0.5 * math.log(2 * math.pi * math.e) + torch.log(self.std)).sum(-1)


__all__ = [
    "MSE",
    "Bernoulli",
    "BoundedNormal",
    "OneHotDist",
    "SymlogMSE",
    "TwoHotSymlog",
    "bound_action",
    "symexp",
    "symlog",
    "symlog_bins",
    "two_hot",
]
