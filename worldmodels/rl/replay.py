"""One replay for every online family: steps stored as they happen, sequences sampled
from finished and unfinished episodes alike.

Steps follow the episode convention of :mod:`worldmodels.data.episodes` (step ``t``:
the observation, the reward on arriving there, the flags, and ``action[t]`` taken
after it). :meth:`Replay.add` takes one vectorised step of ``N`` envs; env ``i`` is a
*worker* whose steps form one stream, cut into episodes at ``is_first``. The newest
episode of each worker is open: it can be sampled before it ends and grows as its
env runs (DreamerV3, IRIS and Δ-IRIS all train on unfinished episodes).

Memory is bounded: ``capacity`` slots per key (images stay uint8), preallocated on the
first insert, in RAM or, with ``directory``, in ``.npy`` memory maps there (a large
replay on disk). When full, the oldest step is overwritten; an episode whose steps are
all gone is dropped.

Sampling (:meth:`Replay.sample`) draws ``B`` windows of ``L`` steps, the episode chosen
by a named selector (:mod:`worldmodels.rl.selectors`), in one of three alignments:

- ``"stream"``: ``L`` consecutive steps of one worker's stream, crossing into its next
  episode where needed (DreamerV3; ``is_first`` marks the restart);
- ``"start"``: a window starting at a uniform offset, padded after the episode's last
  stored step (IRIS's world model and tokenizer);
- ``"end"``: a window ending at a uniform offset, padded before the episode's first
  stored step (IRIS's actor-critic burn-in).

Every batch has ``mask`` bool ``[B, L]`` (real steps) and ``is_first`` True at each
row's first real step (the model starts from its initial state there). ``margin``
keeps the last ``margin`` steps of each episode from being a window's anchor (IRIS
needs the step after a frame for its reward).

:meth:`Replay.save` / :meth:`Replay.load` write and read the exact contents (npz, no
pickle); :meth:`Replay.state_dict` holds the sampling RNG and the selectors' state.
A replay saved and loaded samples exactly what the original would have.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .selectors import Candidates, Selector, Uniform

ALIGNMENTS = ("stream", "start", "end")


@dataclass
class _Episode:
    worker: int
    stream_start: int                      # position of offset 0 in the worker's stream
    slots: list[int] = field(default_factory=list)
    first: int = 0                         # first offset still stored
    done: bool = False                     # its last step (is_last) was stored
    next: int = -1                         # the worker's next episode


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Replay:
    """A bounded replay of env steps (see the module docstring).

    Args:
        capacity: steps kept. seed: the sampling RNG's seed.
        directory: keep the step arrays in memory maps there instead of RAM.
        selectors: named selectors for :meth:`sample` (default ``{"uniform": Uniform()}``).
    """

    def __init__(self, capacity: int, seed: int = 0, directory: str | os.PathLike | None = None,
                 selectors: dict[str, Selector] | None = None):
        self.capacity = _check_positive("capacity", capacity)
        self.directory = None if directory is None else Path(directory)
        self.selectors: dict[str, Selector] = dict(selectors or {"uniform": Uniform()})
        self._rng = np.random.default_rng(seed)
        self._arrays: dict[str, np.ndarray] | None = None
        self._slot_episode = np.full(self.capacity, -1, np.int64)
        self._episodes: dict[int, _Episode] = {}
        self._current: dict[int, int] = {}       # worker -> its open episode
        self._worker_steps: dict[int, int] = {}  # worker -> steps inserted
        self._next_slot, self._next_id, self.inserted = 0, 0, 0

    # ------------------------------------------------------------------ sizes
    @property
    def num_steps(self) -> int:
        """Steps stored now."""
        return min(self.inserted, self.capacity)

    @property
    def num_episodes(self) -> int:
        """Episodes with at least one stored step (finished or not)."""
        return len(self._episodes)

    def __len__(self) -> int:
        return self.num_steps

    def store_on_disk(self, directory: str | os.PathLike) -> None:
        """Keep the step arrays in ``.npy`` memory maps in ``directory`` (before the first insert)."""
        if self._arrays is not None:
            raise ValueError("store_on_disk must be called before the first step is inserted")
        self.directory = Path(directory)

    def episode_lengths(self, finished_only: bool = False) -> dict[int, int]:
        """Stored steps per episode id (optionally only finished episodes)."""
        return {i: len(e.slots) - e.first for i, e in self._episodes.items() if e.done or not finished_only}

    # ----------------------------------------------------------------- insert
    def _allocate(self, step: dict[str, np.ndarray], count: int) -> None:
        """Arrays for the first steps: RAM grows by doubling up to ``capacity``; memory maps
        are made at full size (the file system allocates them lazily)."""
        self._arrays = {}
        size = self.capacity if self.directory is not None else min(self.capacity, max(1024, 2 * count))
        for key, value in step.items():
            shape, dtype = (size, *value.shape[1:]), value.dtype
            if self.directory is None:
                self._arrays[key] = np.zeros(shape, dtype)
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._arrays[key] = np.lib.format.open_memmap(self.directory / f"{key}.npy", "w+", dtype, shape)

    def _grow(self, needed: int) -> None:
        size = len(next(iter(self._arrays.values())))
        if needed <= size:
            return
        size = min(self.capacity, max(needed, 2 * size))
        for key, array in self._arrays.items():
            grown = np.zeros((size, *array.shape[1:]), array.dtype)
            grown[:len(array)] = array
            self._arrays[key] = grown

    def _check_step(self, step: dict[str, np.ndarray], count: int) -> None:
        for key in ("is_first", "is_last"):
            if key not in step:
                raise ValueError(f"a replay step needs {key!r}; it has {sorted(step)}")
        for key, value in step.items():
            if value.ndim == 0 or len(value) != count:
                raise ValueError(f"step[{key!r}] must have leading dim {count} (the envs), got {value.shape}")
        if self._arrays is None:
            return
        if set(step) != set(self._arrays):
            raise ValueError(f"step keys {sorted(step)} differ from the replay's {sorted(self._arrays)}")
        for key, value in step.items():
            want = self._arrays[key]
            if value.shape[1:] != want.shape[1:] or value.dtype != want.dtype:
                raise ValueError(f"step[{key!r}] has per-env shape/dtype {value.shape[1:]} {value.dtype}, the "
                                 f"replay stores {want.shape[1:]} {want.dtype}")

    def add(self, step: dict[str, Any], workers: np.ndarray | None = None) -> None:
        """Insert one step of each env: ``step`` maps keys to arrays ``[N, ...]`` with
        ``is_first`` and ``is_last`` bool ``[N]``; ``workers`` (default ``0..N-1``) names
        each row's stream."""
        step = {key: np.asarray(value) for key, value in step.items()}
        count = len(step["is_first"])
        self._check_step(step, count)
        if self._arrays is None:
            self._allocate(step, count)
        workers = np.arange(count) if workers is None else np.asarray(workers, np.int64)
        slots = (self._next_slot + np.arange(count)) % self.capacity
        self._grow(int(slots.max()) + 1)
        for slot in slots[self._slot_episode[slots] >= 0].tolist():
            self._evict(slot)
        for key, value in step.items():
            self._arrays[key][slots] = value
        rows = list(zip(slots.tolist(), workers.tolist(), step["is_first"].tolist(), step["is_last"].tolist()))
        ids = [self._episode_for(worker, bool(first)) for _, worker, first, _ in rows]   # workers are distinct
        self._slot_episode[slots] = ids
        listeners, episodes, steps = self._listeners(), self._episodes, self._worker_steps
        for (slot, worker, _, last), episode_id in zip(rows, ids):
            episode = episodes[episode_id]
            episode.slots.append(slot)
            episode.done = bool(last)
            steps[worker] = steps.get(worker, 0) + 1
            for selector in listeners:
                selector.on_insert(episode_id, len(episode.slots) - 1, worker)
        self._next_slot = int((self._next_slot + count) % self.capacity)
        self.inserted += count

    def add_episode(self, episode: dict[str, Any], worker: int = 0) -> None:
        """Insert a whole episode (``{key: [T, ...]}``, ``is_first[0]`` True) as ``T`` steps of
        ``worker`` in one go (a loaded dataset); the same as ``T`` calls of :meth:`add`."""
        episode = {key: np.asarray(value) for key, value in episode.items()}
        length = len(episode["is_first"])
        if length > self.capacity:
            raise ValueError(f"an episode of {length} steps does not fit a replay of capacity {self.capacity}")
        self._check_step({k: v[:1] for k, v in episode.items()}, 1)
        if self._arrays is None:
            self._allocate({k: v[:1] for k, v in episode.items()}, length)
        slots = (self._next_slot + np.arange(length)) % self.capacity
        self._grow(int(slots.max()) + 1)
        for slot in slots.tolist():
            self._evict(slot)
        for key, value in episode.items():
            self._arrays[key][slots] = value
        episode_id = self._episode_for(worker, True)
        record = self._episodes[episode_id]
        record.slots.extend(slots.tolist())
        record.done = bool(episode["is_last"][-1])
        self._slot_episode[slots] = episode_id
        self._worker_steps[worker] = self._worker_steps.get(worker, 0) + length
        for selector in self._listeners():
            for offset in range(length):
                selector.on_insert(episode_id, offset, worker)
        self._next_slot = int((self._next_slot + length) % self.capacity)
        self.inserted += length

    def _listeners(self) -> list[Selector]:
        """The selectors that watch inserts (the base class ignores them)."""
        return [s for s in self.selectors.values() if type(s).on_insert is not Selector.on_insert]

    def _episode_for(self, worker: int, first: bool) -> int:
        current = self._current.get(worker)
        if not first and current is not None:
            episode = self._episodes.get(current)
            if episode is not None and not episode.done:
                return current
        episode_id, self._next_id = self._next_id, self._next_id + 1
        if current is not None and current in self._episodes:
            self._episodes[current].next = episode_id
            self._episodes[current].done = True  # a new episode began: the old one is over
        self._episodes[episode_id] = _Episode(worker, self._worker_steps.get(worker, 0))
        self._current[worker] = episode_id
        return episode_id

    def _evict(self, slot: int) -> None:
        episode_id = int(self._slot_episode[slot])
        if episode_id < 0:
            return
        self._slot_episode[slot] = -1
        episode = self._episodes[episode_id]
        episode.first += 1
        if episode.first == len(episode.slots) and (episode.done or self._current.get(episode.worker) != episode_id):
            del self._episodes[episode_id]

    # ----------------------------------------------------------------- sample
    def _candidates(self, length: int, align: str, margin: int) -> tuple[Candidates, np.ndarray]:
        ids, usable, first = [], [], []
        for episode_id, episode in self._episodes.items():
            end = len(episode.slots) - margin
            if align == "stream":
                ahead = self._worker_steps[episode.worker] - episode.stream_start - length + 1
                end = min(end, ahead)
            if end > episode.first:
                ids.append(episode_id)
                usable.append(end - episode.first)
                first.append(episode.first)
        return Candidates(np.asarray(ids, np.int64), np.asarray(usable, np.int64)), np.asarray(first, np.int64)

    def can_sample(self, length: int, align: str = "stream", margin: int = 0) -> bool:
        """Whether at least one window of ``length`` steps can be drawn."""
        return self._arrays is not None and len(self._candidates(length, align, margin)[0].ids) > 0

    def sample(self, batch_size: int, length: int, *, selector: str = "uniform", align: str = "stream",
               margin: int = 0) -> dict[str, np.ndarray]:
        """``batch_size`` windows of ``length`` steps: ``{key: [B, L, ...]}`` with the stored
        dtypes, zeros where padded, plus ``mask`` bool ``[B, L]`` (see the module docstring).
        Raises ValueError when no window fits yet."""
        batch_size, length = _check_positive("batch_size", batch_size), _check_positive("length", length)
        if align not in ALIGNMENTS:
            raise ValueError(f"align={align!r} is not one of {ALIGNMENTS}")
        if selector not in self.selectors:
            raise ValueError(f"unknown selector {selector!r}; this replay has {sorted(self.selectors)}")
        candidates, first = self._candidates(length, align, margin)
        if self._arrays is None or not len(candidates.ids):
            raise ValueError(f"the replay ({self.num_steps} steps) has no window of {length} steps yet "
                             f"(align={align}); collect more before sampling")
        chosen = self.selectors[selector]
        rows, offsets = chosen.select(self._rng, candidates, batch_size)
        draws = self._rng.integers(0, candidates.usable[rows])
        anchors = first[rows] + draws
        if offsets is not None:
            anchors = np.where(offsets < 0, anchors, np.maximum(offsets, first[rows]))
        episode_ids = candidates.ids[rows]
        chosen.update(episode_ids)
        return self._gather(episode_ids, anchors, length, align)

    def _window_slots(self, episode_id: int, anchor: int, length: int, align: str) -> tuple[list[int], int]:
        """The slots of one window and the column of its first real step."""
        episode = self._episodes[episode_id]
        if align == "end":
            start = anchor - length + 1
            lo = max(start, episode.first)
            return episode.slots[lo:anchor + 1], lo - start
        slots = episode.slots[anchor:anchor + length]
        while align == "stream" and len(slots) < length:
            episode = self._episodes[episode.next]
            slots = slots + episode.slots[:length - len(slots)]
        return slots, 0

    def _gather(self, episode_ids: np.ndarray, anchors: np.ndarray, length: int, align: str) -> dict[str, np.ndarray]:
        rows, cols, slots, starts = [], [], [], []
        for row, (episode_id, anchor) in enumerate(zip(episode_ids.tolist(), anchors.tolist())):
            window, col = self._window_slots(episode_id, anchor, length, align)
            rows.extend([row] * len(window))
            cols.extend(range(col, col + len(window)))
            slots.extend(window)
            starts.append(col)
        rows, cols, slots = (np.asarray(a, np.int64) for a in (rows, cols, slots))
        batch = len(episode_ids)
        out = {}
        for key, array in self._arrays.items():
            out[key] = np.zeros((batch, length, *array.shape[1:]), array.dtype)
            out[key][rows, cols] = array[slots]
        out["mask"] = np.zeros((batch, length), bool)
        out["mask"][rows, cols] = True
        out["is_first"][np.arange(batch), np.asarray(starts)] = True
        return out

    # ------------------------------------------------------------ save, load
    def state_dict(self) -> dict[str, Any]:
        """The sampling RNG and each selector's state (plain values)."""
        return {"rng": copy.deepcopy(self._rng.bit_generator.state),
                "selectors": {name: s.state_dict() for name, s in self.selectors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        for name, selector in self.selectors.items():
            if name in state.get("selectors", {}):
                selector.load_state_dict(state["selectors"][name])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the contents and bookkeeping to ``path`` (npz, atomically)."""
        path = Path(path)
        arrays = {f"data.{k}": np.asarray(v[:self.num_steps]) for k, v in (self._arrays or {}).items()}
        ids = list(self._episodes)
        table = np.array([[i, e.worker, e.stream_start, e.first, e.done, e.next, len(e.slots)]
                          for i, e in self._episodes.items()], np.int64).reshape(-1, 7)
        slots = [s for e in self._episodes.values() for s in e.slots] if ids else []
        workers = np.array([[w, self._worker_steps[w], self._current.get(w, -1)] for w in self._worker_steps],
                           np.int64).reshape(-1, 3)
        meta = np.array([self.capacity, self._next_slot, self._next_id, self.inserted], np.int64)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, meta=meta, episodes=table, slots=np.asarray(slots, np.int64), workers=workers,
                         slot_episode=self._slot_episode, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def snapshot(self, directory: str | os.PathLike, tag: int, keep: int = 2, protect: str | None = None) -> str:
        """Save to ``<directory>/replay_<tag>.npz`` (once per tag) and delete all but the
        newest ``keep`` snapshots and ``protect`` (the one the last checkpoint names);
        returns the file name (for a checkpoint to refer to)."""
        directory = Path(directory)
        name = f"replay_{int(tag):09d}.npz"
        if not (directory / name).is_file():
            self.save(directory / name)
        for old in sorted(directory.glob("replay_*.npz"))[:-keep]:
            if old.name not in (name, protect):
                old.unlink(missing_ok=True)
        return name

    @staticmethod
    def drop_snapshots_after(directory: str | os.PathLike, tag: int) -> None:
        """Delete the snapshots in ``directory`` tagged after ``tag`` (written past the
        checkpoint a run resumes from, by a run that was then killed)."""
        for path in Path(directory).glob("replay_*.npz"):
            if path.stem[len("replay_"):].isdigit() and int(path.stem[len("replay_"):]) > int(tag):
                path.unlink(missing_ok=True)

    def open_episode(self, worker: int) -> dict[str, np.ndarray] | None:
        """The steps ``{key: [T, ...]}`` of ``worker``'s unfinished episode, from its first
        step on; None when it has none or its first steps were overwritten."""
        episode = self._episodes.get(self._current.get(worker, -1))
        if episode is None or episode.done or episode.first > 0 or self._arrays is None:
            return None
        return {key: np.array(array[episode.slots]) for key, array in self._arrays.items()}

    def load(self, path: str | os.PathLike) -> None:
        """Replace the contents with those :meth:`save` wrote to ``path``."""
        with np.load(path, allow_pickle=False) as data:
            capacity, self._next_slot, self._next_id, self.inserted = (int(v) for v in data["meta"])
            if capacity != self.capacity:
                raise ValueError(f"{path} holds a replay of capacity {capacity}, this one has {self.capacity}")
            step = {k[len("data."):]: data[k] for k in data.files if k.startswith("data.")}
            self._arrays = None
            if step:
                self._allocate({k: v[:1] for k, v in step.items()}, 1)
                self._grow(len(next(iter(step.values()))))
                for key, value in step.items():
                    self._arrays[key][:len(value)] = value
            self._slot_episode = data["slot_episode"].copy()
            slots, position = data["slots"].tolist(), 0
            self._episodes = {}
            for i, worker, start, first, done, nxt, count in data["episodes"].tolist():
                self._episodes[i] = _Episode(worker, start, slots[position:position + count], first, bool(done), nxt)
                position += count
            self._worker_steps = {w: n for w, n, _ in data["workers"].tolist()}
            self._current = {w: c for w, _, c in data["workers"].tolist() if c >= 0}


__all__ = ["ALIGNMENTS", "Replay"]
