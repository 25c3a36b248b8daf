"""What a run reports about itself: the env backend it steps, its best metric as a person
reads it, and no leftovers when it fails before producing anything."""

from __future__ import annotations

import sys
import types

import pytest

from worldmodels import train
from worldmodels.training.rundir import best_summary, discard_failed_start

ONLINE = ["+exp=dreamer_cartpole", "device=cpu"]


def test_the_env_backend_is_recorded_for_runs_that_step_an_env(config_from, monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)
    assert train.prepare(config_from(ONLINE)).env.backend_used == "gymnasium"
    fake = types.SimpleNamespace(list_all_envs=lambda: ["CartPole-v1"])
    monkeypatch.setitem(sys.modules, "envpool", fake)
    assert train.prepare(config_from(ONLINE)).env.backend_used == "envpool"
    assert train.prepare(config_from(["+exp=iris_tiny", "device=cpu"])).env.backend_used == "gymnasium"  # render_image
    for offline in (["+exp=dreamer_offline"], ["+exp=vae_balls"]):
        assert "backend_used" not in train.prepare(config_from(offline)).env


def test_a_missing_env_package_is_found_before_the_run_starts(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)
    monkeypatch.setitem(sys.modules, "dm_control", None)
    problem = train.precheck(["+exp=dreamer_dmc", "device=cpu"])
    assert problem == "dmc task 'walker_walk' needs envpool or dm_control here: pip install worldmodels[envs]"
    problem = train.precheck(["+exp=dreamer_dmc_vision", "device=cpu"])
    assert problem == "dmc task 'walker_walk' from pixels needs dm_control: pip install worldmodels[envs]"


@pytest.mark.parametrize("key,value,shown", [
    ("eval/neg_return", -21.5, "best eval/return_mean 21.5000"),
    ("eval/neg_return", -0.0, "best eval/return_mean 0.0000"),
    ("eval/neg_return", 0.0, "best eval/return_mean 0.0000"),
    ("eval/neg_score", 3.0, "best eval/score -3.0000"),
    ("eval/loss", 1.23456, "best eval/loss 1.2346"),
    ("eval/loss", float("inf"), "no evaluation of eval/loss yet"),
])
def test_the_summary_shows_the_best_metric_as_a_person_reads_it(key, value, shown):
    assert best_summary(key, value) == shown


def test_a_failed_start_removes_only_what_the_run_wrote(tmp_path):
    day = tmp_path / "runs" / "2026-01-01"
    empty, kept, foreign = day / "10-00-00_a", day / "10-00-01_b", day / "10-00-02_c"
    for run in (empty, kept, foreign):
        (run / ".hydra").mkdir(parents=True)
        (run / "train.log").write_text("run directory: ...\n")
        (run / "resolved_config.yaml").write_text("seed: 0\n")
    (kept / "checkpoints").mkdir()
    (kept / "checkpoints" / "last.pt").write_bytes(b"x")
    (foreign / "notes.txt").write_text("mine")
    for run in (empty, kept, foreign):
        discard_failed_start(run)
    assert not empty.exists()
    assert (kept / "checkpoints" / "last.pt").is_file() and (kept / "train.log").is_file()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
