"""``python -m worldmodels.train`` as a user runs it: run directory, resume, errors."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest


def train(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "worldmodels.train", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


def only_run_dir(root: Path) -> Path:
    (day,) = [p for p in (root / "runs").iterdir()]
    (run,) = [p for p in day.iterdir()]
    return run


def test_run_then_resume_from_the_command_line(tmp_path, tiny_overrides):
    """A stopped run resumes in its own directory; its log and command records are kept."""
    first = train(*tiny_overrides, "train.max_steps=6", "train.stop_at=3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.endswith("_vae_balls")
    assert "stopped at step 3" in first.stdout + first.stderr
    for name in ["resolved_config.yaml", "metrics.csv", "checkpoints/last.pt", "train.log"]:
        assert (run_dir / name).is_file(), name
    assert "done: step 3, no evaluation of eval/loss yet" in first.stdout
    resumed = train(f"+resume={run_dir}", "train.log_every=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert only_run_dir(tmp_path) == run_dir  # no second run directory
    with (run_dir / "metrics.csv").open(newline="") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r["train/loss"]]
    assert steps == [1, 2, 3, 4, 6]
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert list((run_dir / "media").glob("*.png"))
    assert "done: step 6, best eval/loss " in resumed.stdout
    # train.log holds both sessions' lines and metrics; .hydra/ keeps the original command
    # and each resume adds its own record beside it
    log = (run_dir / "train.log").read_text()
    assert log.count("run directory: ") == 2 and "step 2: train/loss=" in log and "step 6: eval/loss=" in log
    assert "done: step 6, best eval/loss" in log
    original = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "train.stop_at=3" in original and "resume" not in original
    (resume,) = (run_dir / ".hydra").glob("resume_*/overrides.yaml")
    assert "+resume=" in resume.read_text() and "train.log_every=2" in resume.read_text()


@pytest.mark.parametrize(
    "override,expected",
    [
        ("+exp=nope", "Unknown experiment 'nope'. Known experiments: delta_iris_atari, delta_iris_catch, "
                      "delta_iris_crafter, delta_iris_tiny, dreamer_atari100k"),
        ("train.max_stepz=5", "Unknown config key 'train.max_stepz'. Keys under 'train': max_steps"),
        ("model=nope", "Unknown model option 'nope'"),
    ],
)
def test_bad_overrides_list_what_exists(tmp_path, override, expected):
    result = train(override, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_missing_run_says_what_it_expects(tmp_path):
    result = train(f"+resume={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "checkpoints/last.pt" in result.stderr and "nowhere" in result.stderr


def test_experiment_choice_and_dot_overrides(tmp_path, smoke_overrides):
    result = train("+exp=vae_balls_64", *smoke_overrides, "env.seq_len=2", "env.chunk_sequences=4",
                   "train.max_steps=2", "run.name=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.endswith("_smoke")
    assert "size: 64" in (run_dir / "resolved_config.yaml").read_text()


@pytest.mark.slow
def test_wandb_offline_needs_no_login(tmp_path, tiny_overrides):
    env_free = {"WANDB_API_KEY": "", "WANDB_SILENT": "true"}
    import os

    result = subprocess.run(
        [sys.executable, "-m", "worldmodels.train", *tiny_overrides, "train.max_steps=2", "logger.wandb.mode=offline"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, **env_free},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert list((only_run_dir(tmp_path) / "wandb").glob("offline-run-*"))
