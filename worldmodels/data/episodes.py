"""The DreamerV3 episode format: one episode per ``.npz`` (or ``.h5``) file.

An episode is a ``dict[str, np.ndarray]`` whose arrays all have the same length
``T >= 1`` on axis 0. Step ``t`` holds:

- observation keys at ``t``: images ``uint8 (T, H, W, C)`` channels-last (any key
  whose name contains ``"image"`` or whose array is 4-D), vectors ``float32 (T, D)``;
- ``action[t]``: ``float32 (T, A)``, the action taken *after* observing step ``t``
  (one-hot for discrete actions, raw values for continuous ones); the last step's
  action may be zeros;
- ``reward[t]``: ``float32 (T,)``, the reward received on arriving at step ``t``
  (0 at the first step);
- ``discount[t]``: ``float32 (T,)``, ``1 - is_terminal[t]``;
- ``is_first``: ``bool (T,)``, True at index 0; ``is_last``: ``bool (T,)``, True at
  the final step of a finished episode; ``is_terminal``: ``bool (T,)``, True where the
  environment terminated (not merely truncated).

``REQUIRED_KEYS`` must be present; ``discount`` and ``is_last`` are derived when
missing. :func:`validate_episode` checks and normalises an episode (flags to bool,
floats to float32); :func:`save_episode` writes one atomically and
:func:`load_episode` reads one back, raising :class:`EpisodeError` (which names the
file and the key) for anything malformed. :class:`EpisodeBuilder` assembles episodes
from vectorised environment steps.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import WorldModelsError

REQUIRED_KEYS = ("action", "reward", "is_first", "is_terminal")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
EPISODE_SUFFIXES = (".npz", ".h5", ".hdf5")
_H5_SUFFIXES = (".h5", ".hdf5")
_NUMERIC_KINDS = "biuf"
RECORD_HINT = "record episodes with `python -m worldmodels.record ...` (see its --help)"


class EpisodeError(WorldModelsError, ValueError):
    """A malformed or unreadable episode; the message names the source (file) and the key.

    Attributes ``source`` (str) and ``key`` (str or None) hold the same information.
    """

    def __init__(self, source: str | os.PathLike, key: str | None, problem: str):
        self.source = str(source)
        self.key = key
        where = f"{self.source}: key {key!r}" if key is not None else self.source
        super().__init__(f"{where}: {problem}")


def is_image_key(key: str, array: np.ndarray) -> bool:
    """Whether ``key`` holds images: its name contains ``"image"`` or its array is 4-D ``(T, H, W, C)``."""
    return "image" in key or np.ndim(array) == 4


def _check_array(source: str, key: str, value) -> np.ndarray:
    """``value`` as a numeric array with a time axis, or an EpisodeError."""
    array = np.asarray(value)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise EpisodeError(source, key, f"dtype {array.dtype} is not numeric (object/string arrays are refused)")
    if array.ndim == 0:
        raise EpisodeError(source, key, "is a scalar; every array needs a time axis 0")
    return array


def _normalise_flag(source: str, key: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 1:
        raise EpisodeError(source, key, f"flags must have shape (T,), got {array.shape}")
    if array.dtype == np.bool_:
        return array.copy()
    if array.dtype.kind in "iu" and np.isin(array, (0, 1)).all():
        return array.astype(np.bool_)
    raise EpisodeError(source, key, f"flags must be bool or 0/1 integers, got dtype {array.dtype}")


def _normalise_value(source: str, key: str, array: np.ndarray) -> np.ndarray:
    """One non-flag array checked for its key's dtype/rank rules, floats as float32."""
    if is_image_key(key, array):
        if array.dtype != np.uint8 or array.ndim != 4:
            raise EpisodeError(source, key, f"images must be uint8 (T, H, W, C), got {array.dtype} {array.shape}")
        return array.copy()
    if key in ("reward", "discount", "action") and array.dtype.kind != "f":
        raise EpisodeError(source, key, f"must be floating point, got dtype {array.dtype}")
    if key in ("reward", "discount") and array.ndim != 1:
        raise EpisodeError(source, key, f"must have shape (T,), got {array.shape}")
    if key == "action" and array.ndim != 2:
        raise EpisodeError(source, key, f"must have shape (T, A), got {array.shape}")
    if array.dtype.kind != "f":
        return array.copy()
    array = array.astype(np.float32)  # always a copy
    if not np.isfinite(array).all():
        raise EpisodeError(source, key, "contains NaN or inf")
    return array


def validate_episode(episode: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Check ``episode`` and return a normalised copy.

    Flags become ``bool (T,)``, floating arrays ``float32``, images stay ``uint8``;
    ``discount`` (``1 - is_terminal``) and ``is_last`` (True at the final step) are
    added when missing. ``source`` (a file name or description) starts every error.

    Raises:
        EpisodeError: empty episode, missing required key, mismatched lengths, wrong
            dtype or rank, NaN/inf, non-numeric array, or ``is_first[0]`` False.
    """
    if not isinstance(episode, Mapping):
        raise EpisodeError(source, None, f"an episode must be a dict of arrays, got {type(episode).__name__}")
    if not episode:
        raise EpisodeError(source, None, "episode is empty (no arrays)")
    missing = [key for key in REQUIRED_KEYS if key not in episode]
    if missing:
        raise EpisodeError(source, missing[0], f"required key missing (episode has {sorted(episode)})")
    arrays = {str(key): _check_array(source, str(key), value) for key, value in episode.items()}
    length = len(arrays["reward"])
    if length < 1:
        raise EpisodeError(source, "reward", "episode is empty (T = 0 steps)")
    for key, array in arrays.items():
        if len(array) != length:
            raise EpisodeError(source, key, f"has {len(array)} steps but 'reward' has {length}")
    out = {}
    for key, array in arrays.items():
        out[key] = _normalise_flag(source, key, array) if key in FLAG_KEYS else _normalise_value(source, key, array)
    if not out["is_first"][0]:
        raise EpisodeError(source, "is_first", "is_first[0] must be True (an episode starts at its first step)")
    if "discount" not in out:
        out["discount"] = 1.0 - out["is_terminal"].astype(np.float32)
    if "is_last" not in out:
        out["is_last"] = np.zeros(length, np.bool_)
        out["is_last"][-1] = True
    return out


def _h5py(action: str):
    try:
        import h5py
    except ImportError as error:
        raise ImportError(f"{action} HDF5 episodes needs h5py: pip install h5py") from error
    return h5py


def _write_npz(handle, episode: dict[str, np.ndarray], compress: bool) -> None:
    (np.savez_compressed if compress else np.savez)(handle, **episode)


def _write_h5(tmp_name: str, episode: dict[str, np.ndarray], compress: bool) -> None:
    h5py = _h5py("saving")
    with h5py.File(tmp_name, "w") as f:
        for key, array in episode.items():
            f.create_dataset(key, data=array, compression="gzip" if compress else None)


def save_episode(path: str | os.PathLike, episode: Mapping[str, np.ndarray], *, compress: bool = True,
                 fmt: str | None = None) -> Path:
    """Validate ``episode`` and write it atomically; returns the path written.

    ``fmt`` is ``"npz"`` or ``"h5"``; by default ``.h5``/``.hdf5`` suffixes mean HDF5 and
    anything else ``.npz`` (the suffix is appended when missing). The data go to a
    temporary file in the target directory, are flushed and fsynced, then
    ``os.replace``-d onto ``path``, so a reader never sees a partial file.
    HDF5 needs ``h5py`` (an ImportError says ``pip install h5py`` otherwise).
    """
    path = Path(path)
    fmt = fmt or ("h5" if path.suffix in _H5_SUFFIXES else "npz")
    if fmt not in ("npz", "h5"):
        raise ValueError(f"fmt must be 'npz' or 'h5', got {fmt!r}")
    if fmt == "npz" and path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if fmt == "h5":
        _h5py("saving")
    episode = validate_episode(episode, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if fmt == "npz":
            with os.fdopen(fd, "wb") as handle:
                _write_npz(handle, episode, compress)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            _write_h5(tmp_name, episode, compress)
            with open(tmp_name, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        raise EpisodeError(path, None, f"not a readable .npz episode (corrupt or truncated?): {error}") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise EpisodeError(path, None, "holds a single array, not an .npz archive of named arrays")
    with data:
        episode = {}
        for key in data.files:
            try:
                episode[key] = data[key]
            except ValueError as error:
                if "pickle" in str(error):
                    raise EpisodeError(path, key, "object array refused (pickled data is never loaded)") from error
                raise EpisodeError(path, key, f"unreadable array (corrupt or truncated?): {error}") from error
            except _READ_ERRORS as error:
                raise EpisodeError(path, key, f"unreadable array (corrupt or truncated?): {error}") from error
    return episode


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    h5py = _h5py("loading")
    try:
        with h5py.File(path, "r") as f:
            return {key: np.asarray(f[key][()]) for key in f}
    except (OSError, KeyError, ValueError) as error:
        raise EpisodeError(path, None, f"not a readable HDF5 episode (corrupt or truncated?): {error}") from error


def load_episode(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate one episode file (``.npz``, or ``.h5``/``.hdf5`` with h5py).

    Returns the normalised episode (see :func:`validate_episode`). Pickled/object
    arrays are never loaded. Raises :class:`EpisodeError` naming the file for a
    missing, corrupt or truncated file, an object array or a validation failure.
    """
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(path, None, "no such episode file")
    episode = _read_h5(path) if path.suffix in _H5_SUFFIXES else _read_npz(path)
    return validate_episode(episode, str(path))


def list_episodes(directory: str | os.PathLike) -> list[Path]:
    """The episode files (``.npz``/``.h5``/``.hdf5``, hidden temp files excluded) in ``directory``, sorted by name.

    Raises :class:`EpisodeError` naming the directory when it is missing or holds no
    episode, with the command that records some.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EpisodeError(directory, None, f"episode directory does not exist; {RECORD_HINT}")
    paths = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix in EPISODE_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise EpisodeError(directory, None, f"no episode files (*.npz, *.h5) in this directory; {RECORD_HINT}")
    return paths


def first_readable_episode(directory: str | os.PathLike,
                           on_error: str = "raise") -> tuple[Path, dict[str, np.ndarray]]:
    """``(path, episode)`` of the first episode of ``directory`` (by name) that loads.

    With ``on_error="raise"`` an unreadable first file raises :class:`EpisodeError`; with
    ``"skip"`` unreadable files are passed over (the dataset that reads the folder lists
    them), and only a folder without one readable episode raises.
    """
    paths = list_episodes(directory)
    for path in paths:
        try:
            return path, load_episode(path)
        except EpisodeError:
            if on_error != "skip":
                raise
    raise EpisodeError(directory, None, f"none of the {len(paths)} episode files could be read")


def episode_name(index: int, length: int) -> str:
    """File name ``"{index:06d}-{length}.npz"`` (e.g. ``"000042-250.npz"``); names sort by index up to 999999."""
    for name, value, low in (("index", index, 0), ("length", length, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return f"{int(index):06d}-{int(length)}.npz"


class EpisodeBuilder:
    """Assembles episodes from the steps of ``num_envs`` vectorised environments.

    Each :meth:`add` takes one step of every env (arrays with leading dim ``N``) and
    returns the episodes finished by it (those envs with ``is_last`` True).
    """

    def __init__(self, num_envs: int):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self._steps: list[list[dict[str, np.ndarray]]] = [[] for _ in range(self.num_envs)]
        self._skipping: set[int] = set()

    @property
    def pending_lengths(self) -> list[int]:
        """Steps accumulated so far in each env's unfinished episode."""
        return [len(steps) for steps in self._steps]

    def reset(self, env_index: int | None = None) -> None:
        """Drop the unfinished episode of ``env_index`` (every env when None)."""
        for i in range(self.num_envs) if env_index is None else [env_index]:
            self._steps[i] = []

    def restore(self, env_index: int, steps: Mapping[str, np.ndarray]) -> None:
        """Make ``steps`` (``{key: [T, ...]}``, from its first step on) the unfinished
        episode of ``env_index`` (a resumed run continuing an episode)."""
        count = len(steps["is_last"])
        self._steps[env_index] = [{key: np.array(value[t]) for key, value in steps.items()} for t in range(count)]
        self._skipping.discard(env_index)

    def skip_to_next_episode(self, env_index: int) -> None:
        """Leave out the steps of ``env_index`` until one with ``is_first`` (a resumed run
        continuing an episode whose first steps are no longer known)."""
        self._steps[env_index] = []
        self._skipping.add(env_index)

    def add(self, step: Mapping[str, np.ndarray]) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Append step ``i`` of every env; returns ``[(env_index, episode), ...]`` for envs whose ``is_last`` is True.

        ``step`` maps keys to arrays with leading dim ``num_envs`` and must contain
        ``is_last``. Finished episodes are validated (:func:`validate_episode`) and
        that env starts a fresh episode.
        """
        if "is_last" not in step:
            raise KeyError("EpisodeBuilder.add needs an 'is_last' array of shape (num_envs,)")
        arrays = {key: np.asarray(value) for key, value in step.items()}
        for key, array in arrays.items():
            if array.ndim == 0 or len(array) != self.num_envs:
                raise ValueError(f"step[{key!r}] must have leading dim num_envs={self.num_envs}, got {array.shape}")
        finished = []
        for i in range(self.num_envs):
            if i in self._skipping:
                if not bool(arrays["is_first"][i]):
                    continue
                self._skipping.discard(i)
            entry = {key: np.array(array[i]) for key, array in arrays.items()}
            if self._steps[i] and entry.keys() != self._steps[i][0].keys():
                raise ValueError(f"env {i}: step keys {sorted(entry)} differ from earlier steps' "
                                 f"{sorted(self._steps[i][0])}")
            self._steps[i].append(entry)
            if bool(arrays["is_last"][i]):
                steps, self._steps[i] = self._steps[i], []
                episode = {key: np.stack([s[key] for s in steps]) for key in steps[0]}
                finished.append((i, validate_episode(episode, f"env {i} episode")))
        return finished


class EpisodeWriter:
    """A collector hook that saves whole episodes: each stored step ``{key: [N, ...]}``
    goes to an :class:`EpisodeBuilder`; every finished episode is written to
    ``directory`` as ``{index:06d}-{T}.npz`` (numbering after the files already there),
    until ``limit`` episodes were written. ``paths`` lists them in finishing order."""

    def __init__(self, directory: str | os.PathLike, num_envs: int, limit: int | None = None):
        self.directory, self.limit = Path(directory), limit
        self.directory.mkdir(parents=True, exist_ok=True)
        self.builder = EpisodeBuilder(num_envs)
        self.paths: list[Path] = []
        self._first = next_episode_index(self.directory)

    @property
    def done(self) -> bool:
        return self.limit is not None and len(self.paths) >= self.limit

    def state_dict(self) -> dict[str, int]:
        """The index the next episode file gets."""
        return {"next_index": self._first + len(self.paths)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue numbering at the saved index; episode files numbered from there on
        (written after the checkpoint by a run that was then killed) are deleted, since
        the resumed run writes its own."""
        self._first, self.paths = int(state["next_index"]), []
        for index, path in episode_files_by_index(self.directory):
            if index >= self._first:
                path.unlink(missing_ok=True)

    def __call__(self, step: Mapping[str, np.ndarray]) -> None:
        for _, episode in self.builder.add(step):
            if self.done:
                return
            name = episode_name(self._first + len(self.paths), len(episode["reward"]))
            self.paths.append(save_episode(self.directory / name, episode))


def episode_files_by_index(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(index, path)`` of every ``{index:06d}-{T}.npz`` file in ``directory``."""
    import re

    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [(int(m.group(1)), p) for p in directory.iterdir() if (m := re.fullmatch(r"(\d{6})-\d+\.npz", p.name))]


def next_episode_index(directory: str | os.PathLike) -> int:
    """One past the highest ``{index:06d}-{T}.npz`` index in ``directory`` (0 if none)."""
    return max((index for index, _ in episode_files_by_index(directory)), default=-1) + 1
