"""Δ-IRIS's actor-critic (Micheli, Alonso and Fleuret 2024; vmicheli/delta-iris
``src/models/actor_critic``), which differs from IRIS's in five ways:

* frames pass Δ-IRIS's residual frame encoder (:func:`~worldmodels.nn.frame_cnn.frame_encoder`,
  ``[0, 1]`` in, flattened ``(h, w, c)``) before the ``LSTMCell``; the policy reads real
  frames in the env and during burn-in, decoded frames in imagination;
* an EMA copy of the whole network (``target_model``, ``tau = 0.995``) gives the values the
  returns are built from, and the baseline of the advantage;
* the returns are bootstrapped ``H``-step lambda-returns: the policy acts ``H`` times,
  the world model predicts all ``H`` rewards and ends and the ``H``-th next frame, whose
  target value bootstraps::

      R_t = r_t + gamma (1 - d_t) ((1 - lam) vT_{t+1} + lam R_{t+1}),   R_H = vT_H

* the critic is a two-hot distribution over 255 symlog bins on Crafter
  (``two_hot_returns``), a scalar on Atari; its head starts at zero;
* every step after the first imagined end is masked out of the three losses::

      loss = mean_m -log pi(a_t) (R_t - vT_t) + mean_m critic_loss(v_t, R_t)
             - entropy_weight * mean_m H(pi(. | x_t))

  (``m``: the steps up to and including the first end).

:meth:`DeltaActorCritic.update_target` moves the target ``1 - tau`` of the way to the
network; the training step calls it once per actor-critic update
(:meth:`~worldmodels.rl.imagination_agent.ImaginationAgent.after_update`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.distributions import TwoHotSymlog
from ...nn.frame_cnn import check_levels, frame_encoder
from ...rl.lstm_actor_critic import Dream
from ...rl.returns import lambda_returns

Tensor = torch.Tensor


@dataclass
class DeltaActorCriticConfig:
    num_actions: int
    in_channels: int = 3
    resolution: int = 64
    frame_channels: int = 32              # Δ-IRIS frame_encoder_config: num_channels 32, latent_dim 16
    frame_latent_dim: int = 16
    frame_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    frame_down: tuple[int, ...] = (1, 0, 1, 1, 0)
    lstm_dim: int = 512
    gamma: float = 0.997
    lambda_: float = 0.95
    entropy_weight: float = 0.001
    imagine_horizon: int = 15
    burn_in: int = 5
    temperature: float = 1.0              # of the actions sampled in imagination (Δ-IRIS: 1)
    two_hot_returns: bool = True          # Crafter: two-hot symlog critic; Atari: a scalar
    value_bins: int = 255
    target_tau: float = 0.995             # target <- tau * target + (1 - tau) * network

    def __post_init__(self) -> None:
        self.frame_mult, self.frame_down = tuple(self.frame_mult), tuple(self.frame_down)
        for name in ("num_actions", "in_channels", "resolution", "lstm_dim", "imagine_horizon", "frame_channels",
                     "frame_latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DeltaActorCriticConfig: {name} must be an int >= 1, got {value!r}.")
        if self.burn_in < 0 or not self.temperature > 0:
            raise ValueError(f"burn_in={self.burn_in} must be >= 0 and temperature={self.temperature} > 0.")
        if self.two_hot_returns and self.value_bins < 2:
            raise ValueError(f"value_bins={self.value_bins} must be >= 2 for a two-hot critic.")
        if not 0.0 <= self.target_tau < 1.0:
            raise ValueError(f"target_tau={self.target_tau} must lie in [0, 1).")
        check_levels(self.frame_mult, self.frame_down, self.resolution, "DeltaActorCriticConfig")

    @property
    def features(self) -> int:
        side = self.resolution // 2 ** sum(self.frame_down)
        return self.frame_latent_dim * side * side

    @property
    def critic_outputs(self) -> int:
        return self.value_bins if self.two_hot_returns else 1


class CnnLstm(nn.Module):
    """Frame encoder, ``LSTMCell``, linear actor and critic (zero-initialised); the LSTM
    state ``hx, cx`` is kept between calls of :meth:`act`."""

    def __init__(self, config: DeltaActorCriticConfig):
        super().__init__()
        self.config = config
        self.cnn = frame_encoder(config.in_channels, config.frame_latent_dim, config.frame_channels,
                                 config.frame_mult, config.frame_down)
        self.lstm = nn.LSTMCell(config.features, config.lstm_dim)
        self.actor = nn.Linear(config.lstm_dim, config.num_actions)
        self.critic = nn.Linear(config.lstm_dim, config.critic_outputs)
        nn.init.zeros_(self.critic.weight)
        nn.init.zeros_(self.critic.bias)
        self.hx: Tensor | None = None
        self.cx: Tensor | None = None

    def reset(self, batch: int, device: torch.device | str | None = None) -> None:
        device = device or self.actor.weight.device
        self.hx = torch.zeros(batch, self.config.lstm_dim, device=device)
        self.cx = torch.zeros(batch, self.config.lstm_dim, device=device)

    def step(self, frames: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``frames [B, C, R, R]`` in [0, 1] -> ``(action logits [B, A], critic outputs [B, bins or 1])``."""
        c = self.config
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"frames must be [B, {c.in_channels}, {c.resolution}, {c.resolution}], "
                             f"got {list(frames.shape)}.")
        if self.hx is None or self.hx.shape[0] != frames.shape[0]:
            self.reset(frames.shape[0], frames.device)
        x = self.cnn(frames.float()).permute(0, 2, 3, 1).flatten(1)   # (h w c), as Δ-IRIS
        hx, cx = self.lstm(x, (self.hx, self.cx))
        if mask is not None:
            keep = mask.bool().unsqueeze(-1)
            hx, cx = torch.where(keep, hx, self.hx), torch.where(keep, cx, self.cx)
        self.hx, self.cx = hx, cx
        return self.actor(hx), self.critic(hx)

    def value(self, critic_out: Tensor) -> Tensor:
        """Critic outputs -> values ``[B]`` (the two-hot mean, or the scalar)."""
        if self.config.two_hot_returns:
            return TwoHotSymlog(critic_out.float()).mean()
        return critic_out.squeeze(-1)

    def burn_in(self, frames: Tensor, mask: Tensor) -> None:
        """Reset, then read ``frames [B, T, ...]`` (``mask [B, T]`` False: padding) without gradient."""
        self.reset(frames.shape[0], frames.device)
        with torch.no_grad():
            for t in range(frames.shape[1]):
                self.step(frames[:, t], mask[:, t])


class DeltaActorCritic(nn.Module):
    """The network (``model``) and its EMA target (``target_model``, no gradient); see the
    module docstring. ``act``, ``hx``, ``cx`` and ``actor`` are the network's, so the
    agent acts with it as with IRIS's actor-critic."""

    def __init__(self, config: DeltaActorCriticConfig):
        super().__init__()
        self.config = config
        self.model = CnnLstm(config)
        self.target_model = copy.deepcopy(self.model)
        self.target_model.requires_grad_(False)

    # the acting interface of IrisActorCritic, on the network
    @property
    def actor(self) -> nn.Linear:
        return self.model.actor

    @property
    def hx(self) -> Tensor | None:
        return self.model.hx

    @hx.setter
    def hx(self, value: Tensor | None) -> None:
        self.model.hx = value

    @property
    def cx(self) -> Tensor | None:
        return self.model.cx

    @cx.setter
    def cx(self, value: Tensor | None) -> None:
        self.model.cx = value

    def reset(self, batch: int, device: torch.device | str | None = None) -> None:
        self.model.reset(batch, device)

    def act(self, frames: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``frames [B, C, R, R]`` in [0, 1] -> ``(logits [B, A], value [B])``, updating the state."""
        logits, critic_out = self.model.step(frames, mask)
        return logits, self.model.value(critic_out)

    @torch.no_grad()
    def update_target(self) -> None:
        """``target <- tau * target + (1 - tau) * network``, every parameter and buffer."""
        tau = self.config.target_tau
        for target, source in zip(self.target_model.state_dict().values(), self.model.state_dict().values()):
            if target.is_floating_point():
                target.mul_(tau).add_(source.detach(), alpha=1.0 - tau)
            else:
                target.copy_(source)

    def parameters_to_train(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def compute_loss(self, batch: dict[str, Tensor], dream: Dream) -> tuple[Tensor, dict[str, Tensor]]:
        """Δ-IRIS's actor-critic loss on ``H`` steps imagined in ``dream`` from ``batch``
        (``observations``, ``actions``, ``mask_padding`` of ``burn_in + 1`` frames ending
        at a real one). Metrics: ``loss_policy``, ``loss_values``, ``loss_entropy``,
        ``entropy``, ``imagined_return`` (mean lambda-return), ``imagined_reward``,
        ``imagined_ends`` (fraction of rollouts that end), ``value_mean``,
        ``value_error`` (mean ``|v_t - R_t|``), ``masked_fraction``."""
        c = self.config
        mask = batch["mask_padding"].bool()
        with torch.no_grad():
            context, frame = dream.start(batch)
        batch_size = frame.shape[0]
        for net in (self.model, self.target_model):
            if context is not None:
                net.burn_in(context, mask[:, :-1])
            else:
                net.reset(batch_size, frame.device)
        logits, critic_outs, target_values, actions, rewards, ends = [], [], [], [], [], []
        for _ in range(c.imagine_horizon):
            step_logits, critic_out = self.model.step(frame)
            with torch.no_grad():
                target_values.append(self.target_model.value(self.target_model.step(frame)[1]))
            action = torch.distributions.Categorical(logits=step_logits.float() / c.temperature).sample()
            with torch.no_grad():
                frame, reward, done = dream.step(action)
            logits.append(step_logits)
            critic_outs.append(critic_out)
            actions.append(action)
            rewards.append(reward.float())
            ends.append(done.bool())
        with torch.no_grad():
            bootstrap = self.target_model.value(self.target_model.step(frame)[1])
        logits, critic_outs = torch.stack(logits, 1).float(), torch.stack(critic_outs, 1).float()
        actions, rewards, ends = torch.stack(actions, 1), torch.stack(rewards, 1), torch.stack(ends, 1)
        target_values = torch.stack(target_values, 1).float()
        return self._loss(logits, critic_outs, actions, rewards, ends, target_values, bootstrap.float())

    def _loss(self, logits: Tensor, critic_outs: Tensor, actions: Tensor, rewards: Tensor, ends: Tensor,
              target_values: Tensor, bootstrap: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.config
        with torch.no_grad():
            values_all = torch.cat([target_values, bootstrap.unsqueeze(1)], dim=1)
            returns = lambda_returns(rewards, 1.0 - ends.float(), values_all, c.gamma, c.lambda_)
        mask = mask_after_first_end(ends)
        log_probs = F.log_softmax(logits, dim=-1)
        taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        loss_policy = -(taken * (returns - target_values))[mask].mean()
        if c.two_hot_returns:
            loss_values = -TwoHotSymlog(critic_outs[mask]).log_prob(returns[mask]).mean()
            values = TwoHotSymlog(critic_outs.detach()).mean()
        else:
            loss_values = F.mse_loss(critic_outs[..., 0][mask], returns[mask])
            values = critic_outs[..., 0].detach()
        entropy = -(log_probs.exp() * log_probs).sum(-1)[mask].mean()
        loss_entropy = -c.entropy_weight * entropy
        loss = loss_policy + loss_values + loss_entropy
        metrics = {"loss_policy": loss_policy.detach(), "loss_values": loss_values.detach(),
                   "loss_entropy": loss_entropy.detach(), "entropy": entropy.detach(),
                   "imagined_return": returns[mask].mean(), "imagined_reward": rewards[mask].mean(),
                   "imagined_ends": ends.any(1).float().mean(), "value_mean": values[mask].mean(),
                   "value_error": (values - returns).abs()[mask].mean(),
                   "masked_fraction": 1.0 - mask.float().mean()}
        return loss, metrics


def mask_after_first_end(ends: Tensor) -> Tensor:
    """``ends [B, H]`` bool -> ``[B, H]`` bool: True up to and including the first end of
    each row (every step of a row without an end), as Δ-IRIS's ``compute_mask_after_first_done``."""
    ends = ends.bool()
    before = torch.cumsum(ends.long(), dim=1) - ends.long()   # ends strictly before t
    return before == 0


__all__ = ["CnnLstm", "DeltaActorCritic", "DeltaActorCriticConfig", "mask_after_first_end"]
