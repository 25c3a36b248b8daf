"""The policy a frame dataset (:mod:`worldmodels.data.generate_frames`) is recorded with:
uniformly random, or the agent of a training checkpoint, and its record in the
manifest's ``policy``.

- random: ``{"kind": "random"}`` (datasets written before the record was a dict hold the
  string ``"random (uniform over the actions)"``, read as the same);
- agent: ``{"kind": "agent", "checkpoint", "algo", "step", "mode", "temperature",
  "epsilon"}``. The agent comes from :func:`worldmodels.algos.registry.load_agent` and
  acts on the env's observations as ``python -m worldmodels.evaluate`` plays it: at the
  family's evaluation temperature (:func:`~worldmodels.rl.evaluator.policy_settings`)
  unless one is given (0: greedy), its recurrent state reset where an episode starts;
  with probability ``epsilon`` an env's action is replaced by a uniform one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..envs.spaces import ActionSpace
from ..errors import WorldModelsError
from ..rl.actions import EpsilonAgent

RANDOM: dict[str, Any] = {"kind": "random"}
LEGACY_RANDOM = "random (uniform over the actions)"   # the record of datasets from before the dict


class PolicyMismatchError(WorldModelsError, ValueError):
    """A checkpoint whose agent cannot act in the recorded env, or a resume with another policy."""


@dataclass
class FramePolicy:
    """What the recorder acts with: ``agent`` (None: uniformly random), the policy
    ``mode`` and keyword arguments it is called with, and the manifest's ``record``."""

    agent: Any = None
    mode: str = "greedy"
    kwargs: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=lambda: dict(RANDOM))

    def reseed(self, seed: int) -> None:
        """Seed the agent's sampling (torch) and its epsilon-random actions."""
        if self.agent is None:
            return
        import torch

        torch.manual_seed(seed)
        if isinstance(self.agent, EpsilonAgent):
            self.agent.reseed(seed)


def policy_record(value: Any) -> dict[str, Any]:
    """A manifest's ``policy`` as a dict (the legacy random string read as :data:`RANDOM`)."""
    if value == LEGACY_RANDOM:
        return dict(RANDOM)
    return dict(value) if isinstance(value, dict) else {"kind": str(value)}


def check_same_policy(path: Path, recorded: Any, wanted: dict[str, Any]) -> None:
    """Raise :class:`PolicyMismatchError` when a resume would record with another policy."""
    recorded = policy_record(recorded)
    if recorded == wanted:
        return
    if recorded.get("kind") != wanted.get("kind"):
        differs = f"recorded by a policy of kind {recorded.get('kind')!r}, not {wanted.get('kind')!r}"
    else:
        keys = [key for key in sorted({*recorded, *wanted}) if recorded.get(key) != wanted.get(key)]
        differs = "recorded by another policy: " + ", ".join(
            f"{key} {recorded.get(key)!r}, not {wanted.get(key)!r}" for key in keys)
    raise PolicyMismatchError(f"{path}: {differs}; resume with the same --policy, --temperature and --epsilon, or "
                              "record into another --out.")


def _check_env(file: Path, state: dict[str, Any], game: str, space: ActionSpace) -> None:
    """The checkpoint's env must be Procgen ``game`` with ``space``'s action count."""
    env = (state.get("config") or {}).get("env") or {}
    suite, task = env.get("suite"), env.get("task")
    if (suite, task) != ("procgen", game):
        raise PolicyMismatchError(f"{file}: the agent was trained on {suite} {task}, the recording is procgen {game}; "
                                  f"record with --game {task} or with an agent trained on {game}.")
    act = (state.get("env_spaces") or {}).get("act") or {}
    if "size" in act and int(act["size"]) != space.size:
        raise PolicyMismatchError(f"{file}: the agent has {int(act['size'])} actions, procgen {game} has "
                                  f"{space.size}; record with an agent trained on this env.")


def agent_policy(path: str | Path, game: str, space: ActionSpace, *, temperature: float | None = None,
                 epsilon: float = 0.0) -> FramePolicy:
    """The :class:`FramePolicy` of the checkpoint at ``path`` (a file, or a run directory:
    its ``checkpoints/last.pt``) for Procgen ``game`` with actions ``space``."""
    from omegaconf import OmegaConf

    from ..algos.registry import algo_name, load_agent
    from ..rl.evaluator import checkpoint_path, policy_settings
    from ..training.checkpoint import load_checkpoint

    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"--epsilon {epsilon} is not a probability; give one in [0, 1].")
    file = checkpoint_path(path)
    state = load_checkpoint(file)
    _check_env(file, state, game, space)
    algo = algo_name(state)
    agent = load_agent(state)
    mode, kwargs, temp = policy_settings(algo, OmegaConf.create(state.get("config") or {}), temperature)
    if epsilon > 0:
        agent = EpsilonAgent(agent, space, epsilon, np.random.default_rng(0))
    record = {"kind": "agent", "checkpoint": str(file.resolve()), "algo": algo, "step": int(state.get("step", 0)),
              "mode": mode, "temperature": temp, "epsilon": float(epsilon)}
    return FramePolicy(agent, mode, kwargs, record)


__all__ = ["LEGACY_RANDOM", "RANDOM", "FramePolicy", "PolicyMismatchError", "agent_policy", "check_same_policy",
           "policy_record"]
