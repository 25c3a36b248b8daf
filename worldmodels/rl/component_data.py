"""Online data for agents made of components that train on their own windows (IRIS,
Δ-IRIS): one collector, one replay, a window and a selector per component.

IRIS alternates epochs of ``collect 200 env steps`` and ``200 updates of each started
component``. Here the training loop's step counter replaces epochs: every update trains
each started component once, or ``updates_per_epoch[name]`` times per ``collect_every``
updates, spread evenly (Δ-IRIS's Atari world model: 120 of 200); ``collect_steps`` env
steps are collected every ``collect_every`` updates (the first collection, before update
0, takes ``initial_steps``), collection stops at ``max_env_steps``, and a component
starts at update ``starts[name]``. :meth:`ComponentData.begin_update` advances this
schedule once per update and :meth:`ComponentData.sample` draws a component's
micro-batches, so gradient accumulation does not change the schedule. Until the ``actor`` component starts, actions are uniform;
then the agent acts with its ``explore`` policy (``policy_kwargs``: IRIS's epsilon and
temperature) in eval mode.

Frames come in IRIS's layout (frame ``t``, the action taken there, the reward and end
that followed): a component's window of ``L`` frames is drawn from the replay as
``L + 1`` stored steps (:func:`transitions`), from finished and unfinished episodes
alike. Each component has its own selector, so count-based priorities (Δ-IRIS) count
per component.

Under torchrun each process is one shard, as online DreamerV3's
(:func:`~worldmodels.training.distributed.env_shard`): envs seeded ``seed + rank *
num_envs + i``, a replay of ``capacity // world_size`` steps, a first collection of
``ceil(initial_steps / world_size)`` env steps when the config sets one (Δ-IRIS's
``initial_collect_steps``; IRIS's first collection is an epoch's ``collect_steps``),
collection stopping at ``ceil(max_env_steps / world_size)``, and its episodes and replay
snapshots under :func:`~worldmodels.training.distributed.rank_dir`. Every process
collects ``collect_steps`` per ``collect_every`` updates and samples its components'
batch sizes, so the env steps per replayed step are those of one process; the schedule
depends on the update count only, the same on every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.episodes import EpisodeWriter
from ..envs.factory import infer_spaces, make_env, spec_from_config
from ..envs.spaces import EnvSpaces, VectorEnv
from ..training import distributed
from ..training.contract import TrainData
from .collector import Collector, shard_metrics
from .replay import Replay
from .resume import OnlineResumable
from .selectors import Selector, make_selector

FRAME_KEYS = ("observations", "actions", "rewards", "ends", "mask_padding")


@dataclass(frozen=True)
class ComponentWindow:
    """How one component samples: ``batch_size`` windows of ``length`` frames aligned
    at their ``"start"`` (padded after the episode) or ``"end"`` (padded before),
    keeping ``keys`` of :data:`FRAME_KEYS`; the update it starts at; its selector; how
    many of each ``collect_every`` updates train it (None: all)."""

    batch_size: int
    length: int
    align: str
    keys: tuple[str, ...]
    start: int
    selector: Selector
    per_epoch: int | None = None

    def trains_at(self, update: int, epoch: int) -> bool:
        """Whether this component trains at ``update`` (epochs of ``epoch`` updates)."""
        if update < self.start:
            return False
        if self.per_epoch is None or self.per_epoch >= epoch:
            return True
        position = update % epoch
        return (position + 1) * self.per_epoch // epoch > position * self.per_epoch // epoch


def transitions(window: dict[str, np.ndarray], frames: int) -> dict[str, np.ndarray]:
    """Replay windows of ``frames + 1`` stored steps (``"start"``) or ``frames`` steps
    (``"end"``) -> IRIS's layout ``[B, frames, ...]``: ``observations`` uint8 ``[B, L, C,
    H, W]``, ``actions`` int64, ``rewards`` float32 (the reward after the action), ``ends``
    bool (the episode terminated after it), ``mask_padding`` bool (real frames)."""
    steps = window["image"].shape[1]
    shifted = steps == frames + 1
    out = {"observations": np.ascontiguousarray(np.moveaxis(window["image"][:, :frames], -1, 2)),
           "actions": window["action"][:, :frames].argmax(-1).astype(np.int64)}
    if shifted:
        out["rewards"] = window["reward"][:, 1:].astype(np.float32)
        out["ends"] = window["is_terminal"][:, 1:].astype(bool)
        out["mask_padding"] = window["mask"][:, 1:].copy()
    else:
        out["rewards"] = np.zeros(window["reward"].shape, np.float32)
        out["ends"] = np.zeros(window["reward"].shape, bool)
        out["mask_padding"] = window["mask"].copy()
    return out


class ComponentData(OnlineResumable, TrainData):
    """The training loop's data for component agents (see the module docstring).

    Args:
        env: the training envs (discrete actions, ``image`` observations), closed by :meth:`close`.
        windows: :class:`ComponentWindow` per component name.
        actor: the component whose start lets the agent act.
        collect_every, collect_steps, initial_steps, max_env_steps: the collection schedule.
        capacity, seed, device: replay capacity (steps), seeds, where batches go.
        on_disk: keep the replay's arrays in memory maps under ``<run_dir>/replay_store``.
        policy_kwargs: passed to ``agent.policy`` when it collects.
    """

    def __init__(self, env: VectorEnv, windows: dict[str, ComponentWindow], *, actor: str, collect_every: int,
                 collect_steps: int, max_env_steps: int, capacity: int, seed: int,
                 device: torch.device | str = "cpu", initial_steps: int | None = None, on_disk: bool = False,
                 **policy_kwargs: Any):
        if not env.act_space.discrete or "image" not in env.obs_space:
            raise ValueError("this agent needs discrete actions and `image` observations "
                             f"(got {env.act_space}, observations {sorted(env.obs_space)}).")
        self.windows, self.actor = dict(windows), actor
        self.collect_every, self.collect_steps = max(1, int(collect_every)), int(collect_steps)
        self.initial_steps = self.collect_steps if initial_steps is None else int(initial_steps)
        self.max_env_steps, self.device = int(max_env_steps), torch.device(device)
        self.policy_kwargs = policy_kwargs
        self.collector = Collector(env, seed=seed + 1, keys=["image"])
        self.replay = Replay(int(capacity), seed, selectors={k: w.selector for k, w in self.windows.items()})
        self.collector.on_step.append(self.replay.add)
        self.model: Any = None
        self.run_dir: Path | None = None
        self.writer: EpisodeWriter | None = None
        self.updates = 0
        self.on_disk = bool(on_disk)

    @property
    def num_envs(self) -> int:
        return self.collector.num_envs

    def bind_model(self, model: Any, run_dir: str | Path | None = None) -> None:
        """Act with ``model``; keep replay snapshots under ``<run_dir>/replay`` and every
        finished episode in ``<run_dir>/episodes`` (one npz each); under torchrun, processes
        other than 0 keep theirs under ``<run_dir>/rank<r>/``."""
        self.model, self.run_dir = model, None if run_dir is None else distributed.rank_dir(Path(run_dir))
        if self.run_dir is not None:
            self.writer = EpisodeWriter(self.run_dir / "episodes", self.num_envs)
            self.collector.on_step.append(self.writer)
            if self.on_disk:
                self.replay.store_on_disk(self.run_dir / "replay_store")

    def active(self, update: int | None = None) -> dict[str, bool]:
        """Which components train at ``update`` (default: the next one)."""
        update = self.updates if update is None else update
        return {name: window.trains_at(update, self.collect_every) for name, window in self.windows.items()}

    def started(self, name: str) -> bool:
        """Whether component ``name`` has started (at the next update)."""
        return self.updates >= self.windows[name].start

    def _sample_args(self, window: ComponentWindow) -> tuple[int, str, int]:
        steps = window.length + 1 if window.align == "start" else window.length
        return steps, window.align, 1 if window.align == "start" else 0

    def _ready(self) -> bool:
        return all(self.replay.can_sample(*self._sample_args(w)) for w in self.windows.values())

    def collect(self, steps: int) -> None:
        """``ceil(steps / num_envs)`` vectorised env steps."""
        acting = self.model is not None and self.started(self.actor)
        if not acting:
            self.collector.collect(steps)
            return
        was_training = self.model.training
        self.model.eval()
        try:
            self.collector.collect(steps, self.model, "explore", **self.policy_kwargs)
        finally:
            self.model.train(was_training)

    def begin_update(self) -> list[str]:
        """Start the next update: collect when the schedule says so, advance the update
        counter once, and return the components that train in it (in order)."""
        env_steps = self.collector.env_steps
        if self.updates % self.collect_every == 0 and env_steps < self.max_env_steps:
            steps = self.initial_steps if self.updates == 0 else self.collect_steps
            self.collect(min(steps, self.max_env_steps - env_steps))
        while not distributed.all_ranks(self._ready()):
            self.collect(self.num_envs)   # every process as many steps: their env steps stay equal
        active = self.active()
        self.updates += 1
        return [name for name in self.windows if active[name]]

    def sample(self, name: str) -> dict[str, torch.Tensor]:
        """One micro-batch of component ``name`` (its window, selector and keys)."""
        window = self.windows[name]
        steps, align, margin = self._sample_args(window)
        sample = transitions(self.replay.sample(window.batch_size, steps, selector=name, align=align,
                                                margin=margin), window.length)
        return {k: torch.from_numpy(sample[k]).to(self.device) for k in window.keys}

    def next_batch(self) -> dict[str, dict[str, torch.Tensor] | None]:
        """:meth:`begin_update`, then one sub-batch per component that trains (None for
        the others): the whole update as one dict."""
        active = self.begin_update()
        return {name: self.sample(name) if name in active else None for name in self.windows}

    def log_metrics(self) -> dict[str, float]:
        """The collector's metrics (:meth:`Collector.metrics`) and ``collect/replay_steps``,
        over every process's env steps, episodes and replay under torchrun
        (:func:`~worldmodels.rl.collector.shard_metrics`)."""
        return shard_metrics(self.collector, self.replay.num_steps)

    def state_dict(self) -> dict[str, Any]:
        """The update counter and what :func:`~worldmodels.rl.resume.online_state` saves
        (RNGs, the selectors' counts, the env's history, and the name of the replay
        snapshot written now under ``<run_dir>/replay`` when bound to a run directory)."""
        return {"updates": self.updates,
                **self._online_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the replay as it was at the checkpoint, the envs
        where they were (replayed; see :mod:`worldmodels.rl.resume`)."""
        self._restore_online(state)
        self.updates = int(state["updates"])

    def close(self) -> None:
        self.collector.close()


def frame_spaces(cfg: Any) -> tuple[EnvSpaces, tuple[int, int, int], int]:
    """``(spaces, (H, W, C), num_actions)`` of ``cfg.env`` for an agent over square
    frames and discrete actions; a one-line ValueError otherwise."""
    spaces = infer_spaces(spec_from_config(cfg.env, seed=int(cfg.seed), num_envs=1))
    if "image" not in spaces.obs or not spaces.act.discrete:
        raise ValueError(f"this agent needs `image` observations and discrete actions; env {cfg.env.suite}/"
                         f"{cfg.env.task} gives {sorted(spaces.obs)} and {spaces.act} "
                         "(classic tasks need env.render_image=true).")
    shape = tuple(spaces.obs["image"][0])
    if shape[0] != shape[1]:
        raise ValueError(f"this agent needs square frames, got env.size {shape[0]}x{shape[1]}.")
    return spaces, shape, spaces.act.size


def build_component_data(cfg: Any, device: torch.device, shapes: dict[str, tuple[int, str, tuple[str, ...]]],
                         initial_steps: int | None = None) -> ComponentData:
    """:class:`ComponentData` from ``cfg.env`` and ``cfg.algo`` (``batch_sizes``, ``starts``,
    the schedule, ``selector`` and ``priority_alpha``, ``epsilon``, ``temperature``,
    ``capacity``); ``shapes`` gives each component's ``(frames, align, keys)``."""
    algo = cfg.algo
    alpha = float(algo.get("priority_alpha", 1.0))
    per_epoch = dict(algo.get("updates_per_epoch") or {})
    unknown = sorted(set(per_epoch) - set(shapes))
    if unknown:
        raise ValueError(f"algo.updates_per_epoch names {unknown}; the components are {sorted(shapes)}.")
    windows = {name: ComponentWindow(int(algo.batch_sizes[name]), length, align, keys, int(algo.starts[name]),
                                     make_selector(str(algo.get("selector", "balanced")), priority_alpha=alpha),
                                     None if per_epoch.get(name) is None else int(per_epoch[name]))
               for name, (length, align, keys) in shapes.items()}
    shard = distributed.env_shard(int(cfg.seed), int(cfg.env.get("num_envs", 1)), int(float(algo.capacity)),
                                  0 if initial_steps is None else int(initial_steps))
    return ComponentData(
        make_env(spec_from_config(cfg.env, seed=shard.env_seed)), windows, actor="actor_critic",
        collect_every=int(algo.collect_every), collect_steps=int(algo.collect_steps),
        max_env_steps=shard_env_steps(int(float(algo.max_env_steps))), capacity=shard.capacity,
        seed=shard.rng_seed, device=device, initial_steps=None if initial_steps is None else shard.prefill,
        on_disk=bool(algo.get("replay_on_disk", False)), epsilon=float(algo.epsilon),
        temperature=float(algo.temperature))


def shard_env_steps(max_env_steps: int) -> int:
    """This process's share of the run's env-step budget, ``ceil(max_env_steps / world_size)``."""
    return distributed.shard_prefill(max_env_steps, distributed.placement().world_size)


__all__ = ["ComponentData", "ComponentWindow", "FRAME_KEYS", "build_component_data", "frame_spaces", "shard_env_steps",
           "transitions"]
