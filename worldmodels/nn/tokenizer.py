"""IRIS's discrete autoencoder (Micheli et al. 2023): frames <-> grids of codebook tokens.

A frame ``x [C, R, R]`` in [0, 1] is scaled to [-1, 1], encoded to ``z [D, r, r]``
(``r = R / 2**(len(ch_mult) - 1)``; :class:`~worldmodels.nn.tokenizer_blocks.Encoder`
then a 1x1 pre-quant conv), quantised to the nearest of ``vocab_size`` codes
(:class:`~worldmodels.nn.vq.VectorQuantizer`; ``K = r * r`` tokens per frame, row-major)
and decoded (1x1 post-quant conv, :class:`~worldmodels.nn.tokenizer_blocks.Decoder`)
back to [0, 1]. IRIS: 64x64 RGB, 5 levels -> 4x4 = 16 tokens of 512 codes, D = 512.

Training loss on the [-1, 1] scale, as in IRIS::

    loss = commitment_weight    * vq_loss          (codebook + beta-weighted commitment)
         + reconstruction_weight * mean |x - x_hat|
         + l2_weight            * mean (x - x_hat)^2                (0 in IRIS)
         + perceptual_weight    * mean LPIPS(x, x_hat)              (only with weights)

IRIS's perceptual term is what makes small objects worth reconstructing; without its
weights, frames of a few small objects on a plain background (Catch) leave the L1 term
at the background everywhere, and the squared term (``l2_weight``, as Δ-IRIS's tokenizer
has) brings the objects back.

The perceptual term needs ``perceptual_weights_path`` (see :mod:`worldmodels.nn.perceptual`);
that frozen network is kept outside the module tree (not in ``parameters()`` or
``state_dict()``, so not in checkpoints) and follows the device of the observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .perceptual import LPIPS, MIN_SIZE, load_lpips
from .tokenizer_blocks import Decoder, Encoder
from .vq import VectorQuantizer, VQConfig, VQModuleOutput

__all__ = ["Decoder", "Encoder", "Tokenizer", "TokenizerConfig", "TokenizerEncoding", "as_unit_frames",
           "codebook_usage", "psnr"]

Tensor = torch.Tensor
_WEIGHTS = ("reconstruction_weight", "l2_weight", "commitment_weight", "perceptual_weight")


@dataclass
class TokenizerConfig:
    resolution: int = 64
    in_channels: int = 3
    z_channels: int = 512          # encoder output and code dimension D
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 1, 1, 1, 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8, 16)
    dropout: float = 0.0
    vocab_size: int = 512
    beta: float = 1.0              # commitment weight inside the VQ loss (IRIS: 1.0, its `beta = 1.0`)
    ema: bool = False
    dead_threshold: float = 0.0
    impl: str = "auto"             # of the VQ op
    reconstruction_weight: float = 1.0   # of the mean L1 error
    l2_weight: float = 0.0               # of the mean squared error (not in IRIS)
    commitment_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_weights_path: str | None = None

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        for name in ("resolution", "in_channels", "z_channels", "ch", "num_res_blocks", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult={list(self.ch_mult)} must be a non-empty list of positive multipliers.")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution={self.resolution} must be divisible by 2**(len(ch_mult) - 1) = {factor} "
                             f"(ch_mult={list(self.ch_mult)}); change one of them.")
        visited = [self.resolution // 2**i for i in range(len(self.ch_mult))]
        stray = [r for r in self.attn_resolutions if r not in visited]
        if stray:
            raise ValueError(f"attn_resolutions={list(self.attn_resolutions)}: {stray} never occur; "
                             f"the feature maps are {visited} pixels wide.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1).")
        self._check_loss_settings()
        self.vq_config()

    def _check_loss_settings(self) -> None:
        for name in _WEIGHTS:
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be finite and >= 0.")
        if self.uses_perceptual and (self.in_channels != 3 or self.resolution < MIN_SIZE):
            raise ValueError(f"the LPIPS perceptual loss needs RGB frames of at least {MIN_SIZE}x{MIN_SIZE}, "
                             f"got in_channels={self.in_channels}, resolution={self.resolution}; "
                             "set perceptual_weights_path=null.")

    @property
    def uses_perceptual(self) -> bool:
        return self.perceptual_weights_path is not None and self.perceptual_weight > 0

    @property
    def latent_resolution(self) -> int:
        """Side ``r`` of the token grid."""
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @property
    def tokens_per_frame(self) -> int:
        """``K = r * r`` (16 for IRIS's 64x64 frames and 5 levels)."""
        return self.latent_resolution**2

    def vq_config(self) -> VQConfig:
        return VQConfig(num_codes=self.vocab_size, dim=self.z_channels, beta=self.beta, ema=self.ema,
                        dead_threshold=self.dead_threshold, impl=self.impl)


class TokenizerEncoding(NamedTuple):
    z: Tensor        # [B, (T,) D, r, r] encoder output (after the pre-quant conv)
    z_q: Tensor      # [B, (T,) D, r, r] quantised, straight-through gradient to z
    tokens: Tensor   # [B, (T,) K] int64 in [0, vocab_size), K = r * r row-major


def as_unit_frames(obs: Tensor) -> Tensor:
    """Floating frames in [0, 1]: ``uint8`` is divided by 255, floats pass unchanged."""
    if obs.dtype == torch.uint8:
        return obs.float().div(255.0)
    if not obs.is_floating_point():
        raise TypeError(f"observations must be uint8 or floating frames in [0, 1], got dtype {obs.dtype}.")
    return obs


class Tokenizer(nn.Module):
    """Frames ``[B, (T,) C, R, R]`` in [0, 1] (or uint8) <-> tokens ``[B, (T,) K]``."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.pre_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.quantizer = VectorQuantizer(config.vq_config())
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.decoder = Decoder(config)
        lpips = load_lpips(config.perceptual_weights_path) if config.uses_perceptual else None
        self.__dict__["_perceptual"] = lpips

    @property
    def perceptual(self) -> LPIPS | None:
        """The frozen LPIPS network, or None when the perceptual term is off."""
        return self._perceptual

    def encode(self, obs: Tensor) -> TokenizerEncoding:
        """``obs [B, (T,) C, R, R]`` in [0, 1] (or uint8) -> ``z, z_q [B, (T,) D, r, r]``,
        ``tokens [B, (T,) K]``."""
        frames, lead = self._flatten_frames(obs)
        z, out = self._quantize(frames.mul(2.0).sub(1.0))
        tokens = out.tokens.flatten(1)
        return TokenizerEncoding(z.unflatten(0, lead), out.z_q.unflatten(0, lead), tokens.unflatten(0, lead))

    def decode(self, z_q: Tensor) -> Tensor:
        """``z_q [B, (T,) D, r, r]`` -> frames ``[B, (T,) C, R, R]`` on the [0, 1] scale,
        not clamped (differentiable)."""
        r, d = self.config.latent_resolution, self.config.z_channels
        if z_q.dim() not in (4, 5) or tuple(z_q.shape[-3:]) != (d, r, r):
            raise ValueError(f"z_q must be [B, (T,) {d}, {r}, {r}], got shape {list(z_q.shape)}.")
        lead = z_q.shape[:-3]
        return self._decode_latents(z_q.flatten(0, -4)).add(1.0).div(2.0).unflatten(0, lead)

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """``tokens [B, (T,) K]`` (int64) -> frames ``[B, (T,) C, R, R]`` clamped to [0, 1]."""
        c = self.config
        if tokens.dim() not in (2, 3) or tokens.shape[-1] != c.tokens_per_frame:
            raise ValueError(f"tokens must be [B, (T,) K={c.tokens_per_frame}], got shape {list(tokens.shape)}.")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size):
            raise ValueError(f"tokens must lie in [0, vocab_size={c.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}].")
        grid = tokens.reshape(-1, c.latent_resolution, c.latent_resolution)
        z_q = self.quantizer.embed(grid).unflatten(0, tokens.shape[:-1])
        return self.decode(z_q).clamp(0.0, 1.0)

    def encode_decode(self, obs: Tensor) -> Tensor:
        """Reconstructions ``[B, (T,) C, R, R]`` of ``obs`` through the tokens, in [0, 1]."""
        return self.decode(self.encode(obs).z_q).clamp(0.0, 1.0)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """IRIS's tokenizer loss on ``batch["observations"] [B, T, C, R, R]`` (float in
        [0, 1] or uint8). Metrics: ``reconstruction`` (mean L1 on [-1, 1]),
        ``commitment``, ``codebook``, ``l2`` (mean squared error on [-1, 1]),
        ``perceptual`` (only with LPIPS weights),
        ``psnr`` (dB, mean over frames, clamped reconstructions) and
        ``codebook_usage`` (fraction of the codes used in the batch)."""
        if "observations" not in batch:
            raise KeyError(f"the tokenizer's batch needs 'observations' [B, T, C, H, W], got keys {sorted(batch)}.")
        frames, _ = self._flatten_frames(batch["observations"])
        targets = frames.mul(2.0).sub(1.0)
        _, out = self._quantize(targets)
        recon = self._decode_latents(out.z_q)
        c = self.config
        error = targets - recon.float()
        reconstruction, l2 = error.abs().mean(), error.square().mean()
        loss = (c.commitment_weight * out.losses["loss"] + c.reconstruction_weight * reconstruction
                + c.l2_weight * l2)
        metrics = {"reconstruction": reconstruction.detach(), "l2": l2.detach(),
                   "commitment": out.losses["commitment"].detach(), "codebook": out.losses["codebook"].detach()}
        if self.perceptual is not None:
            perceptual = self.perceptual.to(targets.device)(targets, recon).mean()
            loss = loss + c.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual.detach()
        metrics["psnr"] = psnr(recon.detach().float().add(1.0).div(2.0).clamp(0.0, 1.0), frames)
        metrics["codebook_usage"] = codebook_usage(out.tokens, c.vocab_size)
        return loss, metrics

    def _flatten_frames(self, obs: Tensor) -> tuple[Tensor, torch.Size]:
        """``obs [B, (T,) C, R, R]`` -> (float frames ``[N, C, R, R]`` in [0, 1], the lead shape)."""
        c = self.config
        if obs.dim() not in (4, 5) or tuple(obs.shape[-3:]) != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"observations must be [B, (T,) {c.in_channels}, {c.resolution}, {c.resolution}] "
                             f"(channels first), got shape {list(obs.shape)}.")
        return as_unit_frames(obs).flatten(0, -4), obs.shape[:-3]

    def _quantize(self, x: Tensor) -> tuple[Tensor, VQModuleOutput]:
        """Frames ``[N, C, R, R]`` in [-1, 1] -> (``z [N, D, r, r]``, the quantiser's output)."""
        z = self.pre_quant_conv(self.encoder(x))
        return z, self.quantizer(z)

    def _decode_latents(self, z_q: Tensor) -> Tensor:
        """``z_q [N, D, r, r]`` -> frames ``[N, C, R, R]`` on the [-1, 1] scale."""
        return self.decoder(self.post_quant_conv(z_q))


def psnr(images: Tensor, targets: Tensor) -> Tensor:
    """Mean over frames of ``10 log10(1 / mse)`` for ``[N, ...]`` images in [0, 1]
    (mse floored at 1e-10, i.e. at most 100 dB)."""
    mse = (images.float() - targets.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return (-10.0 * torch.log10(mse)).mean()


def codebook_usage(tokens: Tensor, vocab_size: int) -> Tensor:
    """Fraction of the ``vocab_size`` codes that occur in ``tokens`` (any shape, int64)."""
    return torch.bincount(tokens.flatten(), minlength=vocab_size).gt(0).float().mean()
