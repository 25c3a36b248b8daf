"""DreamerV3's actor-critic, trained on trajectories imagined by the world model.

From ``N`` start states ``s_0`` (detached posterior states of a replay batch) the RSSM
prior is rolled ``H`` steps with actions ``a_t ~ pi(. | s_t)`` without gradients.
On the imagined ``s_0 .. s_H`` (``sg`` = stop-gradient, all targets are ``sg``)::

    r_t = E[reward | s_{t+1}],  c_t = P[continue | s_t] (c_0 = 1 - is_terminal of the start)
    v_t = E[critic(s_t)],  R = lambda_returns(r_{0..H-1}, c_{1..H}, v_{0..H}, gamma, lambda)
    w_t = prod_{j<=t} (gamma c_j) / gamma                 (t = 0 .. H-1)
    S   = max(1, P95(R) - P5(R))   (running, ReturnNormalizer)
    L_actor  = mean_t w_t * ( -sg((R_t - v_t) / S) log pi(a_t | s_t) - eta H[pi(. | s_t)] )   reinforce
    L_actor  = mean_t w_t * ( -(R_t - v_t) / S - eta H[pi(. | s_t)] )                          dynamics
    L_critic = mean_t w_t * ( -log p_critic(R_t | s_t) - reg * -log p_critic(v^slow_t | s_t) )

Discrete actions always use REINFORCE. Continuous actions use ``actor_grad``:
``reinforce`` (the 2024 code) or ``dynamics`` (the 2023 code's ``actor_grad_cont:
backprop``, NM512's ``imag_gradient: dynamics``): the actions are reparameterised
samples of ``pi(. | sg(s_t))`` and ``R_t``, ``v_t`` are differentiated through the
prior, the reward head and the critic, whose parameters are held fixed for this loss,
so only the actor receives its gradient. Continuous actions enter the prior bounded to
``[-1, 1]``, the range of the replay's actions (:func:`bound_action`); REINFORCE scores
the bounded action, as NM512/dreamerv3-torch (whose ``ContDist`` bounds its samples).
The slow critic (``theta_slow <- (1 - f) theta_slow + f theta``) only regularises the critic.

With REINFORCE each network runs once over the imagined states: the actor pass that
samples ``a_t`` in imagination keeps its graph for ``L_actor`` (unless the imagination
replays a CUDA graph, which cannot keep it; then the actor runs again on the returned
states), and one critic pass gives both ``v_t`` (detached) and ``L_critic``.

On the CPU the imagined latents are exact one-hot samples with no gradient of their
own, so the first layer of every network that reads them (the actor, the critic, the
slow critic, the reward and continue heads, and the prior's input projection) gathers
the weight columns the samples select instead of multiplying by the one-hot part of
the features (:func:`~worldmodels.ops.onehot_linear.onehot_linear`): the same values
with a third of those layers' multiply-adds, and scatter-add weight gradients.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from ...nn.distributions import Bernoulli, BoundedNormal, OneHotDist, TwoHotSymlog, bound_action
from ...nn.mlp import MLP, OneHotInputs
from ...ops.rssm import Imagination, rssm_imagine_step
from .config import DreamerConfig
from .returns import ReturnNormalizer, ema_update_, lambda_returns

Tensor = torch.Tensor


class Rollout(NamedTuple):
    """An imagined trajectory and its (detached) targets, ``N`` starts, horizon ``H``."""

    feat: Tensor     # [N, H+1, F]  features of s_0 .. s_H
    action: Tensor   # [N, H, A]    a_t taken in s_t (continuous: bounded to [-1, 1])
    reward: Tensor   # [N, H]       r_t predicted for s_t -> s_{t+1}
    cont: Tensor     # [N, H+1]     c_t of s_t (c_0 from the start's is_terminal)
    value: Tensor    # [N, H+1]     critic mean v_t
    returns: Tensor  # [N, H]       lambda-returns R_t
    weight: Tensor   # [N, H]       w_t


ACTOR_GRADS = ("reinforce", "dynamics")


class HeadInputs(NamedTuple):
    """Imagined states as the networks read them: features ``[N, H+1, F]`` and, where the
    rollout kept the latents' class indices, ``deter [N, H+1, D]`` and ``index [N, H+1, S]``."""

    feat: Tensor
    deter: Tensor | None = None
    index: Tensor | None = None

    def apply(self, net, steps: slice = slice(None)) -> Tensor:
        """``net(feat[:, steps])``; an :class:`MLP` reads ``(deter, index)`` instead when given."""
        if not isinstance(net, MLP):
            return net(self.feat[:, steps])
        parts = None if self.index is None else OneHotInputs(self.deter[:, steps], self.index[:, steps])
        return net.forward_parts(self.feat[:, steps], parts)


def _cast_once(feat: Tensor) -> Tensor:
    """``feat`` in the autocast dtype when autocast is on for its device: the four heads
    that read the imagined features (critic, slow critic, reward, continue) then share
    one cast instead of autocast casting it again for each (the same values)."""
    device = feat.device.type
    return feat.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else feat


def _frozen(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with its parameters detached: gradients reach ``x`` only."""
    return functional_call(module, {n: p.detach() for n, p in module.named_parameters()}, (x,))


class ActorCritic(nn.Module):
    """Actor (``OneHotDist`` or ``BoundedNormal``), critic and slow critic (``TwoHotSymlog``).

    Args:
        config: :class:`DreamerConfig`. feat_dim: ``F`` of the world model's features.
        act_space: anything with ``.discrete`` (bool) and ``.size`` (``A``).
    """

    def __init__(self, config: DreamerConfig, feat_dim: int, act_space):
        super().__init__()
        self.config = config
        self.discrete, self.action_dim = bool(act_space.discrete), int(act_space.size)
        if self.action_dim < 1:
            raise ValueError(f"the action space needs size >= 1, got {act_space.size}.")
        if config.actor_grad not in ACTOR_GRADS:
            raise ValueError(f"actor_grad={config.actor_grad!r} is not one of {ACTOR_GRADS}.")
        if self.discrete and config.actor_grad == "dynamics":
            raise ValueError("actor_grad='dynamics' needs continuous actions; discrete actions use REINFORCE "
                             "(as both references' discrete configs): set actor_grad=reinforce.")
        self.dynamics_grad = config.actor_grad == "dynamics"
        units = config.head_units
        out = self.action_dim if self.discrete else 2 * self.action_dim
        self.actor = MLP(feat_dim, out, units, config.actor_layers)
        self.critic = MLP(feat_dim, config.reward_bins, units, config.critic_layers, zero_init_output=True)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_norm = ReturnNormalizer(config.return_norm_decay, config.return_norm_low,
                                            config.return_norm_high)
        # One bound method kept for the lifetime of the module: the CUDA-graph imaginer
        # keys its captures by the policy's identity.
        self._imagine_policy = self._sample_imagined_action

    def policy(self, feat: Tensor) -> OneHotDist | BoundedNormal:
        """``pi(. | s)`` for features ``[..., F]`` (event ``[..., A]``)."""
        return self._policy_from_output(self.actor(feat))

    def _policy_from_output(self, out: Tensor) -> OneHotDist | BoundedNormal:
        """``pi`` from the actor network's output ``[..., A]`` (discrete) or ``[..., 2A]``."""
        if self.discrete:
            return OneHotDist(out, self.config.unimix)
        mean_raw, std_raw = out.chunk(2, dim=-1)
        return BoundedNormal(mean_raw, std_raw, self.config.actor_min_std, self.config.actor_max_std)

    def value(self, feat: Tensor, slow: bool = False) -> TwoHotSymlog:
        """Critic (or slow critic) distribution ``[...]`` over returns."""
        return TwoHotSymlog((self.slow_critic if slow else self.critic)(feat))

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """``theta_slow <- (1 - f) theta_slow + f theta_critic``, ``f = slow_critic_fraction``."""
        ema_update_(self.slow_critic, self.critic, self.config.slow_critic_fraction)

    def _sample_imagined_action(self, deter: Tensor, stoch: Tensor) -> Tensor:
        """Capturable policy sample for the imaginer: ``(h [N, H], z [N, S, K]) -> a [N, A]``."""
        return self._sample(self.policy(torch.cat([deter, stoch.flatten(-2).to(deter.dtype)], dim=-1)), deter)

    def _recording_policy(self, outputs: list[Tensor]):
        """A policy for an eager (not graph-captured) imagination that also keeps the actor's
        outputs with their autograd graph in ``outputs``, one ``[N, A]`` (or ``[N, 2A]``) per
        step: the actor loss then reuses them instead of running the actor again. Samples
        are drawn exactly as :meth:`_sample_imagined_action` draws them."""

        def policy(deter: Tensor, stoch: Tensor, index: Tensor | None = None) -> Tensor:
            with torch.enable_grad():
                if index is None:
                    out = self.actor(torch.cat([deter, stoch.flatten(-2).to(deter.dtype)], dim=-1))
                else:
                    out = self.actor.forward_onehot(deter, index)
            outputs.append(out)
            return self._sample(self._policy_from_output(out.detach()), deter)

        policy.takes_index = True
        return policy

    def _sample(self, dist: OneHotDist | BoundedNormal, deter: Tensor) -> Tensor:
        """An action ``[N, A]`` of ``dist`` in ``deter``'s dtype (continuous: bounded)."""
        if self.discrete:
            noise = torch.rand(dist.log_probs.shape, device=deter.device)
            return dist.sample(noise=noise).to(deter.dtype)
        return bound_action(dist.sample()).to(deter.dtype)

    def imagine(self, world_model, start_deter: Tensor, start_stoch: Tensor) -> Imagination:
        """Roll the prior ``horizon`` steps from detached starts ``[N, H]``, ``[N, S, K]``."""
        imaginer = world_model.imaginer()
        return imaginer(start_deter.detach(), start_stoch.detach(), self._imagine_policy,
                        horizon=self.config.horizon)

    @torch.no_grad()
    def rollout(self, world_model, start_deter: Tensor, start_stoch: Tensor,
                start_cont: Tensor | None = None) -> Rollout:
        """Imagine from ``N`` starts and compute the detached targets (module docstring).
        ``start_cont [N]`` is ``1 - is_terminal`` of the starts (None: all 1)."""
        imag = self.imagine(world_model, start_deter, start_stoch)
        states = HeadInputs(_cast_once(world_model.features(imag.deter, imag.stoch)), imag.deter, imag.index)
        value = TwoHotSymlog(states.apply(self.critic))
        return self._targets(world_model, states, imag.action, start_cont, world_model.reward_head, value)

    def _rollout_with_critic(self, world_model, start_deter: Tensor, start_stoch: Tensor,
                             start_cont: Tensor | None) -> tuple[Rollout, Tensor, Tensor | None, HeadInputs]:
        """:meth:`rollout`, plus the critic's logits ``[N, H+1, bins]`` with their graph (one
        critic pass gives both the detached values of the targets and the critic loss) and,
        where the imagination runs eagerly, the actor's outputs ``[N, H, .]`` on ``s_0 ..
        s_{H-1}`` with their graph (one actor pass samples the actions and gives the actor
        loss; a CUDA-graph imagination cannot keep them: None, the loss runs the actor),
        and the imagined states as the networks read them."""
        imaginer = world_model.imaginer()
        start_deter, start_stoch = start_deter.detach(), start_stoch.detach()
        if imaginer.captures(start_deter):
            imag, actor_out = self.imagine(world_model, start_deter, start_stoch), None
        else:
            outputs: list[Tensor] = []
            imag = imaginer(start_deter, start_stoch, self._recording_policy(outputs), horizon=self.config.horizon)
            actor_out = torch.stack(outputs, 1)
        states = HeadInputs(_cast_once(world_model.features(imag.deter, imag.stoch)), imag.deter, imag.index)
        critic_logits = states.apply(self.critic)
        with torch.no_grad():
            value = TwoHotSymlog(critic_logits.detach())
            roll = self._targets(world_model, states, imag.action, start_cont, world_model.reward_head, value)
        return roll, critic_logits, actor_out, states

    def rollout_with_dynamics(self, world_model, start_deter: Tensor, start_stoch: Tensor,
                              start_cont: Tensor | None = None) -> Rollout:
        """As :meth:`rollout`, but differentiable with respect to the actor: reparameterised
        actions of ``pi(. | sg(s_t))`` drive the prior, and ``feat``, ``reward``, ``value``
        and ``returns`` carry gradients to the actor only (the world model's and the
        critic's parameters are held fixed; ``cont`` and ``weight`` are detached)."""
        rssm = world_model.rssm
        params = rssm.params()
        params = params._replace(**{k: v.detach() for k, v in params.tensors().items()})
        deter, stoch = start_deter.detach(), start_stoch.detach()
        deters, stochs, actions = [deter], [stoch], []
        for _ in range(self.config.horizon):
            feat = world_model.features(deter, stoch).detach()
            action = bound_action(self.policy(feat).rsample()).to(deter.dtype)
            deter, stoch, _ = rssm_imagine_step(deter, stoch, action, params, unimix=rssm.config.unimix,
                                                impl=rssm.config.impl)
            deters.append(deter), stochs.append(stoch), actions.append(action)
        feat = world_model.features(torch.stack(deters, 1), torch.stack(stochs, 1))

        def reward_net(x: Tensor) -> Tensor:
            return _frozen(world_model.reward_head, x)

        value = TwoHotSymlog(_frozen(self.critic, feat))
        return self._targets(world_model, HeadInputs(feat), torch.stack(actions, 1), start_cont, reward_net, value)

    def _targets(self, world_model, states: HeadInputs, action: Tensor, start_cont: Tensor | None,
                 reward_net, value: TwoHotSymlog) -> Rollout:
        """Rewards (``reward_net``'s logits on ``s_1 .. s_H``), continues, lambda-returns
        and weights of imagined ``states`` whose critic distribution is ``value [N, H+1]``."""
        c = self.config
        reward = TwoHotSymlog(states.apply(reward_net, slice(1, None))).mean()
        with torch.no_grad():
            cont = Bernoulli(states.apply(world_model.cont_head, slice(1, None)).squeeze(-1)).mean()
        first = torch.ones_like(cont[:, 0]) if start_cont is None else start_cont.to(cont)
        cont = torch.cat([first.reshape(-1, 1), cont], dim=1)
        value = value.mean()
        returns = lambda_returns(reward, cont[:, 1:], value, c.discount, c.lam)
        weight = torch.cumprod(c.discount * cont[:, :-1], dim=1) / c.discount
        return Rollout(states.feat, action, reward, cont, value, returns, weight)

    def loss(self, world_model, start_deter: Tensor, start_stoch: Tensor,
             start_cont: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Actor and critic losses from ``N`` start states (module docstring).

        Args:
            world_model: :class:`~worldmodels.algos.dreamerv3.world_model.WorldModel`
                (never trained by these losses; with ``actor_grad=dynamics`` the actor's
                gradient passes through it). start_deter ``[N, H]``, start_stoch
                ``[N, S, K]`` (detached here), start_cont ``[N]`` or None.
        Returns:
            ``(terms, metrics)``: ``terms = {"actor", "critic"}`` unscaled scalars with
            gradients only into the actor and the critic respectively; ``metrics`` are
            detached scalars. Updates the return normaliser when ``self.training``.
        """
        c = self.config
        if self.dynamics_grad:
            roll = self.rollout_with_dynamics(world_model, start_deter, start_stoch, start_cont)
            critic_logits = actor_out = None
            states = HeadInputs(roll.feat)
        else:
            roll, critic_logits, actor_out, states = self._rollout_with_critic(world_model, start_deter, start_stoch,
                                                                               start_cont)
        if self.training:
            self.return_norm.update(roll.returns)
        scale = self.return_norm.scale()
        advantage = (roll.returns - roll.value[:, :-1]) / scale
        feat = roll.feat[:, :-1].detach()
        dist = self.policy(feat) if actor_out is None else self._policy_from_output(actor_out)
        entropy = dist.entropy()
        if self.dynamics_grad:
            objective = advantage
        else:
            objective = advantage.detach() * dist.log_prob(roll.action.detach())
        actor = (roll.weight * (-objective - c.entropy * entropy)).mean()
        roll = Rollout(*(x.detach() for x in roll))
        advantage = advantage.detach()
        critic_dist = self.value(feat) if critic_logits is None else TwoHotSymlog(critic_logits[:, :-1])
        with torch.no_grad():
            slow_value = TwoHotSymlog(states.apply(self.slow_critic, slice(None, -1))).mean()
        critic_nll = -critic_dist.log_prob(roll.returns) - c.slow_critic_reg * critic_dist.log_prob(slow_value)
        critic = (roll.weight * critic_nll).mean()
        metrics = {
            "return": roll.returns.mean(), "advantage": advantage.abs().mean(), "actor_entropy": entropy.mean(),
            "value": roll.value[:, :-1].mean(), "slow_value": slow_value.mean(), "return_scale": scale,
            "imag_reward": roll.reward.mean(), "imag_cont": roll.cont[:, 1:].mean(), "weight": roll.weight.mean(),
        }
        return {"actor": actor, "critic": critic}, {k: v.detach() for k, v in metrics.items()}


__all__ = ["ActorCritic", "Rollout"]
