"""Factories that let :func:`worldmodels.training.loop.fit` train DreamerV3 online.

The model is :class:`DreamerAgent` built from ``cfg.model`` (:class:`DreamerConfig`
fields) and the spaces of ``cfg.env``; the data is :class:`OnlineData` (the agent
collects its own experience; ``algo.train_ratio`` replayed steps per env step); the
evaluator runs greedy episodes in a separate env. One Adam serves the world model,
actor and critic with their own learning rates and epsilons
(:meth:`DreamerAgent.param_groups`); ``train.lr`` and ``train.weight_decay`` are unused.

    python -m worldmodels.train +exp=dreamer_cartpole
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from omegaconf import DictConfig

from ...envs.factory import ActionSpace, EnvSpec, ObsSpace, make_env
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from .agent import DreamerAgent, DreamerConfig
from .collect import build_online_data, env_spec
from .evaluate import build_evaluator


def spaces_for(spec: EnvSpec) -> tuple[ObsSpace, ActionSpace]:
    """``(obs_space, act_space)`` of the env ``spec`` names, read from a throwaway copy."""
    with make_env(dataclasses.replace(spec, num_envs=1)) as env:
        return dict(env.obs_space), env.act_space


def build_model(cfg: DictConfig) -> DreamerAgent:
    obs_space, act_space = spaces_for(env_spec(cfg, seed=int(cfg.seed), num_envs=1))
    return DreamerAgent(dataclass_from_config(DreamerConfig, cfg.model), obs_space, act_space)


def build_optimizer(cfg: DictConfig, model: Any) -> torch.optim.Optimizer:
    """Adam over :meth:`DreamerAgent.param_groups` (each group sets its lr and eps)."""
    return torch.optim.Adam(model.param_groups())


FACTORIES = Factories(model=build_model, data=build_online_data, evaluator=build_evaluator,
                      optimizer=build_optimizer)
