"""``python -m worldmodels.train``: the Hydra entry point of every experiment.

    python -m worldmodels.train                       # default: a small VTA on bouncing balls
    python -m worldmodels.train +exp=dreamer_cartpole train.max_steps=3000
    python -m worldmodels.train +resume=runs/2026-11-22/10-00-00_vta_balls

Each run writes ``runs/<date>/<time>_<name>/`` with ``resolved_config.yaml``,
``metrics.csv``, TensorBoard events, ``checkpoints/{last,best}.pt`` and ``media/``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .data.episodes import EpisodeError
from .data.maze import MazeDataError
from .envs.factory import MissingEnvPackageError
from .training.checkpoint import CheckpointError
from .training.interrupt import TrainingInterrupted
from .training.loop import Factories, NonFiniteLossError, fit
from .training.overrides import config_for_resume, explain_bad_override

# Failures caused by what the user gave (data, checkpoints, diverging settings): a
# one-paragraph message instead of a traceback.
USER_ERRORS = (FileNotFoundError, CheckpointError, MazeDataError, EpisodeError, MissingEnvPackageError,
               NonFiniteLossError)

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C, as shells report SIGINT

# algo.name -> "module:attribute" of its Factories; imported only when chosen.
ALGORITHMS = {
    "vae": "worldmodels.algos.vae:FACTORIES",
    "vta": "worldmodels.algos.vta.experiment:FACTORIES",
    "dreamerv3": "worldmodels.algos.dreamerv3.experiment:FACTORIES",
    "dreamer_offline": "worldmodels.algos.dreamerv3.offline:FACTORIES",
    "dreamer_bc": "worldmodels.algos.dreamerv3.bc:FACTORIES",
    "iris": "worldmodels.algos.iris.experiment:FACTORIES",
    "delta_iris": "worldmodels.algos.delta_iris.experiment:FACTORIES",
}


def factories_for(name: str) -> Factories:
    """The factories of algorithm ``name``; an unknown name lists the known ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name={name!r} is not one of {sorted(ALGORITHMS)}.")
    module, attribute = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> Path:
    path = run_dir / "resolved_config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
    return path


@hydra.main(version_base=None, config_path="pkg://worldmodels.configs", config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        return run(cfg)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingInterrupted as error:
        print(error, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def run(cfg: DictConfig) -> dict:
    """Train the configured experiment in a new run directory, or resume one."""
    hydra_cfg = HydraConfig.get()
    resume = cfg.get("resume")
    if resume:
        run_dir = Path(str(resume))
        cfg = config_for_resume(run_dir, hydra_cfg.overrides.task)
    else:
        run_dir = Path(hydra_cfg.runtime.output_dir)
    write_resolved_config(cfg, run_dir)
    print(f"run directory: {run_dir}", flush=True)
    summary = fit(cfg, factories_for(str(cfg.algo.name)), run_dir, resume=bool(resume))
    print(
        f"done: step {summary['step']}, best {cfg.train.best_metric} {summary['best']:.4f}; "
        f"see {run_dir}/metrics.csv, {run_dir}/media and `tensorboard --logdir {run_dir}`",
        flush=True,
    )
    return summary


def cli() -> None:
    """Check the overrides for a readable error, then hand over to Hydra."""
    args = sys.argv[1:]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    resuming = any(a.lstrip("+").startswith("resume=") for a in overrides)
    if overrides and not resuming:
        problem = explain_bad_override(overrides)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
