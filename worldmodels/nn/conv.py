"""Convolutional image encoder and decoder shared by the world models.

Both halve/double the resolution per stage with 4x4 stride-2 convolutions, so an
``image_size`` of ``4 * 2**k`` uses ``k`` stages (32 -> 3 stages, 64 -> 4 stages).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def stages_for(image_size: int, widths: Sequence[int]) -> int:
    """Number of stride-2 stages that bring ``image_size`` down to 4x4."""
    stages = (image_size // 4).bit_length() - 1
    if image_size < 8 or 4 * 2**stages != image_size:
        raise ValueError(f"image_size={image_size} must be 4 * 2**k with k >= 1 (8, 16, 32, 64, ...).")
    if len(widths) < stages:
        raise ValueError(f"image_size={image_size} needs {stages} stage widths, got widths={list(widths)}.")
    return stages


class ConvEncoder(nn.Module):
    """Images ``[N, C, H, W]`` -> features ``[N, out_dim]``."""

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int], out_dim: int):
        super().__init__()
        widths = list(widths)[: stages_for(image_size, widths)]
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.SiLU()]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 16, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(images).flatten(1))


class ConvDecoder(nn.Module):
    """Features ``[N, in_dim]`` -> image logits/means ``[N, C, H, W]``."""

    def __init__(self, in_dim: int, out_channels: int, image_size: int, widths: Sequence[int]):
        super().__init__()
        widths = list(widths)[: stages_for(image_size, widths)][::-1]
        self.base_channels = widths[0]
        self.head = nn.Linear(in_dim, widths[0] * 16)
        layers: list[nn.Module] = []
        for width, next_width in zip(widths, widths[1:] + [None]):
            if next_width is None:
                layers.append(nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1))
            else:
                layers += [nn.ConvTranspose2d(width, next_width, 4, stride=2, padding=1), nn.SiLU()]
        self.deconvs = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.head(features)).view(-1, self.base_channels, 4, 4)
        return self.deconvs(x)
