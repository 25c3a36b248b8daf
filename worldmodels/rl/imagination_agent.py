"""The base of agents made of three components trained by one loss (IRIS, Δ-IRIS):
``tokenizer``, ``world_model`` and an ``actor_critic`` trained in the world model's
imagination.

:meth:`ImaginationAgent.compute_loss` takes a dict of per-component sub-batches (any may
be absent or None while that component has not started) and returns the sum of the
active components' losses. Their gradients are disjoint: the world model's tokens come
from the tokenizer under ``torch.no_grad()``, and the actor-critic imagines with the
tokenizer and the world model frozen, so one backward of the sum equals one backward
per component. :meth:`ImaginationAgent.param_groups` gives each component its own
AdamW learning rate, weight decay and ``max_grad_norm``. :meth:`ImaginationAgent.policy`
follows :class:`~worldmodels.rl.protocols.Agent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .lstm_actor_critic import Dream, IrisActorCritic
from .protocols import check_mode

Tensor = torch.Tensor
COMPONENTS = ("tokenizer", "world_model", "actor_critic")


@dataclass
class OptimConfig:
    """AdamW settings of one component (IRIS: lr 1e-4, clip 10; weight decay 0.01 for
    the world model, 0 otherwise)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 10.0


DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.LSTMCell, nn.LSTM)


def split_weight_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decayed, not decayed)`` parameters of ``module``: the weights of linear,
    convolution and LSTM layers, and everything else (biases, norms, embeddings,
    positional tables)."""
    decayed: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, DECAYED_MODULES):
            decayed.update(id(p) for n, p in sub.named_parameters(recurse=False) if n.startswith("weight"))
    params = list(module.parameters())
    return [p for p in params if id(p) in decayed], [p for p in params if id(p) not in decayed]


def frames_first(images: Tensor) -> Tensor:
    """uint8 ``[..., H, W, C]`` env images -> ``[..., C, H, W]`` (still uint8)."""
    return images.movedim(-1, -3)


class ImaginationAgent(nn.Module):
    """Three components (``tokenizer``, ``world_model``, ``actor_critic``) trained by one
    loss, the actor-critic in a :class:`~worldmodels.algos.iris.actor_critic.Dream` of the
    other two. Subclasses set the components and ``optim`` and implement
    :meth:`tokenizer_loss`, :meth:`world_model_loss`, :meth:`dream` and :meth:`policy_frames`."""

    tokenizer: nn.Module
    world_model: nn.Module
    actor_critic: IrisActorCritic
    optim: dict[str, OptimConfig]

    def components(self) -> dict[str, nn.Module]:
        """The three parts by name; the loop checkpoints each on its own and
        ``init.components`` loads any subset (:mod:`worldmodels.training.components`)."""
        return {name: getattr(self, name) for name in COMPONENTS}

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups per component: ``params``, ``lr``, ``weight_decay``,
        ``max_grad_norm``, ``clip_group`` (the component: its groups are clipped as one)
        and ``name``. As in IRIS, a component with weight decay gets it on the weights of
        its linear and convolution layers only; biases, norms and embeddings get none
        (they form the ``<name>/no_decay`` group)."""
        groups = []
        for name in COMPONENTS:
            opt = self.optim[name]
            common = {"lr": float(opt.lr), "max_grad_norm": float(opt.max_grad_norm), "clip_group": name}
            decay, no_decay = split_weight_decay(getattr(self, name))
            if opt.weight_decay == 0:
                decay, no_decay = decay + no_decay, []
            groups.append({"params": decay, "weight_decay": float(opt.weight_decay), "name": name, **common})
            if no_decay:
                groups.append({"params": no_decay, "weight_decay": 0.0, "name": f"{name}/no_decay", **common})
        return groups

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum of the active components' losses; metrics prefixed ``tokenizer/``,
        ``world_model/`` and ``actor_critic/`` (see :meth:`tokenizer_loss`,
        :meth:`world_model_loss`, :meth:`actor_critic_loss`) plus ``active/<name>``
        (1 when that component was trained)."""
        losses, metrics = [], {}
        steps = {"tokenizer": self.tokenizer_loss, "world_model": self.world_model_loss,
                 "actor_critic": self.actor_critic_loss}
        for name in COMPONENTS:
            sub = batch.get(name)
            metrics[f"active/{name}"] = torch.tensor(float(sub is not None))
            if sub is None:
                continue
            loss, parts = steps[name](sub)
            losses.append(loss)
            metrics.update({f"{name}/{key}": value for key, value in parts.items()})
            metrics[f"{name}/loss"] = loss.detach()
        if not losses:
            device = self.actor_critic.actor.weight.device
            return torch.zeros((), device=device, requires_grad=True), metrics
        return torch.stack([loss.float() for loss in losses]).sum(), metrics

    def tokenizer_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def world_model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def dream(self) -> Dream:
        """The imagined environment the actor-critic trains in (no gradient)."""
        raise NotImplementedError

    def policy_frames(self, frames: Tensor) -> Tensor:
        """What the policy sees of env frames ``[N, C, R, R]`` uint8: ``[N, C, R, R]`` in [0, 1]."""
        raise NotImplementedError

    def actor_critic_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """``observations [B, burn_in + 1, C, R, R]``, ``mask_padding [B, burn_in + 1]``
        (and ``actions`` where the dream needs them): imagination with the tokenizer and
        world model in eval mode (restored after)."""
        modes = self.tokenizer.training, self.world_model.training
        self.tokenizer.eval()
        self.world_model.eval()
        try:
            return self.actor_critic.compute_loss(batch, self.dream())
        finally:
            self.tokenizer.train(modes[0])
            self.world_model.train(modes[1])

    # ---------------------------------------------------------------- acting

    def init_policy_state(self, num_envs: int) -> tuple[Tensor, Tensor]:
        """Zero LSTM state ``(hx, cx)``, each ``[N, lstm_dim]``."""
        zeros = torch.zeros(num_envs, self.actor_critic.config.lstm_dim, device=self.actor_critic.actor.weight.device)
        return zeros, zeros.clone()

    @torch.no_grad()
    def policy(self, obs: dict[str, np.ndarray], state: tuple[Tensor, Tensor] | None = None,
               mode: str = "sample", *, epsilon: float = 0.0,
               temperature: float = 1.0) -> tuple[np.ndarray, tuple[Tensor, Tensor]]:
        """Actions for a batch of env observations (:class:`~worldmodels.rl.protocols.Agent`).

        ``obs["image"]`` uint8 ``[N, H, W, C]``, ``obs["is_first"]`` bool ``[N]`` (state reset
        there). The actor reads :meth:`policy_frames` of the frame; ``mode`` ``"greedy"``
        takes the argmax, ``"sample"`` and ``"explore"`` sample ``softmax(logits /
        temperature)``, and ``"explore"`` also replaces each env's action by a uniform one
        with probability ``epsilon``. Returns ``(actions int64 [N], new state)``.
        """
        greedy = check_mode(mode) == "greedy"
        epsilon = epsilon if mode == "explore" else 0.0
        device = self.actor_critic.actor.weight.device
        image = torch.as_tensor(np.asarray(obs["image"]), device=device)
        n = image.shape[0]
        hx, cx = state if state is not None else self.init_policy_state(n)
        first = torch.as_tensor(np.asarray(obs["is_first"]), device=device).bool().unsqueeze(-1)
        ac = self.actor_critic
        ac.hx, ac.cx = hx.masked_fill(first, 0.0), cx.masked_fill(first, 0.0)
        logits, _ = ac.act(self.policy_frames(frames_first(image)))
        if greedy:
            action = logits.argmax(-1)
        else:
            action = torch.distributions.Categorical(logits=logits.float() / temperature).sample()
        if epsilon > 0:
            explore = torch.rand(n, device=device) < epsilon
            action = torch.where(explore, torch.randint_like(action, ac.config.num_actions), action)
        new_state = (ac.hx, ac.cx)
        ac.hx = ac.cx = None
        return action.cpu().numpy().astype(np.int64), new_state


__all__ = ["COMPONENTS", "ImaginationAgent", "OptimConfig", "build_optimizer", "frames_first", "split_weight_decay"]


def build_optimizer(cfg: Any, model: ImaginationAgent) -> torch.optim.Optimizer:
    """AdamW over :meth:`ImaginationAgent.param_groups` (lr, weight decay and clip per
    component); ``train.lr`` and ``train.weight_decay`` are unused."""
    return torch.optim.AdamW(model.param_groups())
