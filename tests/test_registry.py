"""The family registry: every algorithm's factories, one-line errors, and agents rebuilt
from a checkpoint's recorded config and env spaces without any env package."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from worldmodels.algos import registry
from worldmodels.envs.spaces import ActionSpace, EnvSpaces
from worldmodels.errors import WorldModelsError

TINY_DREAMER = ["model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4", "model.classes=4",
                "model.mlp_units=16", "model.head_units=16", "model.horizon=3", "model.reward_bins=17"]


def test_every_registered_family_has_its_factories_or_its_own_runner():
    for name, family in registry.FAMILIES.items():
        if family.runner is not None:
            assert family.factories is None and callable(registry.runner(name)), name
            with pytest.raises(WorldModelsError, match=f"algo.name='{name}' runs its own stages"):
                registry.factories(name)
            continue
        assert registry.runner(name) is None, name
        factories = registry.factories(name)
        assert callable(factories.model) and callable(factories.data), name
        assert (family.agent_loader is not None) >= family.playable, name   # a playable family has an agent
    assert {n for n, f in registry.FAMILIES.items() if f.playable} == {"iris", "delta_iris"}
    assert {n for n, f in registry.FAMILIES.items() if f.runner} == {"world_models"}


def test_unknown_names_are_one_line_user_errors():
    with pytest.raises(WorldModelsError, match="algo.name='dreamer' is not one of delta_iris, dreamer_bc"):
        registry.factories("dreamer")
    with pytest.raises(WorldModelsError, match="records no config with algo.name"):
        registry.load_agent({"model": {}})
    with pytest.raises(WorldModelsError, match="algo.name='vae' has no agent to act with"):
        registry.load_agent({"config": {"algo": {"name": "vae"}}})


def no_envs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an env was opened")

    import worldmodels.envs.factory as factory

    monkeypatch.setattr(factory, "make_env", refuse)


def test_a_dreamer_agent_is_rebuilt_from_its_checkpoint_without_an_env(config_from, monkeypatch):
    from worldmodels.algos.dreamerv3.experiment import agent_from_spaces

    cfg = config_from(["+exp=dreamer_cartpole", "device=cpu", *TINY_DREAMER])
    spaces = EnvSpaces({"vector": ((4,), np.dtype(np.float32)), "reward": ((), np.dtype(np.float32)),
                        "is_first": ((), np.dtype(bool))}, ActionSpace(True, 2, 0, 1))
    torch.manual_seed(0)
    trained = agent_from_spaces(cfg, spaces)
    state = {"model": trained.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
             "env_spaces": spaces.to_state()}
    no_envs(monkeypatch)
    agent = registry.load_agent(state)
    obs = {"vector": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "is_first": np.ones(3, bool)}
    torch.manual_seed(1)   # the posterior latent is a sample
    got, _ = agent.policy(obs, agent.init_policy_state(3), "greedy")
    torch.manual_seed(1)
    want, _ = trained.eval().policy(obs, trained.init_policy_state(3), "greedy")
    np.testing.assert_array_equal(got, want)
    assert agent.env_spaces.obs == spaces.obs and not agent.training


def test_weights_that_do_not_fit_are_a_one_line_error(config_from):
    from worldmodels.algos.dreamerv3.experiment import agent_from_spaces

    cfg = config_from(["+exp=dreamer_cartpole", "device=cpu", *TINY_DREAMER])
    spaces = EnvSpaces({"vector": ((4,), np.dtype(np.float32))}, ActionSpace(True, 2, 0, 1))
    state = {"model": agent_from_spaces(cfg, spaces).state_dict(), "config": OmegaConf.to_container(cfg),
             "env_spaces": EnvSpaces({"vector": ((5,), np.dtype(np.float32))}, spaces.act).to_state()}
    with pytest.raises(WorldModelsError, match="do not fit the model of its config"):
        registry.load_agent(state)


def test_open_loop_builders_resolve_and_other_names_list_the_registered_ones():
    names = registry.openloop_names()
    assert {"dreamerv3", "world_models", "nextframe"} <= set(names) and names == sorted(names)
    assert names == sorted(n for n, f in registry.FAMILIES.items() if f.openloop)
    for name in names:
        build = registry.openloop_builder(name)
        assert callable(build) and build.__name__ == "build_openloop", name
    listed = ", ".join(names)
    with pytest.raises(WorldModelsError, match=f"^'dreamer' is not a family; the families registered for open loop "
                                               f"are {listed}\\.$"):
        registry.openloop_builder("dreamer")
    with pytest.raises(WorldModelsError, match=f"^'vae' has no open-loop model yet; the families registered for "
                                               f"open loop are {listed}\\.$"):
        registry.openloop_builder("vae")
