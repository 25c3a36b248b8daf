"""GRU modules on the fused ops of :mod:`worldmodels.ops.gru`.

- :class:`GRUCell`: drop-in for ``torch.nn.GRUCell`` (same parameter names, shapes and
  initialisation, so ``load_state_dict`` from an ``nn.GRUCell`` works), optionally
  with LayerNorm on the gate pre-activations (``ln_weight``/``ln_bias`` ``[2, 3H]``).
- :class:`GRU`: the same parameters applied over a teacher-forced sequence
  ``[B, T, I]`` in one fused scan; returns the states ``[B, T, H]`` (what a loop over
  :class:`GRUCell` would stack). Its state dict is interchangeable with GRUCell's.
- :class:`BlockGRUCell` / :class:`BlockGRU`: DreamerV3's block-diagonal GRU,
  ``weight [G, Hg + I, 3 Hg]`` (rows ``:Hg`` act on the group's state), LayerNorm
  over each group's ``3 Hg`` pre-activations by default.

``impl`` chooses the op implementation ("auto", "triton", "cpp", "ref").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.gru import block_gru_cell, block_gru_scan, gru_cell, gru_scan


@dataclass
class GRUConfig:
    input_size: int
    hidden_size: int
    bias: bool = True
    layer_norm: bool = False
    impl: str = "auto"


@dataclass
class BlockGRUConfig:
    input_size: int
    hidden_size: int
    groups: int = 1
    layer_norm: bool = True
    bias: bool | None = None  # default: a bias only without LayerNorm
    impl: str = "auto"


def _check_sizes(input_size: int, hidden_size: int) -> None:
    if input_size < 1 or hidden_size < 1:
        raise ValueError(f"input_size={input_size} and hidden_size={hidden_size} must be >= 1.")


class _ClassicGRUBase(nn.Module):
    """Parameters of the classic cell, as ``nn.GRUCell`` (+ optional LayerNorm)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, layer_norm: bool = False,
                 impl: str = "auto"):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        self.input_size, self.hidden_size, self.impl = input_size, hidden_size, impl
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.ln_weight = nn.Parameter(torch.ones(2, 3 * hidden_size)) if layer_norm else None
        self.ln_bias = nn.Parameter(torch.zeros(2, 3 * hidden_size)) if layer_norm else None
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: GRUConfig):
        return cls(config.input_size, config.hidden_size, config.bias, config.layer_norm, config.impl)

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) as ``nn.GRUCell``; LayerNorm to identity."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)
        if self.ln_weight is not None:
            nn.init.ones_(self.ln_weight)
            nn.init.zeros_(self.ln_bias)

    def _weights(self):
        return (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.ln_weight, self.ln_bias)

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}, "
                f"layer_norm={self.ln_weight is not None}, impl={self.impl!r}")


class GRUCell(_ClassicGRUBase):
    """``forward(x [B, I] or [I], h [B, H] or [H] or None) -> h' [B, H] or [H]``."""

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
            h = None if h is None else h.unsqueeze(0)
        h = self._zeros(x) if h is None else h
        out = gru_cell(x, h, *self._weights(), impl=self.impl)
        return out.squeeze(0) if unbatched else out


class GRU(_ClassicGRUBase):
    """``forward(x [B, T, I], h0 [B, H] or None) -> states [B, T, H]`` (fused scan)."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"GRU expects batch-first inputs [B, T, I], got shape {list(x.shape)}.")
        h0 = self._zeros(x) if h0 is None else h0
        return gru_scan(x, h0, *self._weights(), impl=self.impl)


class _BlockGRUBase(nn.Module):
    """Parameters of DreamerV3's block-diagonal cell."""

    def __init__(self, input_size: int, hidden_size: int, groups: int = 1, layer_norm: bool = True,
                 impl: str = "auto", bias: bool | None = None):
        super().__init__()
        _check_sizes(input_size, hidden_size)
        if groups < 1 or hidden_size % groups:
            raise ValueError(f"hidden_size={hidden_size} must be a multiple of groups={groups} (>= 1).")
        hg = hidden_size // groups
        self.input_size, self.hidden_size, self.groups, self.impl = input_size, hidden_size, groups, impl
        self.weight = nn.Parameter(torch.empty(groups, hg + input_size, 3 * hg))
        use_bias = not layer_norm if bias is None else bias
        self.bias = nn.Parameter(torch.zeros(groups, 3 * hg)) if use_bias else None
        self.ln_weight = nn.Parameter(torch.ones(groups, 3 * hg)) if layer_norm else None
        self.ln_bias = nn.Parameter(torch.zeros(groups, 3 * hg)) if layer_norm else None
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: BlockGRUConfig):
        return cls(config.input_size, config.hidden_size, config.groups, config.layer_norm, config.impl,
                   config.bias)

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = Hg + I; zero bias."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _weights(self):
        return (self.weight, self.bias, self.ln_weight, self.ln_bias)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, groups={self.groups}, "
                f"layer_norm={self.ln_weight is not None}, impl={self.impl!r}")


class BlockGRUCell(_BlockGRUBase):
    """``forward(x [B, I], h [B, H] or None) -> h' [B, H]``."""

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h
        return block_gru_cell(x, h, *self._weights(), impl=self.impl)


class BlockGRU(_BlockGRUBase):
    """``forward(x [B, T, I], h0 [B, H] or None) -> states [B, T, H]`` (fused scan)."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"BlockGRU expects batch-first inputs [B, T, I], got shape {list(x.shape)}.")
        h0 = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0
        return block_gru_scan(x, h0, *self._weights(), impl=self.impl)
