"""``generate_frames --policy``: Procgen frames recorded by a trained agent (a 2-update
``dreamer_coinrun`` run), the manifest's policy record, the checks on the checkpoint,
``--epsilon`` and ``--resume``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from worldmodels.algos.registry import load_agent
from worldmodels.data import generate_frames
from worldmodels.data.frame_policy import LEGACY_RANDOM, RANDOM, PolicyMismatchError, check_same_policy, policy_record
from worldmodels.data.frames import MANIFEST, FrameShards, write_json_atomic
from worldmodels.envs.spaces import ActionSpace
from worldmodels.rl.actions import EpsilonAgent
from worldmodels.training.checkpoint import load_checkpoint

TINY = ["model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4", "model.classes=4", "model.mlp_units=16",
        "model.head_units=16", "model.horizon=3", "model.reward_bins=17", "model.cnn_depth=4", "device=cpu",
        "train.max_steps=2", "train.batch_size=2", "algo.batch_length=8", "algo.prefill=40", "algo.train_ratio=8",
        "algo.eval_episodes=1", "algo.eval_envs=1", "train.log_every=1", "train.eval_every=2",
        "train.checkpoint_every=2", "train.progress=false"]
CHI2_14_999 = 36.12   # the 99.9% quantile of chi-squared with 14 degrees of freedom (15 actions)


@pytest.fixture(scope="module")
def coinrun_run(tmp_path_factory):
    """The run directory of a 2-update ``dreamer_coinrun`` run at tiny widths."""
    root = tmp_path_factory.mktemp("dreamer_coinrun")
    run = subprocess.run([sys.executable, "-m", "worldmodels.train", "+exp=dreamer_coinrun", *TINY, f"run.root={root}"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (run_dir,) = [p for day in root.iterdir() if day.is_dir() for p in day.iterdir()]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    return run_dir


def generate(out, *extra):
    return generate_frames.main(["--game", "coinrun", "--out", str(out), "--no-progress", *extra])


def recorded_actions(out) -> np.ndarray:
    """Every action taken in the dataset (not the placeholder at each episode's last frame)."""
    shards = FrameShards(out)
    return np.concatenate([np.asarray(shards.actions[e.shard][e.start:e.end - 1]) for e in shards.episodes])


def chi2_uniform(actions: np.ndarray, size: int = 15) -> float:
    expected = len(actions) / size
    return float(((np.bincount(actions, minlength=size) - expected) ** 2 / expected).sum())


def test_greedy_frames_hold_the_agents_actions_reset_at_each_episode(coinrun_run, tmp_path, capsys):
    out = tmp_path / "greedy"
    assert generate(out, "--policy", str(coinrun_run), "--temperature", "0", "--num-envs", "1", "--steps", "600",
                    "--shard-steps", "200") == 0, capsys.readouterr().err
    checkpoint = coinrun_run / "checkpoints" / "last.pt"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["policy"] == {"kind": "agent", "checkpoint": str(checkpoint.resolve()), "algo": "dreamerv3",
                                  "step": 2, "mode": "greedy", "temperature": 0.0, "epsilon": 0.0}
    shards = FrameShards(out)
    assert len(shards.episodes) >= 2     # CoinRun's episodes last at most 1,000 steps: a reset is replayed
    agent = load_agent(load_checkpoint(checkpoint))
    # The posterior samples its latents: the same seed and calls (one env, every frame in
    # order, each episode's last frame too) draw the same ones.
    torch.manual_seed(manifest["seeds"][0]["seed"])
    state = agent.init_policy_state(1)
    for episode in shards.episodes:    # one env: in the order they were played
        frames = np.asarray(shards.frames[episode.shard][episode.start:episode.end]).transpose(0, 2, 3, 1)
        actions = np.asarray(shards.actions[episode.shard][episode.start:episode.end - 1])
        replayed = []
        for t in range(len(frames)):
            action, state = agent.policy({"image": frames[t:t + 1], "is_first": np.array([t == 0])}, state, "greedy")
            replayed.append(int(action[0]))
        np.testing.assert_array_equal(actions, replayed[:-1])


def test_epsilon_one_acts_as_the_random_policy_and_greedy_does_not(coinrun_run, tmp_path, capsys):
    common = ["--num-envs", "4", "--steps", "1500", "--shard-steps", "500"]
    assert generate(tmp_path / "random", *common) == 0
    assert generate(tmp_path / "eps1", *common, "--policy", str(coinrun_run), "--temperature", "0",
                    "--epsilon", "1") == 0
    assert generate(tmp_path / "greedy", *common, "--policy", str(coinrun_run), "--temperature", "0") == 0, \
        capsys.readouterr().err
    assert json.loads((tmp_path / "eps1" / MANIFEST).read_text())["policy"]["epsilon"] == 1.0
    assert chi2_uniform(recorded_actions(tmp_path / "random")) < CHI2_14_999
    assert chi2_uniform(recorded_actions(tmp_path / "eps1")) < CHI2_14_999
    assert chi2_uniform(recorded_actions(tmp_path / "greedy")) > 10 * CHI2_14_999   # an untrained agent's argmax


def test_a_checkpoint_of_another_env_or_action_count_is_refused_in_one_line(coinrun_run, tmp_path, capsys):
    assert generate_frames.main(["--game", "jumper", "--out", str(tmp_path / "jumper"), "--no-progress",
                                 "--policy", str(coinrun_run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the agent was trained on procgen coinrun, the recording is procgen jumper" in err
    state = torch.load(coinrun_run / "checkpoints" / "last.pt", weights_only=True)
    state["env_spaces"]["act"]["size"] = 6
    torch.save(state, tmp_path / "six_actions.pt")
    assert generate(tmp_path / "six", "--policy", str(tmp_path / "six_actions.pt")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "six_actions.pt: the agent has 6 actions, procgen coinrun has 15" in err
    assert not (tmp_path / "jumper").exists() and not (tmp_path / "six").exists()


def test_resume_keeps_the_policy_and_refuses_another(coinrun_run, tmp_path, capsys):
    out, policy = tmp_path / "agent", ["--policy", str(coinrun_run), "--epsilon", "0.5"]
    assert generate(out, "--steps", "300", "--num-envs", "2", *policy) == 0
    first = json.loads((out / MANIFEST).read_text())
    assert generate(out, "--steps", "300", "--num-envs", "2", "--resume", "--policy", str(coinrun_run),
                    "--epsilon", "0.2") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recorded by another policy: epsilon 0.5, not 0.2" in err
    assert generate(out, "--steps", "900", "--num-envs", "2", "--resume") == 1
    assert "recorded by a policy of kind 'agent', not 'random'" in capsys.readouterr().err
    assert generate(out, "--steps", "600", "--num-envs", "2", "--resume", *policy) == 0
    resumed = json.loads((out / MANIFEST).read_text())
    assert resumed["policy"] == first["policy"] and len(resumed["seeds"]) == 2 and resumed["steps"] >= 600


def test_a_sampling_temperature_the_agent_lacks_or_agent_flags_without_an_agent_are_refused(coinrun_run, tmp_path,
                                                                                            capsys):
    assert generate(tmp_path / "a", "--policy", str(coinrun_run), "--temperature", "0.5") == 1
    assert "dreamerv3's policy samples at its own temperature only; give --temperature 1 (sample) or 0 (greedy), " \
           "not 0.5" in capsys.readouterr().err
    assert generate(tmp_path / "b", "--epsilon", "0.1") == 1
    assert "--temperature and --epsilon choose how an agent acts; give --policy" in capsys.readouterr().err
    assert generate(tmp_path / "c", "--policy", str(coinrun_run), "--epsilon", "1.5") == 1
    assert "--epsilon 1.5 is not a probability" in capsys.readouterr().err
    assert generate(tmp_path / "d", "--option", "use_bg=false") == 1
    assert "'use_bg' is not a Procgen option; the options are num_levels" in capsys.readouterr().err


def test_old_random_manifests_resume_as_random(tmp_path):
    out = tmp_path / "old"
    assert generate(out, "--steps", "300", "--num-envs", "2") == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["policy"] == RANDOM
    manifest["policy"] = LEGACY_RANDOM                # as datasets were written before the policy record
    write_json_atomic(out / MANIFEST, manifest)
    assert generate(out, "--steps", "600", "--num-envs", "2", "--resume") == 0
    assert json.loads((out / MANIFEST).read_text())["policy"] == LEGACY_RANDOM
    assert policy_record(LEGACY_RANDOM) == RANDOM
    with pytest.raises(PolicyMismatchError, match="recorded by a policy of kind 'random', not 'agent'"):
        check_same_policy(out / MANIFEST, LEGACY_RANDOM, {"kind": "agent"})


class FeedbackAgent:
    """Always chooses action 3; its state is the actions it was last told were taken."""

    def init_policy_state(self, num_envs):
        return np.full(num_envs, -1)

    def policy(self, obs, state, mode="greedy", **kwargs):
        return np.full(len(obs["is_first"]), 3), np.full(len(obs["is_first"]), 3)

    def with_actions(self, state, actions):
        return np.array(actions, copy=True)


def test_epsilon_agent_replaces_that_share_of_actions_and_tells_the_agent():
    agent = EpsilonAgent(FeedbackAgent(), ActionSpace(True, 15, 0, 14), 0.5, np.random.default_rng(0))
    obs = {"is_first": np.zeros(4000, bool)}
    actions, state = agent.policy(obs, agent.init_policy_state(4000))
    np.testing.assert_array_equal(state, actions)       # the state follows the actions taken
    replaced = actions != 3
    assert 0.45 < replaced.mean() * 15 / 14 < 0.55       # a replaced action is 3 again once in 15
    kept, _ = EpsilonAgent(FeedbackAgent(), ActionSpace(True, 15, 0, 14), 0.0, np.random.default_rng(0)).policy(
        obs, None)
    assert (kept == 3).all()
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\], got 1.5"):
        EpsilonAgent(FeedbackAgent(), ActionSpace(True, 15, 0, 14), 1.5, np.random.default_rng(0))


def test_the_dreamer_agent_conditions_on_the_action_it_is_told_was_taken(coinrun_run):
    agent = load_agent(load_checkpoint(coinrun_run / "checkpoints" / "last.pt"))
    state = agent.init_policy_state(2)
    told = agent.with_actions(state, np.array([5, 14]))
    assert told.action.shape == (2, 15) and told.action.argmax(-1).tolist() == [5, 14]
    assert told.action.sum().item() == 2 and torch.equal(told.deter, state.deter)
