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


def _learned_initial_model(impl="ref", seed=0):
    torch.manual_seed(seed)
    model = RSSM(RSSMConfig(**SMALL, impl=impl))
    with torch.no_grad():
        model.initial.copy_(torch.randn(12))                # h_0 away from 0, so the prior's mode is not trivial
        model.prior_out_bias.copy_(torch.randn(12))
    return model


def test_learned_initial_state_is_tanh_and_the_priors_mode():
    from worldmodels.ops.rssm import prior_head

    model = _learned_initial_model()
    p = model.params()
    h0 = torch.tanh(model.initial)
    torch.testing.assert_close(p.initial_deter, h0)
    mode = prior_head(h0, p).argmax(-1)                      # [S]
    assert p.initial_stoch.shape == (3, 4) and not p.initial_stoch.requires_grad
    assert torch.equal(p.initial_stoch, torch.nn.functional.one_hot(mode, 4).float())
    deter, stoch = model.initial_state(5)
    torch.testing.assert_close(deter, h0.expand(5, -1))
    assert torch.equal(stoch, p.initial_stoch.expand(5, -1, -1))
    zeros = RSSM(RSSMConfig(**SMALL, initial="zeros"))
    assert zeros.params().initial_stoch is None and torch.all(zeros.initial_state(2).stoch == 0)


def test_resets_start_from_the_learned_initial_state():
    from worldmodels.ops.rssm import core_step_ref, post_head, embed_projection

    model = _learned_initial_model()
    embed, action, first = _inputs(steps=5)
    first[1, 3] = True                                       # a reset mid-sequence
    obs = model.observe(embed, action, first, seed=2)
    p = model.params()
    for b, t in ((0, 0), (1, 0), (1, 3)):
        h0, z0 = p.initial_deter.unsqueeze(0), p.initial_stoch.unsqueeze(0)
        expected = core_step_ref(h0, z0, torch.zeros(1, 2), p)  # h_0, z_0 and a zero action
        torch.testing.assert_close(obs.deter[b, t], expected[0])
        torch.testing.assert_close(obs.post_logits[b, t], post_head(expected, embed_projection(embed[b, t], p), p)[0])
    # Without the learned z_0 (zeros) the first step differs: z_0 is used.
    zero_z = core_step_ref(p.initial_deter.unsqueeze(0), torch.zeros(1, 3, 4), torch.zeros(1, 2), p)
    assert not torch.allclose(obs.deter[0, 0], zero_z[0])


@pytest.mark.parametrize("impl", ["scan", "cpp"])
def test_fast_paths_agree_with_the_reference_on_the_learned_initial_state(impl):
    if impl == "cpp":
        from worldmodels.ops import _rssm_loop

        if not _rssm_loop.has_fast_parts("cpp", torch.device("cpu")):
            pytest.skip("the C++ extension worldmodels._C is not built")
    results = []
    for path in ("ref", impl):
        model = _learned_initial_model(path)
        embed, action, first = _inputs(steps=5)
        first[1, 2] = True
        embed.requires_grad_()
        obs = model.observe(embed, action, first, seed=3)
        loss = obs.deter.square().sum() + (obs.post_logits * torch.linspace(-1, 1, 4)).sum()
        loss.backward()
        results.append((obs, embed.grad, {n: q.grad for n, q in model.named_parameters()}))
    (ref, ref_embed_grad, ref_grads), (fast, fast_embed_grad, fast_grads) = results
    for name in ("deter", "stoch", "post_logits", "prior_logits"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_embed_grad, ref_embed_grad, atol=1e-5, rtol=1e-5)
    for name, grad in ref_grads.items():
        if grad is None:
            assert fast_grads[name] is None, name
        else:
            torch.testing.assert_close(fast_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)
