"""Data-parallel training under ``torchrun`` (``torch.distributed`` + DDP).

``torchrun --standalone --nproc_per_node=N -m worldmodels.train +exp=...`` starts N
copies of the same program; torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) turn data parallelism on. Each rank draws its own data stream (the data
factory's seed offset by the rank) with ``train.batch_size`` sequences, the gradients of
the step are averaged across ranks by DistributedDataParallel, and rank 0 alone logs,
evaluates and writes checkpoints and media. Every collective is called by every rank at
the same step: no code path that only rank 0 takes touches one.

Online DreamerV3 shards its data itself (:func:`env_shard`): rank ``r`` steps envs
seeded ``seed + r * num_envs + i``, fills its own replay of ``capacity // world_size``
steps (after ``ceil(prefill / world_size)`` random steps) and keeps its files in
:func:`rank_dir`. Every rank makes one update per loop step and steps its envs the same
number of times per update, so the schedule does not depend on the rank and the train
ratio holds on the global env steps (``world_size`` times a rank's).

IRIS and Δ-IRIS train their components one after another with their own step, outside
DDP: after each component's backward, :func:`average_gradients` all-reduces its gradients
in one flat buffer and :func:`average_values` its loss and metrics, so every rank steps
the same optimiser on the same gradients and skips a non-finite update together. Their
data shards itself as online DreamerV3's does. World Models' CMA-ES splits its
population across the ranks instead (``worldmodels.algos.world_models.population``); a
family the registry does not mark data-parallel is refused before the run starts
(:func:`refusal`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import WorldModelsError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedRunError(WorldModelsError, RuntimeError):
    """A run that cannot run data-parallel as asked (family, world size)."""


@dataclass(frozen=True)
class Placement:
    """Where this process stands: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def placement() -> Placement:
    """This process's rank and world size from torchrun's environment variables; a
    single process (world size 1) without them."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return Placement()
    return Placement(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0, or the only process)."""
    return placement().is_main


def backend_for(name: str, device: torch.device) -> str:
    """``train.distributed.backend``: ``auto`` is NCCL on CUDA devices, gloo on the CPU."""
    if name != "auto":
        return name
    return "nccl" if device.type == "cuda" else "gloo"


def init(settings: Mapping[str, Any], device: torch.device) -> Placement:
    """Join the process group (once) when torchrun started this process; a no-op for a
    single process. ``settings`` is ``train.distributed``; its ``timeout_s`` bounds every
    collective, so a rank that never arrives stops the others with an error instead of
    a hang."""
    where = placement()
    if not where.enabled or dist.is_initialized():
        return where
    if device.type == "cuda":
        torch.cuda.set_device(where.local_rank)
    dist.init_process_group(backend=backend_for(str(settings.get("backend", "auto")), device),
                            timeout=timedelta(seconds=float(settings.get("timeout_s", 600))))
    return where


def device_for(device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its ``LOCAL_RANK``."""
    where = placement()
    if where.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", where.local_rank)
    return device


class _LossForward(nn.Module):
    """``forward(batch)`` is the model's ``compute_loss(batch)``: DDP hooks ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Any:
        return self.model.compute_loss(batch)


class DataParallel:
    """A model's ``compute_loss`` run through DistributedDataParallel: its backward
    averages the gradients across ranks. The parameters are the model's own, so the
    optimiser built on the model steps them."""

    def __init__(self, model: nn.Module, *, find_unused_parameters: bool = True):
        device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
        self.ddp = DistributedDataParallel(_LossForward(model), device_ids=device_ids,
                                           find_unused_parameters=find_unused_parameters)
        self.model = model

    def compute_loss(self, batch: Any) -> Any:
        return self.ddp(batch)

    def parameters(self):
        return self.model.parameters()

    def no_sync(self) -> Any:
        """A context whose backward passes keep their gradients local (accumulation)."""
        return self.ddp.no_sync()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def wrap(model: nn.Module, settings: Mapping[str, Any]) -> Any:
    """The object the gradient step calls ``compute_loss`` on: ``model`` itself for a
    single process, a :class:`DataParallel` under torchrun. ``find_unused_parameters``
    null lets the model decide: off when it declares ``uses_every_parameter`` (DDP then
    skips a traversal of the graph each step), on otherwise."""
    if not dist.is_initialized():
        return model
    find_unused = settings.get("find_unused_parameters")
    if find_unused is None:   # the model says whether every step reaches all its parameters
        find_unused = not getattr(model, "uses_every_parameter", False)
    return DataParallel(model, find_unused_parameters=bool(find_unused))


def average(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the ranks (the loss and metrics of a step, so that every
    rank logs and stops on the same figures); unchanged for a single process."""
    if not dist.is_initialized():
        return values
    reduced = values.to(collective_device(), copy=True)   # NCCL reduces CUDA tensors only
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / dist.get_world_size()).to(values.device)


def average_values(values: Mapping[str, float]) -> dict[str, float]:
    """Named figures (a step's loss and metrics) averaged over the ranks: each name over
    the ranks that report it (a component may report no metric for a batch without a
    real example); unchanged for a single process. Every rank must call it at the same point."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    every = gather({name: float(value) for name, value in values.items()})
    names = list(dict.fromkeys(name for rank in every for name in rank))
    return {name: sum(rank[name] for rank in every if name in rank) / sum(name in rank for rank in every)
            for name in names}


def average_gradients(params: list[nn.Parameter]) -> None:
    """The gradients of ``params`` averaged over the ranks in place, in one all-reduce
    (the step of a model trained outside DDP, component by component: IRIS, Δ-IRIS).
    A parameter that has a gradient on no rank keeps none (the optimiser skips it, as in
    one process); one that has a gradient on some ranks gets their sum over the world size
    (a missing gradient counts as zeros, as in DDP). Every rank must call it with the same
    parameters in the same order; a no-op for a single process."""
    params = list(params)
    if not params or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    device = params[0].device
    parts = [p.grad.detach().reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device)
             for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([*parts, present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for param, part, seen in zip(params, parts, flat[-len(params):].tolist()):
        averaged = flat[offset:offset + part.numel()].view_as(param)
        offset += part.numel()
        if seen == 0:
            continue
        if param.grad is None:
            param.grad = averaged.to(param.dtype).clone()
        else:
            param.grad.copy_(averaged)


def concat_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on each) concatenated along dim 0 in rank
    order; ``tensor`` itself for a single process. Every rank must call it at the same point."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def collective_device() -> torch.device:
    """Where a collective's own small tensors live: this rank's GPU under NCCL (it reduces
    CUDA tensors only), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (a stop request seen by one rank stops all)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` for one process."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """The end of a run that succeeded on this rank: wait until every rank is there, so
    that none leaves the group while another still talks to it (rank 0 writes the last
    checkpoint and media after the others are done)."""
    if dist.is_initialized():
        _release_wrappers()
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (the end of a run, whatever its outcome)."""
    if dist.is_initialized():
        _release_wrappers()
        dist.destroy_process_group()


def _release_wrappers() -> None:
    """Free the DDP wrappers that are no longer referenced. DistributedDataParallel sits
    in a reference cycle, so it outlives the run until the collector runs; its reducer
    holds the process group, and a group freed during interpreter shutdown aborts the
    process (gloo's threads are still joinable then)."""
    gc.collect()


def data_config(cfg: DictConfig) -> DictConfig:
    """The config the data factory sees on this rank: ``seed + rank``, so that each rank
    draws a different stream (the model and evaluator keep ``seed``)."""
    where = placement()
    if not where.enabled:
        return cfg
    copy = cfg.copy()
    copy.seed = int(cfg.seed) + where.rank
    return copy


def same_config(cfg: DictConfig) -> DictConfig:
    """The config the data factory sees for data that shards itself by :func:`placement`
    (online RL, :func:`env_shard`): the run's own, unchanged."""
    return cfg


@dataclass(frozen=True)
class EnvShard:
    """This rank's part of an online run's envs and replay."""

    env_seed: int   # env i of this rank is seeded env_seed + i
    rng_seed: int   # the replay's sampling RNG (the random actions' takes rng_seed + 1)
    capacity: int   # replay capacity of this rank, in steps
    prefill: int    # random env steps of this rank before the first update


def shard_capacity(capacity: int, world_size: int) -> int:
    """A rank's replay capacity: ``capacity // world_size`` (the run's total is split)."""
    return int(capacity) // int(world_size)


def shard_prefill(prefill: int, world_size: int) -> int:
    """A rank's random steps before the first update, ``ceil(prefill / world_size)``: the
    prefill counts global env steps, as the train ratio does."""
    return -(-int(prefill) // int(world_size))


def env_shard(seed: int, num_envs: int, capacity: int, prefill: int) -> EnvShard:
    """This rank's shard: envs seeded ``seed + rank * num_envs + i`` (disjoint across
    ranks), two RNG seeds of its own (``seed + 2 * rank``, ``+ 1``), the replay capacity and
    prefill split across ranks. A single process gets ``seed``, ``capacity`` and ``prefill``."""
    where = placement()
    return EnvShard(env_seed=int(seed) + where.rank * int(num_envs), rng_seed=int(seed) + 2 * where.rank,
                    capacity=shard_capacity(capacity, where.world_size),
                    prefill=shard_prefill(prefill, where.world_size))


def rank_dir(run_dir: Path) -> Path:
    """Where this rank keeps its own files (episodes, replay snapshots): the run directory
    for rank 0 (and a single process), ``<run dir>/rank<r>`` for the others."""
    rank = placement().rank
    return Path(run_dir) if rank == 0 else Path(run_dir) / f"rank{rank}"


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (every rank must call it at the same point)."""
    return not any_rank(not flag)


def refusal(family_name: str, supported: list[str], recorded_world_size: int | None) -> str | None:
    """Why this command cannot run under torchrun, in one line, or None."""
    where = placement()
    if recorded_world_size is not None and recorded_world_size != where.world_size:
        return (f"this run was trained with {recorded_world_size} process(es) and cannot resume with "
                f"{where.world_size}; resume it with torchrun --nproc_per_node={recorded_world_size} "
                f"(or without torchrun for 1).")
    if where.enabled and family_name not in supported:
        return (f"torchrun: algo.name={family_name} does not run data-parallel yet; supported: "
                f"{', '.join(supported)}.")
    return None


__all__ = ["DataParallel", "DistributedRunError", "EnvShard", "Placement", "TORCHRUN_VARIABLES", "all_ranks",
           "any_rank", "average", "average_gradients", "average_values", "backend_for", "barrier", "cleanup",
           "collective_device", "concat_ranks", "data_config", "device_for", "env_shard", "gather", "init", "is_main",
           "placement", "rank_dir", "refusal", "same_config", "shard_capacity", "shard_prefill", "wrap"]
