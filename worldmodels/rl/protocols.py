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
class ActionFeedback(Protocol):
    """An agent whose policy state carries the action it chose, fed to its next step
    (DreamerV3's posterior takes the previous action): ``with_actions(state, actions)``
    is that state with ``actions`` (the agent's form, ``[N]`` or ``[N, A]``) as the ones
    taken, for a caller that stepped the env with other actions (epsilon-random ones)."""

    def with_actions(self, state: Any, actions: np.ndarray) -> Any: ...


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


def rebuild_agent(state: dict[str, Any], build: Any, spaces: Any = None) -> Any:
    """The agent of a checkpoint ``state``: ``build(cfg, spaces)`` with its recorded config
    and env spaces (``spaces`` when given instead), its weights loaded, in eval mode. A
    checkpoint whose weights do not fit raises a one-line
    :class:`~worldmodels.training.checkpoint.CheckpointError`."""
    from omegaconf import OmegaConf

    from ..envs.spaces import EnvSpaces
    from ..training.checkpoint import CheckpointError

    if spaces is None:
        if not state.get("env_spaces"):
            raise CheckpointError("the checkpoint records no env_spaces (written before they were recorded); "
                                  "retrain or rebuild the agent from its env.")
        spaces = EnvSpaces.from_state(state["env_spaces"])
    agent = build(OmegaConf.create(state["config"]), spaces)
    try:
        agent.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"the checkpoint's weights do not fit the model of its config ({first}).") from error
    return agent.eval()


__all__ = ["ActionFeedback", "Agent", "POLICY_MODES", "PolicyMode", "WorldModelEnv", "check_mode", "rebuild_agent"]
