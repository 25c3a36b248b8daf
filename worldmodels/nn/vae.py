"""Convolutional beta-VAE (Kingma & Welling 2014; Higgins et al. 2017).

The vision model of Ha & Schmidhuber's World Models and the default experiment of
this package. With encoder q(z|x) = N(mu(x), diag(sigma(x)^2)) and prior N(0, I):

    loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)),
    KL   = -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2),

summed over pixels and latent units and averaged over the batch. ``likelihood``
chooses p(x|z): ``bernoulli`` (binary cross-entropy on logits, for [0,1] frames
such as bouncing balls) or ``gaussian`` (unit-variance: 1/2 squared error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvDecoder, ConvEncoder

LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass
class ConvVAEConfig:
    image_size: int = 32
    channels: int = 1
    latent_dim: int = 32
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    beta: float = 1.0
    likelihood: str = "bernoulli"

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.likelihood!r} is not one of {LIKELIHOODS}.")
        if self.latent_dim < 1 or self.channels < 1:
            raise ValueError(f"latent_dim={self.latent_dim} and channels={self.channels} must be >= 1.")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0.")


class ConvVAE(nn.Module):
    """Images ``[N, C, H, W]`` in [0, 1] <-> latents ``[N, latent_dim]``."""

    def __init__(self, config: ConvVAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = ConvEncoder(c.channels, c.image_size, c.widths, 2 * c.latent_dim)
        self.decoder = ConvDecoder(c.latent_dim, c.channels, c.image_size, c.widths)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``[N, latent_dim]``."""
        mu, logvar = self.encoder(images).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output ``[N, C, H, W]``: logits (bernoulli) or means (gaussian)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] ``[N, C, H, W]``."""
        out = self.decode_logits(z)
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out.clamp(0.0, 1.0)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean."""
        return self.decode(self.encode(images)[0])

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` images decoded from the prior N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(count, self.config.latent_dim, generator=generator, device="cpu").to(device)
        return self.decode(z)

    def losses(self, images: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-batch-mean reconstruction NLL, KL and the beta-weighted total."""
        out = self.decode_logits(z).float()
        if self.config.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(out, images, reduction="none")
        else:
            nll = 0.5 * (out - images).square()
        recon = nll.flatten(1).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp())).float().sum(1).mean()
        return {"loss": recon + self.config.beta * kl, "recon": recon, "kl": kl}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Negative ELBO (beta-weighted) on ``batch["image"]`` ``[N, C, H, W]`` in [0, 1]."""
        images = batch["image"]
        mu, logvar = self.encode(images)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        parts = self.losses(images, z, mu, logvar)
        return parts["loss"], {"recon": parts["recon"], "kl": parts["kl"]}
