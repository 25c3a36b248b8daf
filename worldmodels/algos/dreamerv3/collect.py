"""Online data for DreamerV3: the agent acts in a vectorised env, finished episodes go
to a replay, and each training batch is sampled from that replay.

:class:`OnlineData` implements the training loop's ``TrainData`` protocol (plus its
optional ``bind_model`` and ``log_metrics``). Each :meth:`OnlineData.next_batch`
first steps the environments with the agent's exploring policy so that, over the
run, replayed steps / env steps = ``train_ratio``: one update replays
``batch_size * batch_length`` steps, so it is preceded by
``batch_size * batch_length / train_ratio`` env steps (a fraction is carried over
to the next update). Env steps count every environment: one vectorised step of
``num_envs`` envs is ``num_envs`` env steps, a reset step included.

Replay step convention (:mod:`worldmodels.data.episodes`): step ``t`` holds the
observation, ``reward`` and flags returned by the env, and ``action[t]`` is the
action then taken, float32 (one-hot for discrete envs; the agent's ``[-1, 1]``
values for continuous ones, rescaled to the env's bounds only when stepping).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.episodes import EpisodeBuilder
from ...data.replay import Replay
from ...envs.factory import ActionSpace, EnvSpec, VectorEnv, make_env


def onehot(index: np.ndarray, size: int) -> np.ndarray:
    """int ``[N]`` -> float32 one-hot ``[N, size]``."""
    return np.eye(size, dtype=np.float32)[np.asarray(index, np.int64)]


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


def replay_action(space: ActionSpace, action: np.ndarray) -> np.ndarray:
    """The agent's action as the replay stores it: float32 ``[N, A]`` (one-hot if discrete)."""
    if space.discrete:
        return onehot(action, space.size)
    return np.asarray(action, np.float32)


def random_policy(space: ActionSpace, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform actions in the agent's convention: indices ``[N]`` or ``[-1, 1]^A`` ``[N, A]``."""
    if space.discrete:
        return rng.integers(0, space.size, num_envs)
    return rng.uniform(-1.0, 1.0, (num_envs, space.size)).astype(np.float32)


def batch_to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Numpy ``[B, L, ...]`` arrays -> tensors on ``device`` with the same dtypes (uint8 stays)."""
    return {key: torch.from_numpy(np.ascontiguousarray(value)).to(device) for key, value in batch.items()}


class OnlineData:
    """Collects experience with the bound model and samples replay batches.

    Args:
        env: the training environments (``make_env(spec)``), owned and closed here.
        batch_size, batch_length: ``B`` sequences of ``L`` steps per batch.
        train_ratio: replayed steps per env step.
        prefill: env steps taken with uniformly random actions before the first batch
            (more follow, still random, until the replay holds ``L`` steps of finished
            episodes).
        capacity: replay capacity in steps. seed: replay and random-action seed.
        device: where batches go.
        directory: where finished episodes are saved (``<run_dir>/replay`` once
            :meth:`bind_model` gets a run directory).

    Resuming (:meth:`load_state_dict`) restores the counters, the carried fraction of
    an env step and the replay's sampling RNG, and reloads the replay from its
    directory; the environments themselves are not restored: collection starts new
    episodes (the unfinished ones at the checkpoint are lost).
    """

    def __init__(self, env: VectorEnv, *, batch_size: int, batch_length: int, train_ratio: float,
                 prefill: int, capacity: int, seed: int, device: torch.device | str = "cpu",
                 directory: str | Path | None = None):
        if train_ratio <= 0:
            raise ValueError(f"train_ratio={train_ratio} must be > 0.")
        self.env, self.num_envs = env, env.num_envs
        self.act_space: ActionSpace = env.act_space
        self.batch_size, self.batch_length = int(batch_size), int(batch_length)
        self.train_ratio, self.prefill = float(train_ratio), int(prefill)
        self.capacity, self.seed, self.device = int(capacity), int(seed), torch.device(device)
        self.replay = Replay(self.capacity, self.batch_length, self.seed, directory)
        self.builder = EpisodeBuilder(self.num_envs)
        self._rng = np.random.default_rng(self.seed + 1)
        self.model: Any = None
        self._obs: dict[str, np.ndarray] | None = None
        self._policy_state: Any = None
        self.env_steps, self.episodes, self.updates = 0, 0, 0
        self.owed = 0.0          # env steps owed to the train ratio, carried between updates
        self.prefilled = False
        self._since = self._fresh_window()

    @property
    def steps_per_update(self) -> float:
        """Env steps per update: ``batch_size * batch_length / train_ratio``."""
        return self.batch_size * self.batch_length / self.train_ratio

    def bind_model(self, model: Any, run_dir: str | Path | None = None) -> None:
        """Act with ``model`` (``policy``/``init_policy_state``); with ``run_dir``, keep
        episodes in ``<run_dir>/replay`` (an empty replay is re-created there)."""
        self.model = model
        if run_dir is not None and self.replay.num_steps == 0:
            self.replay = Replay(self.capacity, self.batch_length, self.seed, Path(run_dir) / "replay")

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Collect the env steps this update owes, then ``B`` replay windows as tensors
        ``{key: [B, L, ...]}`` on the device (images uint8, ``action`` float32)."""
        if not self.prefilled:
            self.collect(self.prefill, random=True)
            while self.replay.num_steps < self.batch_length:
                self.collect(self.num_envs, random=True)
            self.prefilled = True
        else:
            self.owed += self.steps_per_update
            calls = int(self.owed // self.num_envs)
            self.owed -= calls * self.num_envs
            self.collect(calls * self.num_envs, random=self.model is None)
        self.updates += 1
        return batch_to_torch(self.replay.sample(self.batch_size), self.device)

    def collect(self, steps: int, *, random: bool) -> None:
        """Take ``ceil(steps / num_envs)`` vectorised steps (random or exploring policy)."""
        start = time.perf_counter()
        for _ in range(-(-int(steps) // self.num_envs)):
            self._step(random)
        self._since["seconds"] += time.perf_counter() - start

    def _step(self, random: bool) -> None:
        if self._obs is None:
            self._obs = self.env.reset()
            self.builder.reset()
            self._policy_state = None
        obs = self._obs
        if random:
            action = random_policy(self.act_space, self.num_envs, self._rng)
        else:
            if self._policy_state is None:
                self._policy_state = self.model.init_policy_state(self.num_envs)
            action, self._policy_state = self.model.policy(obs, self._policy_state, explore=True)
        for _, episode in self.builder.add({**obs, "action": replay_action(self.act_space, action)}):
            self._finish(episode)
        self.env_steps += self.num_envs
        self._since["env_steps"] += self.num_envs
        self._obs = self.env.step(to_env_action(self.act_space, action))

    def _finish(self, episode: dict[str, np.ndarray]) -> None:
        self.replay.add_episode(episode)
        self.episodes += 1
        self._since["returns"].append(float(episode["reward"].sum()))
        self._since["lengths"].append(len(episode["reward"]))

    @staticmethod
    def _fresh_window() -> dict[str, Any]:
        return {"returns": [], "lengths": [], "env_steps": 0, "seconds": 0.0, "start": time.perf_counter()}

    def log_metrics(self) -> dict[str, float]:
        """Metrics since the last call (then cleared): ``collect/return_{mean,max}`` and
        ``collect/length_mean`` (only when episodes finished), running totals
        ``collect/{env_steps,episodes,replay_steps}``, and ``perf/env_steps_per_s`` (env
        steps over wall time since the last call, training included) and
        ``perf/collect_steps_per_s`` (over the time spent stepping envs and acting)."""
        since, now = self._since, time.perf_counter()
        metrics = {"collect/env_steps": float(self.env_steps), "collect/episodes": float(self.episodes),
                   "collect/replay_steps": float(self.replay.num_steps),
                   "perf/env_steps_per_s": since["env_steps"] / max(now - since["start"], 1e-9)}
        if since["env_steps"] and since["seconds"] > 0:
            metrics["perf/collect_steps_per_s"] = since["env_steps"] / since["seconds"]
        if since["returns"]:
            metrics["collect/return_mean"] = float(np.mean(since["returns"]))
            metrics["collect/return_max"] = float(np.max(since["returns"]))
            metrics["collect/length_mean"] = float(np.mean(since["lengths"]))
        self._since = self._fresh_window()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Counters, the carried fraction, the random-action RNG and the replay RNG."""
        return {"env_steps": self.env_steps, "episodes": self.episodes, "updates": self.updates,
                "owed": self.owed, "prefilled": self.prefilled, "rng": self._rng.bit_generator.state,
                "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, reload the replay from its directory (when it holds
        episodes) and start new env episodes at the next collection."""
        directory = self.replay.directory
        if directory is not None and directory.is_dir() and any(directory.glob("*.npz")):
            self.replay = Replay.load_directory(directory, self.capacity, self.batch_length, self.seed)
        self.replay.load_state_dict(state["replay"])
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.updates, self.owed = int(state["updates"]), float(state["owed"])
        self.prefilled = bool(state["prefilled"]) and self.replay.num_steps >= self.batch_length
        self._rng.bit_generator.state = state["rng"]
        self._obs, self._policy_state = None, None
        self._since = self._fresh_window()

    def close(self) -> None:
        self.env.close()


def env_spec(cfg: Any, *, seed: int, num_envs: int | None = None) -> EnvSpec:
    """The :class:`EnvSpec` of ``cfg.env`` (a ``configs/env/gym.yaml`` node) with ``seed``."""
    return EnvSpec.from_config(cfg.env, seed=seed, num_envs=num_envs)


def build_online_data(cfg: Any, device: torch.device) -> OnlineData:
    """:class:`OnlineData` from ``cfg.env``, ``cfg.algo`` and ``cfg.train.batch_size``."""
    algo = cfg.algo
    return OnlineData(
        make_env(env_spec(cfg, seed=int(cfg.seed))), batch_size=int(cfg.train.batch_size),
        batch_length=int(algo.batch_length), train_ratio=float(algo.train_ratio), prefill=int(algo.prefill),
        capacity=int(float(algo.replay_capacity)), seed=int(cfg.seed), device=device,
    )
