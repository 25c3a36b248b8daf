"""Action encodings shared by every online family.

Three forms of one batch of ``N`` actions:

- the *agent's* form: int64 indices ``[N]`` (discrete) or float32 ``[N, A]`` in
  ``[-1, 1]`` (continuous);
- the *stored* form (replay, episode files): float32 ``[N, A]``, one-hot when discrete;
- the *env's* form: indices ``[N]``, or values mapped linearly onto the env's bounds.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..envs.spaces import ActionSpace
from .protocols import ActionFeedback


@functools.lru_cache(maxsize=64)
def _eye(size: int) -> np.ndarray:
    eye = np.eye(size, dtype=np.float32)
    eye.flags.writeable = False
    return eye


def onehot(index: np.ndarray, size: int) -> np.ndarray:
    """int ``[N]`` -> float32 one-hot ``[N, size]`` (a new array)."""
    return _eye(int(size))[np.asarray(index, np.int64)]


def to_env_action(space: ActionSpace, action: np.ndarray) -> np.ndarray:
    """The agent's action as the env takes it: discrete int64 ``[N]`` unchanged;
    continuous ``[N, A]`` in ``[-1, 1]`` mapped linearly onto ``[low, high]`` (dimensions
    with an infinite bound are passed through)."""
    if space.discrete:
        return np.asarray(action, np.int64)
    action = np.asarray(action, np.float32)
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    finite = np.isfinite(low) & np.isfinite(high)
    low, high = np.where(finite, low, -1.0), np.where(finite, high, 1.0)
    scaled = low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
    return np.where(finite, scaled, action).astype(np.float32)


def from_env_action(space: ActionSpace, action: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_env_action` for continuous actions: values in the env's
    bounds -> ``[-1, 1]`` (discrete indices unchanged)."""
    if space.discrete:
        return np.asarray(action, np.int64)
    action = np.asarray(action, np.float32)
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    finite = np.isfinite(low) & np.isfinite(high)
    span = np.where(finite, high - low, 2.0)
    unit = 2.0 * (action - np.where(finite, low, -1.0)) / np.where(span > 0, span, 1.0) - 1.0
    return np.where(finite, np.clip(unit, -1.0, 1.0), action).astype(np.float32)


def stored_action(space: ActionSpace, action: np.ndarray) -> np.ndarray:
    """The agent's action as the replay stores it: float32 ``[N, A]`` (one-hot if discrete)."""
    if space.discrete:
        return onehot(action, space.size)
    return np.asarray(action, np.float32)


def random_policy(space: ActionSpace, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform actions in the agent's form: indices ``[N]`` or ``[-1, 1]^A`` ``[N, A]``."""
    if space.discrete:
        return rng.integers(0, space.size, num_envs)
    return rng.uniform(-1.0, 1.0, (num_envs, space.size)).astype(np.float32)


class EpsilonAgent:
    """``agent`` whose action in each env is replaced, with probability ``epsilon``, by a
    uniform one of ``space`` (drawn from ``rng``); an :class:`ActionFeedback` agent is
    told the actions taken, so its next step conditions on them. ``epsilon`` 1 acts
    uniformly at random (the agent still runs, its state follows the env)."""

    def __init__(self, agent: Any, space: ActionSpace, epsilon: float, rng: np.random.Generator):
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}.")
        self.agent, self.space, self.epsilon, self.rng = agent, space, float(epsilon), rng

    def reseed(self, seed: int) -> None:
        """Draw the random actions from ``seed`` on."""
        self.rng = np.random.default_rng(seed)

    def init_policy_state(self, num_envs: int) -> Any:
        return self.agent.init_policy_state(num_envs)

    def policy(self, obs: dict[str, np.ndarray], state: Any, mode: str = "explore", **kwargs: Any) -> tuple:
        actions, state = self.agent.policy(obs, state, mode, **kwargs)
        replace = self.rng.random(len(actions)) < self.epsilon
        if not np.count_nonzero(replace):
            return actions, state
        actions = np.array(actions, copy=True)
        actions[replace] = random_policy(self.space, int(replace.sum()), self.rng)
        if isinstance(self.agent, ActionFeedback):
            state = self.agent.with_actions(state, actions)
        return actions, state


__all__ = ["EpsilonAgent", "from_env_action", "onehot", "random_policy", "stored_action", "to_env_action"]
