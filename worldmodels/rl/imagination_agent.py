"""The base of agents made of three components (IRIS, Δ-IRIS): ``tokenizer``,
``world_model`` and an ``actor_critic`` trained in the world model's imagination.

Training (:func:`component_step`, the families' loop step) follows IRIS: in each update
the started components train one after another, tokenizer, world model, actor-critic,
each with its own forward, backward, clipping and optimiser step, so peak memory is
the largest component's, not their sum, and the world model reads the tokenizer as
just updated. :meth:`ImaginationAgent.component_loss` is one component's loss under its
own precision (:attr:`ImaginationAgent.precision`: ``run`` follows the run's autocast,
``fp32`` turns autocast off, ``bf16`` turns it on; IRIS trains everything in fp32,
Δ-IRIS its actor-critic). :meth:`ImaginationAgent.compute_loss` (the sum over a dict of
sub-batches) is kept for callers that want one number.
:meth:`ImaginationAgent.param_groups` gives each component its own AdamW learning
rate, weight decay and ``max_grad_norm``. :meth:`ImaginationAgent.policy` follows
:class:`~worldmodels.rl.protocols.Agent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import contextlib
import math

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


DECAYED_MODULES = (nn.Linear, nn.Conv1d)
PRECISIONS = ("run", "fp32", "bf16")


def split_weight_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decayed, not decayed)`` trainable parameters of ``module``: the weights of
    linear (and 1-d convolution) layers, and everything else (biases, 2-d convolutions,
    norms, embeddings, positional tables), as both IRIS's and Δ-IRIS's
    ``configure_optimizer`` (minGPT's) split them; parameters without gradient (an EMA
    target network) are left out."""
    decayed: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, DECAYED_MODULES):
            decayed.update(id(p) for n, p in sub.named_parameters(recurse=False) if n.startswith("weight"))
    params = [p for p in module.parameters() if p.requires_grad]
    return [p for p in params if id(p) in decayed], [p for p in params if id(p) not in decayed]


def component_autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast a component runs under: ``run`` keeps the surrounding one (the run's
    ``precision``), ``fp32`` turns autocast off, ``bf16`` turns bf16 autocast on."""
    if precision == "run":
        return contextlib.nullcontext()
    if precision == "fp32":
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


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
    precision: dict[str, str] = {}

    def set_precision(self, precision: dict[str, str] | None) -> None:
        """Precision per component (``run`` | ``fp32`` | ``bf16``; missing names: ``run``)."""
        precision = dict(precision or {})
        unknown = sorted(set(precision) - set(COMPONENTS))
        bad = {name: value for name, value in precision.items() if value not in PRECISIONS}
        if unknown or bad:
            raise ValueError(f"model.precision: components must be among {list(COMPONENTS)} (got {unknown}) and "
                             f"values among {list(PRECISIONS)} (got {bad}).")
        self.precision = {name: str(precision.get(name, "run")) for name in COMPONENTS}

    def autocast(self, name: str) -> contextlib.AbstractContextManager:
        """The autocast component ``name`` runs under (see :func:`component_autocast`)."""
        device_type = self.actor_critic.actor.weight.device.type
        return component_autocast(self.precision.get(name, "run"), device_type)

    def component_parameters(self, name: str) -> list[nn.Parameter]:
        """The trainable parameters of component ``name``."""
        return [p for p in getattr(self, name).parameters() if p.requires_grad]

    def component_loss(self, name: str, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """``(loss, metrics)`` of component ``name`` on its sub-batch, under its precision."""
        steps = {"tokenizer": self.tokenizer_loss, "world_model": self.world_model_loss,
                 "actor_critic": self.actor_critic_loss}
        if name not in steps:
            raise KeyError(f"unknown component {name!r}; the components are {list(COMPONENTS)}.")
        with self.autocast(name):
            return steps[name](batch)

    def after_update(self, name: str) -> None:
        """Called once after each optimiser step of component ``name`` (Δ-IRIS moves its
        target critic here)."""

    def components(self) -> dict[str, nn.Module]:
        """The three parts by name; the loop checkpoints each on its own and
        ``init.components`` loads any subset (:mod:`worldmodels.training.components`)."""
        return {name: getattr(self, name) for name in COMPONENTS}

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups per component: ``params``, ``lr``, ``weight_decay``,
        ``max_grad_norm``, ``clip_group`` (the component: its groups are clipped as one)
        and ``name``. As in IRIS and Δ-IRIS, a component with weight decay gets it on the
        weights of its linear layers only; biases, 2-d convolutions, norms and embeddings
        get none (they form the ``<name>/no_decay`` group)."""
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
        for name in COMPONENTS:
            sub = batch.get(name)
            metrics[f"active/{name}"] = torch.tensor(float(sub is not None))
            if sub is None:
                continue
            loss, parts = self.component_loss(name, sub)
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
        frames = self.policy_frames(frames_first(image))
        with self.autocast("actor_critic"):
            logits, _ = ac.act(frames)
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


__all__ = ["COMPONENTS", "ImaginationAgent", "OptimConfig", "build_optimizer", "component_adamw", "component_autocast", "component_step",
           "frames_first", "split_weight_decay"]


def component_adamw(module: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW of one component on its own, at ``optim.lr``, with ``optim.weight_decay`` on
    the weights :func:`split_weight_decay` decays and none on the rest."""
    decay, no_decay = split_weight_decay(module)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr)


def build_optimizer(cfg: Any, model: ImaginationAgent) -> torch.optim.Optimizer:
    """AdamW over :meth:`ImaginationAgent.param_groups` (lr, weight decay and clip per
    component); ``train.lr`` and ``train.weight_decay`` are unused."""
    return torch.optim.AdamW(model.param_groups())


def component_step(run: Any) -> Any:
    """One update of an :class:`ImaginationAgent` (the loop's ``step``; see the module
    docstring): the data collects when its schedule says so, then each component that
    trains at this update does ``train.accum_steps`` micro-batches of forward and
    backward, clips its gradients to its ``max_grad_norm`` (then to ``train.grad_clip``
    when set) and steps its optimiser groups, one component after another. Accumulation repeats only the micro-batches:
    the collection schedule and the starts advance once per update, so halving the
    batch and doubling ``accum_steps`` trains the same schedule.

    Under torchrun every process runs the same schedule (it depends on the update count
    only) on its own data; after a component's micro-batches its loss and metrics are
    averaged over the processes (a non-finite loss stops every process), then its
    gradients (:func:`~worldmodels.training.distributed.average_gradients`: one all-reduce
    per component), so every process steps the same optimiser on the same gradients; its
    codebook statistics are those of every process's batch
    (:func:`~worldmodels.nn.vq.synced_statistics`)."""
    from ..training import distributed
    from ..training.step import StepResult, clip_groups_

    data, model, optimizer, scaler = run.data, run.model, run.optimizer, run.scaler
    count = max(1, int(run.accum_steps))
    active = data.begin_update()
    metrics: dict[str, float] = {f"active/{name}": float(name in active) for name in COMPONENTS}
    total, norms = 0.0, []
    for name in COMPONENTS:
        if name not in active:
            continue
        optimizer.zero_grad(set_to_none=True)
        params = model.component_parameters(name)
        loss_sum, parts = _component_backward(run, name, count)
        values = {**{f"{name}/{key}": value for key, value in parts.items()}, f"{name}/loss": loss_sum}
        metrics.update(distributed.average_values(values))
        loss_sum = metrics[f"{name}/loss"]
        total += loss_sum
        if not math.isfinite(loss_sum):
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_sum, float("nan"), False, metrics)
        distributed.average_gradients(params)
        scaler.unscale_(optimizer)
        norms.append(_grad_norm(params))
        clip_groups_(optimizer)
        if getattr(run, "grad_clip", None):
            nn.utils.clip_grad_norm_(params, float(run.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        model.after_update(name)
    optimizer.zero_grad(set_to_none=True)
    grad_norm = math.sqrt(sum(n * n for n in norms)) if norms else 0.0
    return StepResult(total, grad_norm, True, metrics)


def _component_backward(run: Any, name: str, count: int) -> tuple[float, dict[str, float]]:
    """Forward and backward of ``count`` micro-batches of component ``name`` (gradients
    summed in place, each loss divided by ``count``); returns their mean loss and metrics."""
    from ..nn.vq import synced_statistics

    loss_sum, sums = 0.0, {}
    for _ in range(count):
        batch = run.data.sample(name)
        with run.precision.autocast(), synced_statistics(run.model):
            loss, parts = run.model.component_loss(name, batch)
        run.scaler.scale(loss / count).backward()
        loss_sum += float(loss.detach()) / count
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(torch.as_tensor(value).detach().float()) / count
    return loss_sum, sums


def _grad_norm(params: list[nn.Parameter]) -> float:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0
