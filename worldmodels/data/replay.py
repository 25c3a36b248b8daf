"""An episode replay buffer that samples fixed-length windows for world-model training.

Stored episodes form one stream in insertion order; a sampled sequence is a window
of ``batch_length`` consecutive steps of that stream, so it may run from the end of
one episode into the next (where ``is_first`` is True and the model resets). Every
window gets ``is_first[:, 0] = True`` because the model starts from its initial
state there. Episodes follow :mod:`worldmodels.data.episodes`; with a ``directory``
each added episode is also written there, and :meth:`Replay.load_directory` rebuilds
the buffer after a crash.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .episodes import (
    EpisodeError,
    episode_name,
    list_episodes,
    load_episode,
    save_episode,
    validate_episode,
)

_NAME_INDEX = re.compile(r"^(\d+)-")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _next_file_index(directory: Path) -> int:
    """One past the largest ``NNNNNN-`` index among the episode files already in ``directory``."""
    if not directory.is_dir():
        return 0
    indices = [int(m.group(1)) for p in directory.iterdir() if (m := _NAME_INDEX.match(p.name))]
    return max(indices, default=-1) + 1


class Replay:
    """A FIFO buffer of whole episodes holding about ``capacity`` steps.

    Args:
        capacity: steps kept; the oldest whole episodes are evicted beyond it, but the
            newest episode is never evicted (so one longer episode may exceed it).
        batch_length: steps ``L`` per sampled sequence.
        seed: seed of the sampling RNG (``state_dict`` captures its state).
        directory: when set, every added episode is saved there as
            ``{index:06d}-{T}.npz`` (the files are kept after eviction).
    """

    def __init__(self, capacity: int, batch_length: int, seed: int, directory: str | os.PathLike | None = None):
        self.capacity = _positive_int("capacity", capacity)
        self.batch_length = _positive_int("batch_length", batch_length)
        self.directory = None if directory is None else Path(directory)
        self._rng = np.random.default_rng(seed)
        self._episodes: list[dict[str, np.ndarray]] = []
        self._lengths: list[int] = []
        self._starts = np.zeros(1, np.int64)  # cumulative: episode i spans [_starts[i], _starts[i + 1])
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._file_index = 0 if self.directory is None else _next_file_index(self.directory)

    @classmethod
    def load_directory(cls, directory: str | os.PathLike, capacity: int, batch_length: int, seed: int) -> Replay:
        """A buffer holding the newest episodes saved in ``directory`` (as if re-added in name order).

        Further episodes added to it are saved to the same directory after the
        existing ones. Raises :class:`EpisodeError` when the directory is missing,
        empty, or holds an unreadable episode.
        """
        replay = cls(capacity, batch_length, seed, directory)
        newest_first, total = [], 0
        for path in reversed(list_episodes(directory)):
            episode = load_episode(path)
            newest_first.append((episode, str(path)))
            total += len(episode["reward"])
            if total >= replay.capacity:
                break
        for episode, source in reversed(newest_first):
            replay._insert(episode, source)
        return replay

    @property
    def num_steps(self) -> int:
        """Steps currently stored."""
        return int(self._starts[-1])

    @property
    def num_episodes(self) -> int:
        """Episodes currently stored."""
        return len(self._episodes)

    def __len__(self) -> int:
        return self.num_steps

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Validate and store one episode (arrays keep their dtypes, e.g. uint8 images).

        Every episode must have the keys, per-step shapes and dtypes of the first one.
        With a ``directory`` the episode is saved there before it is stored.
        """
        source = "episode added to the replay"
        episode = validate_episode(episode, source)
        self._check_spec(episode, source)
        if self.directory is not None:
            name = episode_name(self._file_index, len(episode["reward"]))
            source = str(save_episode(self.directory / name, episode))
            self._file_index += 1
        self._insert(episode, source)

    def _check_spec(self, episode: dict[str, np.ndarray], source: str) -> None:
        if self._spec is None:
            return
        spec = {key: (array.shape[1:], array.dtype) for key, array in episode.items()}
        for key in sorted(set(spec) | set(self._spec)):
            if key not in spec or key not in self._spec:
                where = "the buffer's episodes" if key in self._spec else "this episode only"
                raise EpisodeError(source, key, f"key is in {where}; every episode needs the same keys")
            if spec[key] != self._spec[key]:
                raise EpisodeError(source, key, f"step shape/dtype {spec[key][0]} {spec[key][1]} differs from the "
                                                f"buffer's {self._spec[key][0]} {self._spec[key][1]}")

    def _insert(self, episode: dict[str, np.ndarray], source: str) -> None:
        self._check_spec(episode, source)
        if self._spec is None:
            self._spec = {key: (array.shape[1:], array.dtype) for key, array in episode.items()}
        self._episodes.append(episode)
        self._lengths.append(len(episode["reward"]))
        total, drop = sum(self._lengths), 0
        while total > self.capacity and drop < len(self._lengths) - 1:
            total -= self._lengths[drop]
            drop += 1
        del self._episodes[:drop], self._lengths[:drop]
        self._starts = np.concatenate([[0], np.cumsum(self._lengths, dtype=np.int64)])

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` windows of ``batch_length`` steps, as arrays ``[B, L, ...]`` with the stored dtypes.

        Window starts are uniform over every global step index at which a window fits
        in the stream. ``is_first[:, 0]`` is True. Raises ValueError when fewer than
        ``batch_length`` steps are stored.
        """
        batch_size = _positive_int("batch_size", batch_size)
        length, total = self.batch_length, self.num_steps
        if total < length:
            raise ValueError(f"the replay holds {total} steps, fewer than batch_length={length}; "
                             f"add episodes before sampling")
        starts = self._rng.integers(0, total - length + 1, size=batch_size)
        out = {key: np.empty((batch_size, length, *shape), dtype) for key, (shape, dtype) in self._spec.items()}
        for b, start in enumerate(starts):
            self._fill_window(out, b, int(start))
        out["is_first"][:, 0] = True
        return out

    def _fill_window(self, out: dict[str, np.ndarray], row: int, start: int) -> None:
        """Copy stream steps ``[start, start + L)`` into ``out[key][row]``, one slice per episode touched."""
        end = start + self.batch_length
        index = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < self.batch_length:
            episode, offset = self._episodes[index], start + filled - int(self._starts[index])
            take = min(self._lengths[index] - offset, end - start - filled)
            for key, array in episode.items():
                out[key][row, filled:filled + take] = array[offset:offset + take]
            filled += take
            index += 1

    def state_dict(self) -> dict:
        """The sampling RNG state (a resumed run with the same episodes samples the same batches)."""
        return {"rng": copy.deepcopy(self._rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the RNG state saved by :meth:`state_dict`."""
        if not isinstance(state, Mapping) or "rng" not in state:
            raise ValueError(f"state must be a dict with key 'rng' (from Replay.state_dict), got {state!r}")
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
