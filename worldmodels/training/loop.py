"""The training loop: a function given factories, not a Trainer class.

``fit`` builds the model, optimiser, data and evaluator from the factories an
algorithm provides, then repeats :func:`~worldmodels.training.step.train_step`,
logging, evaluating, keeping ``best.pt`` and ``last.pt``, and writing media. A run
resumed from ``last.pt`` continues exactly: model, optimiser, grad scaler, every
RNG, the step and the data position are restored.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from ..errors import WorldModelsError
from ..utils.host_memory import retain_freed_memory
from ..utils.profiling import nvtx_range
from ..utils.seeding import capture_rng_state, restore_rng_state, seed_everything
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .components import load_initial_weights, save_components
from .contract import Evaluator, HasEnvSpaces, TrainData, check_contract
from .interrupt import StopRequest, TrainingInterrupted
from .metrics_log import MetricsLogger
from .precision import Precision, resolve_device, resolve_precision
from .step import StepResult, train_step


def adamw(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The default optimiser: AdamW with ``train.lr`` and ``train.weight_decay``."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


@dataclass(frozen=True)
class Factories:
    """What an algorithm gives the loop. Each is called once per run."""

    model: Callable[[DictConfig], nn.Module]
    data: Callable[[DictConfig, torch.device], TrainData]
    evaluator: Callable[[DictConfig, torch.device], Evaluator]
    optimizer: Callable[[DictConfig, nn.Module], torch.optim.Optimizer | None] = adamw
    step: Callable[[Run], StepResult] | None = None   # None: gradient_step
    # The config the data factory sees on this rank under torchrun: by default the seed
    # offset by the rank (distributed.data_config); distributed.same_config for data that
    # shards itself (online RL: distributed.env_shard).
    data_config: Callable[[DictConfig], DictConfig] = distributed.data_config


class NonFiniteLossError(WorldModelsError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Run:
    """Everything the loop mutates, in one place."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    data: TrainData
    evaluator: Evaluator
    precision: Precision
    step_fn: Callable[[Run], StepResult] | None = None
    trainable: Any = None  # what the gradient step calls compute_loss on: the model, or its DDP wrapper
    accum_steps: int = 1
    grad_clip: float | None = None
    step: int = 0
    best: float = float("inf")
    saved_step: int | None = None  # the step checkpoints/last.pt holds; None before the first

    def rank_state(self) -> dict[str, Any]:
        """What differs between the ranks of a data-parallel run: the data position
        (for online data, with a replay snapshot written now) and the RNGs."""
        return {"data": self.data.state_dict(), "rng": capture_rng_state()}

    def state_dict(self, cfg: DictConfig, rank_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint; ``rank_state`` is this rank's :meth:`rank_state` when the caller
        already took it (it is not taken twice)."""
        return {
            "step": self.step,
            "best": self.best,
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **(rank_state or self.rank_state()),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "env_spaces": self.model.env_spaces.to_state() if isinstance(self.model, HasEnvSpaces) else None,
            "world_size": distributed.placement().world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        own = _own_rank_state(state)
        self.data.load_state_dict(own["data"])
        restore_rng_state(own["rng"])
        self.step, self.best = int(state["step"]), float(state["best"])
        self.saved_step = self.step


def _own_rank_state(state: dict[str, Any]) -> dict[str, Any]:
    """The data position and RNGs of this rank in a checkpoint (``ranks`` holds one entry
    per rank of a data-parallel run); a different world size is refused."""
    where = distributed.placement()
    saved = int(state.get("world_size", 1))
    if saved != where.world_size:
        raise distributed.DistributedRunError(
            f"the checkpoint was written by {saved} processes and this run has {where.world_size}; "
            f"resume it with the same number of processes (torchrun --nproc_per_node={saved}).")
    return state["ranks"][where.rank] if "ranks" in state else state


def _settings(cfg: DictConfig) -> Any:
    """``train.distributed`` (empty in configs written before it existed)."""
    return cfg.train.get("distributed") or {}


def build_run(cfg: DictConfig, factories: Factories) -> Run:
    """Seed, pick device and precision, and call the factories. Under torchrun the
    process group is joined, rank 0 builds its data first (it may write a dataset the
    others then read), each rank's data factory sees ``factories.data_config(cfg)``
    (``seed + rank`` unless the data shards itself) and its later random
    draws (noise, sampling) are seeded by ``seed + rank`` too, and the model is wrapped in
    DDP for the gradient step (its initial weights are rank 0's)."""
    seed_everything(int(cfg.seed))
    device = distributed.device_for(resolve_device(str(cfg.device)))
    where = distributed.init(_settings(cfg), device)
    precision = resolve_precision(str(cfg.precision), device)
    if device.type == "cpu" and cfg.train.get("retain_host_memory", True):
        retain_freed_memory()
    model = factories.model(cfg).to(device)
    optimizer = factories.optimizer(cfg, model)
    if where.enabled:
        seed_everything(int(cfg.seed) + where.rank)
    if not where.is_main:
        distributed.barrier()
    data = factories.data(factories.data_config(cfg), device)
    try:
        evaluator = factories.evaluator(cfg, device)
    except BaseException:
        data.close()
        raise
    finally:
        if where.is_main:
            distributed.barrier()
    check_contract(data, evaluator)
    trainable = distributed.wrap(model, _settings(cfg)) if where.enabled else model
    return Run(model=model, optimizer=optimizer, scaler=precision.grad_scaler(), data=data, evaluator=evaluator,
               precision=precision, step_fn=factories.step or gradient_step, trainable=trainable,
               accum_steps=int(cfg.train.accum_steps), grad_clip=cfg.train.grad_clip)


def fit(cfg: DictConfig, factories: Factories, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train until ``train.max_steps`` (or ``train.stop_at``) and return a summary.

    ``run_dir`` receives ``metrics.csv``, ``tensorboard/``, ``checkpoints/`` and
    ``media/``. With ``resume=True`` the run continues from ``checkpoints/last.pt``.
    """
    run_dir = Path(run_dir)
    ckpt_dir, media_dir = run_dir / "checkpoints", run_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    run = build_run(cfg, factories)
    try:
        run.data.bind_model(run.model, run_dir)
        if resume:
            run.load_state_dict(load_checkpoint(ckpt_dir / "last.pt", map_location=run.precision.device_type))
        else:
            _initial_weights(cfg, run.model)
        logger = MetricsLogger(
            run_dir, cfg.logger, OmegaConf.to_container(cfg, resolve=True), resume_step=run.step if resume else None
        ) if distributed.is_main() else SilentLogger()
        try:
            _train(cfg, run, logger, ckpt_dir, media_dir)
        finally:
            logger.close()
    finally:
        run.data.close()
        run.evaluator.close()
    return {"step": run.step, "best": run.best, "run_dir": str(run_dir)}


def _train(cfg: DictConfig, run: Run, logger: MetricsLogger, ckpt_dir: Path, media_dir: Path) -> None:
    train_cfg = cfg.train
    max_steps, stop_at = int(train_cfg.max_steps), train_cfg.get("stop_at")
    bar = tqdm(
        total=max_steps, initial=run.step, unit="step", dynamic_ncols=True,
        disable=not (train_cfg.progress and distributed.is_main()), desc=str(cfg.run.name),
        mininterval=0.1 if sys.stderr.isatty() else 10.0,  # sparse lines in CI logs
    )
    window_start, window_steps = time.perf_counter(), 0
    stop = StopRequest(lambda: bar.write("Ctrl-C: stopping after the current step and saving last.pt "
                                         "(Ctrl-C again quits without saving)")).install()
    try:
        while run.step < max_steps:
            run.model.train()
            result = run.step_fn(run)
            if not result.finite:
                raise NonFiniteLossError(
                    f"loss became {result.loss} at step {run.step + 1}; stopped without saving; "
                    f"{_what_is_saved(run, ckpt_dir, 'lower train.lr or check the data')}"
                )
            run.step += 1
            window_steps += 1
            bar.update(1)
            if run.step % int(train_cfg.log_every) == 0 or run.step == max_steps:
                elapsed = time.perf_counter() - window_start
                metrics = _train_metrics(result, window_steps / max(elapsed, 1e-9))
                metrics.update(run.data.log_metrics())
                logger.log(run.step, metrics)
                bar.set_postfix(loss=f"{result.loss:.4g}")
                window_start, window_steps = time.perf_counter(), 0
            if (run.step % int(train_cfg.eval_every) == 0 or run.step == max_steps) and distributed.is_main():
                _evaluate(cfg, run, logger, ckpt_dir, media_dir)  # no collective in it: the model, not DDP
            if run.step % int(train_cfg.checkpoint_every) == 0 or run.step == max_steps:
                _checkpoint(cfg, run, ckpt_dir)
            if stop_at is not None and run.step == int(stop_at):
                _checkpoint(cfg, run, ckpt_dir)
                if distributed.is_main():
                    bar.write(f"stopped at step {run.step} (train.stop_at); resume with +resume={ckpt_dir.parent}")
                break
            if distributed.any_rank(stop.requested) and run.step < max_steps:
                stop.finishing()
                if run.saved_step != run.step:
                    _checkpoint(cfg, run, ckpt_dir)
                raise TrainingInterrupted(f"interrupted at step {run.step}; {_what_is_saved(run, ckpt_dir)}")
    except KeyboardInterrupt as error:
        if isinstance(error, TrainingInterrupted):
            raise
        saved = _what_is_saved(run, ckpt_dir)
        raise TrainingInterrupted(f"interrupted again before the step was saved; {saved}") from None
    finally:
        stop.uninstall()
        bar.close()


def _what_is_saved(run: Run, ckpt_dir: Path, advice: str = "") -> str:
    """Which checkpoint exists and the command that continues from it (or that none does)."""
    advice = f"{advice}, then " if advice else ""
    if run.saved_step is None:
        return f"no checkpoint was written yet (train.checkpoint_every); {advice}start a new run."
    return (f"{ckpt_dir / 'last.pt'} holds step {run.saved_step}; "
            f"{advice}resume with +resume={ckpt_dir.parent}")


def _checkpoint(cfg: DictConfig, run: Run, ckpt_dir: Path) -> None:
    """``last.pt``, then each component's weights (and a kept snapshot every
    ``train.snapshot_every`` steps) for models made of components."""
    own = run.rank_state()
    ranks = distributed.gather(own)  # every rank calls it
    run.data.checkpoint_saved()
    run.saved_step = run.step
    if not distributed.is_main():
        return
    state = run.state_dict(cfg, own)
    if len(ranks) > 1:
        state["ranks"] = ranks
    save_checkpoint(ckpt_dir / "last.pt", state)
    every = cfg.train.get("snapshot_every")
    snapshot = bool(every) and run.step % int(every) == 0
    save_components(ckpt_dir, run.model, run.step, state["config"], snapshot=snapshot)


def _initial_weights(cfg: DictConfig, model: nn.Module) -> None:
    """Warm start of a new run from ``init.path`` (the parts in ``init.components``)."""
    init = cfg.get("init")
    if not init or not init.get("path"):
        return
    names = init.get("components")
    loaded = load_initial_weights(model, str(init.path), None if names is None else [str(n) for n in names])
    print(f"initial weights: {', '.join(loaded)} from {init.path}", flush=True)


def gradient_step(run: Run) -> StepResult:
    """The default step: ``train.accum_steps`` batches, one optimiser update
    (:func:`~worldmodels.training.step.train_step`). A factory's own ``step`` has the same
    signature and may ignore the optimiser (a gradient-free stage)."""
    with nvtx_range("data"):
        batches = [run.data.next_batch() for _ in range(run.accum_steps)]
    trainable = run.trainable or run.model
    defer_sync = trainable.no_sync if isinstance(trainable, distributed.DataParallel) else None
    return train_step(
        trainable, run.optimizer, batches, precision=run.precision, scaler=run.scaler,
        grad_clip=run.grad_clip, reduce_values=distributed.average, defer_sync=defer_sync,
    )


class SilentLogger:
    """The logger of ranks other than 0: they log nothing."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_image(self, step: int, tag: str, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


def _train_metrics(result: StepResult, steps_per_second: float) -> dict[str, float]:
    metrics = {"train/loss": result.loss, "train/grad_norm": result.grad_norm}
    metrics.update({f"train/{name}": value for name, value in result.metrics.items()})
    metrics["perf/steps_per_s"] = steps_per_second
    return metrics


def _evaluate(cfg: DictConfig, run: Run, logger: MetricsLogger, ckpt_dir: Path, media_dir: Path) -> None:
    """Held-out metrics; on a new best, ``best.pt`` and fresh media. Evaluation draws
    from the global RNGs on a copy of their state: training continues with the draws it
    would have had without it, so a resumed run, whose evaluator starts afresh, still
    trains exactly as the uninterrupted one."""
    run.model.eval()
    with _rng_untouched(), torch.no_grad(), nvtx_range("evaluate"), run.precision.autocast():
        metrics = run.evaluator.evaluate(run.model)
    key = str(cfg.train.best_metric)
    if key not in metrics:
        raise KeyError(f"train.best_metric={key!r} is not among the evaluation metrics {sorted(metrics)}.")
    logger.log(run.step, metrics)
    if metrics[key] < run.best:
        run.best = float(metrics[key])
        save_checkpoint(ckpt_dir / "best.pt", run.state_dict(cfg))
    with _rng_untouched(), torch.no_grad():
        for path in run.evaluator.write_media(run.model, media_dir, run.step):
            logger.log_image(run.step, f"media/{path.stem.rsplit('_step', 1)[0]}", path)
    run.model.train()


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Run the block, then put every global RNG back as it was before it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
