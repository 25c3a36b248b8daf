"""The autoencoder variant of the next-frame predictor: a convolutional autoencoder
learns a spatial latent of single frames, and an action-conditioned predictor maps the
latents of the K frames of a stack to the latent of the next frame, which the decoder
turns back into pixels.

Both train in one run, on one loss, with a stop-gradient between them:

- the autoencoder: the Huber reconstruction of the target frame of each sample (random
  frames of the training episodes, so the autoencoder sees the frames' distribution;
  the K input frames are only encoded, without gradient, which keeps a step about 3x
  cheaper than reconstructing all K + 1) plus the variance-target regulariser
  ``var_reg_lambda * (Var(z) - var_target)^2``, where ``Var(z)`` is the variance over
  the batch of each latent unit (population variance), averaged over the units. It pins
  the latents' scale, which the reconstruction alone leaves free, so the predictor's
  latent error keeps one meaning through training;
- the predictor: the mean squared error between its latent and the encoder's latent of
  the true next frame, both inputs and target detached from the encoder.

So the autoencoder is trained on its own (no gradient of the prediction reaches it), as
in a staged pipeline, while one checkpoint, one optimiser and the generic training loop
serve both. The price: the predictor chases a moving target while the autoencoder is
still improving (a staged run would fix the latents first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.image_quality import psnr_ref
from .model import FiLM, block, check_frames, pad_to_multiple


@dataclass
class LatentNextFrameConfig:
    """Shapes and loss weights of :class:`AutoencoderNextFrame`."""

    image_size: int = 64
    channels: int = 3
    stack: int = 4                    # K frames in
    num_actions: int = 15
    widths: list[int] = field(default_factory=lambda: [32, 64, 96])  # one stride-2 level each
    latent_channels: int = 16         # z: [latent_channels, image_size / 2^levels, same]
    predictor_width: int = 128
    predictor_blocks: int = 3
    action_embed: int = 64
    huber_delta: float = 0.1          # of the pixel reconstruction, pixels in [0, 1]
    var_reg_lambda: float = 1.0
    var_target: float = 1.0
    latent_weight: float = 1.0        # weight of the predictor's latent MSE


def variance_regulariser(z: torch.Tensor, var_lambda: float, var_target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(var_lambda * (Var(z) - var_target)^2, Var(z))`` for latents ``z [N, ...]``:
    ``Var(z)`` is the population variance over the ``N`` samples of each latent unit,
    averaged over the units."""
    variance = z.flatten(1).var(0, unbiased=False).mean()
    return var_lambda * (variance - var_target).square(), variance


class ConvAutoencoder(nn.Module):
    """Frames ``[N, C, H, W]`` in [0, 1] <-> spatial latents ``[N, latent_channels, h, w]``,
    ``h = ceil(H / 2^levels)`` (frames are edge-padded to a multiple of ``2^levels`` and
    the reconstruction cropped back). Each level is a stride-2 convolution and a 3x3
    block; nothing runs at full resolution but the first and the last convolution."""

    def __init__(self, channels: int, widths: list[int], latent_channels: int):
        super().__init__()
        self.levels = len(widths)
        sizes = [channels, *widths]
        self.encoder = nn.Sequential(
            *(nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(), block(b, b))
              for a, b in zip(sizes[:-1], sizes[1:])),
            nn.Conv2d(widths[-1], latent_channels, 1))
        ups = [nn.Sequential(nn.ConvTranspose2d(b, a, 4, stride=2, padding=1), nn.SiLU(), block(a, a))
               for a, b in zip(reversed(sizes[1:-1]), reversed(sizes[2:]))]
        self.decoder = nn.Sequential(block(latent_channels, widths[-1]), *ups,
                                     nn.ConvTranspose2d(widths[0], channels, 4, stride=2, padding=1))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(pad_to_multiple(frames, 2 ** self.levels))

    def decode(self, z: torch.Tensor, size: int) -> torch.Tensor:
        """Frames in [0, 1] (a sigmoid), cropped to ``size`` x ``size``."""
        return torch.sigmoid(self.decoder(z))[..., :size, :size]


class LatentPredictor(nn.Module):
    """Latents of K frames ``[B, K, c, h, w]`` and actions ``[B]`` -> the next latent:
    the last latent plus a change from convolution blocks, each followed by FiLM from
    the action embedding; the head starts at zero (copy the last latent)."""

    def __init__(self, config: LatentNextFrameConfig):
        super().__init__()
        c = config
        self.embed = nn.Embedding(c.num_actions, c.action_embed)
        self.stem = block(c.stack * c.latent_channels, c.predictor_width)
        self.blocks = nn.ModuleList(block(c.predictor_width, c.predictor_width) for _ in range(c.predictor_blocks))
        self.films = nn.ModuleList(FiLM(c.action_embed, c.predictor_width) for _ in range(c.predictor_blocks))
        self.head = nn.Conv2d(c.predictor_width, c.latent_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        embedding = self.embed(actions)
        h = self.stem(latents.flatten(1, 2))
        for conv, film in zip(self.blocks, self.films):
            h = h + film(conv(h), embedding)
        return latents[:, -1] + self.head(h)


class AutoencoderNextFrame(nn.Module):
    """``(frames [B, K, C, H, W] in [0, 1], actions [B] int64) -> next frame [B, C, H, W]``
    through the latents of a :class:`ConvAutoencoder` (see the module docstring)."""

    def __init__(self, config: LatentNextFrameConfig):
        super().__init__()
        self.config = c = config
        if not c.widths:
            raise ValueError("model.widths must hold at least one width (one halving each).")
        self.autoencoder = ConvAutoencoder(c.channels, list(c.widths), c.latent_channels)
        self.predictor = LatentPredictor(c)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        c = self.config
        check_frames(frames, c.stack, c.channels, c.image_size)
        latents = self.autoencoder.encode(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
        return self.autoencoder.decode(self.predictor(latents, actions), c.image_size)

    @torch.no_grad()
    def predict(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The next frame in [0, 1]."""
        return self(frames, actions)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Huber reconstruction of the target + variance regulariser over its latents
        (autoencoder) + ``latent_weight`` x latent MSE (predictor, on latents encoded
        without gradient); ``batch``: ``frames [B, K, C, H, W]``,
        ``actions [B]``, ``target [B, C, H, W]``."""
        c = self.config
        frames, target = batch["frames"], batch["target"]
        check_frames(frames, c.stack, c.channels, c.image_size)
        z = self.autoencoder.encode(target)
        reconstruction = self.autoencoder.decode(z, c.image_size)
        recon = F.huber_loss(reconstruction, target, delta=c.huber_delta)
        var_reg, variance = variance_regulariser(z, c.var_reg_lambda, c.var_target)
        with torch.no_grad():
            context = self.autoencoder.encode(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
        predicted = self.predictor(context, batch["actions"])
        latent_mse = (predicted - z.detach()).square().mean()
        loss = recon + var_reg + c.latent_weight * latent_mse
        with torch.no_grad():
            prediction = self.autoencoder.decode(predicted, c.image_size)
            metrics = {"recon": recon.detach(), "var_z": variance.detach(), "var_reg": var_reg.detach(),
                       "latent_mse": latent_mse.detach(), "recon_psnr": psnr_ref(reconstruction.detach(), target).mean(),
                       "mse": (prediction - target).square().mean(), "psnr": psnr_ref(prediction, target).mean()}
        return loss, metrics


__all__ = ["AutoencoderNextFrame", "ConvAutoencoder", "LatentNextFrameConfig", "LatentPredictor",
           "variance_regulariser"]
