"""C: the linear controller of World Models, for a whole CMA-ES population at once.

A candidate is a flat parameter vector ``theta = [vec(W), b]`` with ``W [F, A]`` and
``b [A]`` over features ``F = Z + H`` (``[z, h]``); its raw action is
``tanh(W^T [z, h] + b)``. The population ``[P, n]`` acts on its rollouts ``[P, R, F]``
through one ``torch.baddbmm``. Each env maps raw actions in [-1, 1] to its own bounds
(:data:`ACTION_MAPS`): CarRacing keeps steering in [-1, 1], maps gas to [0, 1] as
``(x + 1) / 2`` and clips brake to [0, 1], as the authors' code does (so a controller
brakes only where its brake output is positive).

Doom take-cover (:class:`ControllerSpec` ``inputs="zhc", bias=False``): the authors'
controller reads ``[z, h, c]`` (the LSTM's cell state too) with no bias, one output
(64 + 512 + 512 = 1,088 parameters); its tanh value is the M model's action input, and
the env thresholds it at +-1/3 into left / stay / right
(:func:`~worldmodels.algos.world_models.envs.doom_discrete_actions`).

A spec may carry a :class:`FeatureScale` (``controller_input=standardized``): its
features are then ``(x - mean) / std``, wherever the controller acts (dream, real env,
videos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

CONTROLLER_INPUTS = ("zh", "zhc")


@dataclass(frozen=True, eq=False)
class FeatureScale:
    """Per-feature standardization of the controller's inputs: ``(x - mean) / std``
    with ``mean``, ``std`` ``[F]`` measured on M's features over the training episodes
    (:func:`~worldmodels.algos.world_models.feature_scale.measure_scale`)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.dim() != 1:
            raise ValueError(f"feature scale needs mean and std of one shape [F], got {tuple(self.mean.shape)} "
                             f"and {tuple(self.std.shape)}.")
        if not bool((self.std > 0).all()):
            raise ValueError("feature scale std must be > 0 everywhere.")

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def to(self, device: torch.device | str) -> "FeatureScale":
        return FeatureScale(self.mean.to(device), self.std.to(device))

    def state(self) -> dict[str, torch.Tensor]:
        """The checkpoint entries ``input_mean`` and ``input_std`` (float32, CPU)."""
        return {"input_mean": self.mean.detach().float().cpu(), "input_std": self.std.detach().float().cpu()}

    @classmethod
    def from_state(cls, state: dict) -> "FeatureScale":
        """The scale saved by :meth:`state` in a checkpoint."""
        return cls(state["input_mean"].float(), state["input_std"].float())


@dataclass(frozen=True)
class ControllerSpec:
    """What the controller reads (``zh``: ``[z, h]``; ``zhc``: ``[z, h, c]``), whether it
    has a bias, and the scale its inputs go through (None: raw features, the paper's)."""

    inputs: str = "zh"
    bias: bool = True
    scale: FeatureScale | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.inputs not in CONTROLLER_INPUTS:
            raise ValueError(f"controller inputs {self.inputs!r} is not one of {', '.join(CONTROLLER_INPUTS)}.")

    def feature_dim(self, latent_dim: int, hidden_size: int) -> int:
        """``Z + H`` or ``Z + 2H``."""
        return latent_dim + hidden_size * (2 if self.inputs == "zhc" else 1)

    def features(self, z: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``[N, F]`` from ``z [N, Z]`` and the LSTM state ``(h, c)`` (through ``scale`` when set)."""
        features = torch.cat([z, state[0], state[1]] if self.inputs == "zhc" else [z, state[0]], -1)
        return features if self.scale is None else self.scale(features)


def parameter_count(feature_dim: int, action_dim: int, bias: bool = True) -> int:
    """``F * A + A`` (CarRacing: 288 * 3 + 3 = 867); ``F * A`` without bias (Doom: 1,088 * 1)."""
    return feature_dim * action_dim + (action_dim if bias else 0)


def unpack(theta: torch.Tensor, feature_dim: int, action_dim: int,
           bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``theta [P, n]`` -> ``(W [P, F, A], b [P, 1, A])`` (``b`` None without bias)."""
    expected = parameter_count(feature_dim, action_dim, bias)
    if theta.dim() != 2 or theta.shape[1] != expected:
        raise ValueError(f"theta has shape {tuple(theta.shape)}, expected [P, {expected}] "
                         f"for {feature_dim} features and {action_dim} actions (bias={bias}).")
    split = feature_dim * action_dim
    weight = theta[:, :split].view(-1, feature_dim, action_dim)
    return weight, (theta[:, split:].view(-1, 1, action_dim) if bias else None)


def population_actions(theta: torch.Tensor, features: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Raw actions ``[P, R, A]`` in [-1, 1] of P candidates on their features ``[P, R, F]``."""
    per_action = features.shape[-1] + (1 if bias else 0)
    if theta.dim() != 2 or theta.shape[1] % per_action:
        needs = f"(F + 1) * A = {per_action} * A" if bias else f"F * A = {per_action} * A (no bias)"
        raise ValueError(f"theta has shape {tuple(theta.shape)}: [P, n] needs n = {needs} "
                         f"for F={features.shape[-1]} features.")
    weight, offset = unpack(theta, features.shape[-1], theta.shape[1] // per_action, bias)
    if offset is None:
        return torch.tanh(torch.bmm(features, weight))
    return torch.tanh(torch.baddbmm(offset, features, weight))


def carracing_actions(raw: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` in [-1, 1] -> steering in [-1, 1], gas ``(x + 1) / 2``, brake ``max(x, 0)``."""
    return torch.cat([raw[..., :1], (raw[..., 1:2] + 1.0) * 0.5, raw[..., 2:].clamp_min(0.0)], dim=-1)


def identity_actions(raw: torch.Tensor) -> torch.Tensor:
    """Envs whose action bounds are [-1, 1] already."""
    return raw


ACTION_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "carracing": carracing_actions,
    "identity": identity_actions,
}


def action_map(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The raw-to-env action map called ``name``; an unknown name lists the known ones."""
    if name not in ACTION_MAPS:
        raise ValueError(f"action map {name!r} is not one of {', '.join(ACTION_MAPS)}.")
    return ACTION_MAPS[name]
