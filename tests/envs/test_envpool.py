"""Real envpool (installed by the README's install on Linux): classic control, Atari from
the ROMs envpool ships, DMC from proprioception, and the Atari options."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels.envs.factory import EnvpoolVectorEnv, EnvSpec, backend_name, infer_spaces, make_env
from worldmodels.envs.spaces import EnvSpaces
from worldmodels.rl.collector import Collector

envpool = pytest.importorskip("envpool", reason="envpool is a Linux install dependency (pip install -e .)")


def test_classic_cartpole_runs_on_envpool_with_the_package_conventions():
    spec = EnvSpec("classic", "cartpole", num_envs=3, seed=1)
    assert backend_name(spec) == "envpool"
    with make_env(spec) as env:
        assert isinstance(env, EnvpoolVectorEnv)
        assert env.obs_space["vector"] == ((4,), np.dtype(np.float32)) and env.act_space.size == 2
        collector, steps = Collector(env, seed=0), []
        collector.on_step.append(steps.append)
        collector.collect(3 * 200)
    first = np.stack([s["is_first"] for s in steps])
    last = np.stack([s["is_last"] for s in steps])
    reward = np.stack([s["reward"] for s in steps])
    assert first[0].all() and last.any()
    after_last = np.roll(last, 1, axis=0)[1:]
    np.testing.assert_array_equal(first[1:], after_last)          # autoreset: is_first right after is_last
    assert (reward[first] == 0).all() and (reward[~first] == 1).all()
    assert collector.episodes == int(last.sum())


def test_same_seed_same_envpool_rollout():
    def roll(seed):
        with make_env(EnvSpec("classic", "cartpole", num_envs=2, seed=seed)) as env:
            collector, obs = Collector(env, seed=0), []
            collector.on_step.append(lambda s: obs.append(s["vector"]))
            collector.collect(40)
        return np.stack(obs)

    np.testing.assert_array_equal(roll(3), roll(3))
    assert not np.array_equal(roll(3), roll(4))


def test_atari_pong_from_the_roms_envpool_ships():
    with make_env(EnvSpec("atari", "pong", num_envs=2, size=(64, 64), noop_max=30)) as env:
        assert env.obs_space["image"] == ((64, 64, 3), np.dtype(np.uint8)) and env.act_space.size == 6
        obs = env.reset()
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].std() > 0
        for _ in range(20):
            obs = env.step(np.zeros(2, np.int64))
        assert not obs["is_first"].any()


def test_atari_life_loss_ends_episodes_and_the_game_goes_on():
    spec = dict(suite="atari", task="breakout", num_envs=1, seed=0, use_fire_reset=True)
    lengths = {}
    for life_loss in (False, True):
        with make_env(EnvSpec(**spec, terminal_on_life_loss=life_loss)) as env:
            collector = Collector(env, seed=0)
            ends = []
            collector.on_episode.append(lambda i, ret, length: ends.append(length))
            while not ends:
                collector.collect(1)
        lengths[life_loss] = ends[0]
    assert lengths[True] < lengths[False]           # one life is shorter than a game of five


def test_atari_options_reach_envpool_and_the_full_action_space():
    spaces = infer_spaces(EnvSpec("atari", "pong", full_action_space=True))
    assert spaces.act.size == 18 and infer_spaces(EnvSpec("atari", "pong")).act.size == 6
    with pytest.raises(ValueError, match="terminal_on_life_loss is an Atari option"):
        EnvSpec("classic", "cartpole", terminal_on_life_loss=True)


def test_dmc_walker_from_proprioception():
    with make_env(EnvSpec("dmc", "walker_walk", num_envs=2, max_episode_steps=5)) as env:
        assert not env.act_space.discrete and env.act_space.size == 6
        assert env.obs_space["vector"][0] == (24,)
        obs = env.reset()
        for _ in range(5):
            obs = env.step(np.zeros((2, 6), np.float32))
        assert obs["is_last"].all() and not obs["is_terminal"].any()   # truncated by the limit


def test_env_spaces_round_trip_through_plain_values():
    spaces = infer_spaces(EnvSpec("dmc", "walker_walk"))
    state = spaces.to_state()
    assert all(isinstance(v["dtype"], str) for v in state["obs"].values())
    again = EnvSpaces.from_state(state)
    assert again.obs == spaces.obs and again.act.size == spaces.act.size
    np.testing.assert_array_equal(again.act.low, spaces.act.low)
