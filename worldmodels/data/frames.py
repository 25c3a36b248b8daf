"""Frame datasets for offline next-frame prediction: memory-mapped shards of whole episodes.

A dataset folder holds ``manifest.json`` and, per shard ``i``, three ``.npy`` files:

- ``shard_{i:05d}_frames.npy``: ``[N, C, H, W]`` uint8, the observations in order;
- ``shard_{i:05d}_actions.npy``: ``[N]`` int64, the action taken at each frame (the last
  frame of an episode has none; it holds 0 and is never used);
- ``shard_{i:05d}_done.npy``: ``[N]`` bool, true on the last frame of each episode.

A shard holds whole episodes, its last frame is always ``done``, so a stack of frames
that never crosses ``done`` never crosses a shard either. A frame-stack sample ending at
frame ``t`` takes frames ``t-K+1 .. t``, action ``t`` and target frame ``t+1``; it is
valid when none of ``done[t-K+1 .. t]`` is set. Everything is read with
``np.load(mmap_mode="r", allow_pickle=False)``: a dataset larger than memory trains.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WorldModelsError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ARRAYS = {"frames": np.dtype(np.uint8), "actions": np.dtype(np.int64), "done": np.dtype(np.bool_)}


class FrameDataError(WorldModelsError, ValueError):
    """A frame dataset that is missing, corrupt or does not fit the config; one line
    naming the file and the key."""


def shard_path(root: Path, index: int, array: str) -> Path:
    """``root/shard_{index:05d}_{array}.npy``."""
    return Path(root) / f"shard_{index:05d}_{array}.npy"


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write JSON to a temporary file, then move it in place."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def _save_array(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(path.stem + ".tmp.npy")
    np.save(temporary, array, allow_pickle=False)
    os.replace(temporary, path)


def write_shard(root: Path, index: int, frames: np.ndarray, actions: np.ndarray, done: np.ndarray) -> dict[str, Any]:
    """Write one shard of whole episodes; returns its manifest entry."""
    frames = np.ascontiguousarray(frames, np.uint8)
    actions, done = np.asarray(actions, np.int64), np.asarray(done, np.bool_)
    if not (len(frames) == len(actions) == len(done)) or len(frames) == 0 or not done[-1]:
        raise ValueError(f"shard {index}: {len(frames)} frames, {len(actions)} actions, {len(done)} done flags; "
                         "they must be equal, non-empty, and the last frame must end an episode.")
    for name, array in (("frames", frames), ("actions", actions), ("done", done)):
        _save_array(shard_path(root, index, name), array)
    return {"index": index, "steps": int(len(frames)), "episodes": int(done.sum())}


def new_manifest(game: str, options: dict[str, Any], policy: str, frame_shape: tuple[int, ...],
                 num_actions: int) -> dict[str, Any]:
    """The manifest of an empty dataset."""
    return {
        "format": FORMAT_VERSION, "game": game, "options": options, "policy": policy,
        "frame_shape": list(frame_shape), "num_actions": int(num_actions),
        "dtypes": {name: dtype.name for name, dtype in ARRAYS.items()},
        "seeds": [], "shards": [], "steps": 0, "episodes": 0, "complete": False,
    }


def read_manifest(root: Path) -> dict[str, Any]:
    """``root/manifest.json``; a missing dataset names the command that writes it."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FrameDataError(f"{path}: no frame dataset here; write one with "
                             f"`python -m worldmodels.data.generate_frames --game coinrun --steps 100000 --out {root}`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FrameDataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}).") from None
    for key in ("frame_shape", "num_actions", "dtypes", "shards"):
        if key not in manifest:
            raise FrameDataError(f"{path}: key {key!r} is missing.")
    return manifest


@dataclass(frozen=True)
class Episode:
    """Frames ``start .. end - 1`` of shard ``shard`` (``end - 1`` is its ``done`` frame)."""

    shard: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def _load(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise FrameDataError(f"{path}: missing; the manifest lists its shard (key 'shards').")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise FrameDataError(f"{path}: unreadable as .npy for key {key!r} ({str(error).splitlines()[0]}).") from None


class FrameShards:
    """A frame dataset opened by memory map and checked against its manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.frame_shape = tuple(int(d) for d in self.manifest["frame_shape"])
        self.num_actions = int(self.manifest["num_actions"])
        self.frames: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.done: list[np.ndarray] = []
        self._check_transform()
        for entry in self.manifest["shards"]:
            self._open(entry)
        if not self.frames:
            raise FrameDataError(f"{self.root / MANIFEST}: key 'shards' is empty; the dataset has no frames yet.")
        self.episodes = [episode for shard in range(len(self.frames)) for episode in self._episodes_of(shard)]

    def _check_transform(self) -> None:
        """``frame_shape`` against the ``transform`` the generator recorded (``--size``,
        ``--gray``), when there is one."""
        transform = self.manifest.get("transform")
        if not transform:
            return
        channels, height, width = (self.frame_shape + (0, 0, 0))[:3]
        if len(self.frame_shape) != 3 or (transform.get("gray") and channels != 1) \
                or height != transform.get("size", height) or width != transform.get("size", width):
            raise FrameDataError(f"{self.root / MANIFEST}: key 'frame_shape' is {list(self.frame_shape)} but key "
                                 f"'transform' says size {transform.get('size')}, gray {transform.get('gray')}.")

    def _open(self, entry: dict[str, Any]) -> None:
        index, steps = int(entry["index"]), int(entry["steps"])
        arrays = {name: _load(shard_path(self.root, index, name), name) for name in ARRAYS}
        expected_shapes = {"frames": (steps, *self.frame_shape), "actions": (steps,), "done": (steps,)}
        for name, array in arrays.items():
            path = shard_path(self.root, index, name)
            if array.dtype != ARRAYS[name]:
                raise FrameDataError(f"{path}: dtype {array.dtype} but the manifest (key 'dtypes.{name}') says "
                                     f"{ARRAYS[name].name}.")
            if array.shape != expected_shapes[name]:
                key = "frame_shape" if name == "frames" and array.shape[:1] == (steps,) else f"shards[{index}].steps"
                raise FrameDataError(f"{path}: shape {array.shape} does not match the manifest (key {key!r}: "
                                     f"expected {expected_shapes[name]}).")
        done_path = shard_path(self.root, index, "done")
        if not arrays["done"][-1]:
            raise FrameDataError(f"{done_path}: the last frame does not end an episode (key 'done'); the shard is "
                                 "truncated.")
        if int(arrays["done"].sum()) != int(entry.get("episodes", arrays["done"].sum())):
            raise FrameDataError(f"{done_path}: {int(arrays['done'].sum())} episodes but the manifest (key "
                                 f"'shards[{index}].episodes') says {entry['episodes']}.")
        actions = arrays["actions"]
        if len(actions) and (int(actions.min()) < 0 or int(actions.max()) >= self.num_actions):
            raise FrameDataError(f"{shard_path(self.root, index, 'actions')}: actions outside [0, "
                                 f"{self.num_actions}) (key 'num_actions').")
        self.frames.append(arrays["frames"])
        self.actions.append(arrays["actions"])
        self.done.append(arrays["done"])

    def _episodes_of(self, shard: int) -> list[Episode]:
        ends = np.flatnonzero(self.done[shard]) + 1
        starts = np.concatenate([[0], ends[:-1]])
        return [Episode(shard, int(s), int(e)) for s, e in zip(starts, ends)]

    @property
    def steps(self) -> int:
        return sum(len(frames) for frames in self.frames)


def split_episodes(episodes: list[Episode], val_ratio: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Train and validation episodes: a seeded shuffle, then ``round(val_ratio * n)``
    episodes (at least one) held out; no episode is in both."""
    if len(episodes) < 2:
        raise FrameDataError(f"the dataset has {len(episodes)} episode(s); a train/validation split by episode "
                             "needs at least 2 (key 'data.val_ratio'); generate more steps.")
    order = np.random.default_rng(seed).permutation(len(episodes))
    held_out = min(max(1, round(val_ratio * len(episodes))), len(episodes) - 1)
    val = sorted((episodes[i] for i in order[:held_out]), key=lambda e: (e.shard, e.start))
    train = sorted((episodes[i] for i in order[held_out:]), key=lambda e: (e.shard, e.start))
    return train, val


def window_starts(episodes: list[Episode], stack: int, horizon: int = 1) -> np.ndarray:
    """``[M, 2]`` int64 ``(shard, t)`` of every window whose stack ends at ``t`` and whose
    ``horizon`` next frames lie in the same episode: frames ``t-stack+1 .. t+horizon``."""
    rows = []
    for episode in episodes:
        first, last = episode.start + stack - 1, episode.end - 1 - horizon
        if last >= first:
            t = np.arange(first, last + 1, dtype=np.int64)
            rows.append(np.stack([np.full_like(t, episode.shard), t], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)


def check_stack_fits(episodes: list[Episode], stack: int, horizon: int, split: str, root: Path) -> np.ndarray:
    """The windows of ``episodes`` (:func:`window_starts`), or one line naming the key when
    no episode is long enough."""
    windows = window_starts(episodes, stack, horizon)
    if len(windows) == 0:
        longest = max((e.length for e in episodes), default=0)
        raise FrameDataError(f"{root / MANIFEST}: no {split} episode holds {stack} + {horizon} frames (the longest "
                             f"has {longest}); lower data.stack{' or algo.val_rollout_horizon' if horizon > 1 else ''} "
                             "or generate more steps.")
    return windows


def gather_windows(shards: FrameShards, windows: np.ndarray, stack: int, horizon: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[B, stack + horizon, C, H, W]`` uint8 and actions ``[B, horizon]`` int64 of
    ``windows`` (:func:`window_starts`): the stack, then the ``horizon`` frames that follow
    it, with the action taken before each of them."""
    frames, actions = [], []
    for shard, t in windows:
        frames.append(shards.frames[shard][t - stack + 1: t + horizon + 1])
        actions.append(shards.actions[shard][t: t + horizon])
    return np.stack(frames), np.stack(actions)


__all__ = [
    "ARRAYS", "MANIFEST", "Episode", "FrameDataError", "FrameShards", "check_stack_fits", "gather_windows",
    "new_manifest", "read_manifest", "shard_path", "split_episodes", "window_starts", "write_json_atomic",
    "write_shard",
]
