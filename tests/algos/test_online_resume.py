"""Exact resume of online runs: a run killed with SIGKILL after a checkpoint and resumed
with ``resume=True`` reproduces the uninterrupted run step for step (CPU, fixed seed).

The killed run is a child process that SIGKILLs itself in the middle of a later
update, after it has collected, logged, and written episodes past the checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from worldmodels.training.checkpoint import load_checkpoint
from worldmodels.training.loop import fit

TINY_DREAMER = ["+exp=dreamer_cartpole", "model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4",
                "model.classes=4", "model.mlp_units=16", "model.head_units=16", "model.horizon=3",
                "model.reward_bins=17", "device=cpu", "env.backend=gymnasium", "train.max_steps=12",
                "train.batch_size=2", "algo.batch_length=8", "algo.prefill=30", "algo.train_ratio=4",
                "algo.eval_episodes=1", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=5",
                "train.progress=false", "seed=3"]
KILL_AT_UPDATE = 8       # the child dies inside update 8, three updates after the checkpoint at 5

CHILD = """
import os, signal, sys
from worldmodels.algos.dreamerv3 import collect, experiment
from worldmodels.training.loop import fit
from hydra import compose, initialize_config_module

next_batch = collect.OnlineData.next_batch
def dying_next_batch(self):
    batch = next_batch(self)            # collects (and writes episodes) first
    if self.updates == {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
    return batch
collect.OnlineData.next_batch = dying_next_batch
with initialize_config_module("worldmodels.configs", version_base=None):
    cfg = compose("config", sys.argv[2:])
fit(cfg, experiment.FACTORIES, sys.argv[1])
"""


def losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def episode_files(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted((run_dir / "episodes").glob("*.npz")):
        with np.load(path) as data:
            out[path.name] = {k: data[k] for k in data.files}
    return out


def kill_after_checkpoint(run_dir: Path, overrides: list[str], kill: int) -> None:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", CHILD.format(kill=kill), str(run_dir), *overrides],
                           cwd=root, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def test_a_killed_online_dreamer_run_resumes_exactly(config_from, tmp_path):
    from worldmodels.algos.dreamerv3.experiment import FACTORIES

    cfg = config_from(TINY_DREAMER)
    fit(cfg, FACTORIES, tmp_path / "whole")
    kill_after_checkpoint(tmp_path / "killed", TINY_DREAMER, KILL_AT_UPDATE)
    killed = losses(tmp_path / "killed")
    assert max(killed) == KILL_AT_UPDATE - 1          # it ran past the checkpoint before dying
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 5
    fit(cfg, FACTORIES, tmp_path / "killed", resume=True)

    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(resumed) == sorted(whole) == list(range(1, 13))
    assert resumed == whole          # every step's loss, bit for bit
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)
    assert a["data"]["collector"]["env_steps"] == b["data"]["collector"]["env_steps"]
    whole_episodes, resumed_episodes = episode_files(tmp_path / "whole"), episode_files(tmp_path / "killed")
    assert sorted(resumed_episodes) == sorted(whole_episodes)      # none twice, none missing
    for name, episode in whole_episodes.items():
        for key, value in episode.items():
            np.testing.assert_array_equal(resumed_episodes[name][key], value, err_msg=f"{name} {key}")
