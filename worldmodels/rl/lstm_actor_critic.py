"""IRIS's actor-critic (Micheli et al. 2023): a CNN + LSTM policy trained in imagination,
shared by IRIS and Δ-IRIS.

Frames ``[B, C, H, W]`` in [0, 1] are scaled to [-1, 1] and pass 4 stages of
``Conv3x3 -> MaxPool2 -> ReLU`` (widths ``conv_channels``), then an ``LSTMCell`` of
``lstm_dim`` whose hidden state feeds a linear actor (logits over ``num_actions``) and
a linear critic (a scalar value). The LSTM state is carried between calls of
:meth:`IrisActorCritic.act`; :meth:`IrisActorCritic.reset` clears it.

Training (:meth:`IrisActorCritic.compute_loss`) follows IRIS:

1. burn-in: the LSTM reads the ``burn_in`` real frames of the batch that precede the
   start frame, reconstructed through the tokenizer (IRIS's ``use_original_obs=False``:
   the policy always sees tokenizer reconstructions), without gradient; padding frames
   leave the state unchanged;
2. imagination of ``H = imagine_horizon`` steps from the last real frame: at each step
   the policy samples ``a_t`` from frame ``x_t``; for ``t < H - 1`` the world model
   predicts ``r_t``, ``d_t`` and the tokens of ``x_{t+1}`` (decoded by the tokenizer).
   The last action needs no prediction: its reward is unused (IRIS's
   ``should_predict_next_obs=False``), so ``H - 1`` world-model steps fit in
   ``max_blocks - 1``;
3. lambda-returns over the ``H - 1`` transitions bootstrapped from ``v_{H-1}``
   (:func:`~worldmodels.rl.returns.lambda_returns`, ``cont = 1 - d``)::

       loss = mean (v_t - sg(R_t))^2 - mean log pi(a_t | x_t) sg(R_t - v_t)
              - entropy_weight * mean H(pi(. | x_t))

   (value, policy and entropy terms over ``t < H - 1``, as IRIS's ``logits_actions[:, :-1]``;
   IRIS also keeps steps after an imagined end, whose returns are cut by ``cont``; the
   world model samples rewards and ends, see :meth:`IrisWorldModel.step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .protocols import WorldModelEnv
from .returns import lambda_returns

Tensor = torch.Tensor


@dataclass
class IrisActorCriticConfig:
    num_actions: int
    in_channels: int = 3
    resolution: int = 64
    conv_channels: tuple[int, ...] = (32, 32, 64, 64)
    lstm_dim: int = 512
    gamma: float = 0.995
    lambda_: float = 0.95
    entropy_weight: float = 0.001
    imagine_horizon: int = 20
    burn_in: int = 20
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        for name in ("num_actions", "in_channels", "resolution", "lstm_dim", "imagine_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"IrisActorCriticConfig: {name}={getattr(self, name)} must be >= 1.")
        if self.imagine_horizon < 2:
            raise ValueError(f"imagine_horizon={self.imagine_horizon} must be >= 2 (one transition at least).")
        if self.burn_in < 0 or not self.temperature > 0:
            raise ValueError(f"burn_in={self.burn_in} must be >= 0 and temperature={self.temperature} > 0.")
        if not self.conv_channels or self.resolution % 2 ** len(self.conv_channels):
            raise ValueError(f"resolution={self.resolution} must be divisible by 2**len(conv_channels) = "
                             f"{2 ** len(self.conv_channels)}.")

    @property
    def features(self) -> int:
        """Width of the flattened CNN output fed to the LSTM (1024 for IRIS's 64x64)."""
        side = self.resolution // 2 ** len(self.conv_channels)
        return self.conv_channels[-1] * side * side


Dream = WorldModelEnv  # the imagined environment the actor-critic trains in


class Imagination(NamedTuple):
    """An imagined trajectory of ``H`` policy steps from ``B`` start frames."""

    logits: Tensor    # [B, H, A] actor logits at x_0 .. x_{H-1}
    values: Tensor    # [B, H] critic values
    actions: Tensor   # [B, H] int64 sampled actions
    rewards: Tensor   # [B, H - 1] float in {-1, 0, 1}, predicted for the first H - 1 actions
    ends: Tensor      # [B, H - 1] bool, predicted episode ends
    frames: Tensor    # [B, H, C, R, R] the frames the policy saw, in [0, 1]


class IrisActorCritic(nn.Module):
    """IRIS's CNN-LSTM actor-critic; see the module docstring."""

    def __init__(self, config: IrisActorCriticConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_channels
        for out in config.conv_channels:
            layers += [nn.Conv2d(width, out, 3, 1, 1), nn.MaxPool2d(2, 2), nn.ReLU()]
            width = out
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        self.lstm = nn.LSTMCell(config.features, config.lstm_dim)
        self.actor = nn.Linear(config.lstm_dim, config.num_actions)
        self.critic = nn.Linear(config.lstm_dim, 1)
        self.hx: Tensor | None = None
        self.cx: Tensor | None = None

    def reset(self, batch: int, device: torch.device | str | None = None) -> None:
        """Zero LSTM state for ``batch`` sequences."""
        device = device or self.actor.weight.device
        self.hx = torch.zeros(batch, self.config.lstm_dim, device=device)
        self.cx = torch.zeros(batch, self.config.lstm_dim, device=device)

    def act(self, frames: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``frames [B, C, R, R]`` in [0, 1] -> ``(logits [B, A], value [B])``, updating the
        LSTM state (only where ``mask [B]`` bool is True, when given)."""
        c = self.config
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"frames must be [B, {c.in_channels}, {c.resolution}, {c.resolution}], "
                             f"got {list(frames.shape)}.")
        if self.hx is None or self.hx.shape[0] != frames.shape[0]:
            self.reset(frames.shape[0], frames.device)
        x = self.cnn(frames.float().mul(2.0).sub(1.0))
        hx, cx = self.lstm(x, (self.hx, self.cx))
        if mask is not None:
            keep = mask.bool().unsqueeze(-1)
            hx, cx = torch.where(keep, hx, self.hx), torch.where(keep, cx, self.cx)
        self.hx, self.cx = hx, cx
        return self.actor(hx), self.critic(hx).squeeze(-1)

    def burn_in(self, frames: Tensor, mask: Tensor) -> None:
        """Reset, then read ``frames [B, T, C, R, R]`` with ``mask [B, T]`` (False: padding)
        without gradient."""
        self.reset(frames.shape[0], frames.device)
        with torch.no_grad():
            for t in range(frames.shape[1]):
                self.act(frames[:, t], mask[:, t])

    def imagine(self, batch: dict[str, Tensor], dream: Dream, horizon: int | None = None) -> Imagination:
        """Burn in on the context ``dream.start(batch)`` returns (``batch["mask_padding"]
        [B, T]`` marks its padding), then imagine ``horizon`` steps from its last frame
        through ``dream.step``. The dream's models get no gradient."""
        horizon = int(horizon or self.config.imagine_horizon)
        mask = batch["mask_padding"].bool()
        with torch.no_grad():
            context, frame = dream.start(batch)
        if context is not None:
            self.burn_in(context, mask[:, :-1])
        else:
            self.reset(frame.shape[0], frame.device)
        steps: dict[str, list[Tensor]] = {k: [] for k in ("logits", "values", "actions", "rewards", "ends", "frames")}
        for t in range(horizon):
            logits, value = self.act(frame)
            action = torch.distributions.Categorical(logits=logits.float() / self.config.temperature).sample()
            for key, item in zip(("logits", "values", "actions", "frames"), (logits, value, action, frame)):
                steps[key].append(item)
            if t < horizon - 1:
                with torch.no_grad():
                    frame, reward, done = dream.step(action)
                steps["rewards"].append(reward.float())
                steps["ends"].append(done)
        return Imagination(**{k: torch.stack(v, 1) for k, v in steps.items()})

    def compute_loss(self, batch: dict[str, Tensor], dream: Dream) -> tuple[Tensor, dict]:
        """IRIS's actor-critic loss on rollouts imagined in ``dream`` from ``batch`` (see :meth:`imagine`).
        Metrics: ``loss_policy``, ``loss_values``, ``loss_entropy``, ``entropy``,
        ``imagined_return`` (mean lambda-return), ``imagined_reward`` (mean per step),
        ``imagined_ends`` (fraction), ``value_mean``, ``value_error`` (mean ``|R_t - v_t|``)."""
        c = self.config
        traj = self.imagine(batch, dream)
        values = traj.values.float()
        cont = 1.0 - traj.ends.float()
        returns = lambda_returns(traj.rewards.float(), cont, values.detach(), c.gamma, c.lambda_)
        log_probs = F.log_softmax(traj.logits.float(), dim=-1)
        taken = log_probs.gather(-1, traj.actions.unsqueeze(-1)).squeeze(-1)[:, :-1]
        advantage = (returns - values[:, :-1]).detach()
        loss_policy = -(taken * advantage).mean()
        entropy = -(log_probs.exp() * log_probs).sum(-1)[:, :-1].mean()
        loss_entropy = -c.entropy_weight * entropy
        loss_values = F.mse_loss(values[:, :-1], returns)
        loss = loss_policy + loss_entropy + loss_values
        metrics = {"loss_policy": loss_policy.detach(), "loss_values": loss_values.detach(),
                   "loss_entropy": loss_entropy.detach(), "entropy": entropy.detach(),
                   "imagined_return": returns.mean(), "imagined_reward": traj.rewards.float().mean(),
                   "imagined_ends": traj.ends.float().mean(), "value_mean": values.detach().mean(),
                   "value_error": advantage.abs().mean()}
        return loss, metrics


__all__ = ["Dream", "Imagination", "IrisActorCritic", "IrisActorCriticConfig"]
