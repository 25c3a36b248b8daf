"""Episode recorder: counts, file names, per-episode invariants, action alignment, the CLI summary."""

from __future__ import annotations

import re
from typing import ClassVar

import gymnasium
import numpy as np
import pytest

from worldmodels import record
from worldmodels.envs.factory import EnvSpec, make_env, random_actions

ECHO_ID = "WMRecordEcho-v0"
NAME = re.compile(r"(\d{6})-(\d+)\.npz")


class EchoEnv(gymnasium.Env):
    """Terminates after 4 steps, reward 1 a step; observes ``[t, last action]``; renders a
    constant frame of value 10 * t."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.render_mode, self.t = render_mode, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0, -1], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, action], np.float32), 1.0, self.t >= 4, False, {}

    def render(self):
        return np.full((16, 16, 3), 10 * self.t, np.uint8)


if ECHO_ID not in gymnasium.registry:
    gymnasium.register(ECHO_ID, entry_point=EchoEnv)


def _random_policy(env, seed=0):
    rng = np.random.default_rng(seed)
    return lambda obs: random_actions(env.act_space, env.num_envs, rng)


def _check_episode(path, obs_keys):
    """The invariants of every recorded episode; returns it."""
    with np.load(path) as data:
        ep = dict(data)
    length = int(NAME.fullmatch(path.name).group(2))
    assert set(ep) == {*obs_keys, "action", "reward", "discount", "is_first", "is_last", "is_terminal"}
    assert {len(value) for value in ep.values()} == {length}
    assert ep["is_first"].dtype == bool and ep["is_first"].tolist() == [True] + [False] * (length - 1)
    assert ep["is_last"].dtype == bool and ep["is_last"].tolist() == [False] * (length - 1) + [True]
    assert not ep["is_terminal"][:-1].any()
    assert ep["reward"].dtype == np.float32 and ep["reward"][0] == 0.0
    np.testing.assert_array_equal(ep["discount"], 1.0 - ep["is_terminal"])
    assert ep["action"].dtype == np.float32 and ep["action"].ndim == 2
    np.testing.assert_array_equal(ep["action"][-1], 0.0)
    return ep


def test_record_cartpole_episodes(tmp_path):
    with make_env(EnvSpec("classic", "cartpole", num_envs=3, max_episode_steps=40, backend="gymnasium")) as env:
        paths = record.record_episodes(env, _random_policy(env), 7, tmp_path, progress=False)
    assert len(paths) == 7 and sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]
    assert [int(NAME.fullmatch(p.name).group(1)) for p in paths] == list(range(7))
    for path in paths:
        ep = _check_episode(path, ["vector"])
        assert ep["vector"].dtype == np.float32 and ep["vector"].shape[1:] == (4,)
        one_hot = ep["action"][:-1]
        assert one_hot.shape[1] == 2 and set(one_hot.ravel().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(one_hot.sum(1), 1.0)
        # random CartPole falls before the 40-step limit (terminal) or is cut there (not)
        assert ep["is_terminal"][-1] == (len(ep["reward"]) < 41)


def test_actions_align_with_observations(tmp_path):
    with make_env(EnvSpec("gym", ECHO_ID, num_envs=2)) as env:
        paths = record.record_episodes(env, _random_policy(env, 3), 2, tmp_path, progress=False)
    for path in paths:
        ep = _check_episode(path, ["vector"])
        assert path.name.endswith("-5.npz")
        np.testing.assert_array_equal(ep["vector"][:, 0], [0, 1, 2, 3, 4])
        # action[t] (taken after observing t) shows up in the observation at t + 1
        np.testing.assert_array_equal(ep["action"][:-1].argmax(1), ep["vector"][1:, 1])
        np.testing.assert_array_equal(ep["reward"], [0, 1, 1, 1, 1])
        np.testing.assert_array_equal(ep["discount"], [1, 1, 1, 1, 0])


def test_continuous_actions_and_truncation(tmp_path):
    with make_env(EnvSpec("classic", "pendulum", max_episode_steps=6, backend="gymnasium")) as env:
        paths = record.record_episodes(env, lambda obs: np.full((1, 1), 5.0), 2, tmp_path, progress=False)
    assert [p.name for p in paths] == ["000000-7.npz", "000001-7.npz"]
    for path in paths:
        ep = _check_episode(path, ["vector"])
        # 5.0 is clipped to the bound 2.0 and stored in the agent's units ([-1, 1]), as the replay stores it
        np.testing.assert_array_equal(ep["action"][:, 0], [1.0] * 6 + [0.0])
        assert not ep["is_terminal"].any() and (ep["discount"] == 1).all()


def test_numbering_continues_and_progress_bar(tmp_path, capsys):
    with make_env(EnvSpec("gym", ECHO_ID)) as env:
        record.record_episodes(env, _random_policy(env), 2, tmp_path, progress=False)
        paths = record.record_episodes(env, _random_policy(env), 2, tmp_path, progress=True)
    assert [p.name for p in paths] == ["000002-5.npz", "000003-5.npz"]
    assert "2/2" in capsys.readouterr().err


def test_bad_episode_count(tmp_path):
    with make_env(EnvSpec("gym", ECHO_ID)) as env, pytest.raises(ValueError, match="num_episodes must be an integer >= 1, got 0"):
        record.record_episodes(env, _random_policy(env), 0, tmp_path)


def test_cli_summary_and_images(tmp_path, capsys):
    out = tmp_path / "echo"
    paths = record.main(["--suite", "gym", "--task", ECHO_ID, "--episodes", "3", "--out", str(out),
                         "--num-envs", "2", "--render-image", "--no-progress"])
    assert capsys.readouterr().out == f"recorded 3 episodes, 15 steps, return mean 4.00 min 4.00 max 4.00 to {out}\n"
    assert sorted(p.name for p in out.glob("*.npz")) == ["000000-5.npz", "000001-5.npz", "000002-5.npz"]
    ep = _check_episode(paths[0], ["vector", "image"])
    assert ep["image"].dtype == np.uint8 and ep["image"].shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(ep["image"][:, 0, 0, 0], [0, 10, 20, 30, 40])


def test_cli_errors(tmp_path, capsys):
    base = ["--suite", "classic", "--task", "cartpole", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        record.main([*base, "--episodes", "0"])
    assert "error: --episodes must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        record.main([*base, "--episodes", "2", "--num-envs", "0"])
    assert "error: num_envs must be an integer >= 1, got 0" in capsys.readouterr().err


def _cli(out, *extra):
    return record.main(["--suite", "gym", "--task", ECHO_ID, "--episodes", "2", "--out", str(out), "--no-progress",
                        *extra])


def test_a_folder_with_episodes_is_refused_unless_appending(tmp_path, capsys):
    out = tmp_path / "echo"
    _cli(out, "--seed", "0", "--num-envs", "2")
    with pytest.raises(SystemExit):
        _cli(out, "--seed", "5")
    assert f"error: --out {out} already holds 2 episodes; pass --append" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.npz")) == ["000000-5.npz", "000001-5.npz"]


@pytest.mark.parametrize("seed,num_envs", [(0, 1), (1, 1), (1, 3)])
def test_an_append_never_records_a_seed_twice(tmp_path, capsys, seed, num_envs):
    out = tmp_path / "echo"
    _cli(out, "--seed", "0", "--num-envs", "2")
    with pytest.raises(SystemExit):
        _cli(out, "--append", "--seed", str(seed), "--num-envs", str(num_envs))
    assert "already holds the episodes of env seeds 0..1; pass --seed 2 or more" in capsys.readouterr().err
    assert len(list(out.glob("*.npz"))) == 2


def test_an_append_with_new_seeds_adds_and_lists_them(tmp_path):
    out = tmp_path / "echo"
    _cli(out, "--seed", "0", "--num-envs", "2")
    added = _cli(out, "--append", "--seed", "2")
    assert [p.name for p in added] == ["000002-5.npz", "000003-5.npz"]
    recordings = record.read_manifest(out)
    assert [(r["seed"], r["num_envs"], r["episodes"]) for r in recordings] == [
        (0, 2, ["000000-5.npz", "000001-5.npz"]), (2, 1, ["000002-5.npz", "000003-5.npz"])]


def test_an_append_to_episodes_from_elsewhere_notes_it_cannot_check(tmp_path, capsys):
    out = tmp_path / "echo"
    _cli(out)
    (out / record.MANIFEST).unlink()
    _cli(out, "--append", "--seed", "0")
    assert "holds 2 episodes without a record.json; their seeds cannot be checked" in capsys.readouterr().out
    assert len(list(out.glob("*.npz"))) == 4
