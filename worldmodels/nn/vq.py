"""IRIS's vector quantiser as a module: a codebook, :func:`worldmodels.ops.vq.vq` in the
forward pass and, optionally, EMA codebook updates and dead-code restarts.

Layouts: ``z [B, D, *spatial]`` channels first (IRIS's tokenizer, ``[B, D, H, W]``)
or ``z [..., D]`` channels last (``channels_last=True``). Tokens are ``[B, *spatial]``
(resp. ``[...]``) int64 and :meth:`VectorQuantizer.embed` maps them back to vectors.

Losses (means over all elements, as in IRIS): ``codebook = mean((z_q - sg(z))^2)``,
``commitment = beta * mean((sg(z_q) - z)^2)``, ``loss = codebook + commitment``. With
``ema=True`` the codebook is not a trained parameter: it follows the EMA of the
vectors assigned to each code (:func:`worldmodels.ops.vq.vq_ema_update_`, in training
mode), and ``loss = commitment`` (``codebook`` is reported, detached).

Data-parallel training: inside :func:`synced_statistics` (every process at the same
update) the batch's code counts and sums are summed over the processes before they
enter the EMA statistics, so every process keeps the statistics of the global batch, as
SyncBatchNorm does for BatchNorm's; codes restarted from a batch's vectors are then
taken from process 0's batch (broadcast), since each process draws from its own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..ops._dispatch import IMPLS
from ..ops.vq import restart_dead_codes_, vq, vq_ema_update_

Tensor = torch.Tensor


@dataclass
class VQConfig:
    num_codes: int = 512         # K
    dim: int = 256               # D
    beta: float = 0.25           # commitment weight
    ema: bool = False            # EMA codebook updates instead of the codebook loss
    decay: float = 0.99          # of the EMA statistics (and of the usage counts for restarts)
    dead_threshold: float = 0.0  # restart codes whose EMA count falls below it (0: never)
    impl: str = "auto"           # of worldmodels.ops.vq.vq
    restart_updates: int | None = None  # None: restarts all run long; N: as Δ-IRIS, only while the
                                        # codebook's usage entropy is below log2(K) - 2 bits and
                                        # within the first N updates (or while it is below 1 bit)

    def __post_init__(self) -> None:
        if self.num_codes < 1 or self.dim < 1:
            raise ValueError(f"num_codes={self.num_codes} and dim={self.dim} must be >= 1.")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta={self.beta} must be a finite commitment weight >= 0.")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay={self.decay} must lie in [0, 1).")
        if not math.isfinite(self.dead_threshold) or self.dead_threshold < 0:
            raise ValueError(f"dead_threshold={self.dead_threshold} must be finite and >= 0.")
        if self.impl not in IMPLS:
            raise ValueError(f"impl={self.impl!r} is not one of {IMPLS}.")
        if self.restart_updates is not None and self.restart_updates < 0:
            raise ValueError(f"restart_updates={self.restart_updates} must be >= 0 or None.")


class VQModuleOutput(NamedTuple):
    z_q: Tensor                 # like z (same layout): straight-through quantised vectors
    tokens: Tensor              # z's shape without the channel dim, int64
    losses: dict[str, Tensor]   # "codebook", "commitment", "loss" (scalars)


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser with a ``[num_codes, dim]`` codebook initialised
    ``uniform(-1/K, 1/K)`` like IRIS. Buffers: ``ema_count [K]`` (ones) when ``ema``
    or ``dead_threshold > 0``, ``ema_sum [K, D]`` (the initial codebook) when ``ema``.
    Without ``ema``, ``ema_count`` tracks code usage only (for restarts)."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        codes, dim = config.num_codes, config.dim
        weight = torch.empty(codes, dim).uniform_(-1.0 / codes, 1.0 / codes)
        self.codebook = nn.Parameter(weight, requires_grad=not config.ema)
        if config.ema or config.dead_threshold > 0:
            self.register_buffer("ema_count", torch.ones(codes))
        if config.ema:
            self.register_buffer("ema_sum", weight.clone())
        if config.restart_updates is not None and config.dead_threshold > 0:
            self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.synced = False   # statistics summed over the processes (synced_statistics)

    def forward(self, z: Tensor, channels_last: bool = False) -> VQModuleOutput:
        """Quantise ``z [B, D, *spatial]`` (or ``[..., D]`` with ``channels_last``);
        in training mode, then update the EMA statistics and restart dead codes."""
        flat = z if channels_last else self._to_channels_last(z)
        out = vq(flat, self.codebook, self.config.beta, impl=self.config.impl)
        if self.training:
            self._update_codebook(flat, out.indices)
        z_q = out.z_q if channels_last else out.z_q.movedim(-1, 1)
        return VQModuleOutput(z_q, out.indices, self._losses(out.codebook_loss, out.commitment_loss))

    def embed(self, tokens: Tensor, channels_last: bool = False) -> Tensor:
        """Code vectors of ``tokens [B, *spatial]``: ``[B, D, *spatial]`` (channels
        first, like :meth:`forward`'s ``z_q``) or ``[..., D]`` with ``channels_last``."""
        if tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"tokens must be int32/int64 codes, got dtype {tokens.dtype}.")
        vectors = nn.functional.embedding(tokens, self.codebook)
        return vectors if channels_last else vectors.movedim(-1, 1)

    def _to_channels_last(self, z: Tensor) -> Tensor:
        if z.dim() < 2 or z.shape[1] != self.config.dim:
            raise ValueError(f"channels-first z must be [B, D={self.config.dim}, ...], got shape "
                             f"{list(z.shape)}; pass channels_last=True for [..., D].")
        return z.movedim(1, -1)

    def _losses(self, codebook_loss: Tensor, commitment_loss: Tensor) -> dict[str, Tensor]:
        if self.config.ema:
            codebook_loss = codebook_loss.detach()
            return {"codebook": codebook_loss, "commitment": commitment_loss, "loss": commitment_loss}
        return {"codebook": codebook_loss, "commitment": commitment_loss, "loss": codebook_loss + commitment_loss}

    @torch.no_grad()
    def _update_codebook(self, z: Tensor, tokens: Tensor) -> None:
        c = self.config
        reduce = _sum_over_processes if self.synced else None
        if c.ema:
            vq_ema_update_(self.codebook, self.ema_count, self.ema_sum, z, tokens, c.decay, reduce=reduce)
        elif c.dead_threshold > 0:
            counts = torch.bincount(tokens.reshape(-1), minlength=c.num_codes).to(self.ema_count.dtype)
            if reduce is not None:
                reduce(counts)
            self.ema_count.mul_(c.decay).add_(counts, alpha=1.0 - c.decay)
        if c.dead_threshold > 0 and self._may_restart():
            restarted = restart_dead_codes_(self.codebook, self.ema_count, z, c.dead_threshold,
                                            ema_sum=self.ema_sum if c.ema else None)
            if restarted and self.synced:   # the same codes on every process (same counts): process 0's rows
                for state in (self.codebook, self.ema_count, *([self.ema_sum] if c.ema else [])):
                    dist.broadcast(state.data, src=0)
        if c.restart_updates is not None and c.dead_threshold > 0:
            self.num_updates += 1

    def usage_entropy(self) -> float:
        """Entropy (bits) of the codes' EMA usage frequencies."""
        probs = self.ema_count / self.ema_count.sum().clamp_min(1e-12)
        probs = probs[probs > 0]
        return float(-(probs * probs.log2()).sum())

    def _may_restart(self) -> bool:
        """Δ-IRIS's gate (with ``restart_updates`` set): restart only while the usage
        entropy is below ``log2(K) - 2`` bits, and only in the first ``restart_updates``
        updates unless the entropy has collapsed below 1 bit."""
        c = self.config
        if c.restart_updates is None:
            return True
        entropy = self.usage_entropy()
        early = int(self.num_updates) < c.restart_updates or entropy < 1.0
        return early and entropy < math.log2(c.num_codes) - 2


def _sum_over_processes(tensor: Tensor) -> None:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


@contextlib.contextmanager
def synced_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`VectorQuantizer` of ``module`` that updates its
    statistics (training mode) sums them over the processes of the default process group
    (see the module docstring); nothing changes without one, or with one process. Every
    process must run the same forward passes inside it: each update is a collective."""
    quantizers = [m for m in module.modules() if isinstance(m, VectorQuantizer)]
    synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    for quantizer in quantizers:
        quantizer.synced = synced
    try:
        yield
    finally:
        for quantizer in quantizers:
            quantizer.synced = False
