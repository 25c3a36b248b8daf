"""Rollouts of a whole CMA-ES population inside the MDN-RNN ("the dream"), as one batch.

P candidates x R rollouts form the batch dimension ``B = P * R`` of every MDN-RNN step;
the P controllers act through one batched matmul
(:func:`~worldmodels.algos.world_models.controller.population_actions`); an episode's
end (when the model predicts dones: sampled from sigmoid(logit), or where the logit is
above 0 as the authors' doomrnn ends it) only clears its entry of an alive mask, so every step runs the same kernels whatever has ended (ready for a CUDA graph).

Common random numbers: the start latents and every step's draws (component uniforms,
Gaussian noise, done uniforms) have shape ``[R, ...]`` and are shared by all P
candidates, so candidates are compared on the same dream episodes. A dream with seed s
for one candidate equals that candidate's row of the population's dream with seed s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .controller import ControllerSpec, population_actions
from .mdnrnn import MDNRNN, sample_mixture

END_CHECK_EVERY = 16
DONE_RULES = ("sample", "threshold")


@dataclass
class DreamSettings:
    rollouts: int = 2
    horizon: int = 100
    temperature: float = 1.0
    controller: ControllerSpec = ControllerSpec()
    alive_reward: float | None = None   # a fixed reward per step alive instead of M's reward head
    done_rule: str = "sample"            # "sample": done ~ Bernoulli(sigmoid(logit)); "threshold": done where logit > 0

    def __post_init__(self) -> None:
        if self.done_rule not in DONE_RULES:
            raise ValueError(f"done_rule={self.done_rule!r} is not one of {', '.join(DONE_RULES)}.")


def _draw(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, normal: bool) -> torch.Tensor:
    sample = torch.randn if normal else torch.rand
    return sample(shape, generator=generator).to(device)


@torch.no_grad()
def dream_returns(model: MDNRNN, theta: torch.Tensor, start_latents: torch.Tensor, settings: DreamSettings,
                  seed: int, to_env_action: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean dream return over R rollouts per candidate: ``[P]``.

    ``theta [P, n]`` on the model's device; ``start_latents [N, Z]`` from which the R
    start states are drawn (shared by all candidates); ``seed`` fixes every draw.
    """
    returns = dream_rollouts(model, theta, start_latents, settings, seed, to_env_action)
    return returns.mean(1)


@torch.no_grad()
def dream_rollouts(model: MDNRNN, theta: torch.Tensor, start_latents: torch.Tensor, settings: DreamSettings,
                   seed: int, to_env_action: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Dream returns of every rollout ``[P, R]`` (see :func:`dream_returns`)."""
    device = theta.device
    population, rollouts, latent = theta.shape[0], settings.rollouts, model.config.latent_dim
    batch = population * rollouts
    generator = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(len(start_latents), (rollouts,), generator=generator)
    z = start_latents[starts].to(device).unsqueeze(0).expand(population, -1, -1).reshape(batch, latent)
    state = model.initial_state(batch, device)
    alive = torch.ones(batch, device=device)
    total = torch.zeros(batch, device=device)
    spec = settings.controller
    for step in range(settings.horizon):
        features = spec.features(z, state).view(population, rollouts, -1)
        action = to_env_action(population_actions(theta, features, spec.bias)).reshape(batch, -1)
        state = model.step(z, action, state)
        out = model.heads(state[0])
        uniform = _shared(_draw((rollouts, latent), generator, device, False), population)
        normal = _shared(_draw((rollouts, latent), generator, device, True), population)
        z = sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], settings.temperature, uniform, normal)
        done_draw = _shared(_draw((rollouts,), generator, device, False), population)
        if settings.alive_reward is not None:
            total = total + settings.alive_reward * alive
        elif "reward" in out:
            total = total + out["reward"] * alive
        if "done_logit" in out:
            alive = alive * still_alive(out["done_logit"], done_draw, settings.done_rule)
            if step % END_CHECK_EVERY == END_CHECK_EVERY - 1 and not alive.any():
                break
    return total.view(population, rollouts)


def still_alive(done_logit: torch.Tensor, uniform: torch.Tensor, rule: str) -> torch.Tensor:
    """1 where a dream episode goes on, 0 where it ends: ``sample`` ends it where
    ``uniform < sigmoid(logit)`` (done drawn with its predicted probability);
    ``threshold`` where ``logit > 0`` (the authors' doomrnn: a death only in states M
    finds more likely than not to end, so the hazard's base rate kills nobody)."""
    if rule == "threshold":
        return (done_logit <= 0).float()
    return (torch.sigmoid(done_logit) <= uniform).float()


def _shared(draw: torch.Tensor, population: int) -> torch.Tensor:
    """``[R, ...]`` -> ``[P * R, ...]``: the same draws for every candidate."""
    return draw.unsqueeze(0).expand(population, *draw.shape).reshape(population * draw.shape[0], *draw.shape[1:])


def dream_returns_loop(model: MDNRNN, theta: torch.Tensor, start_latents: torch.Tensor, settings: DreamSettings,
                       seed: int, to_env_action: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The same as :func:`dream_returns`, one candidate at a time (the reference and the
    benchmark's anchor)."""
    return torch.cat([dream_returns(model, theta[i:i + 1], start_latents, settings, seed, to_env_action)
                      for i in range(theta.shape[0])])
