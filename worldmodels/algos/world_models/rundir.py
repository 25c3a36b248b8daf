"""The run directory of the pipeline: where each stage's outputs live, the check that a
stage's inputs exist, atomic npz/JSON writes and the stage summary CSV.

::

    <run>/config.json                 the settings
    <run>/episodes/episode_00000.npz  collect: frames [T+1, S, S, 3] uint8, action [T, A], reward [T], done [T]
    <run>/vae.pt                      vae
    <run>/latents.npz, latents.json   encode: mu, logvar [N, Z], action, reward, done, starts
    <run>/mdnrnn.pt                   mdnrnn
    <run>/controller_best.pt, cmaes_state.npz, cmaes_curve.csv, cmaes_curve.png   controller
    <run>/temperatures/tau_<t>/controller_best.pt, cmaes_state.npz, ...   controller, one per tau of train_temperatures
    <run>/evaluation_results.json, videos/   eval
    <run>/temperature_table.csv, temperature_table.png   eval with train_temperatures
    <run>/pipeline_summary.csv        stage, seconds, outcome
    <run>/logs/<stage>/metrics.csv, logs/<stage>/tensorboard/   each stage's scalars
                                      (``tensorboard --logdir <run>/logs``)
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ...errors import WorldModelsError
from ...utils.atomic import atomic_write
from .config import PipelineConfig, PipelineConfigError, temperature_folder, to_json

STAGES = ("collect", "vae", "encode", "mdnrnn", "controller", "eval")
# what each stage reads, and which stage makes it
INPUTS: dict[str, tuple[str, ...]] = {
    "collect": (),
    "vae": ("episodes",),
    "encode": ("episodes", "vae.pt"),
    "mdnrnn": ("latents.npz", "latents.json"),
    "controller": ("vae.pt", "latents.npz", "mdnrnn.pt"),
    "eval": ("vae.pt", "mdnrnn.pt", "controller_best.pt"),
}
MADE_BY = {"episodes": "collect", "vae.pt": "vae", "latents.npz": "encode", "latents.json": "encode",
           "mdnrnn.pt": "mdnrnn", "controller_best.pt": "controller"}


class MissingInputError(WorldModelsError, FileNotFoundError):
    """A stage's input is missing; the message names it and the command that makes it."""


def stage_inputs(stage: str, train_temperatures: tuple[float, ...] = ()) -> tuple[str, ...]:
    """What ``stage`` reads: :data:`INPUTS`, with each tau's controller in place of the
    one controller when ``eval`` scores the controllers of ``train_temperatures``."""
    names = INPUTS[stage]
    if stage != "eval" or not train_temperatures:
        return names
    per_tau = tuple(f"temperatures/{temperature_folder(tau)}/controller_best.pt" for tau in train_temperatures)
    return tuple(name for name in names if name != "controller_best.pt") + per_tau


def check_inputs(run: Path, stage: str, env: str, train_temperatures: tuple[float, ...] = ()) -> None:
    """Raise :class:`MissingInputError` (one line) when an input of ``stage`` is missing."""
    for name in stage_inputs(stage, train_temperatures):
        path = run / name
        present = any(path.glob("episode_*.npz")) if name == "episodes" else path.is_file()
        if not present:
            maker = MADE_BY.get(name, "controller")
            raise MissingInputError(
                f"stage {stage!r} needs {path} (made by stage {maker!r}), which is missing; make it with: "
                f"python -m worldmodels.world_models --env {env} --stage {maker} --resume {run}")


def saved_settings(run: Path, flag: str = "--run") -> dict:
    """The settings a run was made with (its ``config.json``) as a dict; refuses, naming
    ``flag`` and the directory, a directory without one."""
    saved = run / "config.json"
    if not saved.is_file():
        raise PipelineConfigError(f"{flag} {run}: no config.json there; is it a World Models run?")
    return json.loads(saved.read_text())


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` to ``path`` atomically (temp file, fsync, rename)."""
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an npz file, read without unpickling."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def save_json(path: str | os.PathLike, value: object) -> Path:
    """JSON to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(json.dumps(value, indent=2).encode()))


def stage_logger(run: Path, stage: str, cfg: PipelineConfig, resume_step: int | None = None):
    """The package's :class:`~worldmodels.training.metrics_log.MetricsLogger` of one stage,
    in ``run/logs/<stage>/``: CSV and TensorBoard, and wandb when ``cfg.wandb`` is online
    or offline (a wandb run ``<run>/<stage>`` in the group ``<run>``). A resumed stage
    passes the last step it has (``resume_step``): rows and events past it are dropped,
    those before kept; None starts the stage's log afresh."""
    from ...training.metrics_log import MetricsLogger

    folder = run / "logs" / stage
    folder.mkdir(parents=True, exist_ok=True)
    wandb = {"mode": cfg.wandb, "project": cfg.wandb_project, "group": run.name, "name": f"{run.name}/{stage}"}
    return MetricsLogger(folder, {"wandb": wandb}, to_json(cfg), resume_step=resume_step)


def append_summary(run: Path, stage: str, seconds: float, outcome: str) -> None:
    """One row ``stage, seconds, outcome`` of ``pipeline_summary.csv`` (header when new)."""
    path = run / "pipeline_summary.csv"
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["stage", "seconds", "outcome"])
        writer.writerow([stage, f"{seconds:.1f}", outcome])
