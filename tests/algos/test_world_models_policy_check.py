"""The dream-vs-real policy check: fixed policies in env action space, their returns in
M's dream and in the real env, ranks and the rank correlation, the files it writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from worldmodels.algos.world_models.config import preset
from worldmodels.algos.world_models.envs import DOOM_LEFT, DOOM_RIGHT, TinyBatch, doom_discrete_actions, resolve_env
from worldmodels.algos.world_models.mdnrnn import MDNRNN, MDNRNNConfig
from worldmodels.algos.world_models.pipeline import run_pipeline
from worldmodels.algos.world_models.policy_check import (
    CHECK_SEED,
    FixedPolicy,
    check_dream,
    dream_policy_returns,
    fixed_policies,
    main,
    ranks,
    real_policy_returns,
    spearman,
)


def test_the_policies_cover_random_nothing_and_every_action_extreme():
    assert [p.name for p in fixed_policies(resolve_env("doom"))] == ["random (collection)", "nothing", "left", "right"]
    assert len(fixed_policies(resolve_env("tiny"))) == 2 + 2 * 2
    assert len(fixed_policies(resolve_env("carracing"))) == 5
    rng = np.random.default_rng(0)
    left, right = fixed_policies(resolve_env("doom"))[2:]
    assert (doom_discrete_actions(left.first(rng, 3)) == DOOM_LEFT).all()
    assert (doom_discrete_actions(right.first(rng, 3)) == DOOM_RIGHT).all()
    gas_right = fixed_policies(resolve_env("carracing"))[-1].first(rng, 2)
    np.testing.assert_array_equal(gas_right, [[1, 1, 0], [1, 1, 0]])


def test_constant_policies_hold_and_the_collection_policy_redraws_a_fifth_of_the_time():
    rng = np.random.default_rng(0)
    random_policy, nothing = fixed_policies(resolve_env("tiny"))[:2]
    action = nothing.first(rng, 4)
    assert nothing.next(rng, action) is action
    previous = random_policy.first(rng, 20_000)
    changed = (random_policy.next(rng, previous) != previous).any(1).mean()
    assert 0.19 < changed < 0.21
    assert previous.min() >= -1 and previous.max() <= 1


def test_real_returns_of_a_constant_policy_match_the_env_stepped_by_hand():
    cfg = preset("tiny", env="tiny", eval_episodes=6, collect_envs=4, controller_steps=7)
    policy = FixedPolicy("drift", lambda rng, n: np.tile([[0.5, -1.0]], (n, 1)).astype(np.float32))
    got = real_policy_returns(cfg, resolve_env("tiny"), policy)
    want = []
    for seed, count in ((cfg.seed + CHECK_SEED, 4), (cfg.seed + CHECK_SEED + 4, 2)):
        env = TinyBatch(count, seed, cfg.controller_steps)
        env.reset()
        total = np.zeros(count)
        for _ in range(cfg.controller_steps):
            total += env.step(np.tile([[0.5, -1.0]], (count, 1)).astype(np.float32))[1]
        want.append(total)
    np.testing.assert_allclose(got, np.concatenate(want))


def _model(done_bias: float) -> MDNRNN:
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(latent_dim=4, action_dim=1, hidden_size=8, num_mixtures=2, predict_done=True))
    with torch.no_grad():
        model.done.weight.zero_()
        model.done.bias.fill_(done_bias)
    return model.eval()


@pytest.mark.parametrize("rule", ["threshold", "sample"])
def test_the_dream_ends_where_the_done_head_says_and_is_seeded(rule):
    starts = torch.randn(5, 4)
    policy = FixedPolicy("still", lambda rng, n: np.zeros((n, 1), np.float32))
    args = dict(rollouts=6, horizon=9, temperature=1.0, alive_reward=4.0, done_rule=rule, seed=3)
    np.testing.assert_array_equal(dream_policy_returns(_model(-30.0), starts, policy, **args), np.full(6, 36.0))
    np.testing.assert_array_equal(dream_policy_returns(_model(30.0), starts, policy, **args), np.full(6, 4.0))
    random_policy = fixed_policies(resolve_env("doom"))[0]
    model = _model(0.0)
    first = dream_policy_returns(model, starts, random_policy, **args)
    np.testing.assert_array_equal(first, dream_policy_returns(model, starts, random_policy, **args))


def test_ranks_and_the_rank_correlation():
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 2.0])), [1, 3, 2])
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def vm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("policy_check") / "run"
    run_pipeline(preset("tiny", env="tiny", eval_episodes=4, collect_envs=4), run,
                 ["collect", "vae", "encode", "mdnrnn"])
    return run


def test_the_check_writes_both_scores_and_ranks_for_every_policy(vm_run, capsys):
    assert main(["--run", str(vm_run), "--rollouts", "8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rank correlation (Spearman) dream vs real" in printed
    summary = json.loads((vm_run / "policy_check.json").read_text())
    with open(vm_run / "policy_check.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [p.name for p in fixed_policies(resolve_env("tiny"))]
    assert [r["policy"] for r in rows] == names == [p["policy"] for p in summary["policies"]]
    for key in ("dream", "real"):
        assert sorted(int(r[f"{key}_rank"]) for r in rows) == list(range(1, len(names) + 1))
    assert all(int(r["real_episodes"]) == 4 and int(r["dream_rollouts"]) == 8 for r in rows)
    assert -1.0 <= summary["rank_correlation"] <= 1.0


def test_the_check_needs_m_and_says_which_stage_makes_it(tmp_path, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    assert "no config.json there" in capsys.readouterr().err
    run = tmp_path / "run"
    run_pipeline(preset("tiny", env="tiny"), run, ["collect"])
    with pytest.raises(FileNotFoundError, match="mdnrnn|encode|vae"):
        check_dream(preset("tiny", env="tiny"), run, rollouts=2, progress=False)
