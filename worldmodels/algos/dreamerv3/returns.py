"""Actor-critic targets of DreamerV3: lambda-returns, return normalisation, slow critic.

Indexing of an imagined trajectory of ``H`` steps from states ``s_0 .. s_H``:
``reward[:, t]`` and ``cont[:, t]`` are the reward and continue flag predicted for the
step ``s_t -> s_{t+1}`` (i.e. the heads applied to ``s_{t+1}``), and ``value[:, t]`` is
the critic at ``s_t``, so ``value`` has ``H + 1`` entries and ``value[:, H]`` bootstraps.
"""

from __future__ import annotations

import torch
from torch import nn

from ...rl.returns import lambda_returns  # noqa: F401  (re-exported)
from ...training import distributed

Tensor = torch.Tensor


class ReturnNormalizer(nn.Module):
    """Running percentile range of the returns (DreamerV3's return scale).

    ``update(R)``: ``low <- decay * low + (1 - decay) * quantile(R, low_q)`` and the same
    for ``high`` with ``high_q`` (both start at 0, no bias correction).
    ``scale() = max(max_scale, high - low)``: the advantages are divided by it, so
    returns spanning less than ``max_scale`` (default 1) are not scaled up.
    Buffers ``low``/``high`` (fp32 scalars) are saved in ``state_dict``. Under torchrun the
    quantiles are those of every rank's returns (gathered, as SheepRL's ``Moments``), so
    each rank keeps the same statistics, those of the global batch.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95, max_scale: float = 1.0):
        super().__init__()
        if not 0.0 <= decay < 1.0 or not 0.0 <= low < high <= 1.0 or max_scale <= 0:
            raise ValueError(f"need 0 <= decay < 1, 0 <= low < high <= 1 and max_scale > 0, got decay={decay}, "
                             f"low={low}, high={high}, max_scale={max_scale}.")
        self.decay, self.low_q, self.high_q, self.max_scale = decay, low, high, max_scale
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Fold the ``low_q``/``high_q`` quantiles (linear interpolation) of all of ``returns``
        (of every rank's, under torchrun: every rank calls it in the same step) in."""
        if returns.numel() == 0:
            raise ValueError("cannot update the return normaliser with an empty tensor.")
        flat = distributed.concat_ranks(returns.detach().reshape(-1).float().to(self.low.device))
        qs = torch.quantile(flat, torch.tensor([self.low_q, self.high_q], device=flat.device))
        self.low.lerp_(qs[0], 1.0 - self.decay)
        self.high.lerp_(qs[1], 1.0 - self.decay)

    def scale(self) -> Tensor:
        """``max(max_scale, high - low)``, a 0-d fp32 tensor."""
        return torch.clamp(self.high - self.low, min=self.max_scale)

    def forward(self, returns: Tensor) -> Tensor:
        """``update(returns)`` then return ``scale()``."""
        self.update(returns)
        return self.scale()


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, fraction: float = 0.02) -> None:
    """Slow-moving copy: ``theta_target <- (1 - fraction) * theta_target + fraction * theta_source``
    for every parameter and floating buffer (other buffers are copied). Modules must have
    the same parameter and buffer names and shapes."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in [0, 1].")
    for kind, tgt, src in (("parameters", dict(target.named_parameters()), dict(source.named_parameters())),
                           ("buffers", dict(target.named_buffers()), dict(source.named_buffers()))):
        if tgt.keys() != src.keys():
            raise ValueError(f"target and source {kind} differ: only in target {sorted(tgt.keys() - src.keys())}, "
                             f"only in source {sorted(src.keys() - tgt.keys())}.")
        for name, t in tgt.items():
            s = src[name]
            if t.shape != s.shape:
                raise ValueError(f"{name}: target shape {tuple(t.shape)} != source shape {tuple(s.shape)}.")
            if t.is_floating_point():
                t.lerp_(s.to(t.dtype), fraction)
            else:
                t.copy_(s)


__all__ = ["ReturnNormalizer", "ema_update_", "lambda_returns"]
