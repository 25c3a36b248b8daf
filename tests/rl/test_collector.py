"""The shared collector and episode evaluator on a deterministic env."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CountingEnv

from worldmodels.rl.collector import Collector, merge_windows
from worldmodels.rl.evaluator import EpisodeEvaluator
from worldmodels.rl.replay import Replay


class ConstantAgent:
    """Acts ``action``; its state counts the calls since each env's last ``is_first``."""

    def __init__(self, action=1):
        self.action, self.calls = action, 0

    def init_policy_state(self, num_envs):
        return np.zeros(num_envs, np.int64)

    def policy(self, obs, state, mode="explore", **kwargs):
        self.calls += 1
        self.mode, self.kwargs = mode, kwargs
        state = np.where(obs["is_first"], 1, state + 1)
        return np.full(len(state), self.action), state


def test_stored_steps_follow_the_episode_convention(counting_env):
    collector = Collector(counting_env, seed=0)
    steps = []
    collector.on_step.append(steps.append)
    collector.collect(8, ConstantAgent(1))
    assert collector.env_steps == 8 and len(steps) == 4
    vectors = np.stack([s["vector"][:, 0] for s in steps])        # [T, N]: t within the episode
    np.testing.assert_array_equal(vectors[:, 0], [0, 1, 2, 3])
    assert steps[0]["is_first"].all() and steps[3]["is_last"][0] and not steps[3]["is_last"][1]
    np.testing.assert_array_equal(steps[1]["action"], [[0, 1], [0, 1]])  # one-hot of the action taken
    np.testing.assert_array_equal(steps[3]["action"][0], [0, 0])        # a last step's action: zeros
    np.testing.assert_array_equal(steps[1]["reward"], [2, 2])           # 1 + previous action


def test_policy_state_is_carried_between_calls(counting_env):
    agent, collector = ConstantAgent(), Collector(counting_env)
    collector.collect(4, agent, "sample", temperature=0.5)
    collector.collect(8, agent, "sample", temperature=0.5)
    assert agent.calls == 6 and agent.mode == "sample" and agent.kwargs == {"temperature": 0.5}
    np.testing.assert_array_equal(collector._state, [2, 6])            # env 0 restarted at call 5


def test_episode_bookkeeping_and_metrics(counting_env):
    collector, finished = Collector(counting_env), []
    collector.on_episode.append(lambda i, ret, length: finished.append((i, ret, length)))
    collector.collect(2 * 12, ConstantAgent(0))
    assert finished[:2] == [(0, 3.0, 3), (1, 5.0, 5)]
    metrics = collector.metrics()
    assert metrics["collect/episodes"] == len(finished) and metrics["collect/env_steps"] == 24
    assert metrics["perf/collect_steps_per_s"] > 0 and "collect/return_mean" in metrics
    assert collector.metrics()["collect/episodes"] == len(finished)      # totals stay, the window clears
    with pytest.raises(ValueError, match="policy mode 'fast'"):
        collector.collect(2, None, "fast")


def test_merged_windows_report_the_episodes_and_steps_of_every_collector():
    """Two collectors side by side (two processes) report as one collector over both."""
    collectors = [Collector(CountingEnv(lengths=(3, 5))), Collector(CountingEnv(lengths=(4, 2)))]
    finished = []
    for collector in collectors:
        collector.on_episode.append(lambda i, ret, length: finished.append((ret, length)))
        collector.collect(2 * 12, ConstantAgent(0))
    windows = [collector.window() for collector in collectors]
    metrics = collectors[0].metrics(merge=lambda own: merge_windows([own, windows[1]]))
    returns, lengths = np.array([r for r, _ in finished]), [n for _, n in finished]
    assert metrics["collect/env_steps"] == 48 and metrics["collect/episodes"] == len(finished)
    assert metrics["collect/return_mean"] == pytest.approx(returns.mean())
    assert metrics["collect/return_std"] == pytest.approx(returns.std())
    assert (metrics["collect/return_min"], metrics["collect/return_max"]) == (returns.min(), returns.max())
    assert metrics["collect/length_mean"] == pytest.approx(np.mean(lengths))
    assert metrics["perf/collect_steps_per_s"] == pytest.approx(
        48 / np.mean([w["seconds"] for w in windows]), rel=1e-6)   # both collected at once: the rates add


def test_random_actions_are_seeded_and_restored(counting_env):
    def actions(collector, steps):
        got = []
        collector.on_step[:] = [lambda s: got.append(np.where(s["is_last"], -1, s["action"].argmax(-1)))]
        collector.collect(steps)
        return np.stack(got)

    a = Collector(CountingEnv(), seed=3)
    actions(a, 10)
    state = a.state_dict()
    first = actions(a, 10)
    b = Collector(CountingEnv(), seed=0)
    b.load_state_dict(state)
    assert b.env_steps == a.env_steps - 10
    again = actions(b, 10)
    taken = (again >= 0) & (first >= 0)             # a last step's action is not stored
    assert taken.sum() >= 6
    np.testing.assert_array_equal(again[taken], first[taken])


def test_a_collector_feeds_the_replay_unfinished_episodes(counting_env):
    replay, collector = Replay(100), Collector(CountingEnv(lengths=(50,)))
    collector.on_step.append(replay.add)
    collector.collect(10)
    assert replay.episode_lengths(finished_only=True) == {} and replay.can_sample(8, align="start")
    window = replay.sample(4, 8, align="start", margin=1)
    assert window["mask"].any(axis=1).all()


def test_evaluator_counts_the_first_episodes_to_start():
    env = CountingEnv(lengths=(1, 6))
    result = EpisodeEvaluator(env, episodes=3, mode="greedy").run(ConstantAgent(0))
    # env 0 finishes every 2 calls, env 1 once in 7: the third episode to start is env 0's
    # second, though env 0 also finished a third before env 1 ended
    np.testing.assert_array_equal(result.lengths, [1, 6, 1])
    np.testing.assert_array_equal(result.returns, [1.0, 6.0, 1.0])
    assert result.metrics()["eval/neg_return"] == pytest.approx(-8 / 3)


class SuccessEnv(CountingEnv):
    """CountingEnv with ``log_success``, set at the steps ``t`` listed for env ``i`` in
    ``flags[i]`` of that env's first episode only."""

    def __init__(self, lengths, flags):
        self.flags, self.episode = flags, np.zeros(len(lengths), np.int64)
        super().__init__(lengths)
        self.obs_space = {**self.obs_space, "log_success": ((), np.dtype(np.float32))}

    def _obs(self, action, reward, first):
        obs = super()._obs(action, reward, first)
        self.episode += np.asarray(first, bool) & (self.steps > 0)
        obs["log_success"] = np.array([float(self.episode[i] == 0 and int(self.t[i]) in self.flags[i])
                                       for i in range(self.num_envs)], np.float32)
        return obs


def test_evaluator_reports_each_episodes_success_from_any_of_its_steps():
    # env 0 (1 step) succeeds at the final step of its first episode only; env 1 (6 steps) never;
    # the third episode to start is env 0's second: no success carried over from its first
    env = SuccessEnv(lengths=(1, 6), flags=[{1}, set()])
    result = EpisodeEvaluator(env, episodes=3, mode="greedy").run(ConstantAgent(0))
    np.testing.assert_array_equal(result.successes, [True, False, False])
    assert result.metrics()["eval/success_rate"] == pytest.approx(1 / 3)
    middle = SuccessEnv(lengths=(3,), flags=[{1}])     # set at step 1 of 3, cleared after: still a success
    assert EpisodeEvaluator(middle, episodes=1, mode="greedy").run(ConstantAgent(0)).successes.tolist() == [True]
    plain = EpisodeEvaluator(CountingEnv(lengths=(2, 3)), episodes=2, mode="greedy").run(ConstantAgent(0))
    assert plain.successes is None and "eval/success_rate" not in plain.metrics()


def test_evaluator_records_the_first_episode_with_its_last_step():
    env = CountingEnv(lengths=(4, 2))
    evaluator = EpisodeEvaluator(env, episodes=2, record_envs=2, record_steps=100)
    result = evaluator.run(ConstantAgent(1))
    first, second = result.recorded
    np.testing.assert_array_equal(first["vector"][:, 0], [0, 1, 2, 3, 4])
    assert first["is_last"][-1] and not first["is_last"][:-1].any()
    np.testing.assert_array_equal(second["vector"][:, 0], [0, 1, 2])
    evaluator.close()
    assert env.closed


def test_evaluator_with_a_torch_agent_in_greedy_mode():
    class TorchAgent(ConstantAgent):
        def policy(self, obs, state, mode="explore", **kwargs):
            assert mode == "greedy"
            return torch.zeros(len(obs["is_first"]), dtype=torch.int64).numpy(), state

    result = EpisodeEvaluator(CountingEnv(lengths=(2, 2)), episodes=4).run(TorchAgent())
    assert (result.lengths == 2).all()


def record_steps(collector, calls, agent=None):
    got = []
    collector.on_step[:] = [got.append]
    collector.collect(calls * collector.num_envs, agent)
    return got


def assert_same_steps(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_restored_collector_continues_the_same_episodes_with_the_same_policy_state():
    a = Collector(CountingEnv(lengths=(5, 7)), seed=3)
    record_steps(a, 3)                        # uniform random actions
    a.reset()                                 # a reset in the middle of the history is replayed too
    record_steps(a, 4, ConstantAgent(1))
    state = a.state_dict()
    assert not (a.last_obs["is_first"] | a.last_obs["is_last"]).any()   # both envs are inside an episode
    expected = record_steps(a, 6, ConstantAgent(1))

    b = Collector(CountingEnv(lengths=(5, 7)), seed=0)
    seen = []
    b.on_step.append(seen.append)
    b.load_state_dict(state)
    assert b.restored and seen == [] and b.env.steps == 7      # the env was stepped, the hooks were not called
    assert b.env_steps == a.env_steps - 12
    agent = ConstantAgent(1)
    got = record_steps(b, 6, agent)
    assert_same_steps(got, expected)
    np.testing.assert_array_equal(b._state, a._state)          # the saved policy state, carried on


def test_an_env_that_does_not_come_back_is_reported_in_one_line(capsys):
    a = Collector(CountingEnv(lengths=(4, 7)), seed=3)
    record_steps(a, 5)
    b = Collector(CountingEnv(lengths=(5, 9)), seed=3)           # built differently
    b.load_state_dict(a.state_dict())
    err = capsys.readouterr().err.strip().splitlines()
    assert not b.restored and len(err) == 1 and err[0].startswith("resume: the env did not return to its saved state")
    assert record_steps(b, 1)[0]["is_first"].all()               # new episodes start
    c = Collector(CountingEnv(lengths=(4, 7, 9)), seed=3)       # resumed with another env.num_envs
    c.load_state_dict(a.state_dict())
    err = capsys.readouterr().err.strip().splitlines()
    assert not c.restored and err == ["resume: the run had 2 envs, now 3; they start new episodes"]
    assert c.env.steps == 0 and len(c.history) == 0 and record_steps(c, 1)[0]["is_first"].all()


def test_gymnasium_cartpole_comes_back_after_resets_and_episodes_that_ended():
    from worldmodels.envs.factory import EnvSpec, make_env

    spec = EnvSpec("classic", "cartpole", num_envs=2, seed=5, backend="gymnasium")
    a = Collector(make_env(spec), seed=1)
    history = record_steps(a, 80)
    assert sum(int(s["is_last"].sum()) for s in history) >= 4    # several episodes ended and were reset
    state = a.state_dict()
    expected = record_steps(a, 30)
    b = Collector(make_env(spec), seed=1)
    b.load_state_dict(state)
    assert b.restored
    assert_same_steps(record_steps(b, 30), expected)
    a.close()
    b.close()


def test_an_env_known_not_to_be_deterministic_is_not_replayed(capsys):
    a = Collector(CountingEnv(), seed=3)
    record_steps(a, 5)
    env = CountingEnv()
    env.deterministic = False
    b = Collector(env, seed=3)
    b.load_state_dict(a.state_dict())
    err = capsys.readouterr().err.strip().splitlines()
    assert not b.restored and env.steps == 0 and len(err) == 1 and "not deterministic given its seed" in err[0]


def test_crafter_is_marked_not_deterministic():
    pytest.importorskip("crafter")
    from worldmodels.envs.factory import EnvSpec, make_env

    with make_env(EnvSpec("crafter", "reward", num_envs=1, seed=0)) as env:
        assert env.deterministic is False
    with make_env(EnvSpec("classic", "cartpole", num_envs=1, seed=0, backend="gymnasium")) as env:
        assert env.deterministic is True
