"""``python -m worldmodels.train``: the Hydra entry point of every experiment.

    python -m worldmodels.train                       # default: a small VTA on bouncing balls
    python -m worldmodels.train +exp=dreamer_cartpole train.max_steps=3000
    python -m worldmodels.train +resume=runs/2026-11-22/10-00-00_vta_balls

Each run writes ``runs/<date>/<time>_<name>/`` with ``resolved_config.yaml``,
``metrics.csv``, TensorBoard events, ``checkpoints/{last,best}.pt`` and ``media/``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from .algos import registry
from .envs.factory import backend_name, spec_from_config
from .errors import INTERRUPTED, WorldModelsError
from .training import distributed
from .training.config_check import check_config
from .training.interrupt import TrainingInterrupted
from .training.loop import Factories, fit
from .training.overrides import compose_overrides, config_for_resume
from .training.precision import resolve_device
from .training.rundir import best_summary, discard_failed_start, hydra_subdir, write_resolved_config
from .training.validation import ConfigError

log = logging.getLogger(__name__)

# Failures caused by what the user gave (settings, data, checkpoints, packages, diverging
# settings): a one-paragraph message instead of a traceback.
USER_ERRORS = (WorldModelsError, FileNotFoundError)

BAD_COMMAND = 2    # the exit status when the command's settings are refused before the run starts

OmegaConf.register_new_resolver("wm_hydra_subdir", hydra_subdir, use_cache=True, replace=True)


def factories_for(name: str) -> Factories:
    """The factories of algorithm ``name`` (:mod:`worldmodels.algos.registry`); an
    unknown name lists the known ones."""
    return registry.factories(name)


def env_backend(cfg: DictConfig) -> str | None:
    """The backend the run's env is stepped on (``envpool``, ``gymnasium``, ...); None
    when the run steps no env. A missing package or task is reported as make_env would."""
    env = cfg.get("env")
    if env is None or env.get("name") != "gym" or not registry.family(str(cfg.algo.name)).steps_env:
        return None
    try:
        return backend_name(spec_from_config(env, seed=int(cfg.seed)))
    except ValueError as error:
        raise ConfigError(f"env.suite={env.suite} env.task={env.task}: {error}") from None


def prepare(cfg: DictConfig) -> DictConfig:
    """``cfg`` checked (:class:`ConfigError` on a bad setting) with the env backend the run
    will use recorded as ``env.backend_used``."""
    check_config(cfg)
    record_world_size(cfg)
    backend = env_backend(cfg)
    if backend is not None:
        with open_dict(cfg):
            cfg.env.backend_used = backend
    return cfg


def record_world_size(cfg: DictConfig) -> None:
    """Refuse what cannot run data-parallel under torchrun (a family not marked
    ``data_parallel``, a resume at another world size), then write the number of processes
    and the global batch (``batch_size x accum_steps x world_size``; per component for
    IRIS and Δ-IRIS, whose batches are ``algo.batch_sizes``) into ``train.distributed``."""
    recorded = OmegaConf.select(cfg, "train.distributed.world_size")
    if registry.family(str(cfg.algo.name)).population_parallel:
        recorded = None   # a population search resumes from its history at any world size
    problem = distributed.refusal(str(cfg.algo.name), registry.torchrun_names(), recorded)
    if problem:
        raise ConfigError(problem)
    world_size = distributed.placement().world_size
    times = int(cfg.train.accum_steps) * world_size
    OmegaConf.update(cfg, "train.distributed.world_size", world_size, force_add=True)
    OmegaConf.update(cfg, "train.distributed.global_batch_size", int(cfg.train.batch_size) * times, force_add=True)
    per_component = OmegaConf.select(cfg, "algo.batch_sizes")
    if per_component is not None:
        OmegaConf.update(cfg, "train.distributed.global_batch_sizes",
                         {name: int(size) * times for name, size in per_component.items()}, force_add=True)
    record_replay_shard(cfg, world_size)


# The config keys of an online family's replay capacity, its random env steps before the
# first update and its env-step budget (DreamerV3; IRIS and Δ-IRIS).
REPLAY_KEYS = (("algo.replay_capacity", "algo.prefill", None),
               ("algo.capacity", "algo.initial_collect_steps", "algo.max_env_steps"))


def record_replay_shard(cfg: DictConfig, world_size: int) -> None:
    """For an online family that runs data-parallel (a replay per rank), write each rank's
    replay capacity (``capacity // world_size``), random steps before the first update
    (``ceil(prefill / world_size)``; Δ-IRIS's ``initial_collect_steps``) and env-step budget
    (``ceil(max_env_steps / world_size)``, IRIS and Δ-IRIS) into ``train.distributed``;
    a capacity that leaves a rank no room is refused."""
    if str(cfg.algo.name) not in registry.data_parallel_names():
        return
    for capacity_key, prefill_key, budget_key in REPLAY_KEYS:
        capacity = OmegaConf.select(cfg, capacity_key)
        if capacity is None:
            continue
        per_rank = distributed.shard_capacity(int(float(capacity)), world_size)
        if per_rank < 1:
            raise ConfigError(f"{capacity_key}={capacity} split across {world_size} processes leaves none to a "
                              f"process; raise it to at least {world_size} (each process keeps capacity // processes).")
        OmegaConf.update(cfg, "train.distributed.replay_capacity_per_rank", per_rank, force_add=True)
        prefill = OmegaConf.select(cfg, prefill_key)
        if prefill is not None:
            OmegaConf.update(cfg, "train.distributed.prefill_per_rank",
                             distributed.shard_prefill(int(float(prefill)), world_size), force_add=True)
        budget = None if budget_key is None else OmegaConf.select(cfg, budget_key)
        if budget is not None:
            OmegaConf.update(cfg, "train.distributed.max_env_steps_per_rank",
                             distributed.shard_prefill(int(float(budget)), world_size), force_add=True)
        return


@hydra.main(version_base=None, config_path="pkg://worldmodels.configs", config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        return run(cfg)
    except USER_ERRORS as error:
        _stop(f"error: {error}", 1)
    except TrainingInterrupted as error:
        _stop(str(error), INTERRUPTED)
    except KeyboardInterrupt:
        _stop("interrupted before training started; nothing was saved", INTERRUPTED)


def _stop(message: str, status: int) -> None:
    """Print ``message`` as the run's last line (and keep it in train.log), then exit."""
    print(message, file=sys.stderr, flush=True)
    logging.getLogger("worldmodels.file").error(message)
    raise SystemExit(status)


def run(cfg: DictConfig) -> dict:
    """Train the configured experiment in a new run directory, or resume one."""
    hydra_cfg = HydraConfig.get()
    resume = cfg.get("resume")
    run_dir = Path(str(resume)) if resume else Path(hydra_cfg.runtime.output_dir)
    try:
        if resume:
            cfg = config_for_resume(run_dir, hydra_cfg.overrides.task)
        cfg = prepare(cfg)
        if distributed.is_main():
            write_resolved_config(cfg, run_dir)
        log.info(f"run directory: {run_dir}")
        if "backend_used" in cfg.get("env", {}):
            log.info(f"env backend: {cfg.env.backend_used} ({cfg.env.suite} {cfg.env.task})")
        runner = registry.runner(str(cfg.algo.name))   # a family with its own stages (World Models)
        if runner is not None:
            summary = runner(cfg, run_dir, resume=bool(resume))
        else:
            summary = fit(cfg, factories_for(str(cfg.algo.name)), run_dir, resume=bool(resume))
    except BaseException:
        if not resume and distributed.is_main():
            discard_failed_start(run_dir)
        raise
    outputs = summary.get("outputs") or f"{run_dir}/metrics.csv, {run_dir}/media"   # a runner names its own
    log.info(
        f"done: step {summary['step']}, {best_summary(str(cfg.train.best_metric), summary['best'])}; "
        f"see {outputs} and `tensorboard --logdir {run_dir}`"
    )
    return summary


def precheck(args: list[str]) -> str | None:
    """What is wrong with the settings of this command line, in one line, or None; nothing
    is written. Hydra's own modes (``--cfg``, ``--help``, ``-m``) are left to Hydra, and
    each job of a sweep checks its settings when it starts."""
    return checked_config(args)[1]


def checked_config(args: list[str]) -> tuple[DictConfig | None, str | None]:
    """The config of this command line and what is wrong with it (:func:`precheck`)."""
    if any(arg.startswith("-") for arg in args):
        return None, None
    overrides = [arg for arg in args if "=" in arg and not arg.lstrip("+~").startswith("hydra")]
    resume = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("resume=")), None)
    try:
        cfg = config_for_resume(Path(resume), overrides) if resume else compose_overrides(overrides)
        if cfg is not None:
            prepare(cfg)
    except USER_ERRORS as error:
        return None, str(error)
    return cfg, None


def rank_overrides(cfg: DictConfig, args: list[str]) -> list[str]:
    """Under torchrun: join the process group, then the Hydra overrides that give every
    rank one run directory (rank 0's clock names it) and keep Hydra's files and
    ``train.log`` to rank 0."""
    device = distributed.device_for(resolve_device(str(cfg.device)))
    where = distributed.init(cfg.train.distributed, device)
    now = distributed.gather(datetime.now())[0]
    extra = []
    if not cfg.get("resume") and not any(arg.startswith("hydra.run.dir=") for arg in args):
        extra.append(f"hydra.run.dir=${{run.root}}/{now:%Y-%m-%d}/{now:%H-%M-%S}_${{run.name}}")
    if not where.is_main:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return extra


def cli() -> None:
    """Check the command's settings for a one-line error, then hand over to Hydra."""
    try:
        cfg, problem = checked_config(sys.argv[1:])
        if problem:
            if distributed.is_main():  # the same line from every rank would say it N times
                print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(BAD_COMMAND)
        if cfg is not None and distributed.placement().enabled:
            sys.argv += rank_overrides(cfg, sys.argv[1:])
        main()
        distributed.finish()
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    cli()
