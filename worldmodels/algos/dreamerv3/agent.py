"""The DreamerV3 agent: world model plus actor-critic, one loss for the trainer, a policy.

``compute_loss(batch)`` (the trainer's entry) returns ``L_model + beta_a L_actor +
beta_v L_critic``: the actor-critic learns from detached posterior states, so its
losses never reach the world model, and the world-model loss never reaches the
actor or critic (see :mod:`.world_model` and :mod:`.behavior` for the equations).
One ``torch.optim.Adam`` over :meth:`DreamerAgent.param_groups` then updates all
three with their own learning rates and epsilons.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...rl.protocols import check_mode
from .behavior import ActorCritic
from .config import DreamerConfig
from .world_model import WorldModel

Tensor = torch.Tensor
BATCH_KEYS = ("action", "reward", "is_first", "is_terminal")


def _as_tensor(value: Any, device: torch.device) -> Tensor:
    """A numpy array, tensor or sequence as a tensor on ``device`` (dtype kept); a
    read-only array (an env's observation buffer, say) is copied, not shared."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    array = np.asarray(value)
    return torch.as_tensor(array if array.flags.writeable else array.copy()).to(device, non_blocking=True)


class PolicyState(NamedTuple):
    """What :meth:`DreamerAgent.policy` carries between calls (``N`` environments)."""

    deter: Tensor   # [N, H]     h of the last posterior state
    stoch: Tensor   # [N, S, K]  z of the last posterior state
    action: Tensor  # [N, A]     the last action (one-hot when discrete), fed to the next step


class DreamerAgent(nn.Module):
    """DreamerV3 (Hafner et al. 2023) for dict observations and one action space.

    Args:
        config: :class:`DreamerConfig`. obs_space: ``{key: (shape, dtype)}``.
        act_space: anything with ``.discrete`` (bool) and ``.size`` (``A``, the number
            of choices or the vector size), e.g. :class:`worldmodels.envs.factory.ActionSpace`.
    Continuous actions are produced in ``[-1, 1]``; rescaling to an environment's
    bounds is the caller's job.
    """

    def __init__(self, config: DreamerConfig, obs_space: Mapping[str, tuple], act_space: Any):
        super().__init__()
        self.config, self.obs_space, self.act_space = config, dict(obs_space), act_space
        self.world_model = WorldModel(config, obs_space, int(act_space.size))
        self.actor_critic = ActorCritic(config, self.world_model.feat_dim, act_space)

    @property
    def uses_every_parameter(self) -> bool:
        """Whether every training step reaches all parameters (world model, actor and
        critic): true when the actor-critic trains. DDP then needs no unused-parameter search."""
        return bool(self.config.train_actor)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _to_tensors(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The batch's model keys as tensors on the model's device (numpy accepted)."""
        needed = list(BATCH_KEYS) + self.world_model.obs_keys
        missing = [k for k in needed if k not in batch]
        if missing:
            raise KeyError(f"the batch lacks {missing}; it has {sorted(batch)}.")
        device = self.device
        return {k: _as_tensor(batch[k], device) for k in needed}

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """``L = L_model + actor_scale L_actor + critic_scale L_critic`` on a replay batch
        ``{key: [B, T, ...]}`` (see :mod:`worldmodels.data.episodes`), plus
        ``bc_scale * L_bc`` (:meth:`behaviour_cloning_loss`) when ``bc_scale > 0``.

        In training mode it first moves the slow critic toward the critic (the EMA that
        DreamerV3 applies after every update; at the start of the next call it is the
        same) and updates the return normaliser. Imagination starts from all ``B * T``
        detached posterior states. Metrics: ``model/<term>``, ``ac/<term>`` (detached).
        """
        c = self.config
        is_last = batch.get("is_last")
        batch = self._to_tensors(batch)
        if is_last is not None:
            batch["is_last"] = _as_tensor(is_last, self.device)
        if self.training and c.train_actor:
            self.actor_critic.update_slow_critic()
        terms, post, _ = self.world_model.loss(batch)
        loss = terms["total"]
        metrics = {f"model/{k}": v.detach() for k, v in terms.items()}
        if c.train_actor:
            start_cont = 1.0 - batch["is_terminal"].float().reshape(-1)
            ac_terms, ac_metrics = self.actor_critic.loss(
                self.world_model, post.deter.detach().flatten(0, 1), post.stoch.detach().flatten(0, 1), start_cont)
            loss = loss + c.actor_scale * ac_terms["actor"] + c.critic_scale * ac_terms["critic"]
            metrics.update({f"ac/{k}": v.detach() for k, v in {**ac_terms, **ac_metrics}.items()})
        if c.bc_scale > 0:
            bc = self.behaviour_cloning_loss(post, batch)
            loss = loss + c.bc_scale * bc
            metrics["ac/bc_nll"] = bc.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def behaviour_cloning_loss(self, post: Any, batch: Mapping[str, Tensor]) -> Tensor:
        """``mean_t -log pi(a_t | sg(h_t, z_t))`` over the steps whose action was taken
        (not ``is_last``): the actor clones the batch's actions from the detached
        posterior states, so, like the actor-critic's losses, it never shapes the world
        model. ``a_t`` is the action taken after observation ``t`` (one-hot when discrete,
        in ``[-1, 1]`` when continuous)."""
        feat = self.world_model.features(post.deter.detach(), post.stoch.detach())
        dist = self.actor_critic.policy(feat)
        action = batch["action"].to(feat.dtype)
        if not self.actor_critic.discrete:
            action = action.clamp(-1.0, 1.0)
        taken = (~batch["is_last"].bool()).to(feat.dtype) if "is_last" in batch else torch.ones_like(action[..., 0])
        nll = -dist.log_prob(action)
        return (nll * taken).sum() / taken.sum().clamp_min(1.0)

    def param_groups(self) -> list[dict]:
        """Three groups for one ``torch.optim.Adam``: world model (``model_lr``, eps
        ``model_eps`` = 1e-8), actor (``actor_lr``) and critic (``critic_lr``), both with
        eps ``ac_eps`` = 1e-5 as in the paper's table. Each group's gradient norm is
        clipped on its own (``max_grad_norm``: ``model_grad_clip``, ``ac_grad_clip``, see
        :func:`worldmodels.training.step.train_step`). The slow critic is in no group."""
        c, ac = self.config, self.actor_critic
        return [
            {"params": list(self.world_model.parameters()), "lr": c.model_lr, "eps": c.model_eps,
             "max_grad_norm": c.model_grad_clip, "name": "model"},
            {"params": list(ac.actor.parameters()), "lr": c.actor_lr, "eps": c.ac_eps,
             "max_grad_norm": c.ac_grad_clip, "name": "actor"},
            {"params": list(ac.critic.parameters()), "lr": c.critic_lr, "eps": c.ac_eps,
             "max_grad_norm": c.ac_grad_clip, "name": "critic"},
        ]

    def make_optimizer(self) -> torch.optim.Adam:
        """``torch.optim.Adam(self.param_groups())``."""
        return torch.optim.Adam(self.param_groups())

    def init_policy_state(self, num_envs: int) -> PolicyState:
        """``(h_0, 0, 0)`` for ``num_envs`` environments (what a reset gives)."""
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be >= 1.")
        with torch.no_grad():
            deter, stoch = self.world_model.rssm.initial_state(num_envs)
        return PolicyState(deter.clone(), stoch, deter.new_zeros(num_envs, self.actor_critic.action_dim))

    @torch.no_grad()
    def policy(self, obs: Mapping[str, Any], state: PolicyState, mode: str = "explore", *,
               explore: bool | None = None) -> tuple[np.ndarray, PolicyState]:
        """One step for ``N`` environments (:class:`~worldmodels.rl.protocols.Agent`): encode
        ``obs`` (``{key: [N, ...]}`` numpy or tensors, with ``is_first [N]``), one posterior
        step from ``state`` with the previous action (reset where ``is_first``), then sample
        the actor (``mode`` ``"explore"`` or ``"sample"``) or take its mode (``"greedy"``).
        ``explore=True/False`` is the same as ``mode="explore"/"greedy"``.

        Returns ``(actions, new_state)``: int64 ``[N]`` indices (discrete) or float32
        ``[N, A]`` clipped to ``[-1, 1]`` (continuous), as numpy.
        """
        if explore is not None:
            mode = "explore" if explore else "greedy"
        sample = check_mode(mode) != "greedy"
        if "is_first" not in obs:
            raise KeyError(f"policy needs obs['is_first'] [N] to know where episodes restart; got {sorted(obs)}.")
        wm, device = self.world_model, self.device
        is_first = _as_tensor(obs["is_first"], device).bool().reshape(-1)
        if state.deter.shape[0] != is_first.shape[0]:
            raise ValueError(f"the state holds {state.deter.shape[0]} envs, the observation {is_first.shape[0]}.")
        inputs = {k: _as_tensor(obs[k], device).unsqueeze(1) for k in wm.obs_keys}
        embed = wm.encoder(inputs)
        post = wm.rssm.observe(embed, state.action.unsqueeze(1), is_first.unsqueeze(1),
                               state=(state.deter, state.stoch))
        deter, stoch = post.deter[:, 0], post.stoch[:, 0]
        dist = self.actor_critic.policy(wm.features(deter, stoch))
        action = dist.sample() if sample else dist.mode()
        if self.actor_critic.discrete:
            index = action.argmax(-1)
            onehot = F.one_hot(index, self.actor_critic.action_dim).to(deter.dtype)
            return index.cpu().numpy().astype(np.int64), PolicyState(deter, stoch, onehot)
        action = action.clamp(-1.0, 1.0).to(deter.dtype)
        return action.cpu().numpy().astype(np.float32), PolicyState(deter, stoch, action)

    def with_actions(self, state: PolicyState, actions: np.ndarray) -> PolicyState:
        """``state`` with ``actions`` (int64 ``[N]`` or float32 ``[N, A]``) as the ones taken,
        fed to the next step (:class:`~worldmodels.rl.protocols.ActionFeedback`)."""
        taken = torch.as_tensor(np.asarray(actions), device=state.action.device)
        if self.actor_critic.discrete:
            taken = F.one_hot(taken.long(), self.actor_critic.action_dim)
        return state._replace(action=taken.to(state.action.dtype).reshape(state.action.shape))

    def open_loop(self, batch: Mapping[str, Any], context: int) -> dict[str, Tensor]:
        """Open-loop video of the first image key: posterior over ``context`` steps, prior
        with the recorded actions after. ``{"truth", "prediction", "error"}`` uint8
        ``[B, T, H, W, C]``, or ``{}`` without image keys."""
        return self.world_model.open_loop(self._to_tensors(batch), context)


__all__ = ["ActorCritic", "DreamerAgent", "DreamerConfig", "PolicyState", "WorldModel"]
