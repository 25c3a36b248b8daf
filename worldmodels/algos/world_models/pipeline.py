"""The World Models pipeline's entry point: ``python -m worldmodels.world_models``.

::

    python -m worldmodels.world_models --env carracing --mode quick
    python -m worldmodels.world_models --env carracing --stage controller,eval --resume runs/world_models/<run>
    python -m worldmodels.world_models --env carracing --mode full --real-env --save-videos
    python -m worldmodels.world_models --env doom --train-temperatures 0.1,0.5,1.0,1.15,1.3 \\
        --controller-input standardized        # one controller per tau, inputs scaled
    torchrun --standalone --nproc_per_node=4 -m worldmodels.world_models --resume runs/world_models/<run> \\
        --stage controller,eval --train-in-dream      # each generation split across 4 processes

Stages run in order (``collect, vae, encode, mdnrnn, controller, eval``, or the subset
``--stage`` names); each first checks that its inputs are in the run directory and
otherwise stops with one line naming the missing file and the command that makes it.
Every setting of :class:`~worldmodels.algos.world_models.config.PipelineConfig` is a flag
(``--vae-epochs 3``, ``--population 16``, ...); ``--resume DIR`` reads the run's
``config.json`` and applies the flags given on top.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ...errors import WorldModelsError
from ...training import distributed
from .c_eval import evaluate_controller
from .c_stages import train_controller
from .temperatures import evaluate_per_temperature, train_per_temperature
from .config import PRESETS, PipelineConfig, PipelineConfigError, from_json, parse_temperatures, preset, to_json
from .envs import resolve_env
from .rundir import STAGES, append_summary, check_inputs, save_json, saved_settings
from .vm_stages import collect, encode, train_mdnrnn, train_vae

STAGE_FUNCTIONS = {
    "collect": lambda cfg, run, env, device: collect(cfg, run, env),
    "vae": train_vae,
    "encode": encode,
    "mdnrnn": train_mdnrnn,
    "controller": lambda cfg, run, env, device: (train_per_temperature if cfg.train_temperatures else train_controller)(
        cfg, run, env, device),
    "eval": lambda cfg, run, env, device: (evaluate_per_temperature if cfg.train_temperatures else evaluate_controller)(
        cfg, run, env, device),
}


def parse_stages(text: str) -> list[str]:
    """``"controller,eval"`` -> the stages in pipeline order; ``"all"`` -> every stage."""
    if text == "all":
        return list(STAGES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise PipelineConfigError(f"--stage {text!r}: stages are {', '.join(STAGES)} (comma separated) or all.")
    return [stage for stage in STAGES if stage in names]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineConfigError(f"device={name!r} but torch sees no CUDA device; use --device cpu.")
    return torch.device(name)


def run_pipeline(cfg: PipelineConfig, run: Path, stages: list[str],
                 distributed_settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Run ``stages`` in ``run``; rows go to ``pipeline_summary.csv``. Returns stage -> outcome.

    Under torchrun (``distributed_settings``: ``train.distributed``, the process group
    joined if it is not yet) the VAE and MDN-RNN stages train data-parallel, the
    controller stage splits each generation across the ranks and ``eval`` runs on rank 0;
    rank 0 alone writes files."""
    env = resolve_env(cfg.env)
    device = distributed.device_for(resolve_device(cfg.device))
    where = distributed.placement()
    if where.enabled:
        check_distributed(cfg, stages)
        distributed.init(distributed_settings or {}, device)
    torch.manual_seed(cfg.seed)
    if where.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_json(run / "config.json", to_json(cfg))
    outcomes = {}
    for stage in stages:
        if stage == "eval" and not where.is_main:
            continue
        check_inputs(run, stage, cfg.env, cfg.train_temperatures)
        start = time.perf_counter()
        try:
            outcome = STAGE_FUNCTIONS[stage](cfg, run, env, device)
        except BaseException as error:
            if where.is_main:
                append_summary(run, stage, time.perf_counter() - start, f"failed: {type(error).__name__}")
            raise
        if where.is_main:
            append_summary(run, stage, time.perf_counter() - start, outcome)
            print(f"[{stage}] {outcome} ({time.perf_counter() - start:.1f} s)", flush=True)
        outcomes[stage] = outcome
    return outcomes


TORCHRUN_STAGES = ("vae", "mdnrnn", "controller", "eval")   # data-parallel V and M, the split population, eval on rank 0


def check_distributed(cfg: PipelineConfig, stages: list[str]) -> None:
    """Refuse what a torchrun job of this pipeline cannot do, naming the fix."""
    ranks = distributed.placement().world_size
    others = [stage for stage in stages if stage not in TORCHRUN_STAGES]
    if others:
        raise PipelineConfigError(
            f"under torchrun ({ranks} processes) only the vae, mdnrnn and controller stages (and eval, on rank 0) "
            f"run: run {','.join(others)} in one process first, then e.g. --stage vae or --stage mdnrnn,controller,eval.")
    if cfg.population < ranks:
        raise PipelineConfigError(f"population={cfg.population} is smaller than the {ranks} processes of torchrun.")
    if cfg.antithetic and not cfg.train_in_dream:
        raise PipelineConfigError("antithetic pairs in the real env share env seeds inside one process: under "
                                  "torchrun use the dream (--train-in-dream) or leave --antithetic off.")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """Flags for the entry point: the run-level ones and one per setting."""
    parser = argparse.ArgumentParser(prog="python -m worldmodels.world_models", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", default="all", help="comma-separated subset of: " + ", ".join(STAGES))
    parser.add_argument("--resume", type=Path, default=None, help="an existing run directory to continue")
    parser.add_argument("--run-dir", type=Path, default=None, help="where a new run goes")
    parser.add_argument("--real-env", dest="train_in_dream", action="store_false", default=None,
                        help="CMA-ES evaluates candidates in the real env")
    parser.add_argument("--train-in-dream", dest="train_in_dream", action="store_true", default=None,
                        help="CMA-ES evaluates candidates in the MDN-RNN's dream")
    parser.add_argument("--save-videos", dest="save_videos", action="store_true", default=None)
    parser.add_argument("--antithetic", dest="antithetic", action="store_true", default=None,
                        help="CMA-ES samples mirrored pairs m +- sigma*y, each pair on the same env seeds")
    parser.add_argument("--train-temperatures", nargs="*", default=None, metavar="TAU",
                        help="train one controller per tau in the dream, e.g. 0.1,0.5,1.0,1.15,1.3")
    parser.add_argument("--controller-input", default=None,
                        help="raw (the paper's) | standardized (each feature of [z, h, c] to mean 0, std 1)")
    for field in dataclasses.fields(PipelineConfig):
        if field.name in ("train_in_dream", "save_videos", "antithetic", "train_temperatures", "controller_input"):
            continue
        if field.type == "bool":
            parser.add_argument(_flag(field.name), type=lambda v: v.lower() in ("1", "true", "yes"), default=None)
        elif field.type.startswith("tuple"):
            kind = float if "float" in field.type else int
            parser.add_argument(_flag(field.name), type=kind, nargs="*" if kind is float else "+", default=None)
        else:
            kind = {"int": int, "float": float}.get(field.type, str)
            parser.add_argument(_flag(field.name), type=kind, default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[PipelineConfig, Path]:
    """Settings and run directory from parsed flags (a resumed run's config.json under them)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PipelineConfig)
             if getattr(args, f.name) is not None}
    for key in ("vae_widths", "eval_temperatures"):
        if key in given:
            given[key] = tuple(given[key])
    if "train_temperatures" in given:
        given["train_temperatures"] = parse_temperatures(given["train_temperatures"])
    if args.resume is not None:
        values = {**saved_settings(args.resume, "--resume"), **given}
        return from_json(values), args.resume
    mode = given.pop("mode", "quick")
    cfg = preset(mode, **given)
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    return cfg, args.run_dir or Path("runs") / "world_models" / f"{stamp}_{cfg.env}_{mode}"


def main(argv: list[str] | None = None) -> int:
    """The command line; a user error prints one ``error:`` line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        cfg, run = config_from_args(args)
        resolve_env(cfg.env)
        stages = parse_stages(args.stage)
        if distributed.is_main():
            print(f"World Models run: {run} (mode {cfg.mode}, env {cfg.env}, stages {', '.join(stages)})", flush=True)
        run_pipeline(cfg, run, stages)
        distributed.finish()
    except WorldModelsError as error:
        if distributed.is_main():      # the same line from every rank would say it N times
            print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


__all__ = ["PRESETS", "build_parser", "main", "parse_stages", "run_pipeline"]
