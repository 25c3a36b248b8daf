"""Offline world-model datasets read from a folder of episode files.

:class:`OfflineDataset` loads every episode of a directory (the format of
:mod:`worldmodels.data.episodes`) into one concatenated stream per key and serves:

- :meth:`OfflineDataset.sample`: random windows of ``batch_length`` steps for training,
  drawn by the shared :class:`worldmodels.rl.replay.Replay` that stores the episodes
  (``align="stream"``: windows may cross into the next episode; ``is_first`` is True at
  each window's start and each episode's);
- :meth:`OfflineDataset.padded_batches`: evaluation over every step exactly once, each
  episode cut into consecutive ``batch_length`` chunks, the last one zero-padded, with a
  ``mask`` of real steps;
- :meth:`OfflineDataset.episodes`: evaluation on whole episodes, one at a time.

Image keys (``uint8 (T, H, W, C)``) can be cropped (center, or one random offset per
sequence) and standardised (per frame, or with per-channel dataset statistics), in
which case they are returned as float32.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..rl.replay import Replay
from .episodes import EpisodeError, list_episodes, load_episode
from .obs_transform import STANDARDIZE_MODES, ObsTransform, crop_frames
from .robomimic import RobomimicFile

CROP_MODES = ("center", "random")
ON_ERROR = ("raise", "skip")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _load_all(directory: Path, on_error: str) -> tuple[list[dict], list[Path], list[tuple[Path, str]]]:
    """Every readable episode of ``directory`` with its path, and the ``(path, reason)`` of those skipped."""
    episodes, paths, skipped = [], [], []
    for path in list_episodes(directory):
        try:
            episodes.append(load_episode(path))
        except EpisodeError as error:
            if on_error == "raise":
                raise
            skipped.append((path, str(error)))
            continue
        paths.append(path)
    if skipped:
        names = ", ".join(str(path) for path, _ in skipped)
        warnings.warn(f"OfflineDataset skipped {len(skipped)} unreadable episode file(s): {names}", stacklevel=3)
    if not episodes:
        raise EpisodeError(directory, None, f"none of the {len(skipped)} episode files could be read")
    return episodes, paths, skipped


def load_source(source: str | os.PathLike | RobomimicFile, on_error: str = "raise",
                transform: ObsTransform | None = None) -> tuple[list[dict], list, list[tuple[Path, str]]]:
    """``(episodes, sources, skipped)`` of a folder of episode files (sources: their
    paths) or a :class:`RobomimicFile` (every demo of its split; sources
    ``"<file>:data/<demo>"``), cameras stacked by ``transform``."""
    if isinstance(source, RobomimicFile):
        episodes, names = list(source), [source.source(name) for name in source.demos]
        skipped = []
    else:
        episodes, names, skipped = _load_all(Path(source), on_error)
    if transform is not None:
        episodes = [transform.stack(episode, str(name)) for episode, name in zip(episodes, names)]
    return episodes, names, skipped


def _select_keys(episodes: list[dict], paths: list[Path], keys: Sequence[str] | None) -> list[str]:
    """The keys to serve: ``keys`` plus ``is_first`` (all keys of the first episode when None)."""
    if keys is None:
        return sorted(episodes[0])
    wanted = list(dict.fromkeys([*keys, "is_first"]))
    for episode, path in zip(episodes, paths):
        for key in wanted:
            if key not in episode:
                raise EpisodeError(path, key, f"requested key missing (episode has {sorted(episode)})")
    return wanted


def _check_consistent(episodes: list[dict], paths: list[Path], keys: list[str], exact: bool) -> None:
    """Every episode has the first one's ``keys`` (and no others when ``exact``), per-step shapes and dtypes."""
    ref, ref_path = episodes[0], paths[0]
    for episode, path in zip(episodes[1:], paths[1:]):
        extra = sorted(set(episode) - set(ref)) if exact else []
        if extra:
            raise EpisodeError(path, extra[0], f"key not present in {ref_path}; episodes must share their keys")
        for key in keys:
            if key not in episode:
                raise EpisodeError(path, key, f"key missing but present in {ref_path}")
            got, want = episode[key], ref[key]
            if got.shape[1:] != want.shape[1:] or got.dtype != want.dtype:
                raise EpisodeError(path, key, f"step shape/dtype {got.shape[1:]} {got.dtype} differs from "
                                              f"{want.shape[1:]} {want.dtype} in {ref_path}")


def _channel_stats(frames: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32 ``(C,)``) of ``frames`` ``(N, H, W, C)``, accumulated in float64 chunks."""
    total = np.zeros(frames.shape[-1], np.float64)
    squares = np.zeros(frames.shape[-1], np.float64)
    for i in range(0, len(frames), chunk):
        block = frames[i:i + chunk].astype(np.float64)
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
    count = frames.shape[0] * frames.shape[1] * frames.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


class OfflineDataset:
    """Episodes of ``directory`` served as training windows or evaluation sequences.

    Args:
        directory: folder of episode files (:func:`list_episodes`), or a
            :class:`~worldmodels.data.robomimic.RobomimicFile` (the demos of its split).
        batch_length: steps ``L`` per sequence.
        keys: keys to serve (``is_first`` is always added); all keys when None.
        crop: crop image keys ``(.., H, W, C)`` to ``crop x crop``; frames smaller than
            that raise :class:`EpisodeError`.
        crop_mode: ``"center"``, or ``"random"`` (one offset per sequence and image key,
            the same for all its frames).
        standardize: None (images stay uint8), ``"image"`` (per frame:
            ``(x - mean) / (std + 1e-6)`` over H, W, C) or ``"dataset"`` (per channel with
            ``image_mean[key]`` / ``image_std[key]``, float32 ``(C,)`` computed once over
            every stored, uncropped frame); standardised images are float32.
        seed: seed of the sampling / random-crop RNG.
        on_error: ``"raise"`` on an unreadable episode file, or ``"skip"`` it with a
            warning listing the skipped files (``skipped`` holds ``(path, reason)``).
            Episodes whose keys or shapes disagree always raise.
        cameras, camera_flips: image keys stacked along channels into ``image`` in this
            order, each flipped as ``camera_flips`` says (:func:`~worldmodels.data.obs_transform.stack_cameras`).

    ``transform`` (:class:`~worldmodels.data.obs_transform.ObsTransform`) holds the
    cameras, crop and standardisation (with the dataset statistics): evaluation in an
    environment applies the same one to its observations.
    """

    def __init__(self, directory: str | os.PathLike | RobomimicFile, batch_length: int,
                 keys: Sequence[str] | None = None, crop: int | None = None, crop_mode: str = "center",
                 standardize: str | None = None, seed: int = 0, on_error: str = "raise",
                 cameras: Sequence[str] | None = None, camera_flips: dict[str, str] | None = None):
        self.batch_length = _positive_int("batch_length", batch_length)
        self.crop = None if crop is None else _positive_int("crop", crop)
        for name, value, allowed in (("crop_mode", crop_mode, CROP_MODES),
                                     ("standardize", standardize, STANDARDIZE_MODES), ("on_error", on_error, ON_ERROR)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.crop_mode, self.standardize = crop_mode, standardize
        self.transform = ObsTransform(cameras=tuple(cameras or ()), flips=dict(camera_flips or {}),
                                      crop=self.crop, standardize=standardize)
        self.directory = directory.path if isinstance(directory, RobomimicFile) else Path(directory)
        episodes, self.paths, self.skipped = load_source(directory, on_error, self.transform)
        self.keys = _select_keys(episodes, self.paths, keys)
        _check_consistent(episodes, self.paths, self.keys, exact=keys is None)
        self.image_keys = [key for key in self.keys if episodes[0][key].ndim == 4]
        self._check_crop(episodes)
        self.lengths = [len(episode["is_first"]) for episode in episodes]
        self._starts = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        self._replay = Replay(int(self._starts[-1]), seed)
        stored = list(dict.fromkeys([*self.keys, "is_last"]))
        for episode in episodes:
            self._replay.add_episode({key: episode[key] for key in stored})
        del episodes
        # the replay's slots hold the episodes in file order: views, no copy
        self._data = {key: self._replay._arrays[key][:self.num_steps] for key in self.keys}
        self.image_mean: dict[str, np.ndarray] = {}
        self.image_std: dict[str, np.ndarray] = {}
        if standardize == "dataset":
            for key in self.image_keys:
                self.image_mean[key], self.image_std[key] = _channel_stats(self._data[key])
        self.transform.mean, self.transform.std = self.image_mean, self.image_std
        self._rng = np.random.default_rng(seed)

    def _check_crop(self, episodes: list[dict]) -> None:
        if self.crop is None:
            return
        for episode, path in zip(episodes, self.paths):
            for key in self.image_keys:
                height, width = episode[key].shape[1:3]
                if height < self.crop or width < self.crop:
                    raise EpisodeError(path, key, f"frames are {height}x{width}, smaller than crop={self.crop}")

    @property
    def num_steps(self) -> int:
        """Steps in all loaded episodes."""
        return int(self._starts[-1])

    @property
    def num_episodes(self) -> int:
        """Episodes loaded."""
        return len(self.lengths)

    def __len__(self) -> int:
        return self.num_steps

    def _crop_images(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` ``[B, L, H, W, C]`` cropped to ``[B, L, crop, crop, C]`` (one offset per sequence)."""
        height, width, size = frames.shape[2], frames.shape[3], self.crop
        if self.crop_mode == "center":
            return crop_frames(frames, size)
        tops = self._rng.integers(0, height - size + 1, size=len(frames))
        lefts = self._rng.integers(0, width - size + 1, size=len(frames))
        return np.stack([crop_frames(frames[row], size, top, left) for row, (top, left) in enumerate(zip(tops, lefts))])

    def _transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Image keys cropped (``crop_mode``) and standardised by :attr:`transform`, the
        function environment observations go through too."""
        for key in self.image_keys:
            frames = batch[key]
            if self.crop is not None and self.crop_mode == "random":
                frames = self._crop_images(frames)
                frames = ObsTransform(standardize=self.standardize, mean=self.image_mean,
                                      std=self.image_std).images(key, frames)
            else:
                frames = self.transform.images(key, frames)
            batch[key] = frames
        return batch

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` random windows ``[B, L, ...]`` of the episode stream (see :class:`Replay.sample`).

        Raises ValueError when the dataset holds fewer than ``batch_length`` steps.
        """
        batch_size = _positive_int("batch_size", batch_size)
        length, total = self.batch_length, self.num_steps
        if total < length:
            raise ValueError(f"{self.directory} holds {total} steps, fewer than batch_length={length}")
        sample = self._replay.sample(batch_size, length, align="stream")
        return self._transform({key: sample[key] for key in self.keys})

    def _chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Start (stream index) and number of real steps of every ``batch_length`` chunk, episodes in order."""
        starts, counts = [], []
        for start, length in zip(self._starts[:-1], self.lengths):
            offsets = np.arange(0, length, self.batch_length)
            starts.append(start + offsets)
            counts.append(np.minimum(self.batch_length, length - offsets))
        return np.concatenate(starts), np.concatenate(counts)

    def padded_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Every step exactly once, as batches ``[B, L, ...]`` of consecutive episode chunks.

        Each episode is cut into chunks of ``batch_length`` steps; the last chunk is
        padded with zeros (False for flags), also after image standardisation.
        ``mask`` (float32 ``[B, L]``) is 1 at real steps; ``is_first[:, 0]`` is True
        since the model restarts at every chunk. The final batch may have fewer than
        ``batch_size`` rows.
        """
        batch_size = _positive_int("batch_size", batch_size)
        all_starts, all_counts = self._chunks()
        steps = np.arange(self.batch_length)
        for first in range(0, len(all_starts), batch_size):
            starts, counts = all_starts[first:first + batch_size], all_counts[first:first + batch_size]
            real = steps[None, :] < counts[:, None]
            index = np.minimum(starts[:, None] + steps, self.num_steps - 1)
            batch = {key: array[index] for key, array in self._data.items()}
            batch["is_first"][:, 0] = True
            batch = self._transform(batch)
            for array in batch.values():
                array[~real] = 0
            batch["mask"] = real.astype(np.float32)
            yield batch

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Each whole episode in file order, as arrays ``[1, T, ...]`` (images cropped/standardised as configured)."""
        for start, length in zip(self._starts[:-1], self.lengths):
            batch = {key: array[start:start + length][None].copy() for key, array in self._data.items()}
            yield self._transform(batch)

    def state_dict(self) -> dict:
        """The sampling and random-crop RNG states."""
        return {"rng": copy.deepcopy(self._rng.bit_generator.state), "replay": self._replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the RNG state saved by :meth:`state_dict`."""
        if not isinstance(state, dict) or "rng" not in state:
            raise ValueError(f"state must be a dict with key 'rng' (from OfflineDataset.state_dict), got {state!r}")
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        if "replay" in state:
            self._replay.load_state_dict(state["replay"])
