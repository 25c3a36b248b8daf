"""DreamerV3 offline and behaviour cloning on a robomimic HDF5 file, evaluated in an env
through the transform (camera flip, crop) recorded in the checkpoints."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from worldmodels.algos.dreamerv3 import bc, offline
from worldmodels.algos.registry import load_agent
from worldmodels.data.episodes import EpisodeError, list_episodes, load_episode
from worldmodels.data.obs_transform import TransformedAgent
from worldmodels.data.robomimic import write_robomimic
from worldmodels.envs.factory import EnvSpec, make_env
from worldmodels.evaluate import evaluate
from worldmodels.record import record_episodes
from worldmodels.training.checkpoint import load_checkpoint
from worldmodels.training.config_check import check_config
from worldmodels.training.validation import ConfigError
from worldmodels.training.loop import fit

TINY_MODEL = ["model.deter=16", "model.hidden=16", "model.blocks=2", "model.stoch=4", "model.classes=4",
              "model.mlp_units=16", "model.mlp_layers=1", "model.head_units=16", "model.head_layers=1",
              "model.cnn_depth=4", "model.reward_bins=31"]
CATCH = ["env.suite=gym", "env.task=worldmodels/Catch-v0", "env.size=[32,32]", "env.render_image=true"]
ROBOMIMIC = ["data.cameras=[image]", "data.camera_flips={image:vertical}", "data.crop=28"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("worldmodels.configs", version_base=None):
        return compose("config", list(overrides))


def read_metrics(run_dir):
    with open(Path(run_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def last_value(rows, key):
    return [float(r[key]) for r in rows if r.get(key)][-1]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Random Catch episodes from 32x32 pixels in a robomimic file: demos 0-3 train, 4-5
    valid. The runs flip them vertically (as robomimic's upside-down renders need), so the
    env's frames must be flipped the same way."""
    root = tmp_path_factory.mktemp("robomimic")
    with make_env(EnvSpec("gym", "worldmodels/Catch-v0", num_envs=1, seed=0, size=(32, 32), render_image=True)) as env:
        rng = np.random.default_rng(0)
        record_episodes(env, lambda obs: rng.integers(0, 3, 1), 6, root / "episodes", progress=False)
    episodes = [load_episode(p) for p in list_episodes(root / "episodes")]
    path = write_robomimic(root / "catch.hdf5", episodes, env_name="Catch",
                           masks={"train": [0, 1, 2, 3], "valid": [4, 5]})
    return path, episodes


@pytest.fixture(scope="module")
def offline_run(demos, tmp_path_factory):
    cfg = make_config("+exp=dreamer_offline", f"data.path={demos[0]}", *ROBOMIMIC, *TINY_MODEL, *CATCH,
                      "model.train_actor=true", "data.obs_keys=[image]", "device=cpu", "train.progress=false",
                      "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2", "train.max_steps=2",
                      "train.batch_size=2", "algo.batch_length=4", "algo.openloop_sequences=1")
    run_dir = tmp_path_factory.mktemp("offline_run")
    fit(cfg, offline.FACTORIES, run_dir)
    return cfg, run_dir


def test_offline_trains_on_the_train_split_and_records_the_transform(demos, offline_run):
    cfg, run_dir = offline_run
    data = offline.build_data(cfg, torch.device("cpu"))
    assert data.dataset.num_episodes == 4 and data.dataset.keys[0] == "image"
    assert data.next_batch()["image"].shape == (2, 4, 28, 28, 3)
    evaluator = offline.build_evaluator(cfg, torch.device("cpu"))
    assert evaluator.dataset.num_episodes == 2 and evaluator.dataset.lengths == [len(e["reward"]) for e in demos[1][4:]]
    rows = read_metrics(run_dir)
    assert math.isfinite(last_value(rows, "eval/loss")) and math.isfinite(last_value(rows, "eval/episode_loss"))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["data"]["transform"]["cameras"] == ["image"]
    assert state["data"]["transform"]["flips"] == {"image": "vertical"} and state["data"]["transform"]["crop"] == 28
    assert state["data"]["spaces"]["obs"]["image"]["shape"] == [28, 28, 3]


def test_the_offline_agent_plays_the_env_through_its_recorded_transform(offline_run):
    """``python -m worldmodels.evaluate`` (and play, record) put the run's transform in
    front of the policy: 32x32 env frames reach the encoder flipped and cropped to 28x28."""
    _, run_dir = offline_run
    agent = load_agent_of(run_dir)
    assert isinstance(agent, TransformedAgent) and agent.obs_space["image"][0] == (28, 28, 3)
    seen = []
    inner = agent.agent.policy
    agent.agent.policy = lambda obs, state, *a, **k: (seen.append(obs["image"]), inner(obs, state, *a, **k))[1]
    with make_env(EnvSpec("gym", "worldmodels/Catch-v0", num_envs=1, seed=5, size=(32, 32), render_image=True)) as env:
        obs = env.reset()
    agent.policy(obs, agent.init_policy_state(1), mode="greedy")
    np.testing.assert_array_equal(seen[0], obs["image"][:, ::-1][:, 2:30, 2:30])
    result = evaluate(run_dir, episodes=2, num_envs=1)
    assert len(result["returns"]) == 2 and all(math.isfinite(r) for r in result["returns"])


def load_agent_of(run_dir):
    return load_agent(load_checkpoint(run_dir / "checkpoints" / "last.pt"))


def test_a_missing_split_is_one_line_naming_file_and_mask(demos):
    cfg = make_config("+exp=dreamer_offline", f"data.path={demos[0]}", "data.eval_split=test", *TINY_MODEL)
    with pytest.raises(EpisodeError, match=r"catch.hdf5: key 'mask/test': no such split mask"):
        offline.build_evaluator(cfg, torch.device("cpu"))


def test_bc_on_the_file_is_evaluated_in_the_env_through_the_same_transform(demos, offline_run, tmp_path):
    _, run_dir = offline_run
    cfg = make_config("+exp=dreamer_bc", f"checkpoint={run_dir}/checkpoints/best.pt", f"data.path={demos[0]}",
                      "data.eval_split=valid", *CATCH, "device=cpu", "train.progress=false", "train.log_every=1",
                      "train.eval_every=2", "train.max_steps=2", "train.batch_size=8", "algo.eval_episodes=2",
                      "bc.units=8", "bc.layers=1")
    fit(cfg, bc.FACTORIES, tmp_path)  # data.crop=null and data.cameras=null: the world model's
    rows = read_metrics(tmp_path)
    for key in ("eval/return_mean", "eval/random_return_mean", "eval/accuracy", "eval/nll"):
        assert math.isfinite(last_value(rows, key)), key
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["data"]["transform"]["crop"] == 28 and state["data"]["transform"]["flips"] == {"image": "vertical"}

    agent = bc.load_bc_agent(tmp_path / "checkpoints" / "last.pt")
    with make_env(EnvSpec("gym", "worldmodels/Catch-v0", num_envs=1, seed=3, size=(32, 32), render_image=True)) as env:
        obs = env.reset()
    # what the env shows, flipped and center-cropped by hand as the training frames were
    by_hand = np.ascontiguousarray(obs["image"][:, ::-1][:, 2:30, 2:30])
    steps = bc.StepData(offline.data_source(cfg.data, "split", "train_dir"), *bc.checkpoint_keys(cfg)[:2],
                        ["image"], bc.bc_transform(cfg))
    assert steps.arrays["image"].shape[1:] == (28, 28, 3)
    first = demos[1][0]["image"][0][::-1][2:30, 2:30]  # demo_0's first frame, flipped and cropped
    np.testing.assert_array_equal(steps.arrays["image"][0], first)
    with torch.no_grad():
        want = agent.model({"image": torch.as_tensor(by_hand)}).argmax(-1).numpy()
    action, _ = agent.policy(obs, None)
    np.testing.assert_array_equal(action, want)


@pytest.mark.parametrize("exp", ["dreamer_offline", "dreamer_bc"])
def test_the_robomimic_options_pass_the_config_check_and_bad_flips_do_not(exp):
    base = [f"+exp={exp}", "data.path=demos.hdf5", "data.obs_keys=[agentview_image,robot0_eye_in_hand_image]",
            "data.cameras=[agentview_image,robot0_eye_in_hand_image]", "data.split=all"]
    if exp == "dreamer_bc":
        base.append("checkpoint=best.pt")
    check_config(make_config(*base, "data.camera_flips={agentview_image:vertical}"))
    with pytest.raises(ConfigError, match=r"data.camera_flips.agentview_image=.*upside"):
        check_config(make_config(*base, "data.camera_flips={agentview_image:upside}"))
