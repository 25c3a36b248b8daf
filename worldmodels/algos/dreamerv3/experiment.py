"""Factories that let :func:`worldmodels.training.loop.fit` train DreamerV3 online.

The model is :class:`DreamerAgent` built from ``cfg.model`` (:class:`DreamerConfig`
fields) and the spaces of ``cfg.env`` (:func:`~worldmodels.envs.factory.infer_spaces`;
checkpoints record them); the data is :class:`OnlineData` (the agent collects its own
experience; ``algo.train_ratio`` replayed steps per env step); the evaluator runs
greedy episodes in a separate env. One Adam serves the world model, actor and critic
with their own learning rates and epsilons (:meth:`DreamerAgent.param_groups`);
``train.lr`` and ``train.weight_decay`` are unused. Under torchrun each rank collects
into its own replay shard (:mod:`.collect`) and DDP averages the gradients of the one loss.

    python -m worldmodels.train +exp=dreamer_cartpole
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ...data.obs_transform import ObsTransform, TransformedAgent
from ...envs.factory import infer_spaces, spec_from_config
from ...envs.spaces import EnvSpaces
from ...rl.protocols import rebuild_agent
from ...training import distributed
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from .agent import DreamerAgent, DreamerConfig
from .collect import build_online_data
from .evaluate import build_evaluator


def agent_from_spaces(cfg: DictConfig, spaces: EnvSpaces) -> DreamerAgent:
    """The :class:`DreamerAgent` of ``cfg.model`` for ``spaces`` (no env opened)."""
    agent = DreamerAgent(dataclass_from_config(DreamerConfig, cfg.model), spaces.obs, spaces.act)
    agent.env_spaces = spaces
    return agent


def build_model(cfg: DictConfig) -> DreamerAgent:
    return agent_from_spaces(cfg, infer_spaces(spec_from_config(cfg.env, seed=int(cfg.seed), num_envs=1)))


def load_agent(state: dict) -> DreamerAgent | TransformedAgent:
    """The agent of an online or offline DreamerV3 checkpoint (the registry's
    ``agent_loader``, for play, record and evaluate in an env); checkpoints of offline
    runs that predate recorded env spaces get theirs from the data state. An offline
    run's recorded observation transform (cameras, flips, crop) is put in front of the
    policy (:class:`TransformedAgent`), so env observations look like its episodes."""
    spaces = None
    data = state.get("data") or {}
    saved = data.get("spaces")
    if not state.get("env_spaces") and saved:
        from .offline import spaces_from_state

        obs, act, _ = spaces_from_state(saved)
        spaces = EnvSpaces(obs, act)
    agent = rebuild_agent(state, agent_from_spaces, spaces)
    transform = ObsTransform.from_state(data["transform"]) if data.get("transform") else None
    if transform is None or not transform.changes_observations:
        return agent
    return TransformedAgent(agent, transform, agent.world_model.encoder.cnn_keys)


def build_optimizer(cfg: DictConfig, model: Any) -> torch.optim.Optimizer:
    """Adam over :meth:`DreamerAgent.param_groups` (each group sets its lr and eps)."""
    return torch.optim.Adam(model.param_groups())


FACTORIES = Factories(model=build_model, data=build_online_data, evaluator=build_evaluator,
                      optimizer=build_optimizer, data_config=distributed.same_config)  # the data shards itself
