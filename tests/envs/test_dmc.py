"""DMC on dm_control: task names, cameras, frames rendered headless, seeding, episode
limits, the backend choice, and a few DreamerV3 updates from pixels."""

import subprocess
import sys
import types

import numpy as np
import pytest

from worldmodels.envs.factory import EnvSpec, backend_name, make_env

pytest.importorskip("dm_control", reason="dm_control is in the dev install; DMC from pixels needs it")

from worldmodels.envs.dmc import camera_for, split_task  # noqa: E402


def test_task_names_split_at_the_longest_known_domain():
    assert split_task("walker_walk") == ("walker", "walk")
    assert split_task("ball_in_cup_catch") == ("ball_in_cup", "catch")
    assert split_task("cartpole_swingup_sparse") == ("cartpole", "swingup_sparse")
    with pytest.raises(ValueError, match="unknown dmc task 'walker_fly'"):
        split_task("walker_fly")


def test_quadruped_is_filmed_by_camera_two_as_in_dreamerv3():
    assert camera_for("quadruped") == 2 and camera_for("walker") == 0


def rollout(seed, steps=4, **spec):
    with make_env(EnvSpec("dmc", "walker_walk", num_envs=2, seed=seed, render_image=True, size=(32, 48), **spec)) as env:
        frames = [env.reset()]
        actions = np.random.default_rng(0).uniform(-1, 1, (steps, 2, 6)).astype(np.float32)
        frames += [env.step(a) for a in actions]
    return frames


def test_pixels_come_from_the_camera_and_follow_the_seed():
    first, again, other = rollout(0), rollout(0), rollout(1)
    obs = first[-1]
    assert obs["image"].shape == (2, 32, 48, 3) and obs["image"].dtype == np.uint8
    assert obs["vector"].shape == (2, 24) and obs["vector"].dtype == np.float32
    assert obs["image"].std() > 5                                        # a picture, not a blank
    assert not np.array_equal(first[0]["image"], first[-1]["image"])     # the walker moves
    assert not np.array_equal(obs["image"][0], obs["image"][1])          # env i is seeded seed + i
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(first[0]["vector"], other[0]["vector"])
    assert first[0]["is_first"].all() and not first[1]["is_first"].any()
    assert np.isfinite(np.stack([f["reward"] for f in first])).all()


def test_episodes_are_truncated_at_the_limit_never_terminated():
    frames = rollout(0, steps=4, max_episode_steps=3, action_repeat=2)
    last = np.stack([f["is_last"] for f in frames])
    assert last[:, 0].tolist() == [False, False, False, True, False]     # 3 agent steps of 2 physics steps
    assert frames[4]["is_first"].all()                                  # then the reset observation
    assert not np.stack([f["is_terminal"] for f in frames]).any()


def test_dm_control_runs_dmc_when_pixels_are_asked_or_envpool_is_missing(monkeypatch):
    assert backend_name(EnvSpec("dmc", "walker_walk", render_image=True)) == "dm_control"
    with pytest.raises(ValueError, match="backend 'envpool' renders no DMC frames"):
        backend_name(EnvSpec("dmc", "walker_walk", render_image=True, backend="envpool"))
    monkeypatch.setitem(sys.modules, "envpool", None)
    assert backend_name(EnvSpec("dmc", "walker_walk")) == "dm_control"


def test_the_proprio_vector_matches_envpools_layout(monkeypatch):
    envpool = pytest.importorskip("envpool")
    if "WalkerWalk-v1" not in envpool.list_all_envs():
        pytest.skip("this envpool has no DMC")
    with make_env(EnvSpec("dmc", "walker_walk")) as pooled:
        pooled_shape = pooled.obs_space["vector"]
    monkeypatch.setitem(sys.modules, "envpool", types.SimpleNamespace(list_all_envs=lambda: []))
    with make_env(EnvSpec("dmc", "walker_walk")) as dm:
        assert dm.obs_space["vector"] == pooled_shape


def test_dreamer_trains_a_few_updates_from_dmc_pixels(tmp_path):
    tiny = ["model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4", "model.classes=4",
            "model.mlp_units=16", "model.head_units=16", "model.horizon=3", "model.reward_bins=17", "model.cnn_depth=4"]
    overrides = ["+exp=dreamer_dmc_vision", *tiny, "env.size=[32,32]", "device=cpu",
                 "train.max_steps=2", "train.batch_size=2", "algo.batch_length=8", "algo.prefill=20",
                 "algo.train_ratio=8", "algo.eval_episodes=1", "env.max_episode_steps=12", "train.log_every=1",
                 "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false", f"run.root={tmp_path}"]
    run = subprocess.run([sys.executable, "-m", "worldmodels.train", *overrides], check=False, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "env backend: dm_control (dmc walker_walk)" in run.stdout
    (run_dir,) = [p for day in tmp_path.iterdir() if day.is_dir() for p in day.iterdir()]
    episode = next((run_dir / "episodes").glob("*.npz"))
    with np.load(episode, allow_pickle=False) as data:
        assert data["image"].shape[1:] == (32, 32, 3)
