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


def block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm (8 groups when they divide), SiLU."""
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(groups, out_channels),
                         nn.SiLU())


def check_frames(frames: torch.Tensor, stack: int, channels: int, image_size: int) -> None:
    """Stop with the expected and the given shape unless ``frames`` is ``[B, K, C, H, W]``."""
    if frames.dim() != 5 or frames.shape[1:] != (stack, channels, image_size, image_size):
        raise ValueError(f"frames must be [B, {stack}, {channels}, {image_size}, {image_size}] in [0, 1], got "
                         f"{tuple(frames.shape)}.")


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """``images [..., H, W]`` edge-padded on the bottom and right to multiples of
    ``multiple`` (84 -> 96 for four halvings); unchanged when they already are."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return images
    flat = images.flatten(0, -4) if images.dim() > 4 else images
    padded = F.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
    return padded.view(*images.shape[:-2], height + pad_h, width + pad_w)


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
        if not c.widths:
            raise ValueError("model.widths must hold at least one width (one halving each).")
        self.embed = nn.Embedding(c.num_actions, c.action_embed)
        self.stem = block(c.stack * c.channels, c.widths[0])
        widths = [c.widths[0], *c.widths]
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), block(b, b))
                                  for a, b in zip(widths[:-1], widths[1:]))
        self.bottleneck_film = FiLM(c.action_embed, widths[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 4, stride=2, padding=1)
                                for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(block(2 * a, a) for a in widths[:-1])
        self.films = nn.ModuleList(FiLM(c.action_embed, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], c.channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)   # delta = 0: training starts from copy-last-frame
        nn.init.zeros_(self.head.bias)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The unclamped prediction ``last + delta`` (the loss sees it; :meth:`predict` clamps)."""
        c = self.config
        check_frames(frames, c.stack, c.channels, c.image_size)
        embedding = self.embed(actions)
        h = self.stem(pad_to_multiple(frames.flatten(1, 2), 2 ** len(c.widths)))
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.bottleneck_film(h, embedding)
        for up, merge, film, skip in zip(reversed(self.up), reversed(self.merge), reversed(self.films),
                                         reversed(skips)):
            h = F.silu(film(merge(torch.cat([up(h), skip], 1)), embedding))
        return frames[:, -1] + self.head(h)[..., :c.image_size, :c.image_size]

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


__all__ = ["FiLM", "NextFrameConfig", "NextFramePredictor", "block", "check_frames", "pad_to_multiple"]
