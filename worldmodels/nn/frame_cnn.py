"""Δ-IRIS's residual frame CNNs (Micheli et al. 2024; vmicheli/delta-iris
``src/models/convnet.py``): a stack of residual blocks whose levels each multiply a
base width and optionally halve (encoder) or double (decoder) the resolution.

``frame_encoder``: ``[N, C_in, R, R] -> [N, latent_dim, R / 2**sum(down), ...]``::

    conv3x3(C_in -> ch) ; for m, d in zip(mult, down): ResidualBlock(-> m * ch), Downsample if d
    GroupNorm, SiLU, conv3x3(-> latent_dim)

``frame_decoder`` mirrors it (``latent_dim -> ... -> C_out`` with nearest upsampling).
The blocks are Δ-IRIS's own, parameter for parameter: :class:`ResidualBlock`
(``f = GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3`` plus a 1x1
``skip_projection`` when the width changes), :class:`Downsample` (a 2x2 stride-2 conv)
and :class:`Upsample` (nearest x2, then a 3x3 conv). GroupNorm uses 32 groups as
Δ-IRIS, or the largest count that divides a narrower width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MAX_GROUPS = 32


def delta_group_norm(channels: int) -> nn.GroupNorm:
    """``GroupNorm(32, channels)`` as Δ-IRIS (eps 1e-5), fewer groups for widths that 32 does not divide."""
    groups = next(g for g in range(min(MAX_GROUPS, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """Δ-IRIS's residual block ``[N, C_in, H, W] -> [N, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.f = nn.Sequential(
            delta_group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            delta_group_norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_projection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_projection(x) + self.f(x)


class Downsample(nn.Module):
    """``[N, C, H, W] -> [N, C, H / 2, W / 2]``: a 2x2 stride-2 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """``[N, C, H, W] -> [N, C, 2H, 2W]``: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def check_levels(mult: Sequence[int], down: Sequence[int], resolution: int, what: str) -> int:
    """Validate ``mult``/``down`` for frames of side ``resolution``; returns the output side."""
    if len(mult) != len(down) or not mult or min(mult) < 1 or any(d not in (0, 1) for d in down):
        raise ValueError(f"{what}: mult={list(mult)} and down={list(down)} must be equally long non-empty lists "
                         "of positive multipliers and 0/1 flags.")
    factor = 2 ** sum(down)
    if resolution % factor:
        raise ValueError(f"{what}: resolution={resolution} must be divisible by 2**sum(down) = {factor}.")
    return resolution // factor


def frame_encoder(in_channels: int, latent_dim: int, channels: int, mult: Sequence[int],
                  down: Sequence[int]) -> nn.Sequential:
    """Residual encoder ``[N, in_channels, R, R] -> [N, latent_dim, R / 2**sum(down), ...]``."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
    width = channels
    for m, d in zip(mult, down):
        layers.append(ResidualBlock(width, m * channels))
        width = m * channels
        if d:
            layers.append(Downsample(width))
    layers += [delta_group_norm(width), nn.SiLU(), nn.Conv2d(width, latent_dim, 3, padding=1)]
    return nn.Sequential(*layers)


def frame_decoder(latent_dim: int, out_channels: int, channels: int, mult: Sequence[int],
                  down: Sequence[int]) -> nn.Sequential:
    """Residual decoder ``[N, latent_dim, r, r] -> [N, out_channels, r * 2**sum(down), ...]``,
    the mirror of :func:`frame_encoder`."""
    widths = [m * channels for m in mult]
    layers: list[nn.Module] = [nn.Conv2d(latent_dim, widths[-1], 3, padding=1)]
    for index in reversed(range(len(mult))):
        if down[index]:
            layers.append(Upsample(widths[index]))
        target = widths[index - 1] if index else channels
        layers.append(ResidualBlock(widths[index], target))
    layers += [delta_group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


__all__ = ["Downsample", "ResidualBlock", "Upsample", "check_levels", "delta_group_norm", "frame_decoder", "frame_encoder"]
