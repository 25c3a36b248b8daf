"""DreamerV3's MLP: ``(Linear -> LayerNorm -> SiLU) x layers``, optional output Linear.

Weights use DreamerV3's initialisation: truncated normal with variance
``1 / mean(fan_in, fan_out)``, biases zero. ``zero_init_output`` zeroes the output
layer so that the first predictions are exactly 0 (reward head, critic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ..ops.onehot_linear import onehot_linear
from .rssm import fan_avg_normal_

Tensor = torch.Tensor

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity,
}
NORM_EPS = 1e-3


class OneHotInputs(NamedTuple):
    """Features ``[x, flat(z)]`` by parts, for :meth:`MLP.forward_onehot`: ``x [..., D]``,
    the class indices ``index [..., S]`` of the exactly one-hot ``z [..., S, K]``, and ``z``
    itself when it needs a gradient (straight-through samples), else None."""

    x: Tensor
    index: Tensor
    z: Tensor | None = None


def linear_by_parts(linear: nn.Linear, parts: OneHotInputs) -> Tensor:
    """``linear([x, flat(z)])`` from ``parts``: the weight's columns past ``x``'s are
    gathered where ``index`` selects them
    (:func:`~worldmodels.ops.onehot_linear.onehot_linear`), not multiplied by ``z``."""
    dims = parts.x.shape[-1]
    return onehot_linear(parts.x, parts.index, linear.weight[:, :dims], linear.weight[:, dims:], linear.bias,
                         z=parts.z)


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def init_fan_avg_(module: nn.Module) -> None:
    """DreamerV3 init of every Linear/Conv2d/ConvTranspose2d inside ``module``:
    weights ~ truncated normal with variance ``2 / (fan_in + fan_out)``, biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            weight = layer.weight
            receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
            with torch.no_grad():
                # fan_avg is symmetric in (in, out), so the layout of ConvTranspose2d does not matter.
                fan_avg_normal_(weight, weight.shape[1] * receptive, weight.shape[0] * receptive)
                if layer.bias is not None:
                    layer.bias.zero_()


class MLP(nn.Module):
    """``x [..., in_dim] -> [..., out_dim]`` (``[..., units]`` when ``out_dim`` is None).

    Each hidden layer is ``h = act(LayerNorm(W h))`` (``act(W h + b)`` without norm;
    LayerNorm eps 1e-3); then ``y = W_out h + b_out`` when ``out_dim`` is given.

    Args:
        in_dim: input features. out_dim: output features, or None for no output layer.
        units: hidden width. layers: number of hidden layers (>= 0).
        norm: LayerNorm after each hidden Linear (the Linear then has no bias).
        act: activation name, see :data:`ACTIVATIONS`.
        zero_init_output: zero the output layer's weight and bias (needs ``out_dim``).
    """

    def __init__(self, in_dim: int, out_dim: int | None, units: int, layers: int, norm: bool = True,
                 act: str = "silu", zero_init_output: bool = False):
        super().__init__()
        if in_dim < 1 or units < 1 or layers < 0 or (out_dim is not None and out_dim < 1):
            raise ValueError(f"need in_dim, units, out_dim >= 1 and layers >= 0, got in_dim={in_dim}, "
                             f"out_dim={out_dim}, units={units}, layers={layers}.")
        if out_dim is None and (layers == 0 or zero_init_output):
            raise ValueError("out_dim=None needs layers >= 1 and zero_init_output=False.")
        hidden: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            hidden.append(nn.Linear(width, units, bias=not norm))
            if norm:
                hidden.append(nn.LayerNorm(units, eps=NORM_EPS))
            hidden.append(activation(act))
            width = units
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(width, out_dim) if out_dim is not None else None
        self.in_dim, self.out_dim = in_dim, out_dim if out_dim is not None else units
        self.zero_init_output = zero_init_output
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_fan_avg_(self)
        for layer in self.hidden:
            if isinstance(layer, nn.LayerNorm):
                layer.reset_parameters()
        if self.out is not None and self.zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP expects inputs [..., {self.in_dim}], got shape {tuple(x.shape)}.")
        # Rows as one 2-D matrix: a strided 3-D input (a slice such as feat[:, 1:]) would
        # otherwise reach torch.matmul's batched path, one small GEMM per leading index.
        lead = x.shape[:-1]
        x = self.hidden(x.reshape(-1, self.in_dim))
        x = self.out(x) if self.out is not None else x
        return x.reshape(*lead, x.shape[-1])

    def forward_onehot(self, x: Tensor, index: Tensor, z: Tensor | None = None) -> Tensor:
        """``forward([x, flat(one_hot(index, K))])`` without building the one-hot part:
        the first Linear gathers the weight columns that ``index [..., S]`` selects
        (:func:`~worldmodels.ops.onehot_linear.onehot_linear`). For inputs whose last
        ``in_dim - D`` features are ``S`` exact one-hot groups of ``K`` classes, ``x [..., D]``;
        ``z [..., S, K]``: those latents, when they need a gradient (straight-through samples)."""
        first = self.hidden[0] if len(self.hidden) else self.out
        y = linear_by_parts(first, OneHotInputs(x, index, z))
        for layer in self.hidden[1:]:
            y = layer(y)
        return self.out(y) if len(self.hidden) and self.out is not None else y

    def forward_parts(self, x: Tensor, parts: OneHotInputs | None = None) -> Tensor:
        """``self(x)``, or :meth:`forward_onehot` on ``parts`` (``x`` by parts) when given."""
        return self(x) if parts is None else self.forward_onehot(*parts)


__all__ = ["ACTIVATIONS", "MLP", "OneHotInputs", "activation", "init_fan_avg_", "linear_by_parts"]
