"""Online data for IRIS: the agent collects episodes, each component samples its batch.

IRIS alternates epochs of ``collect 200 env steps`` and ``200 updates of each started
component``; a component starts after ``start_after_epochs`` epochs (tokenizer 5, world
model 25, actor-critic 50) and collection stops after 500 epochs (100k env steps). Here
the training loop's step counter replaces epochs: every update trains each started
component once, ``collect_steps`` env steps are collected every ``collect_every``
updates (IRIS: 200 every 200, the first before update 0), collection stops at
``max_env_steps``, and a component starts at update ``<name>_start`` (IRIS: epochs x
200, so 1000, 5000 and 10000). Until the actor-critic starts the actions are uniform
(an untrained actor is near-uniform anyway); then the agent acts with
``epsilon``-exploration (IRIS: 0.01) at ``temperature`` 1.

:class:`EpisodeStore` keeps finished episodes in IRIS's layout (frame ``t``, the action
taken there, the reward and end that followed) and samples them *balanced*: an episode
uniformly (or by ``recent_weights`` over its age quantiles, IRIS: 0.125, 0.125, 0.25,
0.5 from oldest to newest), then a window inside it, padded where it runs past the
episode (``mask_padding`` False). Episodes are saved in the package's episode format
(:mod:`worldmodels.data.episodes`) under ``<run_dir>/replay`` and reloaded on resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.episodes import (
    EpisodeBuilder,
    episode_name,
    list_episodes,
    load_episode,
    save_episode,
)
from ...envs.factory import VectorEnv
from ..dreamerv3.collect import onehot
from .agent import COMPONENTS

IRIS_KEYS = ("observations", "actions", "rewards", "ends")


def iris_layout(episode: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stored episode of ``T`` steps (obs, then the action taken; reward on arrival) ->
    ``T - 1`` IRIS frames: ``observations uint8 [T-1, C, H, W]``, ``actions int64``,
    ``rewards float32`` (``reward[t + 1]``) and ``ends bool`` (``is_terminal[t + 1]``)."""
    return {"observations": np.ascontiguousarray(np.moveaxis(episode["image"][:-1], -1, 1)),
            "actions": episode["action"][:-1].argmax(-1).astype(np.int64),
            "rewards": episode["reward"][1:].astype(np.float32), "ends": episode["is_terminal"][1:].astype(bool)}


class EpisodeStore:
    """Finished episodes (IRIS layout, at most about ``capacity`` frames, oldest evicted),
    optionally saved to ``directory``; sampling is balanced over episodes."""

    def __init__(self, capacity: int, seed: int, directory: str | Path | None = None,
                 recent_weights: list[float] | None = None):
        self.capacity, self.directory = int(capacity), None if directory is None else Path(directory)
        self.recent_weights = None if not recent_weights else np.asarray(recent_weights, np.float64)
        self.rng = np.random.default_rng(seed)
        self.episodes: list[dict[str, np.ndarray]] = []
        self.saved = 0

    @property
    def num_frames(self) -> int:
        return sum(len(e["actions"]) for e in self.episodes)

    def add(self, episode: dict[str, np.ndarray], save: bool = True) -> None:
        """Store one episode in the package's format (saved when there is a directory)."""
        if save and self.directory is not None:
            save_episode(self.directory / episode_name(self.saved, len(episode["reward"])), episode)
            self.saved += 1
        converted = iris_layout(episode)
        if len(converted["actions"]) == 0:
            return
        self.episodes.append(converted)
        while self.num_frames > self.capacity and len(self.episodes) > 1:
            self.episodes.pop(0)

    def reload(self) -> None:
        """Re-read every episode saved in ``directory`` (resume)."""
        self.episodes = []
        paths = list_episodes(self.directory) if self.directory and self.directory.is_dir() else []
        for path in paths:
            self.add(load_episode(path), save=False)
        self.saved = len(paths)

    def _episode_indices(self, count: int) -> np.ndarray:
        n = len(self.episodes)
        weights = self.recent_weights
        if weights is None or n < len(weights):
            return self.rng.integers(0, n, count)
        chunks = np.array_split(np.arange(n), len(weights))
        parts = self.rng.choice(len(weights), count, p=weights / weights.sum())
        return np.array([self.rng.choice(chunks[p]) for p in parts], np.int64)

    def sample(self, batch_size: int, length: int, from_start: bool) -> dict[str, np.ndarray]:
        """``batch_size`` windows of ``length`` frames: ``observations uint8 [B, L, C, H, W]``,
        ``actions``, ``rewards``, ``ends``, ``mask_padding [B, L]``. ``from_start``: the
        window starts at a uniform frame (padding at the end); else it ends at one
        (padding at the start, the last frame always real)."""
        if not self.episodes:
            raise ValueError("the episode store is empty; collect episodes before sampling.")
        first = self.episodes[0]
        out = {k: np.zeros((batch_size, length, *first[k].shape[1:]), first[k].dtype) for k in IRIS_KEYS}
        out["mask_padding"] = np.zeros((batch_size, length), bool)
        for row, index in enumerate(self._episode_indices(batch_size)):
            episode = self.episodes[index]
            size = len(episode["actions"])
            if from_start:
                start = int(self.rng.integers(0, size))
            else:
                start = int(self.rng.integers(1, size + 1)) - length
            lo, hi = max(start, 0), min(start + length, size)
            for key in IRIS_KEYS:
                out[key][row, lo - start:hi - start] = episode[key][lo:hi]
            out["mask_padding"][row, lo - start:hi - start] = True
        return out


class IrisOnlineData:
    """The training loop's ``TrainData`` for IRIS (see the module docstring).

    Args:
        env: the training envs (discrete actions, ``image`` observations), closed by :meth:`close`.
        batch_sizes: per component, sequences per batch. sequence_length: world-model
            frames per sequence. burn_in: actor-critic frames before the start frame.
        starts: per component, the update at which it starts training.
        collect_every, collect_steps, max_env_steps: the collection schedule;
            initial_steps: env steps of the first collection (default ``collect_steps``).
        epsilon, temperature: exploration once the actor-critic acts.
        capacity, seed, device, recent_weights: the store's settings and where batches go.
    """

    def __init__(self, env: VectorEnv, *, batch_sizes: dict[str, int], sequence_length: int, burn_in: int,
                 starts: dict[str, int], collect_every: int, collect_steps: int, max_env_steps: int,
                 epsilon: float, temperature: float, capacity: int, seed: int,
                 device: torch.device | str = "cpu", recent_weights: list[float] | None = None,
                 initial_steps: int | None = None):
        if not env.act_space.discrete or "image" not in env.obs_space:
            raise ValueError("IRIS needs discrete actions and `image` observations "
                             f"(got {env.act_space}, observations {sorted(env.obs_space)}).")
        self.env, self.num_envs, self.num_actions = env, env.num_envs, env.act_space.size
        self.batch_sizes = {k: int(batch_sizes[k]) for k in COMPONENTS}
        self.starts = {k: int(starts[k]) for k in COMPONENTS}
        self.sequence_length, self.burn_in = int(sequence_length), int(burn_in)
        self.collect_every, self.collect_steps = max(1, int(collect_every)), int(collect_steps)
        self.initial_steps = self.collect_steps if initial_steps is None else int(initial_steps)
        self.max_env_steps, self.epsilon, self.temperature = int(max_env_steps), float(epsilon), float(temperature)
        self.capacity, self.seed, self.device = int(capacity), int(seed), torch.device(device)
        self.store = EpisodeStore(self.capacity, self.seed, None, recent_weights)
        self.builder, self.rng = EpisodeBuilder(self.num_envs), np.random.default_rng(self.seed + 1)
        self.model: Any = None
        self._obs: dict[str, np.ndarray] | None = None
        self._state: Any = None
        self.env_steps, self.episodes, self.updates = 0, 0, 0
        self._since = _fresh_window()

    def bind_model(self, model: Any, run_dir: str | Path | None = None) -> None:
        """Act with ``model`` (an :class:`IrisAgent`); keep episodes in ``<run_dir>/replay``."""
        self.model = model
        if run_dir is not None:
            self.store.directory = Path(run_dir) / "replay"

    def active(self, update: int | None = None) -> dict[str, bool]:
        """Which components train at ``update`` (default: the next one)."""
        update = self.updates if update is None else update
        return {name: update >= self.starts[name] for name in COMPONENTS}

    def next_batch(self) -> dict[str, dict[str, torch.Tensor] | None]:
        """Collect when the schedule says so, then one sub-batch per started component
        (None for the others), shaped by :meth:`windows`."""
        if self.updates % self.collect_every == 0 and self.env_steps < self.max_env_steps:
            steps = self.initial_steps if self.updates == 0 else self.collect_steps
            self.collect(min(steps, self.max_env_steps - self.env_steps))
        while not self.store.episodes:
            self.collect(self.num_envs)
        active = self.active()
        self.updates += 1
        batch: dict[str, dict[str, torch.Tensor] | None] = {}
        for name, (length, from_start, keys) in self.windows().items():
            if not active[name]:
                batch[name] = None
                continue
            sample = self.store.sample(self.batch_sizes[name], length, from_start)
            batch[name] = {k: torch.from_numpy(sample[k]).to(self.device) for k in keys}
        return batch

    def windows(self) -> dict[str, tuple[int, bool, tuple[str, ...]]]:
        """Per component ``(frames per window, from_start, keys kept)``: IRIS's tokenizer
        reads single frames, its actor-critic ``burn_in + 1`` frames ending at a real one."""
        return {"tokenizer": (1, True, ("observations", "mask_padding")),
                "world_model": (self.sequence_length, True, (*IRIS_KEYS, "mask_padding")),
                "actor_critic": (self.burn_in + 1, False, ("observations", "mask_padding"))}

    def collect(self, steps: int) -> None:
        """``ceil(steps / num_envs)`` vectorised env steps."""
        start = time.perf_counter()
        for _ in range(-(-int(steps) // self.num_envs)):
            self._step()
        self._since["seconds"] += time.perf_counter() - start

    def _step(self) -> None:
        if self._obs is None:
            self._obs, self._state = self.env.reset(), None
            self.builder.reset()
        obs = self._obs
        if self.model is None or not self.active()["actor_critic"]:
            action = self.rng.integers(0, self.num_actions, self.num_envs)
        else:
            was_training = self.model.training
            self.model.eval()
            action, self._state = self.model.policy(obs, self._state, epsilon=self.epsilon,
                                                    temperature=self.temperature)
            self.model.train(was_training)
        step = {key: obs[key] for key in ("image", "reward", "is_first", "is_last", "is_terminal")}
        for _, episode in self.builder.add({**step, "action": onehot(action, self.num_actions)}):
            self.store.add(episode)
            self.episodes += 1
            self._since["returns"].append(float(episode["reward"].sum()))
            self._since["lengths"].append(len(episode["reward"]))
        self.env_steps += self.num_envs
        self._since["env_steps"] += self.num_envs
        self._obs = self.env.step(action)

    def log_metrics(self) -> dict[str, float]:
        """Since the last call: ``collect/return_{mean,std,min,max}`` and ``collect/length_mean``
        (when episodes finished); totals ``collect/{env_steps,episodes,frames}``;
        ``perf/env_steps_per_s`` (wall time) and ``perf/collect_steps_per_s`` (acting time)."""
        since, now = self._since, time.perf_counter()
        metrics = {"collect/env_steps": float(self.env_steps), "collect/episodes": float(self.episodes),
                   "collect/frames": float(self.store.num_frames),
                   "perf/env_steps_per_s": since["env_steps"] / max(now - since["start"], 1e-9)}
        if since["env_steps"] and since["seconds"] > 0:
            metrics["perf/collect_steps_per_s"] = since["env_steps"] / since["seconds"]
        if since["returns"]:
            returns = np.asarray(since["returns"])
            metrics.update({"collect/return_mean": float(returns.mean()), "collect/return_std": float(returns.std()),
                            "collect/return_min": float(returns.min()), "collect/return_max": float(returns.max()),
                            "collect/length_mean": float(np.mean(since["lengths"]))})
        self._since = _fresh_window()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Counters and both RNG states (episodes live on disk)."""
        return {"env_steps": self.env_steps, "episodes": self.episodes, "updates": self.updates,
                "rng": self.rng.bit_generator.state, "store_rng": self.store.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` and reload the saved episodes; collection then starts
        new env episodes (unfinished ones at the checkpoint are lost)."""
        self.store.reload()
        self.env_steps, self.episodes, self.updates = (int(state[k]) for k in ("env_steps", "episodes", "updates"))
        self.rng.bit_generator.state = state["rng"]
        self.store.rng.bit_generator.state = state["store_rng"]
        self._obs, self._state, self._since = None, None, _fresh_window()

    def close(self) -> None:
        self.env.close()


def _fresh_window() -> dict[str, Any]:
    return {"returns": [], "lengths": [], "env_steps": 0, "seconds": 0.0, "start": time.perf_counter()}


__all__ = ["EpisodeStore", "IrisOnlineData", "iris_layout"]
