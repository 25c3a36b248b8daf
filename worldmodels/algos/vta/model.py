"""VTA: convolutional encoder and decoder around the hierarchical RSSM.

``VTA.forward(obs, act, seq_size, init_size, obs_std, loss_type)`` follows the
original code's contract; ``compute_loss(batch)`` is what the trainer calls. The
boundary temperature is annealed by the model's own step counter (a buffer, so a
resumed run continues the schedule exactly)::

    beta(step) = mask_beta                                             if beta_anneal == 0
               = clip(max_beta * exp(-beta_anneal * step), min_beta, max_beta)  otherwise
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.conv import ConvDecoder, ConvEncoder
from ...nn.hrssm import HierarchicalRSSM, HRSSMConfig, HRSSMOutput, mask_kl
from ...nn.disarm import antithetic_pair, disarm_surrogate
from ...nn.hrssm_parts import bernoulli_log_probs
from ...ops.sampling import BoundarySample

Tensor = torch.Tensor
LOSS_TYPES = ("bce", "gaussian")
BOUNDARY_SOURCES = ("learned", "events", "random")
BOUNDARY_GRADS = ("st", "disarm")


@dataclass
class VTAConfig:
    image_size: int = 32
    channels: int = 1
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    feat_size: int = 128
    belief_size: int = 128
    state_size: int = 8
    action_size: int = 0
    boundary_layers: int = 3
    seg_len: int = 8
    seg_num: int = 5
    min_std: float = 0.1
    logit_bound: float | None = None  # boundary log-odds kept in (-bound, bound); None: unbounded
    init_size: int = 3           # context frames before the modelled window
    seq_size: int = 20           # modelled window
    obs_bit: int | None = None   # quantise inputs to this many bits (5 for the maze); None: raw
    loss_type: str = "bce"       # bce (pixel-wise) | gaussian (NLL with obs_std)
    obs_std: float = 1.0
    mask_beta: float = 1.0
    beta_anneal: float = 0.0
    min_beta: float = 0.1
    max_beta: float = 1.0
    abs_free_nats: float = 0.0   # training only: KL_abs below this many nats per boundary is free
    mask_kl_balance: float | None = None  # training only: weight of KL(sg(q) || p) in KL_mask (rest on q)
    boundary_warmup: int = 0     # training steps with the detector frozen at its start (boundaries at its initial rate)
    logit_decay: float = 0.0     # training only: + logit_decay * mean(detector log-odds^2), a pull towards 0 that keeps a gradient
    boundary_source: str = "learned"  # learned | events (ground truth) | random (at the events' rate)
    detector_norm: str = "group"  # group | none: normalised hidden layers of the boundary detector
    limits_in_kl: str = "prior"   # prior: KL_mask charges the detector where the segment limits decide
    boundary_grad: str = "st"     # st: straight-through Gumbel-sigmoid (the paper) | disarm (two antithetic draws)
    common_noise: bool = False    # disarm only: both draws share the latents' Gaussian noise (common random numbers)

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not one of {LOSS_TYPES}.")
        if self.boundary_source not in BOUNDARY_SOURCES:
            raise ValueError(f"boundary_source={self.boundary_source!r} is not one of {BOUNDARY_SOURCES}.")
        if self.boundary_grad not in BOUNDARY_GRADS:
            raise ValueError(f"boundary_grad={self.boundary_grad!r} is not one of {BOUNDARY_GRADS}.")
        if self.obs_bit is not None and not 1 <= self.obs_bit <= 8:
            raise ValueError(f"obs_bit={self.obs_bit} must be None or in 1..8.")
        if min(self.mask_beta, self.min_beta, self.max_beta, self.obs_std) <= 0 or self.beta_anneal < 0:
            raise ValueError("mask_beta, min_beta, max_beta and obs_std must be > 0 and beta_anneal >= 0.")
        if self.mask_kl_balance is not None and not 0 <= self.mask_kl_balance <= 1:
            raise ValueError(f"mask_kl_balance={self.mask_kl_balance} must be None or in [0, 1].")
        if self.logit_decay < 0:
            raise ValueError(f"logit_decay={self.logit_decay} must be >= 0.")
        if self.abs_free_nats < 0:
            raise ValueError(f"abs_free_nats={self.abs_free_nats} must be >= 0.")

    def hrssm(self) -> HRSSMConfig:
        return HRSSMConfig(self.feat_size, self.belief_size, self.state_size, self.action_size,
                           self.boundary_layers, self.seg_len, self.seg_num, self.min_std,
                           self.logit_bound, self.detector_norm, self.limits_in_kl)


@dataclass
class VTAOutput:
    reconstruction: Tensor   # [B, S, C, H, W] in [0, 1]
    mask: Tensor             # [B, S] posterior boundaries (hard forward)
    boundary: BoundarySample
    obs_cost: Tensor         # [B, S] reconstruction NLL per frame
    kl_abs: Tensor           # [B, S]
    kl_obs: Tensor           # [B, S]
    kl_mask: Tensor          # [B, S]
    abs_entropy: Tensor      # [B, S]
    obs_entropy: Tensor      # [B, S]
    boundary_entropy: Tensor  # [B, S] entropy of the detector's q(m_t) (0 for given boundaries)
    boundary_logits: Tensor | None  # [B, S] the detector's log-odds (None for given boundaries)
    free: Tensor             # [B, S] bool: steps the sample decided, not the segment limits
    sequence_loss: Tensor    # [B] negative ELBO per sequence (in training, with the training-only options)
    train_loss: Tensor       # scalar: negative ELBO per frame, averaged over the batch
                             # (in training, KL_abs minus abs_free_nats per boundary when set)


def quantize(frames: Tensor, bits: int | None, dequantize: bool) -> Tensor:
    """Frames in [0, 1] -> model inputs. ``None``: unchanged. Otherwise ``bits``-bit
    levels centred on 0 (``floor(255 x / 2^(8-bits)) / 2^bits - 1/2``), plus uniform
    dequantisation noise of one level when ``dequantize``."""
    if bits is None:
        return frames
    bins = 2**bits
    levels = torch.floor(frames * 255.0 / 2 ** (8 - bits)) / bins
    if dequantize:
        levels = levels + torch.rand_like(levels) / bins
    return levels - 0.5


class VTA(nn.Module):
    """Frames ``[B, T, C, H, W]`` and actions ``[B, T, A]`` -> ELBO terms, boundaries."""

    def __init__(self, config: VTAConfig):
        super().__init__()
        self.config = c = config
        self.encoder = ConvEncoder(c.channels, c.image_size, c.widths, c.feat_size)
        self.hrssm = HierarchicalRSSM(c.hrssm())
        self.decoder = ConvDecoder(c.feat_size, c.channels, c.image_size, c.widths)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def mask_beta(self) -> float:
        """The boundary temperature at the current training step."""
        c = self.config
        if c.beta_anneal == 0:
            return c.mask_beta
        value = c.max_beta * math.exp(-c.beta_anneal * int(self.step))
        return min(max(value, c.min_beta), c.max_beta)

    def embed(self, obs: Tensor) -> Tensor:
        """``[B, T, C, H, W]`` model inputs -> ``[B, T, feat]``."""
        return self.encoder(obs.flatten(0, 1)).unflatten(0, obs.shape[:2])

    def decode(self, feat: Tensor) -> Tensor:
        """``[B, S, feat]`` -> decoder output ``[B, S, C, H, W]`` (logits or means)."""
        return self.decoder(feat.flatten(0, 1)).unflatten(0, feat.shape[:2])

    def to_image(self, decoded: Tensor) -> Tensor:
        """Decoder output -> images in [0, 1]."""
        if self.config.loss_type == "bce":
            return torch.sigmoid(decoded)
        offset = 0.5 if self.config.obs_bit is not None else 0.0
        return (decoded + offset).clamp(0, 1)

    def forward(self, obs: Tensor, act: Tensor, seq_size: int, init_size: int,
                obs_std: float = 1.0, loss_type: str = "bce", noise: Tensor | None = None,
                events: Tensor | None = None, boundaries: Tensor | None = None) -> VTAOutput:
        """Negative ELBO of the window ``[init_size, init_size + seq_size)``.

        Args:
            obs: frames ``[B, T, C, H, W]`` in [0, 1], ``T >= init_size + seq_size``.
            act: actions ``[B, T, A]`` (A may be 0).
            loss_type: ``bce`` or ``gaussian`` (with ``obs_std``).
            noise: optional uniform noise ``[B, seq_size]`` for the boundary draws.
            events: ground-truth events bool ``[B, T]``; needed when
                ``boundary_source`` is ``events`` or ``random`` (the control experiments).
            boundaries: optional bool ``[B, seq_size]``: score the window with these
                boundaries (under the segment limits) whatever ``boundary_source`` says.
        """
        if obs.dim() != 5:
            raise ValueError(f"obs must be [B, T, C, H, W], got {list(obs.shape)}.")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r} is not one of {LOSS_TYPES}.")
        inputs = quantize(obs, self.config.obs_bit, dequantize=self.training)
        given = boundaries if boundaries is not None else self.given_boundaries(events, init_size, seq_size,
                                                                                obs.shape[:2])
        frozen = self.training and int(self.step) < self.config.boundary_warmup
        embed, target = self.embed(inputs), inputs[:, init_size : init_size + seq_size]
        if given is None and self.training and not frozen and self.config.boundary_grad == "disarm":
            return self._disarm_forward(embed, act, target, init_size, seq_size, obs_std, loss_type)
        out = self.hrssm(embed, act, init_size, seq_size, self.mask_beta(), noise, given, freeze_boundaries=frozen)
        return self._decode_and_score(out, target, loss_type, obs_std)

    def _decode_and_score(self, out: HRSSMOutput, target: Tensor, loss_type: str, obs_std: float) -> VTAOutput:
        decoded = self.decode(out.feat)
        return self._output(out, decoded, reconstruction_nll(decoded, target, loss_type, obs_std))

    def _disarm_forward(self, embed: Tensor, act: Tensor, target: Tensor, init_size: int, seq_size: int,
                        obs_std: float, loss_type: str) -> VTAOutput:
        """Training with DisARM boundary gradients (:mod:`worldmodels.nn.disarm`): two
        antithetic boundary draws of the detector, both scored in one batch of ``2B``;
        the model trains on their mean loss, the detector on the DisARM estimate. With
        ``common_noise`` both draws share the latent posteriors' Gaussian noise, so
        ``f(b) - f(b~)`` holds what the boundaries change and not the sampling noise of
        ``z`` and ``s``. The output holds the ``2B`` rows (the first ``B`` are the first draw)."""
        logits = self.hrssm.boundary_logits(embed, act)[:, init_size : init_size + seq_size]
        first, second = antithetic_pair(logits)
        noise = None
        if self.config.common_noise:
            noise = torch.randn(*logits.shape, 2, self.config.state_size, device=logits.device, dtype=embed.dtype)
            noise = torch.cat([noise, noise])
        embed, act, target, pair_logits = (torch.cat([x, x]) for x in (embed, act, target, logits))
        out = self.hrssm(embed, act, init_size, seq_size, self.mask_beta(),
                         boundaries=torch.cat([first, second]), boundary_logits=pair_logits, latent_noise=noise)
        scored = self._decode_and_score(out, target, loss_type, obs_std)
        f_first, f_second = scored.sequence_loss.detach().chunk(2)
        score = disarm_surrogate(logits, first, second, f_first, f_second) / logits.numel()
        return replace(scored, train_loss=scored.train_loss + score)

    def given_boundaries(self, events: Tensor | None, init_size: int, seq_size: int,
                         batch_steps: torch.Size) -> Tensor | None:
        """The window's boundaries when they do not come from the detector: the
        events themselves, or as many boundaries at random places (Bernoulli at the
        window's event rate, from the global RNG). ``None`` for ``learned``."""
        source = self.config.boundary_source
        if source == "learned":
            return None
        if events is None or events.shape != batch_steps:
            got = None if events is None else list(events.shape)
            raise ValueError(f"boundary_source={source!r} needs the ground-truth events as a bool "
                             f"[B, T] = {list(batch_steps)} tensor (batch['events']), got {got}.")
        window = events[:, init_size : init_size + seq_size].bool()
        if source == "events":
            return window
        rate = window[:, 1:].float().mean()
        return torch.rand(window.shape, device=window.device) < rate

    def _output(self, out: HRSSMOutput, decoded: Tensor, obs_cost: Tensor) -> VTAOutput:
        q = out.boundary.log_probs if out.boundary_logits is None else bernoulli_log_probs(out.boundary_logits)
        boundary_entropy = -(q.exp() * q.clamp_min(-1e4)).sum(-1)
        kl_abs = out.kl_abs
        if self.training and self.config.abs_free_nats > 0:
            kl_abs = torch.relu(kl_abs - self.config.abs_free_nats * out.boundary.mask)
        kl_mask = out.kl_mask
        if self.training and self.config.mask_kl_balance is not None:
            kl_mask = balanced_bernoulli_kl(out.posterior_boundary_log_probs, out.prior_boundary_log_probs,
                                            self.config.mask_kl_balance)
        per_sequence = (obs_cost + kl_abs + out.kl_obs + kl_mask).sum(1)
        return VTAOutput(
            reconstruction=self.to_image(decoded.detach()), mask=out.boundary.mask, boundary=out.boundary,
            obs_cost=obs_cost, kl_abs=out.kl_abs, kl_obs=out.kl_obs, kl_mask=out.kl_mask,
            abs_entropy=out.abs_entropy, obs_entropy=out.obs_entropy, boundary_entropy=boundary_entropy,
            boundary_logits=out.boundary_logits, free=out.free, sequence_loss=per_sequence,
            train_loss=per_sequence.mean() / obs_cost.shape[1],
        )

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The trainer's entry: ``batch["frames"]`` and optionally ``batch["actions"]``."""
        c = self.config
        frames = batch["frames"]
        actions = batch.get("actions")
        if actions is None:
            actions = frames.new_zeros(*frames.shape[:2], 0)
        beta = self.mask_beta()
        out = self(frames, actions, c.seq_size, c.init_size, c.obs_std, c.loss_type, events=batch.get("events"))
        metrics = summarize(out, beta)
        loss = out.train_loss
        if self.training:
            self.step += 1
            if c.logit_decay > 0 and out.boundary_logits is not None and out.boundary_logits.requires_grad:
                decay = c.logit_decay * out.boundary_logits[:, 1:].float().square().mean()
                loss = loss + decay
                metrics["train/logit_decay"] = decay.detach()
        return loss, metrics


def balanced_bernoulli_kl(q_log_probs: Tensor, p_log_probs: Tensor, balance: float) -> Tensor:
    """``KL_mask`` ``[B, S]`` (:func:`~worldmodels.nn.hrssm.mask_kl`) in value; gradients
    split as ``balance`` to the prior (through ``KL(sg(q) || p)``) and ``1 - balance``
    to the posterior (DreamerV2's KL balancing)."""
    to_prior = mask_kl(q_log_probs.detach(), p_log_probs)
    to_posterior = mask_kl(q_log_probs, p_log_probs.detach())
    return balance * to_prior + (1 - balance) * to_posterior


def reconstruction_nll(decoded: Tensor, target: Tensor, loss_type: str, obs_std: float) -> Tensor:
    """Per-frame negative log-likelihood ``[B, S]``, summed over pixels."""
    decoded = decoded.float()
    if loss_type == "bce":
        nll = F.binary_cross_entropy_with_logits(decoded, target.float(), reduction="none")
    else:
        z = (target.float() - decoded) / obs_std
        nll = 0.5 * z.square() + math.log(obs_std) + 0.5 * math.log(2 * math.pi)
    return nll.flatten(2).sum(-1)


def summarize(out: VTAOutput, beta: float) -> dict[str, Tensor | float]:
    """Scalars for logging: per-frame terms, boundary rate, temperature and the
    detector's health on the steps it decides (``free``, step 0 excluded): the mean
    entropy of ``q(m_t)`` and the mean and spread of its log-odds."""
    decided = out.mask[:, 1:]
    metrics = {
        "obs_cost": out.obs_cost.mean(),
        "kl_abs": out.kl_abs.mean(),
        "kl_obs": out.kl_obs.mean(),
        "kl_mask": out.kl_mask.mean(),
        "abs_entropy": out.abs_entropy.mean(),
        "obs_entropy": out.obs_entropy.mean(),
        "boundary_rate": decided.detach().float().mean() if decided.numel() else 0.0,
        "mask_beta": beta,
    }
    return {**metrics, **detector_health(out)}


def detector_health(out: VTAOutput) -> dict[str, Tensor]:
    """``boundary_entropy`` (nats), ``boundary_logit_mean`` and ``boundary_logit_std``
    over the free steps after step 0; empty for given boundaries or no free step."""
    free = out.free.clone()
    free[:, 0] = False
    if out.boundary_logits is None or not free.any():
        return {}
    logits = out.boundary_logits.detach()[free].float()
    return {
        "boundary_entropy": out.boundary_entropy.detach()[free].mean(),
        "boundary_logit_mean": logits.mean(),
        "boundary_logit_std": logits.std(unbiased=False),
    }
