"""An action-conditioned convolutional next-frame predictor.

The K frames of the stack are concatenated on the channel axis and encoded by strided
convolutions; the decoder upsamples back with skip connections (a U-Net) and predicts
the change from the last frame, so the prediction is ``last + delta``. The action acts
through a learned embedding that scales and shifts the features of the bottleneck and
of every decoder level (FiLM, Perez et al. 2018): ``h * (1 + gamma(a)) + beta(a)``.
Oh et al. (2015) condition multiplicatively too, but on one flat encoding
(``W (W_h h * W_a a)``); FiLM keeps the spatial layout, which the skips need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.image_quality import psnr_ref, ssim_ref


@dataclass
class NextFrameConfig:
    """Shapes and loss weights of :class:`NextFramePredictor`."""

    image_size: int = 64
    channels: int = 3
    stack: int = 4                    # K frames in
    num_actions: int = 15
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # one stride-2 level each
    action_embed: int = 64
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    ssim_weight: float = 0.2          # weight of 1 - SSIM


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels),
                         nn.SiLU())


class FiLM(nn.Module):
    """Per-channel scale and shift of a feature map from an action embedding; starts as
    the identity (zero weights), so the action's effect is learned from there."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(embedding)[:, :, None, None].chunk(2, dim=1)
        return features * (1 + gamma) + beta


class NextFramePredictor(nn.Module):
    """``(frames [B, K, C, H, W] in [0, 1], actions [B] int64) -> next frame [B, C, H, W]``."""

    def __init__(self, config: NextFrameConfig):
        super().__init__()
        self.config = c = config
        if c.image_size % (2 ** len(c.widths)):
            raise ValueError(f"model.image_size={c.image_size} must be divisible by 2^{len(c.widths)} "
                             f"(one halving per entry of model.widths={c.widths}).")
        self.embed = nn.Embedding(c.num_actions, c.action_embed)
        self.stem = _block(c.stack * c.channels, c.widths[0])
        widths = [c.widths[0], *c.widths]
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), _block(b, b))
                                  for a, b in zip(widths[:-1], widths[1:]))
        self.bottleneck_film = FiLM(c.action_embed, widths[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 4, stride=2, padding=1)
                                for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(_block(2 * a, a) for a in widths[:-1])
        self.films = nn.ModuleList(FiLM(c.action_embed, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], c.channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)   # delta = 0: training starts from copy-last-frame
        nn.init.zeros_(self.head.bias)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The unclamped prediction ``last + delta`` (the loss sees it; :meth:`predict` clamps)."""
        c = self.config
        if frames.dim() != 5 or frames.shape[1:] != (c.stack, c.channels, c.image_size, c.image_size):
            raise ValueError(f"frames must be [B, {c.stack}, {c.channels}, {c.image_size}, {c.image_size}] "
                             f"in [0, 1], got {tuple(frames.shape)}.")
        embedding = self.embed(actions)
        h = self.stem(frames.flatten(1, 2))
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.bottleneck_film(h, embedding)
        for up, merge, film, skip in zip(reversed(self.up), reversed(self.merge), reversed(self.films),
                                         reversed(skips)):
            h = F.silu(film(merge(torch.cat([up(h), skip], 1)), embedding))
        return frames[:, -1] + self.head(h)

    @torch.no_grad()
    def predict(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The next frame, clamped to [0, 1]."""
        return self(frames, actions).clamp(0, 1)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``l1_weight * L1 + l2_weight * MSE + ssim_weight * (1 - SSIM)`` of the predicted
        next frame; ``batch``: ``frames [B, K, C, H, W]``, ``actions [B]``, ``target [B, C, H, W]``."""
        c = self.config
        prediction = self(batch["frames"], batch["actions"])
        target = batch["target"]
        l1 = (prediction - target).abs().mean()
        mse = (prediction - target).square().mean()
        loss = c.l1_weight * l1 + c.l2_weight * mse
        metrics = {"l1": l1.detach(), "mse": mse.detach()}
        if c.ssim_weight > 0:
            ssim = ssim_ref(prediction.clamp(0, 1), target).mean()
            loss = loss + c.ssim_weight * (1 - ssim)
            metrics["ssim"] = ssim.detach()
        metrics["psnr"] = psnr_ref(prediction.detach().clamp(0, 1), target).mean()
        return loss, metrics


__all__ = ["FiLM", "NextFrameConfig", "NextFramePredictor"]
