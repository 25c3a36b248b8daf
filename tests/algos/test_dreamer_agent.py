"""DreamerV3 agent: world-model and actor-critic losses, gradient isolation, acting, open loop."""

from __future__ import annotations

import math
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldmodels import _ext
from worldmodels.algos.dreamerv3.agent import DreamerAgent, DreamerConfig, PolicyState
from worldmodels.algos.dreamerv3.world_model import prev_actions
from worldmodels.nn.distributions import TwoHotSymlog

OBS_SPACE = {"image": ((16, 16, 3), np.uint8), "vector": ((5,), np.float32)}
DISCRETE = SimpleNamespace(discrete=True, size=3)
CONTINUOUS = SimpleNamespace(discrete=False, size=2)
LOG_BINS = math.log(255)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is much faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> DreamerConfig:
    sizes = {"deter": 32, "stoch": 4, "classes": 4, "hidden": 32, "blocks": 2, "cnn_depth": 4, "mlp_units": 32,
             "head_units": 32, "head_layers": 1, "actor_layers": 1, "critic_layers": 1, "horizon": 4}
    return DreamerConfig(**{**sizes, **overrides})


def make_agent(act_space=DISCRETE, obs_space=OBS_SPACE, seed=0, **overrides) -> DreamerAgent:
    torch.manual_seed(seed)
    return DreamerAgent(tiny_config(**overrides), obs_space, act_space)


def make_batch(act_space=DISCRETE, batch=2, steps=5, seed=0, reward=None, keys=("image", "vector")) -> dict:
    """A numpy replay batch; one episode start at t=0 and one mid-sequence, one terminal."""
    rng = np.random.default_rng(seed)
    out = {}
    if "image" in keys:
        out["image"] = rng.integers(0, 256, (batch, steps, 16, 16, 3), dtype=np.uint8)
    if "vector" in keys:
        out["vector"] = rng.normal(size=(batch, steps, 5)).astype(np.float32)
    if act_space.discrete:
        out["action"] = np.eye(act_space.size, dtype=np.float32)[rng.integers(0, act_space.size, (batch, steps))]
    else:
        out["action"] = rng.uniform(-1, 1, (batch, steps, act_space.size)).astype(np.float32)
    out["reward"] = (rng.normal(size=(batch, steps)) if reward is None else np.full((batch, steps), reward))
    out["reward"] = out["reward"].astype(np.float32)
    out["is_first"] = np.zeros((batch, steps), bool)
    out["is_first"][:, 0] = out["is_first"][0, 3] = True
    out["is_terminal"] = np.zeros((batch, steps), bool)
    out["is_terminal"][1, -1] = True
    out["discount"] = 1.0 - out["is_terminal"].astype(np.float32)
    return out


def as_tensors(batch: dict) -> dict:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def grads(module) -> list:
    return [p.grad for p in module.parameters()]


def test_prev_actions_shift_right_and_zero_at_starts():
    action = torch.arange(1.0, 13.0).reshape(2, 3, 2)
    is_first = torch.tensor([[True, False, False], [False, False, True]])
    prev = prev_actions(action, is_first)
    expected = torch.tensor([[[0.0, 0.0], [1, 2], [3, 4]], [[0, 0], [7, 8], [0, 0]]])
    torch.testing.assert_close(prev, expected)


def test_compute_loss_terms_are_scalars_with_their_init_values():
    agent = make_agent()
    loss, metrics = agent.compute_loss(make_batch())  # numpy in, converted by the agent
    expected = {f"model/{k}" for k in ("image", "vector", "reward", "cont", "dyn", "rep", "kl", "total")}
    expected |= {f"ac/{k}" for k in ("actor", "critic", "return", "advantage", "actor_entropy", "value",
                                     "slow_value", "return_scale", "imag_reward", "imag_cont", "weight")}
    assert set(metrics) == expected | {"loss"}
    for name, value in metrics.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert loss.dim() == 0 and loss.requires_grad
    torch.testing.assert_close(loss.detach(), metrics["model/total"] + metrics["ac/actor"] + metrics["ac/critic"])
    # Zero-initialised reward head and critic: uniform over 255 bins, NLL = log 255 for any target.
    torch.testing.assert_close(metrics["model/reward"], torch.tensor(LOG_BINS))
    torch.testing.assert_close(metrics["ac/critic"], (1 + 1.0) * LOG_BINS * metrics["ac/weight"])
    assert metrics["ac/value"].abs() < 1e-6 and metrics["ac/return"].abs() < 1e-5
    # Discrete actor with 3 actions: entropy at most log 3.
    assert 0 < metrics["ac/actor_entropy"] <= math.log(3) + 1e-6


def test_world_model_total_weights_each_term_by_its_scale():
    agent = make_agent(image_scale=2.0, vector_scale=0.5, reward_scale=3.0, cont_scale=0.25)
    terms, post, feat = agent.world_model.loss(as_tensors(make_batch()))
    expected = (2.0 * terms["image"] + 0.5 * terms["vector"] + 3.0 * terms["reward"] + 0.25 * terms["cont"]
                + terms["kl"])
    torch.testing.assert_close(terms["total"], expected)
    assert feat.shape == (2, 5, 32 + 4 * 4) and post.stoch.shape == (2, 5, 4, 4)
    # Free bits: the scaled KL is at least (dyn_scale + rep_scale) * free_nats per step.
    assert terms["kl"] >= (0.5 + 0.1) * 1.0 - 1e-6


@pytest.mark.parametrize("act_space", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_gradients_stay_within_their_part(act_space):
    agent = make_agent(act_space)
    wm, ac = agent.world_model, agent.actor_critic
    batch = as_tensors(make_batch(act_space))
    terms, post, _ = wm.loss(batch)
    terms["total"].backward()
    assert all(g is not None for g in grads(wm)), "every world-model parameter is trained by its loss"
    assert all(g is None for g in grads(ac)), "the world-model loss must not reach the actor-critic"
    starts = post.deter.flatten(0, 1), post.stoch.flatten(0, 1)
    for part, other in (("actor", ac.critic), ("critic", ac.actor)):
        agent.zero_grad(set_to_none=True)
        ac_terms, _ = ac.loss(wm, *starts)
        ac_terms[part].backward()
        trained = getattr(ac, part)
        assert all(g is not None for g in grads(trained)) and any(g.abs().sum() > 0 for g in grads(trained))
        assert all(g is None for g in grads(other)), f"the {part} loss reached the other network"
        assert all(g is None for g in grads(wm)), f"the {part} loss reached the world model"
        assert all(g is None for g in grads(ac.slow_critic))


def test_full_loss_trains_everything_but_the_slow_critic():
    agent = make_agent()
    agent.compute_loss(make_batch())[0].backward()
    names = [n for n, p in agent.named_parameters() if p.grad is None]
    assert names and all(n.startswith("actor_critic.slow_critic.") for n in names)
    assert all(not p.requires_grad for p in agent.actor_critic.slow_critic.parameters())


def test_slow_critic_moves_toward_the_critic_by_the_fraction():
    agent = make_agent(slow_critic_fraction=0.25)
    ac = agent.actor_critic
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in ac.slow_critic.parameters()]
    critic = [p.clone() for p in ac.critic.parameters()]
    agent.compute_loss(make_batch())
    for old, target, new in zip(before, critic, ac.slow_critic.parameters()):
        torch.testing.assert_close(new, old + 0.25 * (target - old))
    agent.eval()  # evaluation leaves the slow critic alone
    frozen = [p.clone() for p in ac.slow_critic.parameters()]
    agent.compute_loss(make_batch())
    assert all(torch.equal(a, b) for a, b in zip(frozen, ac.slow_critic.parameters()))


def test_reward_head_and_critic_predict_zero_at_init():
    agent = make_agent()
    feat = torch.randn(7, 3, agent.world_model.feat_dim) * 5
    assert agent.world_model.reward(feat).mean().abs().max() < 1e-6
    assert agent.actor_critic.value(feat).mean().abs().max() < 1e-6


def test_optimisation_fits_a_constant_reward_of_one():
    agent = make_agent(train_actor=False, model_lr=3e-3)
    optimizer = agent.make_optimizer()
    batch = as_tensors(make_batch(reward=1.0))
    for _ in range(100):
        optimizer.zero_grad()
        agent.compute_loss(batch)[0].backward()
        optimizer.step()
    with torch.no_grad():
        _, _, feat = agent.world_model.loss(batch)
        predicted = agent.world_model.reward(feat).mean()
    assert (predicted - 1.0).abs().max() < 0.1, predicted


def _constant_heads(agent, value_logits: torch.Tensor) -> float:
    """Continue head -> 1 everywhere, critic -> a constant distribution; returns its mean v."""
    with torch.no_grad():
        agent.world_model.cont_head.out.weight.zero_()
        agent.world_model.cont_head.out.bias.fill_(40.0)  # sigmoid(40) == 1 in fp32
        agent.actor_critic.critic.out.weight.zero_()
        agent.actor_critic.critic.out.bias.copy_(value_logits)
    return float(TwoHotSymlog(value_logits).mean())


def test_lambda_returns_bootstrap_a_constant_value():
    gamma, lam, horizon = 0.9, 0.8, 4
    agent = make_agent(discount=gamma, lam=lam, horizon=horizon)
    v = _constant_heads(agent, -0.5 * (torch.linspace(-20, 20, 255) - 2.0) ** 2)  # peaked at symlog(v) ~ 2
    assert 5.0 < v < 8.0
    starts = agent.world_model.rssm.initial_state(6)
    roll = agent.actor_critic.rollout(agent.world_model, *starts)
    # r = 0, c = 1, v constant: R^(n) = gamma (1 - lam) v + gamma lam R^(n-1), R^(0) = v, so with
    # n = H - t steps to go, R_t = (gamma lam)^n v + gamma (1 - lam) v (1 - (gamma lam)^n) / (1 - gamma lam).
    steps = torch.arange(horizon, 0, -1, dtype=torch.float64)
    decay = (gamma * lam) ** steps
    expected = decay * v + gamma * (1 - lam) * v * (1 - decay) / (1 - gamma * lam)
    assert roll.reward.abs().max() < 1e-6 and torch.all(roll.cont == 1)
    torch.testing.assert_close(roll.value, torch.full((6, horizon + 1), v))
    torch.testing.assert_close(roll.returns, expected.float().expand(6, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(roll.weight, (gamma ** torch.arange(horizon).float()).expand(6, -1))
    # A terminal start state gives the whole imagined trajectory zero weight.
    roll = agent.actor_critic.rollout(agent.world_model, *starts, start_cont=torch.zeros(6))
    assert torch.all(roll.weight == 0)


def test_returns_stop_where_the_continue_head_predicts_termination():
    agent = make_agent(discount=0.9, lam=0.8)
    _constant_heads(agent, -0.5 * (torch.linspace(-20, 20, 255) - 2.0) ** 2)
    wm = agent.world_model
    with torch.no_grad():
        wm.cont_head.out.bias.fill_(-40.0)  # every imagined state is terminal
        wm.reward_head.out.bias.copy_(-0.5 * (torch.linspace(-20, 20, 255) + 1.0) ** 2)
    roll = agent.actor_critic.rollout(wm, *wm.rssm.initial_state(3), start_cont=torch.ones(3))
    # c_{t+1} = 0: nothing is bootstrapped past the next step, R_t = r_t (< 0 here).
    assert roll.reward.max() < -0.5
    torch.testing.assert_close(roll.returns, roll.reward)
    # The start continues (c_0 = 1), so only the first state carries weight.
    torch.testing.assert_close(roll.weight, torch.tensor([1.0, 0, 0, 0]).expand(3, -1))


def test_continue_head_is_trained_on_one_minus_is_terminal():
    agent = make_agent()
    with torch.no_grad():
        agent.world_model.cont_head.out.weight.zero_()
        agent.world_model.cont_head.out.bias.fill_(30.0)  # predicts "continues" with certainty
    terms, _, _ = agent.world_model.loss(as_tensors(make_batch()))
    # One terminal step out of B * T = 10 costs -log sigmoid(-30) = 30 nats; the others ~0.
    torch.testing.assert_close(terms["cont"], torch.tensor(3.0), atol=1e-4, rtol=0)


def test_actor_loss_is_reinforce_with_normalised_advantages():
    agent = make_agent(entropy=0.1)
    ac, wm = agent.actor_critic, agent.world_model
    _constant_heads(agent, torch.randn(255))
    with torch.no_grad():
        wm.reward_head.out.bias.copy_(torch.randn(255))  # non-zero imagined rewards
    ac.eval()  # no normaliser update: S = max(1, high - low) = 4
    ac.return_norm.low.fill_(-1.0), ac.return_norm.high.fill_(3.0)
    starts = wm.rssm.initial_state(5)
    torch.manual_seed(1)
    terms, metrics = ac.loss(wm, *starts)
    torch.manual_seed(1)
    roll = ac.rollout(wm, *starts)
    dist = ac.policy(roll.feat[:, :-1])
    advantage = (roll.returns - roll.value[:, :-1]) / 4.0
    assert advantage.abs().max() > 0.01
    expected = (roll.weight * (-advantage * dist.log_prob(roll.action) - 0.1 * dist.entropy())).mean()
    torch.testing.assert_close(terms["actor"], expected)
    torch.testing.assert_close(metrics["return_scale"], torch.tensor(4.0))


def test_param_groups_cover_the_trained_parameters_once():
    agent = make_agent(model_lr=1e-3, actor_lr=2e-4, critic_lr=3e-4)
    groups = agent.param_groups()
    assert [(g["name"], g["lr"], g["eps"]) for g in groups] == [
        ("model", 1e-3, 1e-8), ("actor", 2e-4, 1e-5), ("critic", 3e-4, 1e-5)]
    ids = [id(p) for g in groups for p in g["params"]]
    trained = {id(p) for p in agent.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trained
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in agent.world_model.parameters()}
    assert isinstance(agent.make_optimizer(), torch.optim.Adam)


def _obs(rng, n, first):
    return {"image": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
            "vector": rng.normal(size=(n, 5)).astype(np.float32), "is_first": np.asarray(first)}


@pytest.mark.parametrize("explore", [True, False])
def test_policy_discrete_actions_over_calls_with_resets(explore):
    agent, rng = make_agent(), np.random.default_rng(0)
    state = agent.init_policy_state(3)
    firsts = [[True, True, True], [False, False, False], [False, True, False], [False, False, True]]
    for first in firsts:
        action, state = agent.policy(_obs(rng, 3, first), state, explore=explore)
        assert action.dtype == np.int64 and action.shape == (3,)
        assert np.all((action >= 0) & (action < 3))
        assert isinstance(state, PolicyState) and state.deter.shape == (3, 32) and state.stoch.shape == (3, 4, 4)
        torch.testing.assert_close(state.action, F.one_hot(torch.as_tensor(action), 3).float())


def test_policy_reset_forgets_the_previous_state():
    agent, rng = make_agent(), np.random.default_rng(1)
    obs = _obs(rng, 2, [True, True])
    fresh = agent.init_policy_state(2)
    stale = PolicyState(torch.randn(2, 32), F.one_hot(torch.randint(0, 4, (2, 4)), 4).float(),
                        F.one_hot(torch.tensor([1, 2]), 3).float())
    results = []
    for state in (fresh, stale):
        torch.manual_seed(3)
        results.append(agent.policy(obs, state, explore=True))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1].deter, results[1][1].deter)
    # Without the reset the stale state changes the posterior.
    torch.manual_seed(3)
    _, carried = agent.policy({**obs, "is_first": np.array([False, False])}, stale, explore=True)
    assert not torch.allclose(carried.deter, results[0][1].deter)


def test_policy_continuous_actions_are_bounded_float32():
    agent, rng = make_agent(CONTINUOUS), np.random.default_rng(2)
    state = agent.init_policy_state(4)
    for step in range(3):
        action, state = agent.policy(_obs(rng, 4, [step == 0] * 4), state, explore=True)
        assert action.dtype == np.float32 and action.shape == (4, 2)
        assert np.all(np.abs(action) <= 1.0)
        np.testing.assert_array_equal(state.action.numpy(), action)
    mode, _ = agent.policy(_obs(rng, 4, [False] * 4), state, explore=False)
    assert mode.shape == (4, 2)


def test_policy_error_messages():
    agent = make_agent()
    obs = _obs(np.random.default_rng(0), 2, [True, True])
    with pytest.raises(KeyError, match="is_first"):
        agent.policy({k: v for k, v in obs.items() if k != "is_first"}, agent.init_policy_state(2), explore=True)
    with pytest.raises(ValueError, match="holds 3 envs"):
        agent.policy(obs, agent.init_policy_state(3), explore=True)
    with pytest.raises(KeyError, match="reward"):
        agent.compute_loss({k: v for k, v in make_batch().items() if k != "reward"})


def test_open_loop_uses_posterior_then_recorded_actions():
    agent, batch = make_agent(), make_batch(steps=6)
    torch.manual_seed(5)
    out = agent.open_loop(batch, context=3)
    assert set(out) == {"truth", "prediction", "error"}
    for video in out.values():
        assert video.dtype == torch.uint8 and video.shape == (2, 6, 16, 16, 3)
    np.testing.assert_array_equal(out["truth"].numpy(), batch["image"])
    # Actions after the context only drive the imagined part.
    changed = dict(batch, action=np.roll(batch["action"], 1, axis=-1))
    changed["action"][:, :2] = batch["action"][:, :2]
    torch.manual_seed(5)
    other = agent.open_loop(changed, context=3)
    assert torch.equal(other["prediction"][:, :3], out["prediction"][:, :3])
    assert not torch.equal(other["prediction"][:, 3:], out["prediction"][:, 3:])
    with pytest.raises(ValueError, match="context"):
        agent.open_loop(batch, context=0)


def test_open_loop_without_images_is_empty_and_vector_only_agent_trains():
    space = {"vector": ((5,), np.float32)}
    agent = make_agent(obs_space=space)
    batch = make_batch(keys=("vector",))
    assert agent.open_loop(batch, context=2) == {}
    loss, metrics = agent.compute_loss(batch)
    assert torch.isfinite(loss) and "model/image" not in metrics and "model/vector" in metrics


def test_continuous_compute_loss_is_finite_with_finite_gradients():
    agent = make_agent(CONTINUOUS)
    loss, metrics = agent.compute_loss(make_batch(CONTINUOUS))
    loss.backward()
    assert all(torch.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)


@pytest.mark.parametrize("size", [(84, 84), (78, 78)])
def test_world_model_update_runs_on_images_that_are_not_multiples_of_16(size):
    space = {"image": ((*size, 3), np.uint8)}
    agent = make_agent(obs_space=space, train_actor=False)
    rng = np.random.default_rng(0)
    batch = make_batch(keys=())
    batch["image"] = rng.integers(0, 256, (2, 5, *size, 3), dtype=np.uint8)
    optimizer = agent.make_optimizer()
    before = [p.detach().clone() for p in agent.world_model.parameters()]
    loss, metrics = agent.compute_loss(batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and torch.isfinite(metrics["model/image"])
    moved = [not torch.equal(b, p) for b, p in zip(before, agent.world_model.parameters())
             if p.grad is not None and p.grad.abs().sum() > 0]  # (the zero-init reward head has none yet)
    assert len(moved) > 20 and all(moved)
    video = agent.open_loop(batch, context=2)
    assert video["prediction"].shape == (2, 5, *size, 3) == video["truth"].shape


def _max_std_actor(agent, mean_raw: float = 3.0) -> None:
    """Continuous actor at its widest: std = actor_max_std, mean = tanh(mean_raw) for every state."""
    out = agent.actor_critic.actor.out
    with torch.no_grad():
        out.weight.zero_()
        out.bias[: agent.actor_critic.action_dim].fill_(mean_raw)
        out.bias[agent.actor_critic.action_dim:].fill_(30.0)


@pytest.mark.parametrize("actor_grad", ["reinforce", "dynamics"])
def test_imagined_continuous_actions_stay_in_the_replay_bounds_at_maximum_std(actor_grad):
    agent = make_agent(CONTINUOUS, actor_grad=actor_grad, horizon=6)
    ac, wm = agent.actor_critic, agent.world_model
    _max_std_actor(agent)
    starts = wm.rssm.initial_state(256)
    feat = wm.features(*starts)
    dist = ac.policy(feat)
    torch.testing.assert_close(dist.std, torch.full_like(dist.std, 1.0))
    assert (dist.sample().abs() > 1).float().mean() > 0.4  # raw samples leave [-1, 1] half the time
    roll = ac.rollout(wm, *starts) if actor_grad == "reinforce" else ac.rollout_with_dynamics(wm, *starts)
    assert roll.action.shape == (256, 6, 2)
    assert roll.action.abs().max() <= 1.0
    assert (roll.action == 1.0).float().mean() > 0.3  # the samples above 1 are bounded to 1, not dropped
    _, metrics = ac.loss(wm, *starts)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_bound_action_clips_values_and_scales_gradients():
    from worldmodels.nn.distributions import bound_action

    a = torch.tensor([-3.0, -0.5, 0.0, 0.9, 2.0], requires_grad=True)
    out = bound_action(a)
    torch.testing.assert_close(out, a.detach().clamp(-1, 1))
    out.sum().backward()
    torch.testing.assert_close(a.grad, torch.tensor([1 / 3, 1.0, 1.0, 1.0, 0.5]))  # sg(1 / max(1, |a|))
    with pytest.raises(ValueError, match="absmax=0"):
        bound_action(a, 0.0)


def _random_heads(agent, seed: int = 3) -> None:
    """Non-zero reward and critic outputs, so imagined returns depend on the states."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (agent.world_model.reward_head.out, agent.actor_critic.critic.out):
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=gen))
            head.bias.copy_(torch.randn(head.bias.shape, generator=gen))


@pytest.mark.parametrize("actor_grad", ["reinforce", "dynamics"])
def test_actor_grad_options_train_only_the_actor_with_finite_gradients(actor_grad):
    agent = make_agent(CONTINUOUS, actor_grad=actor_grad, entropy=0.0)
    wm, ac = agent.world_model, agent.actor_critic
    _random_heads(agent)
    _, post, _ = wm.loss(as_tensors(make_batch(CONTINUOUS)))
    starts = post.deter.detach().flatten(0, 1), post.stoch.detach().flatten(0, 1)
    ac.eval()
    torch.manual_seed(1)
    terms, metrics = ac.loss(wm, *starts)
    terms["actor"].backward()
    actor_grads = grads(ac.actor)
    assert all(g is not None and torch.isfinite(g).all() for g in actor_grads)
    assert sum(g.abs().sum() for g in actor_grads) > 0
    for other in (wm, ac.critic, ac.slow_critic):
        assert all(g is None for g in grads(other)), f"the {actor_grad} actor loss reached {type(other).__name__}"
    torch.manual_seed(1)
    if actor_grad == "dynamics":
        roll = ac.rollout_with_dynamics(wm, *starts)
        assert roll.returns.requires_grad and not roll.weight.requires_grad
        expected = (roll.weight * -(roll.returns - roll.value[:, :-1])).mean()  # S = 1 (eval, fresh normaliser)
    else:
        roll = ac.rollout(wm, *starts)
        assert not roll.returns.requires_grad
        log_prob = ac.policy(roll.feat[:, :-1]).log_prob(roll.action)
        expected = (roll.weight * -(roll.returns - roll.value[:, :-1]) * log_prob).mean()
    torch.testing.assert_close(terms["actor"], expected.detach())
    torch.testing.assert_close(metrics["return_scale"], torch.tensor(1.0))


def test_actor_grad_dynamics_differs_from_reinforce_and_needs_continuous_actions():
    def actor_gradient(actor_grad):
        agent = make_agent(CONTINUOUS, actor_grad=actor_grad, entropy=0.0)
        _random_heads(agent)
        starts = agent.world_model.rssm.initial_state(32)
        torch.manual_seed(2)
        agent.actor_critic.loss(agent.world_model, *starts)[0]["actor"].backward()
        return torch.cat([g.flatten() for g in grads(agent.actor_critic.actor)])

    assert not torch.allclose(actor_gradient("dynamics"), actor_gradient("reinforce"))
    with pytest.raises(ValueError, match="actor_grad='dynamics' needs continuous actions"):
        make_agent(DISCRETE, actor_grad="dynamics")
    with pytest.raises(ValueError, match="actor_grad='backprop' is not one of"):
        make_agent(CONTINUOUS, actor_grad="backprop")


@pytest.mark.parametrize("space", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_behaviour_cloning_is_the_actors_nll_of_the_taken_actions_and_leaves_the_world_model_alone(space):
    agent = make_agent(space, bc_scale=0.5, train_actor=False)
    batch = make_batch(space)
    batch["is_last"] = np.zeros((2, 5), bool)
    batch["is_last"][0, 2] = True                         # the action at an episode's last step is never taken
    torch.manual_seed(5)                                  # the same posterior samples in all three
    loss, metrics = agent.compute_loss(batch)
    plain_agent = make_agent(space, train_actor=False)
    torch.manual_seed(5)
    plain, _ = plain_agent.compute_loss(batch)
    tensors = as_tensors(batch)
    torch.manual_seed(5)
    _, post, _ = agent.world_model.loss({k: tensors[k] for k in ("image", "vector", "action", "reward",
                                                                   "is_first", "is_terminal")})
    with torch.no_grad():
        dist = agent.actor_critic.policy(agent.world_model.features(post.deter, post.stoch))
        nll = -dist.log_prob(tensors["action"])
    taken = ~tensors["is_last"]
    torch.testing.assert_close(metrics["ac/bc_nll"], nll[taken].mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, plain + 0.5 * metrics["ac/bc_nll"], rtol=1e-4, atol=1e-4)
    (0.5 * agent.behaviour_cloning_loss(post, tensors)).backward()
    assert all(g is None for g in grads(agent.world_model))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(agent.actor_critic.actor))


def test_behaviour_cloning_learns_a_demonstrators_actions():
    agent = make_agent(DISCRETE, bc_scale=1.0, train_actor=False)
    batch = make_batch(DISCRETE, batch=4, steps=6)
    demonstrator = (batch["vector"][..., 0] > 0).astype(int) * 2           # action 2 when x_0 > 0, else 0
    batch["action"] = np.eye(3, dtype=np.float32)[demonstrator]
    optimizer = agent.make_optimizer()
    for group in optimizer.param_groups:
        group["lr"] = 3e-3
    first = None
    for _ in range(150):
        loss, metrics = agent.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = metrics["ac/bc_nll"].item() if first is None else first
    assert first > 1.0 and metrics["ac/bc_nll"].item() < 0.35 * first    # from ~log 3 towards 0


@pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
def test_gathering_one_hot_columns_changes_no_loss_term_and_no_gradient(monkeypatch):
    # the decoder (image and vector), reward and continue heads read the posterior by
    # parts, the actor-critic the imagined states: the same values as the dense products
    batch, results = make_batch(), []
    for gather in (True, False):
        if not gather:
            for module in ("worldmodels.ops.onehot_linear", "worldmodels.algos.dreamerv3.world_model"):
                monkeypatch.setattr(sys.modules[module], "gathers", lambda x: False)
        agent = make_agent()
        torch.manual_seed(3)
        post = agent.world_model.observe(as_tensors(batch))
        assert (agent.world_model.onehot_inputs(post) is not None) == gather
        torch.manual_seed(3)
        loss, metrics = agent.compute_loss(batch)
        loss.backward()
        results.append((metrics, grads(agent)))
    (metrics, got), (want_metrics, want) = results
    torch.testing.assert_close(metrics, want_metrics, rtol=1e-5, atol=1e-6)
    assert sum(g is not None for g in got) > 40
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_on_the_cpu_gives_the_fp32_losses_to_bf16_precision():
    # precision=bf16 on the CPU: the convolutions and products run in bf16, the
    # parameters and their gradients stay fp32, the dense bf16 product replaces the
    # one-hot gathers, and the losses are the fp32 ones to bf16's precision
    batch, results = make_batch(batch=4, steps=6), []
    for autocast in (False, True):
        agent = make_agent()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            post = agent.world_model.observe(as_tensors(batch))
            assert (agent.world_model.onehot_inputs(post) is None) == autocast
            torch.manual_seed(3)
            loss, metrics = agent.compute_loss(batch)
        loss.backward()
        results.append((loss, metrics, grads(agent)))
    (loss32, metrics32, grads32), (loss16, metrics16, grads16) = results
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    for key in ("model/image", "model/vector", "model/reward", "model/cont", "model/kl", "ac/critic"):
        torch.testing.assert_close(metrics16[key], metrics32[key], rtol=0.03, atol=0.02, msg=key)
    assert all(g is None or (g.dtype == torch.float32 and bool(torch.isfinite(g).all())) for g in grads16)
    cosines = [F.cosine_similarity(a.flatten(), b.flatten(), dim=0) for a, b in zip(grads16, grads32)
               if a is not None and a.norm() > 0]
    assert len(cosines) > 40 and min(cosines) > 0.99


def test_bf16_heads_share_one_cast_of_the_imagined_features_with_the_same_losses(monkeypatch):
    batch, results = make_batch(batch=4, steps=6), []
    for once in (True, False):
        if not once:
            monkeypatch.setattr(sys.modules["worldmodels.algos.dreamerv3.behavior"], "_cast_once", lambda feat: feat)
        agent = make_agent()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, metrics = agent.compute_loss(batch)
        loss.backward()
        results.append((metrics, grads(agent)))
    (metrics, got), (want_metrics, want) = results
    torch.testing.assert_close(metrics, want_metrics, rtol=0, atol=0)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.equal(g, w)


def test_read_only_observations_are_copied_without_a_warning():
    from worldmodels.algos.dreamerv3.agent import _as_tensor

    frame = np.arange(12, dtype=np.uint8).reshape(3, 4)
    frame.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = _as_tensor(frame, torch.device("cpu"))
    assert tensor.dtype == torch.uint8 and torch.equal(tensor, torch.from_numpy(frame.copy()))
    writable = np.zeros(3, dtype=np.float32)
    shared = _as_tensor(writable, torch.device("cpu"))
    writable[0] = 1.0
    assert shared[0] == 1.0   # a writable array is shared, not copied
