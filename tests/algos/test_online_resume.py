"""Exact resume of online runs: a run killed with SIGKILL after a checkpoint and resumed
with ``resume=True`` reproduces the uninterrupted run step for step (CPU, fixed seed),
for DreamerV3 and IRIS on CartPole (gymnasium backend).

The killed run is a child process that SIGKILLs itself in the middle of a later
update, after it has collected, trained, logged, and written episodes and replay
snapshots past the checkpoint."""

from __future__ import annotations

import csv
import importlib
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodels.training.checkpoint import load_checkpoint
from worldmodels.training.loop import fit

TINY_DREAMER = ["+exp=dreamer_cartpole", "model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4",
                "model.classes=4", "model.mlp_units=16", "model.head_units=16", "model.horizon=3",
                "model.reward_bins=17", "device=cpu", "env.backend=gymnasium", "train.max_steps=12",
                "train.batch_size=2", "algo.batch_length=8", "algo.prefill=30", "algo.train_ratio=4",
                "algo.eval_episodes=1", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=5",
                "train.progress=false", "seed=3"]
TINY_IRIS = ["+exp=iris_tiny", "model.tokenizer.ch=4", "model.tokenizer.z_channels=8", "model.tokenizer.vocab_size=16",
             "model.tokenizer.num_res_blocks=1", "model.world_model.max_blocks=5", "model.world_model.num_layers=1",
             "model.world_model.num_heads=1", "model.world_model.embed_dim=16", "model.actor_critic.conv_channels=[4,4]",
             "model.actor_critic.lstm_dim=16", "model.actor_critic.imagine_horizon=4", "model.actor_critic.burn_in=2",
             "algo.batch_sizes={tokenizer:4,world_model:2,actor_critic:2}", "algo.sequence_length=4",
             "algo.starts={tokenizer:0,world_model:1,actor_critic:3}", "algo.collect_every=2", "algo.collect_steps=6",
             "algo.eval_episodes=1", "algo.media_length=4", "device=cpu", "env.backend=gymnasium",
             "train.max_steps=12", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=5",
             "train.progress=false", "seed=3"]
KILL_AT_UPDATE = 8       # the child dies inside update 8, three updates after the checkpoint at 5
FAMILIES = {   # overrides, the experiment module, and the data method that collects and counts an update
    "dreamerv3": (TINY_DREAMER, "worldmodels.algos.dreamerv3.experiment", "worldmodels.algos.dreamerv3.collect",
                  "OnlineData.next_batch"),
    "dreamerv3-replay-on-disk": ([*TINY_DREAMER, "algo.replay_on_disk=true"], "worldmodels.algos.dreamerv3.experiment",
                                 "worldmodels.algos.dreamerv3.collect", "OnlineData.next_batch"),
    "dreamerv3-envpool": ([*TINY_DREAMER, "env.backend=envpool"], "worldmodels.algos.dreamerv3.experiment",
                          "worldmodels.algos.dreamerv3.collect", "OnlineData.next_batch"),
    "iris": (TINY_IRIS, "worldmodels.algos.iris.experiment", "worldmodels.rl.component_data",
             "ComponentData.begin_update")}

CHILD = """
import importlib, os, signal, sys
import torch
from hydra import compose, initialize_config_module
from worldmodels.training.loop import fit

torch.set_num_threads({threads})      # as the test process, which resumes the run: the same float sums

experiment, data_module = importlib.import_module("{experiment}"), importlib.import_module("{data_module}")
data_class = getattr(data_module, "{data_class}")
original = getattr(data_class, "{method}")
def dying(self):
    out = original(self)                # collects (and writes episodes) first
    if self.updates == {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(data_class, "{method}", dying)
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


def kill_after_checkpoint(run_dir: Path, family: str, kill: int) -> None:
    overrides, experiment, data_module, method = FAMILIES[family]
    data_class, method = method.split(".")
    code = CHILD.format(experiment=experiment, data_module=data_module, data_class=data_class, method=method,
                        kill=kill, threads=torch.get_num_threads())
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", code, str(run_dir), *overrides],
                           cwd=root, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_killed_online_run_resumes_exactly(config_from, tmp_path, family):
    overrides, experiment, _, _ = FAMILIES[family]
    factories = importlib.import_module(experiment).FACTORIES
    cfg = config_from(overrides)
    fit(cfg, factories, tmp_path / "whole")
    kill_after_checkpoint(tmp_path / "killed", family, KILL_AT_UPDATE)
    killed = losses(tmp_path / "killed")
    assert max(killed) == KILL_AT_UPDATE - 1          # it ran past the checkpoint before dying
    saved = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert saved["step"] == 5
    assert not saved["data"]["collector"]["obs"]["is_first"].any()   # an episode was running at the checkpoint
    if "algo.replay_on_disk=true" in overrides:     # the memory maps hold steps collected after the checkpoint
        assert list((tmp_path / "killed" / "replay_store").glob("*.npy"))
    snapshots = {p.name for p in (tmp_path / "killed" / "replay").glob("replay_*.npz")}
    assert "replay_000000005.npz" in snapshots        # the one last.pt names
    fit(cfg, factories, tmp_path / "killed", resume=True)

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
