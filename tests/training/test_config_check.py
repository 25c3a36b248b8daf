"""Every setting is checked before a run starts: one ``error:`` line naming the key, the
value and what is allowed, no traceback, no run directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from worldmodels import train
from worldmodels.data.episodes import episode_name, save_episode
from worldmodels.training.config_check import check_config, rules_for
from worldmodels.algos.registry import family
from worldmodels.training.validation import ConfigError, leaves, rule_for

CONFIGS = Path(train.__file__).resolve().parents[1] / "configs"
EXPERIMENTS = [None, *sorted(p.stem for p in (CONFIGS / "exp").glob("*.yaml"))]
# Values tried in turn until one breaks a key's rule: "(" breaks all but free-text rules, 0.5 those.
WRONG = ["(", 0.5]


def experiment(config_from, name):
    overrides = [] if name is None else [f"+exp={name}"]
    if name is not None and name.startswith("dreamer_bc"):   # dreamer_bc, dreamer_bc_lift
        overrides.append("checkpoint=runs/x/checkpoints/best.pt")
    return config_from(overrides)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_setting_of_every_experiment_has_a_rule_and_passes_it(config_from, name):
    cfg = experiment(config_from, name)
    values = OmegaConf.to_container(cfg, resolve=True)
    rules = rules_for(values)
    assert [key for key, _ in leaves(values) if rule_for(rules, key) is None] == []
    check_config(cfg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_a_wrong_value_of_any_setting_is_refused_naming_it(config_from, name):
    cfg = experiment(config_from, name)
    rules = rules_for(OmegaConf.to_container(cfg, resolve=True))
    for key, _ in leaves(OmegaConf.to_container(cfg, resolve=True)):
        bad = next(value for value in WRONG if not rule_for(rules, key).accepts(value))
        broken = cfg.copy()
        OmegaConf.update(broken, key, bad, merge=False)
        with pytest.raises(ConfigError) as error:
            check_config(broken)
        assert str(error.value).startswith(f"{key}={bad} is not allowed: expected "), str(error.value)
        assert "\n" not in str(error.value)


ISSUE_PROBES = [
    (["train.max_steps=-5"], "train.max_steps=-5 is not allowed: expected an integer >= 1."),
    (["train.log_every=0"], "train.log_every=0 is not allowed: expected an integer >= 1."),
    (["train.eval_every=0"], "train.eval_every=0 is not allowed: expected an integer >= 1."),
    (["train.lr=abc"], "train.lr=abc is not allowed: expected a number > 0."),
    (["train.best_metric=eval/foo"], "train.best_metric=eval/foo is not allowed: expected one of eval/loss,"),
    (["+exp=dreamer_offline", "data.on_error=bogus"], "data.on_error=bogus is not allowed: expected one of raise, skip."),
    (["train.batch_size=-16"], "train.batch_size=-16 is not allowed: expected an integer >= 1."),
    (["+exp=dreamer_cartpole", "algo.replay_capacity=-1"], "algo.replay_capacity=-1 is not allowed"),
    (["precision=fp17"], "precision=fp17 is not allowed: expected one of auto, fp32, bf16, fp16."),
    (["+train.max_stepz=5"], "train.max_stepz=5 is not a setting of this experiment"),
    (["model.seg_len=1"], "model.seg_len=1 x model.seg_num=6 = 6 < model.seq_size=24"),
    (["+exp=iris_tiny", "env.task=nope"], "env.suite=classic env.task=nope: unknown classic task 'nope'"),
    (["+exp=dreamer_bc"], "checkpoint must be set: the path of a DreamerV3 checkpoint"),
    (["+exp=dreamer_offline", "data.eval_dir=null"], "data.eval_dir=null is not allowed: expected the folder of"),
    (["train.lr=[1,"], "cannot read the command's overrides"),
    (["+exp=vae_bals"], "Unknown experiment 'vae_bals'"),
]


@pytest.mark.parametrize("overrides,message", ISSUE_PROBES, ids=[" ".join(o) for o, _ in ISSUE_PROBES])
def test_the_command_line_check_names_key_value_and_what_is_allowed(overrides, message):
    assert message in train.precheck(overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_up_front():
    assert train.precheck(["device=cuda"]) == "device='cuda' but CUDA is not available here; use device=cpu or auto."


def test_a_resume_checks_its_overrides_too(config_from, tmp_path):
    cfg = config_from([])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert train.precheck([f"+resume={tmp_path}", "train.max_steps=-1"]).startswith("train.max_steps=-1 is not")
    assert train.precheck([f"+resume={tmp_path}", "train.max_steps=900"]) is None


def test_a_bad_value_prints_one_line_and_leaves_no_run_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "worldmodels.train", "train.lr=abc"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == "error: train.lr=abc is not allowed: expected a number > 0.\n"
    assert not (tmp_path / "runs").exists()


def test_a_start_that_fails_in_the_factories_leaves_no_run_directory(tmp_path):
    """Missing data is found while the run starts (after Hydra made the directory)."""
    result = subprocess.run([sys.executable, "-m", "worldmodels.train", "+exp=vta_maze", "env.root=no_maze",
                             "env.generate_if_missing=false", "device=cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: maze dataset root no_maze does not exist")
    assert list((tmp_path / "runs").rglob("*")) == []


def _episodes(directory: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        length = 6 + index
        episode = {"vector": rng.normal(size=(length, 4)).astype(np.float32),
                   "action": np.eye(2, dtype=np.float32)[rng.integers(0, 2, length)],
                   "reward": rng.normal(size=length).astype(np.float32),
                   "is_first": np.arange(length) == 0, "is_terminal": np.arange(length) == length - 1}
        save_episode(directory / episode_name(index, length), episode)
    return directory


@pytest.mark.parametrize("algo", ["vae", "vta", "dreamer_offline"])
def test_best_metric_choices_are_metrics_the_evaluator_reports(config_from, smoke_overrides, tmp_path, algo):
    """The online families allow eval/neg_return only, which their CLI tests select (the loop
    stops a run whose evaluation lacks train.best_metric)."""
    overrides = {
        "vae": ["+exp=vae_balls", "env.seq_len=4", "env.chunk_sequences=8"],
        "vta": ["+exp=vta_balls", "model.widths=[8,8,8]", "model.seq_size=8", "model.init_size=2", "model.seg_len=4",
                "model.seg_num=3", "model.feat_size=16", "model.belief_size=16"],
        "dreamer_offline": ["+exp=dreamer_offline", f"data.train_dir={_episodes(tmp_path / 'a', 3)}",
                            f"data.eval_dir={_episodes(tmp_path / 'b', 2)}", "model.deter=16", "model.hidden=16",
                            "algo.batch_length=4"],
    }[algo]
    common = ["device=cpu", "train.batch_size=2"] if algo == "dreamer_offline" else smoke_overrides
    cfg = config_from([*common, *overrides])
    factories = train.factories_for(algo)
    model = factories.model(cfg)
    with torch.no_grad():
        metrics = factories.evaluator(cfg, torch.device("cpu")).evaluate(model.eval())
    assert set(family(algo).best_metrics) <= set(metrics)
