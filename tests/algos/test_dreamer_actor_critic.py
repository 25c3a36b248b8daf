"""DreamerV3's actor-critic loss against the formulas of its module docstring.

``ActorCritic.loss`` shares work: the actions sampled in imagination come from the same
actor pass the actor loss differentiates, and one critic pass gives the targets' values
and the critic loss. The reference here recomputes everything from the public pieces
(``rollout`` without gradients, ``policy``, ``value``), so the shared passes must give
the same losses and the same gradients.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from worldmodels import _ext
from worldmodels.algos.dreamerv3.agent import DreamerAgent
from worldmodels.algos.dreamerv3.config import DreamerConfig
from worldmodels.envs.factory import ActionSpace

OBS_SPACE = {"vector": ((5,), "float32")}


def agent_for(discrete: bool) -> DreamerAgent:
    torch.manual_seed(0)
    config = DreamerConfig(deter=32, stoch=4, classes=4, hidden=32, blocks=1, mlp_units=32, head_units=32,
                           cnn_keys="$^", mlp_keys=".*", horizon=5)
    space = ActionSpace(True, 3, 0, 2) if discrete else ActionSpace(False, 2, -1.0, 1.0)
    return DreamerAgent(config, OBS_SPACE, space)


def starts(agent: DreamerAgent, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    c = agent.config
    deter = torch.randn(n, c.deter, generator=gen)
    stoch = torch.nn.functional.one_hot(torch.randint(c.classes, (n, c.stoch), generator=gen), c.classes).float()
    return deter, stoch


def reference_loss(ac, world_model, deter, stoch) -> dict[str, torch.Tensor]:
    """The actor and critic losses as the module docstring writes them, every pass on its own."""
    c = ac.config
    roll = ac.rollout(world_model, deter, stoch)
    ac.return_norm.update(roll.returns)
    advantage = (roll.returns - roll.value[:, :-1]) / ac.return_norm.scale()
    feat = roll.feat[:, :-1]
    dist = ac.policy(feat)
    actor = (roll.weight * (-advantage * dist.log_prob(roll.action) - c.entropy * dist.entropy())).mean()
    critic_dist = ac.value(feat)
    slow = ac.value(feat, slow=True).mean()
    nll = -critic_dist.log_prob(roll.returns) - c.slow_critic_reg * critic_dist.log_prob(slow)
    return {"actor": actor, "critic": (roll.weight * nll).mean()}


def grads(module: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_shared_passes_give_the_reference_losses_and_gradients(discrete):
    agent = agent_for(discrete)
    # A trained-looking critic and reward head (zero-initialised outputs make every value 0).
    with torch.no_grad():
        for head in (agent.actor_critic.critic.out, agent.world_model.reward_head.out):
            head.weight.normal_(0, 0.3)
    agent.actor_critic.slow_critic.load_state_dict(agent.actor_critic.critic.state_dict())
    deter, stoch = starts(agent)
    reference_ac = copy.deepcopy(agent.actor_critic)

    torch.manual_seed(5)
    terms, _ = agent.actor_critic.loss(agent.world_model, deter, stoch)
    torch.manual_seed(5)
    expected = reference_loss(reference_ac, agent.world_model, deter, stoch)

    for name in ("actor", "critic"):
        torch.testing.assert_close(terms[name], expected[name], rtol=1e-5, atol=1e-6)
    for mine, theirs in ((agent.actor_critic.actor, reference_ac.actor), (agent.actor_critic.critic, reference_ac.critic)):
        name = "actor" if mine is agent.actor_critic.actor else "critic"
        for got, want in zip(grads(mine, terms[name]), grads(theirs, expected[name])):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert float(expected["actor"].detach().abs()) > 0 and float(expected["critic"].detach().abs()) > 0


def test_the_critic_loss_never_reaches_the_actor_and_the_actor_loss_never_the_critic():
    agent = agent_for(True)
    deter, stoch = starts(agent)
    terms, _ = agent.actor_critic.loss(agent.world_model, deter, stoch)
    actor_params = list(agent.actor_critic.actor.parameters())
    critic_params = list(agent.actor_critic.critic.parameters())
    assert all(g is None for g in torch.autograd.grad(terms["critic"], actor_params, retain_graph=True,
                                                      allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(terms["actor"], critic_params, allow_unused=True))


@pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_gathering_the_one_hot_columns_changes_no_loss_and_no_gradient(discrete, monkeypatch):
    agent = agent_for(discrete)
    with torch.no_grad():
        agent.actor_critic.critic.out.weight.normal_(0, 0.3)
    deter, stoch = starts(agent)
    imaginer = agent.world_model.imaginer()
    assert imaginer(deter, stoch, agent.actor_critic._imagine_policy, horizon=3).index is not None
    results = []
    for gather in (True, False):
        if not gather:  # the dense products everywhere, as on a GPU
            monkeypatch.setattr(sys.modules["worldmodels.ops.onehot_linear"], "gathers", lambda x: False)
        ac = copy.deepcopy(agent.actor_critic)
        torch.manual_seed(5)
        terms, metrics = ac.loss(agent.world_model, deter, stoch)
        results.append((terms, metrics, grads(ac.actor, terms["actor"]), grads(ac.critic, terms["critic"])))
    (terms, metrics, actor_grads, critic_grads), (want, want_metrics, want_actor, want_critic) = results
    for name in ("actor", "critic"):
        torch.testing.assert_close(terms[name], want[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics, want_metrics, rtol=1e-5, atol=1e-6)
    for got, expected in zip(actor_grads + critic_grads, want_actor + want_critic):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
