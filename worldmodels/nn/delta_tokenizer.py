"""Δ-IRIS's context-aware tokenizer (Micheli, Alonso and Fleuret 2024): a frame is
encoded as a few tokens that describe how it differs from the previous frame under
the action taken, not the frame itself.

Shapes: frames ``[B, T, C, R, R]`` in [0, 1] (or uint8), actions ``[B, T]`` int64;
``r = R / 2**sum(down)`` is the latent side, ``g = sqrt(K)`` the token grid side and
``p = r / g`` the side of the latent patch one token stands for.

* encode: ``E(x_{t-1}, a_{t-1}, x_t)``: the two frames (in [0, 1], as Δ-IRIS) and a
  learned ``R x R`` plane per action are stacked as ``2C + 1`` channels and encoded to
  ``[latent_dim, r, r]``; each of the ``K = g * g`` patches is flattened
  (``latent_dim * p * p``), projected to ``code_dim``, L2-normalised and quantised
  against ``vocab_size`` codes (:class:`~worldmodels.nn.vq.VectorQuantizer` with EMA
  codes and dead-code restarts: the fused VQ op), then projected back;
* decode: ``D(x_{t-1}, a_{t-1}, z_t)``: features of the previous frame
  (``frame_latent_dim`` channels at ``r x r``), ``action_channels`` learned planes of
  the action and the dequantised patches are stacked and decoded to ``x_t`` (in [0, 1]).

Loss over the valid pairs (both frames real), on the [0, 1] scale as in Δ-IRIS
(vmicheli/delta-iris ``Tokenizer.compute_loss``) with ``delta = x_t - D(...)``::

    loss = l1_weight * mean |delta| + l2_weight * mean delta^2
         + worst_pixel_weight * mean_frames max_pixels delta^2 + commitment (beta * mean (z - sg(q))^2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from .frame_cnn import check_levels, frame_decoder, frame_encoder
from .tokenizer import as_unit_frames, codebook_usage, psnr
from .vq import VectorQuantizer, VQConfig

__all__ = ["DeltaEncoding", "DeltaTokenizer", "DeltaTokenizerConfig", "valid_pairs"]

Tensor = torch.Tensor


@dataclass
class DeltaTokenizerConfig:
    num_actions: int
    resolution: int = 64
    in_channels: int = 3
    tokens_per_frame: int = 4            # K, a perfect square
    vocab_size: int = 1024
    code_dim: int = 64                   # dimension of the (unit) codes
    latent_dim: int = 64                 # encoder output channels
    channels: int = 64                   # encoder/decoder base width
    mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    down: tuple[int, ...] = (1, 0, 1, 1, 0)
    frame_channels: int = 64             # the decoder's previous-frame CNN
    frame_latent_dim: int = 8
    action_channels: int = 4             # learned action planes given to the decoder
    beta: float = 0.02                   # commitment weight
    decay: float = 0.99                  # EMA of the codes
    dead_threshold: float = 0.1          # restart codes whose EMA count falls below it (0: never)
    restart_updates: int | None = 0      # Δ-IRIS: restarts only while usage entropy < log2(K) - 2 and in the
                                         # first N updates (Crafter 0, Atari 400; None: always)
    impl: str = "auto"                   # of the VQ op
    l1_weight: float = 0.1
    l2_weight: float = 1.0
    worst_pixel_weight: float = 0.01

    def __post_init__(self) -> None:
        self.mult, self.down = tuple(int(m) for m in self.mult), tuple(int(d) for d in self.down)
        for name in ("num_actions", "resolution", "in_channels", "tokens_per_frame", "vocab_size", "code_dim",
                     "latent_dim", "channels", "frame_channels", "frame_latent_dim", "action_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DeltaTokenizerConfig: {name} must be an int >= 1, got {value!r}.")
        side = check_levels(self.mult, self.down, self.resolution, "DeltaTokenizerConfig")
        grid = math.isqrt(self.tokens_per_frame)
        if grid * grid != self.tokens_per_frame or side % grid:
            raise ValueError(f"DeltaTokenizerConfig: tokens_per_frame={self.tokens_per_frame} must be a perfect "
                             f"square whose root divides the latent side {side} (resolution {self.resolution} / "
                             f"2**sum(down)).")
        for name in ("l1_weight", "l2_weight", "worst_pixel_weight"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"DeltaTokenizerConfig: {name}={getattr(self, name)} must be finite and >= 0.")
        self.vq_config()

    @property
    def latent_resolution(self) -> int:
        """Side ``r`` of the encoder's output."""
        return self.resolution // 2 ** sum(self.down)

    @property
    def token_grid(self) -> int:
        """Side ``g = sqrt(K)`` of the token grid."""
        return math.isqrt(self.tokens_per_frame)

    @property
    def patch(self) -> int:
        """Side ``p = r / g`` of the latent patch one token covers."""
        return self.latent_resolution // self.token_grid

    def vq_config(self) -> VQConfig:
        return VQConfig(num_codes=self.vocab_size, dim=self.code_dim, beta=self.beta, ema=True, decay=self.decay,
                        dead_threshold=self.dead_threshold, impl=self.impl, restart_updates=self.restart_updates)


class DeltaEncoding(NamedTuple):
    q: Tensor        # [B, T, latent_dim, r, r] dequantised patches (straight-through to the encoder)
    tokens: Tensor   # [B, T, K] int64 in [0, vocab_size)
    losses: dict     # "commitment" (scalar, weighted) and "codebook" (detached; EMA codes)


def valid_pairs(mask_padding: Tensor) -> Tensor:
    """``mask_padding [B, T]`` -> ``[B, T - 1]``: both frames of the pair ``(t, t + 1)`` are real."""
    mask = mask_padding.bool()
    return mask[:, 1:] & mask[:, :-1]


class DeltaTokenizer(nn.Module):
    """``(x_{t-1}, a_{t-1}, x_t) <-> K`` tokens; see the module docstring."""

    def __init__(self, config: DeltaTokenizerConfig):
        super().__init__()
        self.config = config
        c, side = config, config.latent_resolution
        self.encoder_action = nn.Embedding(c.num_actions, c.resolution * c.resolution)
        self.encoder = frame_encoder(2 * c.in_channels + 1, c.latent_dim, c.channels, c.mult, c.down)
        patch_dim = c.latent_dim * c.patch * c.patch
        self.pre_quant = nn.Linear(patch_dim, c.code_dim)
        self.quantizer = VectorQuantizer(c.vq_config())
        self.post_quant = nn.Linear(c.code_dim, patch_dim)
        self.frame_cnn = frame_encoder(c.in_channels, c.frame_latent_dim, c.frame_channels, c.mult, c.down)
        self.decoder_action = nn.Embedding(c.num_actions, c.action_channels * side * side)
        decoder_in = c.frame_latent_dim + c.action_channels + c.latent_dim
        self.decoder = frame_decoder(decoder_in, c.in_channels, c.channels, c.mult, c.down)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, prev_frames: Tensor, actions: Tensor, frames: Tensor) -> DeltaEncoding:
        """``prev_frames, frames [B, T, C, R, R]`` (uint8 or [0, 1]), ``actions [B, T]`` int64
        (taken at ``prev_frames``) -> :class:`DeltaEncoding` of ``frames`` given the past."""
        prev, lead = self._frames(prev_frames, "prev_frames")
        new, lead_new = self._frames(frames, "frames")
        act = self._actions(actions, lead)
        if lead_new != lead:
            raise ValueError(f"prev_frames {list(lead)} and frames {list(lead_new)} differ in [B, T].")
        c = self.config
        plane = self.encoder_action(act).view(-1, 1, c.resolution, c.resolution)
        z = self.encoder(torch.cat([prev, plane, new], dim=1))
        g = c.token_grid
        patches = rearrange(z, "n e (h k) (w l) -> n (h w) (k l e)", h=g, w=g)
        unit = nn.functional.normalize(self.pre_quant(patches), dim=-1)
        out = self.quantizer(unit, channels_last=True)
        q = self._unpatch(self.post_quant(out.z_q))
        losses = {"commitment": out.losses["commitment"], "codebook": out.losses["codebook"]}
        return DeltaEncoding(q.unflatten(0, lead), out.tokens.unflatten(0, lead), losses)

    def decode(self, prev_frames: Tensor, actions: Tensor, q: Tensor) -> Tensor:
        """``prev_frames [B, T, C, R, R]``, ``actions [B, T]``, ``q [B, T, latent_dim, r, r]``
        -> frames ``[B, T, C, R, R]`` on the [0, 1] scale, not clamped (differentiable)."""
        prev, lead = self._frames(prev_frames, "prev_frames")
        act = self._actions(actions, lead)
        c, side = self.config, self.config.latent_resolution
        if tuple(q.shape) != (*lead, c.latent_dim, side, side):
            raise ValueError(f"q must be [{', '.join(map(str, lead))}, {c.latent_dim}, {side}, {side}], "
                             f"got {list(q.shape)}.")
        features = self.frame_cnn(prev)
        planes = self.decoder_action(act).view(-1, c.action_channels, side, side)
        out = self.decoder(torch.cat([features, planes, q.flatten(0, 1).to(features.dtype)], dim=1))
        return out.unflatten(0, lead)

    def decode_tokens(self, prev_frames: Tensor, actions: Tensor, tokens: Tensor) -> Tensor:
        """``tokens [B, T, K]`` int64 -> frames ``[B, T, C, R, R]`` clamped to [0, 1]."""
        c = self.config
        if tokens.dim() != 3 or tokens.shape[-1] != c.tokens_per_frame:
            raise ValueError(f"tokens must be [B, T, K={c.tokens_per_frame}], got shape {list(tokens.shape)}.")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size):
            raise ValueError(f"tokens must lie in [0, vocab_size={c.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}].")
        codes = self.quantizer.embed(tokens.flatten(0, 1), channels_last=True)
        q = self._unpatch(self.post_quant(codes)).unflatten(0, tokens.shape[:2])
        return self.decode(prev_frames, actions, q).clamp(0.0, 1.0)

    def encode_decode(self, prev_frames: Tensor, actions: Tensor, frames: Tensor) -> Tensor:
        """Reconstructions ``[B, T, C, R, R]`` of ``frames`` through their tokens, in [0, 1]."""
        encoding = self.encode(prev_frames, actions, frames)
        return self.decode(prev_frames, actions, encoding.q).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ training

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Δ-IRIS's tokenizer loss on sequences: ``observations [B, T, C, R, R]``,
        ``actions [B, T]`` (taken at each frame), ``mask_padding [B, T]``; every pair of
        consecutive real frames is one example (only those are encoded). Metrics:
        ``l1``, ``l2``, ``worst_pixel``, ``commitment``, ``psnr`` of the reconstructions
        and ``copy_psnr`` (the previous frame as the prediction), ``codebook_usage``."""
        missing = sorted({"observations", "actions", "mask_padding"} - set(batch))
        if missing:
            raise KeyError(f"DeltaTokenizer.compute_loss: the batch lacks {missing}.")
        obs, actions = batch["observations"], batch["actions"]
        if obs.dim() != 5 or obs.shape[1] < 2:
            raise ValueError(f"observations must be [B, T >= 2, C, R, R], got {list(obs.shape)}.")
        frames = as_unit_frames(obs)
        valid = valid_pairs(batch["mask_padding"])
        prev, act, target = frames[:, :-1][valid][:, None], actions[:, :-1][valid][:, None], frames[:, 1:][valid]
        c = self.config
        if len(target) == 0:   # no pair of real frames: a zero loss that keeps the graph
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return zero, {}
        encoding = self.encode(prev, act, target[:, None])
        recon = self.decode(prev, act, encoding.q)[:, 0]
        delta = target - recon.float()      # on the [0, 1] scale, as Δ-IRIS
        l1, l2 = delta.abs().mean(), delta.square().mean()
        worst = delta.square().flatten(1).amax(1).mean()
        loss = c.l1_weight * l1 + c.l2_weight * l2 + c.worst_pixel_weight * worst + encoding.losses["commitment"]
        metrics = {"l1": l1.detach(), "l2": l2.detach(), "worst_pixel": worst.detach(),
                   "commitment": encoding.losses["commitment"].detach(),
                   "codebook_usage": codebook_usage(encoding.tokens, c.vocab_size),
                   "psnr": psnr(recon.detach().float().clamp(0.0, 1.0), target),
                   "copy_psnr": psnr(prev[:, 0], target)}
        return loss, metrics

    # ------------------------------------------------------------------ helpers

    def _unpatch(self, patches: Tensor) -> Tensor:
        """``[N, K, latent_dim * p * p] -> [N, latent_dim, r, r]``."""
        c = self.config
        return rearrange(patches, "n (h w) (k l e) -> n e (h k) (w l)", h=c.token_grid, k=c.patch, l=c.patch)

    def _frames(self, frames: Tensor, name: str) -> tuple[Tensor, torch.Size]:
        c = self.config
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"{name} must be [B, T, {c.in_channels}, {c.resolution}, {c.resolution}] "
                             f"(channels first), got shape {list(frames.shape)}.")
        return as_unit_frames(frames).flatten(0, 1), frames.shape[:2]

    def _actions(self, actions: Tensor, lead: torch.Size) -> Tensor:
        if actions.dtype != torch.int64 or tuple(actions.shape) != tuple(lead):
            raise ValueError(f"actions must be int64 [{', '.join(map(str, lead))}], got {list(actions.shape)} "
                             f"{actions.dtype}.")
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= self.config.num_actions):
            raise ValueError(f"actions must lie in [0, num_actions={self.config.num_actions}).")
        return actions.flatten()
