"""The Atari options on the gymnasium + ale-py fallback (the envpool side is in
test_envpool.py): life-loss episodes, FIRE after a reset, the full action space."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from worldmodels.envs.factory import EnvSpec, make_env
from worldmodels.rl.collector import Collector


@pytest.fixture
def gymnasium_only(monkeypatch):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    monkeypatch.setitem(sys.modules, "envpool", None)


def first_episode_length(spec: EnvSpec) -> int:
    with make_env(spec) as env:
        collector, ends = Collector(env, seed=0), []
        collector.on_episode.append(lambda i, ret, length: ends.append(length))
        while not ends:
            collector.collect(1)
    return ends[0]


def test_life_loss_ends_episodes_on_ale_py(gymnasium_only, capsys):
    spec = dict(suite="atari", task="breakout", size=(32, 32), use_fire_reset=True, max_episode_steps=3000)
    one_life = first_episode_length(EnvSpec(**spec, terminal_on_life_loss=True))
    whole_game = first_episode_length(EnvSpec(**spec))
    assert one_life < whole_game


def test_fire_reset_and_full_action_space_on_ale_py(gymnasium_only, capsys):
    with make_env(EnvSpec("atari", "breakout", size=(32, 32), use_fire_reset=True, full_action_space=True)) as env:
        assert env.act_space.size == 18
        obs = env.reset()
        assert obs["image"].shape == (1, 32, 32, 3) and obs["is_first"].all()
        obs = env.step(np.zeros(1, np.int64))
        assert not obs["is_first"].any()
