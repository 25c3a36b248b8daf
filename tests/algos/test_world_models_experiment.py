"""The World Models pipeline as a Hydra experiment: ``+exp=world_models_carracing``
composes to the pipeline's presets, every setting is an ``algo.*`` key with a rule,
and a tiny run through ``python -m worldmodels.train`` goes end to end and resumes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from worldmodels.algos.world_models.config import PipelineConfig, PipelineConfigError, preset
from worldmodels.algos.world_models.experiment import ROOT_KEYS, pipeline_config, setting_names
from worldmodels.algos.world_models.rundir import STAGES, load_npz, stage_logger
from worldmodels.algos.world_models.envs import ENVS
from worldmodels.train import precheck
from worldmodels.training.schema import ALGOS, WM_STAGES

EXP = "+exp=world_models_carracing"
TINY = [EXP, "algo.env=tiny", "algo.mode=tiny", "device=cpu", "algo.generations=2"]


def test_the_experiment_composes_to_the_quick_preset_on_carracing(config_from):
    cfg = config_from([EXP])
    assert cfg.algo.name == "world_models" and list(cfg.algo.stages) == list(STAGES)
    assert "model" not in cfg and "env" not in cfg
    assert pipeline_config(cfg) == preset("quick", env="carracing", device="auto", seed=0)


def test_the_doom_experiment_composes_to_the_doom_presets(config_from):
    cfg = config_from(["+exp=world_models_doom", "algo.eval_temperatures=[0.5,1.15]", "algo.done_weight=10"])
    settings = pipeline_config(cfg)
    assert settings == preset("quick", env="doom", device="auto", seed=0, eval_temperatures=(0.5, 1.15),
                              done_weight=10.0)
    assert (settings.latent_dim, settings.hidden_size, settings.temperature) == (64, 512, 1.15)
    assert settings.predict_done and settings.train_in_dream
    assert precheck(["+exp=world_models_doom", "algo.eval_temperatures=[-1]"]).startswith(
        "algo.eval_temperatures=[-1] is not allowed")


def test_algo_keys_replace_the_presets_values(config_from):
    cfg = config_from([EXP, "algo.mode=full", "algo.population=16", "algo.vae_widths=[8,16]", "algo.antithetic=true",
                       "seed=7", "device=cpu"])
    settings = pipeline_config(cfg)
    assert settings == preset("full", env="carracing", population=16, vae_widths=(8, 16), antithetic=True, seed=7,
                              device="cpu")
    assert settings.generations == 800 and settings.rollouts_per_candidate == 16   # the rest from full


def test_every_pipeline_setting_is_an_algo_key(config_from):
    algo = OmegaConf.to_container(config_from([EXP]).algo)
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    assert set(algo) - {"name", "stages"} == fields - set(ROOT_KEYS) | {"env", "mode"}
    assert set(setting_names()) == fields - set(ROOT_KEYS)
    rules = ALGOS["world_models"]
    assert set(rules) == {f"algo.{key}" for key in algo}                  # a rule per key, none left over
    assert WM_STAGES == STAGES and all(rules["algo.env"].accepts(name) for name in ENVS)
    assert not rules["algo.env"].accepts("CarRacing-v3")


def test_the_stage_logs_follow_the_wandb_logger_settings(config_from, tmp_path, monkeypatch):
    settings = pipeline_config(config_from([EXP, "logger.wandb.mode=offline", "logger.wandb.project=wm"]))
    assert (settings.wandb, settings.wandb_project) == ("offline", "wm")
    assert pipeline_config(config_from([EXP])).wandb == "disabled"
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", "")
    run = tmp_path / "run0"
    logger = stage_logger(run, "vae", preset("tiny", env="tiny", wandb="offline"))
    try:
        assert logger.wandb is not None and logger.wandb.name == "run0/vae" and logger.wandb.group == "run0"
        logger.log(1, {"vae/loss": 1.0})
    finally:
        logger.close()
    assert list((run / "logs" / "vae" / "wandb").glob("offline-run-*"))
    assert stage_logger(run, "mdnrnn", preset("tiny", env="tiny")).wandb is None


def test_an_unknown_wandb_mode_is_one_line():
    with pytest.raises(PipelineConfigError, match="wandb='on' is not one of disabled, online, offline"):
        preset("tiny", env="tiny", wandb="on")


@pytest.mark.parametrize(("override", "message"), [
    ("algo.stages=[controler]", "algo.stages=[controler] is not allowed: expected a list of at least 1 items, "
                                "each one of collect, vae, encode, mdnrnn, controller, eval."),
    ("algo.population=1", "algo.population=1 is not allowed: expected an integer >= 2, or null."),
    ("algo.env=CarRacing-v2", "algo.env=CarRacing-v2 is not allowed: expected one of carracing, lunarlander, doom, tiny."),
])
def test_bad_settings_are_refused_before_the_run_naming_them(override, message):
    problem = precheck([EXP, override])
    assert problem is not None and problem.startswith(message), problem


def train(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worldmodels.train", *overrides, f"run.root={root}"], cwd=root,
                          capture_output=True, text=True, timeout=300)


def test_a_tiny_run_through_train_goes_end_to_end_and_resumes(tmp_path):
    done = train(tmp_path, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [p for day in tmp_path.iterdir() if day.is_dir() for p in day.iterdir()]
    assert run.name.endswith("_world_models_carracing")
    last = (run / "train.log").read_text().strip().splitlines()[-1]
    assert (run / "resolved_config.yaml").is_file() and "done: step 2, best eval/fitness" in last
    assert f"see {run}/pipeline_summary.csv, {run}/evaluation_results.json" in last
    settings = json.loads((run / "config.json").read_text())
    assert [settings[key] for key in ("mode", "env", "generations", "device")] == ["tiny", "tiny", 2, "cpu"]
    for name in ("vae.pt", "latents.npz", "mdnrnn.pt", "controller_best.pt", "evaluation_results.json",
                 "cmaes_curve.png", "pipeline_summary.csv"):
        assert (run / name).is_file(), name
    assert all((run / "logs" / stage / "metrics.csv").is_file() for stage in STAGES)
    first = load_npz(run / "cmaes_state.npz")
    assert first["losses"].shape == (2, settings["population"])
    # on resume Hydra composes the default config first: keys of the family take a +
    again = train(tmp_path, f"+resume={run}", "+algo.stages=[controller]", "+algo.generations=3")
    assert again.returncode == 0, again.stderr[-3000:]
    state = load_npz(run / "cmaes_state.npz")
    assert state["losses"].shape[0] == 3
    np.testing.assert_array_equal(state["solutions"][:2], first["solutions"])
