"""The factory's ``procgen`` suite (envpool's Procgen): spaces, the factory's autoreset
flags, the options reaching the game, and the schema checks of its EnvSpec keys."""

from __future__ import annotations

import re

import numpy as np
import pytest

from worldmodels.envs import procgen
from worldmodels.envs.factory import EnvSpec, backend_name, infer_spaces, make_env, spec_from_config
from worldmodels.rl.collector import Collector


def test_coinrun_observes_64x64x3_uint8_frames_and_takes_15_actions():
    spec = EnvSpec("procgen", "coinrun", num_envs=2, seed=1)
    assert backend_name(spec) == "envpool"
    with make_env(spec) as env:
        assert env.obs_space["image"] == ((64, 64, 3), np.dtype(np.uint8))
        assert env.act_space.discrete and env.act_space.size == procgen.NUM_ACTIONS == 15
        obs = env.reset()
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
        assert obs["is_first"].all() and obs["image"].std() > 0
    spaces = infer_spaces(EnvSpec("procgen", "bigfish"))
    assert spaces.image_keys == ["image"] and spaces.act.size == 15


def test_autoreset_follows_the_factory_convention():
    with make_env(EnvSpec("procgen", "leaper", num_envs=4, seed=0)) as env:   # random leapers die within ~100 steps
        collector, steps = Collector(env, seed=0), []
        collector.on_step.append(steps.append)
        collector.collect(4 * 150)
    first = np.stack([s["is_first"] for s in steps])
    last = np.stack([s["is_last"] for s in steps])
    reward = np.stack([s["reward"] for s in steps])
    assert first[0].all() and last.sum() >= 4
    np.testing.assert_array_equal(first[1:], np.roll(last, 1, axis=0)[1:])   # is_first right after is_last
    assert (reward[first] == 0).all() and collector.episodes == int(last.sum())


def test_the_options_reach_the_game():
    def frames(**options):
        with make_env(EnvSpec("procgen", "coinrun", seed=0, **options)) as env:
            return env.reset()["image"]

    plain, again = frames(num_levels=1, start_level=5), frames(num_levels=1, start_level=5)
    np.testing.assert_array_equal(plain, again)              # one level: the same first frame
    assert not np.array_equal(plain, frames(num_levels=1, start_level=6))
    assert not np.array_equal(plain, frames(num_levels=1, start_level=5, use_backgrounds=False))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "pong"}, "unknown procgen task 'pong'; the games are bigfish, bossfight"),
    ({"distribution_mode": "extreme"}, "Procgen distribution_mode 'extreme' is not one of easy, hard"),
    ({"num_levels": -1}, "Procgen option num_levels must be an integer >= 0, got -1"),
    ({"start_level": 1.5}, "Procgen option start_level must be an integer >= 0, got 1.5"),
    ({"use_backgrounds": 0}, "Procgen option use_backgrounds must be true or false, got 0"),
    ({"size": (32, 32)}, "Procgen renders 64x64 frames; size must be [64, 64], got [32, 32]"),
    ({"backend": "gymnasium"}, "suite 'procgen' runs on envpool only; use backend 'auto' or 'envpool'"),
    ({"max_episode_steps": 30}, "Procgen ends episodes at the game's own limit (coinrun: 1,000 steps); "
                                "max_episode_steps must be null, got 30"),
])
def test_bad_procgen_keys_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EnvSpec(**{"suite": "procgen", "task": "coinrun", **kwargs})


def test_procgen_keys_belong_to_the_procgen_suite_only():
    with pytest.raises(ValueError, match="num_levels is a Procgen option; suite 'classic' does not take it"):
        EnvSpec("classic", "cartpole", num_levels=200)
    with pytest.raises(ValueError, match="'use_bg' is not a Procgen option; the options are num_levels, start_level"):
        procgen.check_options({"use_bg": True})


def test_the_coinrun_experiment_passes_the_schema_and_builds_the_spec(config_from):
    from worldmodels.training.config_check import check_config
    from worldmodels.training.validation import ConfigError

    cfg = config_from(["+exp=dreamer_coinrun", "device=cpu", "env.num_levels=200", "env.distribution_mode=hard"])
    check_config(cfg)
    spec = spec_from_config(cfg.env, seed=3)
    assert (spec.suite, spec.task, spec.num_levels, spec.distribution_mode, spec.size) == \
        ("procgen", "coinrun", 200, "hard", (64, 64))
    assert cfg.model.cnn_keys == "image" and cfg.model.mlp_keys == "$^"      # pixels only
    with pytest.raises(ConfigError, match="env.distribution_mode"):
        check_config(config_from(["+exp=dreamer_coinrun", "device=cpu", "env.distribution_mode=extreme"]))
