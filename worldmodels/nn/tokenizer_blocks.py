"""The convolutional encoder and decoder of IRIS's discrete autoencoder (the VQGAN
networks of taming-transformers, Esser et al. 2021, as IRIS configures them).

Encoder: ``conv_in``; per level ``num_res_blocks`` :class:`ResnetBlock` (each followed
by an :class:`AttnBlock` where the level's resolution is in ``attn_resolutions``) and a
:class:`Downsample` between levels; a middle block (res-attn-res); GroupNorm-Swish-conv
to ``z_channels``. The decoder mirrors it with ``num_res_blocks + 1`` blocks per level
and :class:`Upsample` (nearest, then a 3x3 conv) between levels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .tokenizer import TokenizerConfig

Tensor = torch.Tensor
MAX_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= 32`` that divides ``channels``."""
    groups = next(g for g in range(min(MAX_GROUPS, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """``x [N, C_in, H, W] -> [N, C_out, H, W]``: two (GroupNorm, Swish, 3x3 conv)
    layers, dropout before the second conv, a 1x1-conv shortcut when ``C_in != C_out``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H * W`` positions of ``x [N, C, H, W]``
    (GroupNorm, 1x1-conv q/k/v, softmax(q k^T / sqrt(C)) v, 1x1 projection), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H*W, C]
        return x + self.proj_out(out.transpose(1, 2).reshape(x.shape))


class Downsample(nn.Module):
    """``[N, C, H, W] -> [N, C, ceil(H/2), ceil(W/2)]``: pad right/bottom by one, then a
    3x3 stride-2 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """``[N, C, H, W] -> [N, C, 2H, 2W]``: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(in_channels: int, out_channels: int, blocks: int, attention: bool, dropout: float) -> list[nn.Module]:
    """``blocks`` residual blocks ``in -> out -> ... -> out``, each followed by
    attention when ``attention``."""
    layers: list[nn.Module] = []
    for index in range(blocks):
        layers.append(ResnetBlock(in_channels if index == 0 else out_channels, out_channels, dropout))
        if attention:
            layers.append(AttnBlock(out_channels))
    return layers


def _middle(channels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                         ResnetBlock(channels, channels, dropout))


def _head(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))


class Encoder(nn.Module):
    """Frames ``[N, in_channels, R, R]`` in [-1, 1] -> ``z [N, z_channels, r, r]``
    with ``r = R / 2**(len(ch_mult) - 1)``."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c = config
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        levels: list[nn.Module] = []
        channels, resolution = c.ch, c.resolution
        for index, mult in enumerate(c.ch_mult):
            layers = _level(channels, c.ch * mult, c.num_res_blocks, resolution in c.attn_resolutions, c.dropout)
            channels = c.ch * mult
            if index != len(c.ch_mult) - 1:
                layers.append(Downsample(channels))
                resolution //= 2
            levels.append(nn.Sequential(*layers))
        self.down = nn.Sequential(*levels)
        self.mid = _middle(channels, c.dropout)
        self.out = _head(channels, c.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mid(self.down(self.conv_in(x))))


class Decoder(nn.Module):
    """``z [N, z_channels, r, r]`` -> frames ``[N, in_channels, R, R]`` (unbounded;
    trained towards [-1, 1])."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c = config
        channels = c.ch * c.ch_mult[-1]
        resolution = c.latent_resolution
        self.conv_in = nn.Conv2d(c.z_channels, channels, 3, padding=1)
        self.mid = _middle(channels, c.dropout)
        levels: list[nn.Module] = []
        for index in reversed(range(len(c.ch_mult))):
            out_channels = c.ch * c.ch_mult[index]
            attention = resolution in c.attn_resolutions
            layers = _level(channels, out_channels, c.num_res_blocks + 1, attention, c.dropout)
            channels = out_channels
            if index != 0:
                layers.append(Upsample(channels))
                resolution *= 2
            levels.append(nn.Sequential(*layers))
        self.up = nn.Sequential(*levels)
        self.out = _head(channels, c.in_channels)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.up(self.mid(self.conv_in(z))))
