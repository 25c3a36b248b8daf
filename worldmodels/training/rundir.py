"""The run directory around a training run: its resolved config, Hydra's record of each
command, the summary line, and clearing away a run that failed before it produced anything.
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# What a run writes into its directory; a failed start removes these and nothing else.
RUN_FILES = (".hydra", "train.log", "resolved_config.yaml", "metrics.csv", "tensorboard", "media",
             "checkpoints", "replay", "wandb", "wandb_id.txt")
# Metrics logged negated so that lower is better, and the metric a person reads instead.
NEGATED = {"eval/neg_return": "eval/return_mean"}


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> Path:
    """``resolved_config.yaml``: every value of ``cfg`` with interpolations resolved, written atomically."""
    path = run_dir / "resolved_config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
    return path


def hydra_subdir(resume: str | None) -> str:
    """Where Hydra records the command (``hydra.output_subdir``): ``.hydra`` for a new run;
    ``.hydra/resume_<date>_<time>`` for each resume, so the original command is kept."""
    if not resume:
        return ".hydra"
    return f".hydra/resume_{datetime.now():%Y-%m-%d_%H-%M-%S}"


def has_results(run_dir: Path) -> bool:
    """Whether the run saved a checkpoint or logged a metrics row."""
    if any((run_dir / "checkpoints").rglob("*.pt")):
        return True
    metrics = run_dir / "metrics.csv"
    return metrics.is_file() and len(metrics.read_text().splitlines()) > 1


def discard_failed_start(run_dir: Path) -> None:
    """Remove what a run that failed before producing results wrote, then its directory
    and the date folder above it when they are left empty; files the run did not write
    are never touched."""
    if not run_dir.is_dir() or has_results(run_dir):
        return
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    for folder in (run_dir, run_dir.parent):
        try:
            folder.rmdir()
        except OSError:
            return


def best_summary(key: str, value: float) -> str:
    """The best metric as a person reads it: ``eval/neg_return -21.5`` is ``eval/return_mean 21.5``."""
    if not math.isfinite(value):
        return f"no evaluation of {key} yet"
    if key in NEGATED:
        key, value = NEGATED[key], -value
    elif "/neg_" in key:
        key, value = key.replace("/neg_", "/", 1), -value
    return f"best {key} {round(value, 4) + 0.0:.4f}"
