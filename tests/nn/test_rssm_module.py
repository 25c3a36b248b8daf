"""The RSSM module: config checks, parameters and init, observe/imagine, KL losses."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodels.nn.rssm import RSSM, RSSMConfig, categorical_kl_loss, unimix_log_probs

SMALL = dict(deter=12, stoch=3, classes=4, hidden=10, blocks=2, embed_dim=6, action_dim=2)


def _inputs(batch=2, steps=4, config=RSSMConfig(**SMALL)):
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(batch, steps, config.embed_dim, generator=gen)
    action = torch.randn(batch, steps, config.action_dim, generator=gen)
    first = torch.zeros(batch, steps, dtype=torch.bool)
    first[:, 0] = True
    return embed, action, first


@pytest.mark.parametrize("bad, match", [
    (dict(initial="random"), "initial="), (dict(deter=10, blocks=3), "multiple of blocks"),
    (dict(classes=1), "classes=1"), (dict(unimix=1.0), "unimix"), (dict(stoch=0), "stoch=0"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        RSSMConfig(**{**SMALL, **bad})


def test_parameters_and_init():
    model = RSSM(RSSMConfig(**SMALL))
    p = model.params()
    assert p.gru_weight.shape == (2, 6 + 10, 18)
    assert p.in_weight.shape == (10, 12 + 2)
    assert torch.all(p.in_norm_weight == 1) and torch.all(p.prior_out_bias == 0)
    assert torch.all(p.initial_deter == 0)
    big = RSSM(RSSMConfig(deter=256, hidden=256, blocks=1, stoch=16, classes=16))
    std = big.prior_weight.std().item()
    assert math.isclose(std, math.sqrt(2 / 512), rel_tol=0.1)
    assert big.prior_weight.abs().max() <= 2 * math.sqrt(2 / 512) / 0.8796 + 1e-6


def test_observe_shapes_and_learned_initial_gets_gradient():
    model = RSSM(RSSMConfig(**SMALL))
    embed, action, first = _inputs()
    obs = model.observe(embed, action, first, seed=0)
    assert obs.deter.shape == (2, 4, 12) and obs.stoch.shape == (2, 4, 3, 4)
    assert torch.allclose(obs.stoch.sum(-1), torch.ones(2, 4, 3))
    loss = model.kl_loss(obs.post_logits, obs.prior_logits, free_nats=0.0).loss.mean() + obs.deter.square().mean()
    loss.backward()
    assert model.initial.grad is not None and model.initial.grad.abs().sum() > 0
    zeros = RSSM(RSSMConfig(**SMALL, initial="zeros"))
    assert "initial" not in dict(zeros.named_parameters())


@pytest.mark.parametrize("impl", ["ref", "scan"])
def test_impls_agree_through_module(impl):
    torch.manual_seed(0)
    model = RSSM(RSSMConfig(**SMALL, impl=impl))
    embed, action, first = _inputs()
    obs = model.observe(embed, action, first, seed=1)
    model.config.impl = "ref"
    ref = model.observe(embed, action, first, seed=1)
    torch.testing.assert_close(obs.deter, ref.deter, atol=1e-5, rtol=1e-5)


def test_imagine_equals_steps_and_carried_state():
    model = RSSM(RSSMConfig(**SMALL))
    embed, action, first = _inputs()
    obs = model.observe(embed, action, first, seed=0)
    state = model.last_state(obs)
    actions = torch.randn(2, 3, 2)
    noise = torch.rand(2, 3, 3, 4)
    rollout = model.imagine(state, actions, noise=noise)
    for t in range(3):
        step = model.imagine_step(state, actions[:, t], noise=noise[:, t])
        torch.testing.assert_close(rollout.deter[:, t], step.deter)
        torch.testing.assert_close(rollout.prior_logits[:, t], step.prior_logits)
        state = (step.deter, step.stoch)
    assert model.features(rollout.deter, rollout.stoch).shape == (2, 3, 12 + 12)
    imagined = model.imaginer()(obs.deter[:, -1].detach(), obs.stoch[:, -1].detach(), actions=actions)
    assert imagined.deter.shape == (2, 4, 12)


def test_kl_loss_hand_computed():
    post = torch.zeros(1, 1, 2, requires_grad=True)                         # q = [0.5, 0.5]
    prior = torch.tensor([[[math.log(0.8), math.log(0.2)]]], requires_grad=True)
    kl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    out = categorical_kl_loss(post, prior, unimix=0.0, free_nats=0.0, dyn_scale=0.5, rep_scale=0.1)
    assert math.isclose(out.dyn.item(), kl, rel_tol=1e-6) and math.isclose(out.rep.item(), kl, rel_tol=1e-6)
    assert math.isclose(out.loss.item(), 0.6 * kl, rel_tol=1e-6)
    # dyn trains only the prior, rep only the posterior
    (g_post, g_prior) = torch.autograd.grad(out.dyn.sum(), [post, prior], allow_unused=True)
    assert g_post is None or torch.all(g_post == 0)
    assert g_prior.abs().sum() > 0
    (g_post, g_prior) = torch.autograd.grad(out.rep.sum(), [post, prior], allow_unused=True)
    assert g_prior is None or torch.all(g_prior == 0)
    # free bits: below free_nats the loss is constant and has no gradient
    clipped = categorical_kl_loss(post, prior, unimix=0.0, free_nats=1.0)
    assert math.isclose(clipped.loss.item(), 0.6, rel_tol=1e-6)
    assert torch.all(torch.autograd.grad(clipped.loss.sum(), prior)[0] == 0)


def test_unimix_log_probs_and_kl_with_unimix():
    logits = torch.tensor([[3.0, -1.0, 0.5]])
    probs = 0.97 * torch.softmax(logits, -1) + 0.01
    torch.testing.assert_close(unimix_log_probs(logits, 0.03), probs.log())
    q = 0.99 * torch.softmax(torch.tensor([1.0, 0.0]), -1) + 0.005
    p = 0.99 * torch.softmax(torch.tensor([0.0, 2.0]), -1) + 0.005
    out = categorical_kl_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), unimix=0.01, free_nats=0.0)
    torch.testing.assert_close(out.dyn, (q * (q / p).log()).sum().reshape(1).reshape(()), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="share a shape"):
        categorical_kl_loss(torch.zeros(2, 3), torch.zeros(3, 3))
