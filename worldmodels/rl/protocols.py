"""The two protocols the online families meet: an agent that acts in a vector env,
and a world model that acts as an env (imagination, ``play``, evaluation in a dream).

Policy modes:

- ``"explore"``: how the agent collects training data (DreamerV3 samples its actor;
  IRIS samples with epsilon-exploration);
- ``"sample"``: a sample of the policy, no extra exploration (IRIS's evaluation at a
  temperature);
- ``"greedy"``: the most likely action (argmax, or the mean of a continuous actor).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

PolicyMode = Literal["explore", "sample", "greedy"]
POLICY_MODES: tuple[str, ...] = ("explore", "sample", "greedy")


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`POLICY_MODES`, else a one-line ValueError."""
    if mode not in POLICY_MODES:
        raise ValueError(f"policy mode {mode!r} is not one of {', '.join(POLICY_MODES)}.")
    return mode


@runtime_checkable
class Agent(Protocol):
    """What the collector, the evaluator, ``record`` and ``play`` act with.

    ``policy(obs, state, mode)`` takes a batch of env observations (``{key: [N, ...]}``
    numpy, with ``is_first [N]``: the agent resets its state there) and returns
    ``(actions, new_state)``: int64 ``[N]`` for discrete actions, float32 ``[N, A]`` in
    ``[-1, 1]`` for continuous ones. ``state`` is whatever the agent carries between
    calls (``init_policy_state(N)`` makes the first one).
    """

    def init_policy_state(self, num_envs: int) -> Any: ...

    def policy(self, obs: dict[str, np.ndarray], state: Any, mode: str = "explore",
               **kwargs: Any) -> tuple[np.ndarray, Any]: ...


@runtime_checkable
class WorldModelEnv(Protocol):
    """A world model as a batched environment over frames (IRIS and Δ-IRIS's dreams).

    ``start(batch)`` takes real sequences (``observations`` uint8 ``[B, T, C, H, W]``,
    ``actions`` int64 ``[B, T]``, ``mask_padding`` bool ``[B, T]``) and returns
    ``(context [B, T - 1, C, H, W] or None, start frame [B, C, H, W])`` in [0, 1], as the
    policy should see them; ``step(action [B])`` returns ``(next frame [B, C, H, W] in
    [0, 1], reward [B], done [B] bool)``.
    """

    def start(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]: ...

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


__all__ = ["Agent", "POLICY_MODES", "PolicyMode", "WorldModelEnv", "check_mode"]
