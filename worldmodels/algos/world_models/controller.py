"""C: the linear controller of World Models, for a whole CMA-ES population at once.

A candidate is a flat parameter vector ``theta = [vec(W), b]`` with ``W [F, A]`` and
``b [A]`` over features ``F = Z + H`` (``[z, h]``); its raw action is
``tanh(W^T [z, h] + b)``. The population ``[P, n]`` acts on its rollouts ``[P, R, F]``
through one ``torch.baddbmm``. Each env maps raw actions in [-1, 1] to its own bounds
(:data:`ACTION_MAPS`): CarRacing keeps steering in [-1, 1], maps gas to [0, 1] as
``(x + 1) / 2`` and clips brake to [0, 1], as the authors' code does (so a controller
brakes only where its brake output is positive).
"""

from __future__ import annotations

from typing import Callable

import torch


def parameter_count(feature_dim: int, action_dim: int) -> int:
    """``F * A + A`` (CarRacing: 288 * 3 + 3 = 867)."""
    return feature_dim * action_dim + action_dim


def unpack(theta: torch.Tensor, feature_dim: int, action_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta [P, n]`` -> ``(W [P, F, A], b [P, 1, A])``."""
    expected = parameter_count(feature_dim, action_dim)
    if theta.dim() != 2 or theta.shape[1] != expected:
        raise ValueError(f"theta has shape {tuple(theta.shape)}, expected [P, {expected}] "
                         f"for {feature_dim} features and {action_dim} actions.")
    split = feature_dim * action_dim
    return theta[:, :split].view(-1, feature_dim, action_dim), theta[:, split:].view(-1, 1, action_dim)


def population_actions(theta: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Raw actions ``[P, R, A]`` in [-1, 1] of P candidates on their features ``[P, R, F]``."""
    per_action = features.shape[-1] + 1
    if theta.dim() != 2 or theta.shape[1] % per_action:
        raise ValueError(f"theta has shape {tuple(theta.shape)}: [P, n] needs n = (F + 1) * A = {per_action} * A "
                         f"for F={features.shape[-1]} features.")
    weight, bias = unpack(theta, features.shape[-1], theta.shape[1] // per_action)
    return torch.tanh(torch.baddbmm(bias, features, weight))


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
