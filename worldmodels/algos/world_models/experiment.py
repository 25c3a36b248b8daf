"""``python -m worldmodels.train +exp=world_models_carracing``: the World Models pipeline
through Hydra. ``algo.*`` holds the mode, the stage list and every setting of
:class:`~worldmodels.algos.world_models.config.PipelineConfig` (null: the mode's
preset); ``seed`` and ``device`` are the root keys. The pipeline runs in the Hydra run
directory (or the ``+resume`` one), so its outputs sit beside ``resolved_config.yaml``.

The family runs its own stages instead of the gradient loop of
:func:`worldmodels.training.loop.fit` (registered with ``runner`` in
:mod:`worldmodels.algos.registry`): each stage already checkpoints, resumes and logs
on its own (``logs/<stage>/``), and CMA-ES takes no gradient step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ...training.checkpoint import load_checkpoint
from .config import PipelineConfig, preset
from .pipeline import parse_stages, run_pipeline
from .rundir import load_npz

# algo.* keys that are not PipelineConfig settings
RUN_KEYS = ("name", "env", "mode", "stages")
# PipelineConfig settings that come from elsewhere in the Hydra config
ROOT_KEYS = ("env", "mode", "seed", "device", "wandb", "wandb_project")


def setting_names() -> list[str]:
    """The PipelineConfig settings that are ``algo.*`` keys."""
    return [f.name for f in dataclasses.fields(PipelineConfig) if f.name not in ROOT_KEYS]


def pipeline_config(cfg: DictConfig) -> PipelineConfig:
    """The pipeline's settings of a Hydra config: ``algo.mode``'s preset under the
    ``algo.*`` settings that are not null, with the root ``seed`` and ``device`` and the
    ``logger.wandb`` mode and project."""
    algo = OmegaConf.to_container(cfg.algo, resolve=True)
    given = {name: algo[name] for name in setting_names() if algo.get(name) is not None}
    for key in ("vae_widths", "eval_temperatures", "train_temperatures"):
        if key in given:
            given[key] = tuple(given[key])
    wandb = {"wandb": str(OmegaConf.select(cfg, "logger.wandb.mode", default="disabled")),
             "wandb_project": str(OmegaConf.select(cfg, "logger.wandb.project", default="worldmodels"))}
    return preset(str(algo["mode"]), env=str(algo["env"]), seed=int(cfg.seed), device=str(cfg.device), **wandb,
                  **given)


def run(cfg: DictConfig, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Run ``algo.stages`` in ``run_dir``; the summary ``train`` prints (``step``: CMA-ES
    generations run, ``best``: minus the best controller's fitness, lower is better)."""
    from ...training import distributed

    settings = pipeline_config(cfg)
    stages = parse_stages(",".join(cfg.algo.stages))
    outcomes = run_pipeline(settings, Path(run_dir), stages, distributed_settings=cfg.train.distributed)
    summary = {"step": 0, "best": float("inf"), "run_dir": str(run_dir), "outcomes": outcomes,
               "outputs": f"{run_dir}/pipeline_summary.csv, {run_dir}/evaluation_results.json"}
    if distributed.is_main() and (Path(run_dir) / "controller_best.pt").is_file():
        summary["best"] = -float(load_checkpoint(Path(run_dir) / "controller_best.pt")["fitness"])
        summary["step"] = len(load_npz(Path(run_dir) / "cmaes_state.npz")["losses"])
    return summary
