"""Δ-IRIS's residual frame CNNs (Micheli et al. 2024): a stack of residual blocks whose
levels each multiply a base width and optionally halve (encoder) or double (decoder)
the resolution.

``frame_encoder``: ``[N, C_in, R, R] -> [N, latent_dim, R / 2**sum(down), ...]``::

    conv3x3(C_in -> ch) ; for m, d in zip(mult, down): ResBlock(-> m * ch), Downsample if d
    GroupNorm, SiLU, conv3x3(-> latent_dim)

``frame_decoder`` mirrors it (``latent_dim -> ... -> C_out`` with nearest upsampling).
The residual blocks, down- and upsampling are those of the IRIS tokenizer
(:mod:`worldmodels.nn.tokenizer_blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .tokenizer_blocks import Downsample, ResnetBlock, Upsample, group_norm


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
        layers.append(ResnetBlock(width, m * channels))
        width = m * channels
        if d:
            layers.append(Downsample(width))
    layers += [group_norm(width), nn.SiLU(), nn.Conv2d(width, latent_dim, 3, padding=1)]
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
        layers.append(ResnetBlock(widths[index], target))
    layers += [group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


__all__ = ["check_levels", "frame_decoder", "frame_encoder"]
