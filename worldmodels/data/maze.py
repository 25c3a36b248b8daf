"""3D-maze episodes on disk: ``{root}/{train,test}/*.npz``, read by the package's one
episode loader (:mod:`worldmodels.data.episodes`).

Each file holds one episode in the package's format: ``image`` [T, H, W, 3] uint8
first-person frames, ``action`` [T, 3] one-hot (0 forward, 1 turn left, 2 turn right),
the flags, and optional ``turn`` / ``junction`` [T] bool ground-truth events (files
without them get ``turn = action != 0`` and no junctions; ``MazeDataset.has_junction``
says so). Files of the original VTA layout (``video`` [T, H, W, 3], ``actions`` [T]
indices or one-hot [T, 3]) are converted on reading.

``python -m worldmodels.data.generate_maze`` writes such a dataset
(:mod:`worldmodels.data.generate_maze`). :class:`MazeDataset` loads and checks every
file of a split once (``np.load(allow_pickle=False)``), resizing frames to
``size x size``; :class:`MazeProvider` draws random windows from it, a pure function
of ``(seed, step)`` so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WorldModelsError
from .episodes import EpisodeError, validate_episode
from .episodes import load_episode as load_episode_file
from .stream import StepStream, check_step

NUM_ACTIONS = 3
SPLITS = ("train", "test")
_INDEX_STREAM = 1


class MazeDataNotFoundError(WorldModelsError, FileNotFoundError):
    """The dataset root or split is missing or empty; the message gives the command."""


class MazeDataError(WorldModelsError, ValueError):
    """An episode file is unreadable or malformed; the message names the file and key."""


def generate_command(root: str | Path) -> str:
    """The command that writes a default dataset at ``root``."""
    return (f"python -m worldmodels.data.generate_maze --out {root} --train 200 --test 20 "
            f"--length 100 --size 32 --seed 0")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Episode:
    """One loaded episode: video [T, 3, S, S] uint8, actions [T] int64, turn and
    junction [T] bool (torch), and the file it came from."""

    video: torch.Tensor
    actions: torch.Tensor
    turn: torch.Tensor
    junction: torch.Tensor
    path: Path
    has_junction: bool


# --------------------------------------------------------------------------- reading


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz file, read eagerly so truncation shows up here."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise MazeDataError(f"{path}: not an npz archive (a single .npy array)")
        with data:
            return {key: data[key] for key in data.files}
    except MazeDataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise MazeDataError(f"{path}: cannot read the episode ({type(error).__name__}: {error}); "
                            "the file is corrupt or truncated, regenerate it") from None


def _require(arrays: dict, path: Path, key: str) -> np.ndarray:
    if key not in arrays:
        raise MazeDataError(f"{path}: missing key {key!r} (has {sorted(arrays)})")
    return arrays[key]


def _check_video(video: np.ndarray, path: Path) -> np.ndarray:
    if video.dtype != np.uint8:
        raise MazeDataError(f"{path}: key 'video' must be uint8, got {video.dtype}")
    if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape) < 1:
        raise MazeDataError(f"{path}: key 'video' must be [T, H, W, 3], got {list(video.shape)}")
    return video


def _check_actions(actions: np.ndarray, path: Path, length: int) -> np.ndarray:
    """Integer actions [T] in 0..2 from [T] integers or a one-hot [T, 3] array."""
    if actions.ndim == 2 and actions.shape[1] == NUM_ACTIONS and actions.dtype != np.bool_:
        hot = actions.astype(np.float64)
        if not (np.isin(hot, (0.0, 1.0)).all() and (hot.sum(1) == 1).all()):
            raise MazeDataError(f"{path}: key 'actions' [T, 3] must be one-hot")
        actions = hot.argmax(1)
    elif actions.ndim != 1:
        raise MazeDataError(f"{path}: key 'actions' must be [T] or one-hot [T, 3], "
                            f"got {list(actions.shape)}")
    elif not np.issubdtype(actions.dtype, np.integer):
        raise MazeDataError(f"{path}: key 'actions' must be integers, got {actions.dtype}")
    if actions.shape[0] != length:
        raise MazeDataError(f"{path}: key 'actions' has {actions.shape[0]} steps, "
                            f"key 'video' has {length} frames")
    if actions.size and (actions.min() < 0 or actions.max() >= NUM_ACTIONS):
        raise MazeDataError(f"{path}: key 'actions' must be in 0..{NUM_ACTIONS - 1}, "
                            f"got {int(actions.min())}..{int(actions.max())}")
    return actions.astype(np.int64)


def _check_flags(arrays: dict, path: Path, key: str, length: int) -> np.ndarray | None:
    """Optional event flags [T] as bool (bool or 0/1 integers), None when absent."""
    if key not in arrays:
        return None
    flags = arrays[key]
    ok_type = flags.dtype == np.bool_ or np.issubdtype(flags.dtype, np.integer)
    if not ok_type or flags.shape != (length,) or not np.isin(flags, (0, 1)).all():
        raise MazeDataError(f"{path}: key {key!r} must be bool [T] = [{length}], "
                            f"got {flags.dtype} {list(flags.shape)}")
    return flags.astype(bool)


def resize_video(video: np.ndarray, size: int) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> [T, 3, size, size] uint8.

    Integer downscales use area averaging (exact box filter); other sizes use
    antialiased bilinear interpolation. Already ``size x size``: no arithmetic.
    """
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    height, width = frames.shape[-2:]
    if (height, width) == (size, size):
        return frames.contiguous()
    x = frames.float()
    if height % size == 0 and width % size == 0:
        x = F.interpolate(x, size=(size, size), mode="area")
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def read_episode(path: str | Path) -> dict[str, np.ndarray]:
    """One maze episode in the package's episode format, read with the one loader of
    :mod:`worldmodels.data.episodes`; files of the original VTA layout (``video``,
    ``actions`` as indices or one-hot, optional ``turn``/``junction``) are converted."""
    path = Path(path)
    arrays = _read_arrays(path)
    if "video" not in arrays and "image" not in arrays:
        raise MazeDataError(f"{path}: missing key 'image' (or 'video' of the original VTA layout); "
                            f"the file has {sorted(arrays)}")
    if "video" not in arrays:
        episode = load_episode_file(path)
        _check_video(episode["image"], path)
        if episode["action"].shape[-1] != NUM_ACTIONS:
            raise MazeDataError(f"{path}: key 'action' has {episode['action'].shape[-1]} actions, the maze has "
                                f"{NUM_ACTIONS}")
        return episode
    video = _check_video(_require(arrays, path, "video"), path)
    length = video.shape[0]
    actions = _check_actions(_require(arrays, path, "actions"), path, length)
    episode = {"image": video, "action": np.eye(NUM_ACTIONS, dtype=np.float32)[actions],
               "reward": np.zeros(length, np.float32), "is_first": np.arange(length) == 0,
               "is_terminal": np.zeros(length, bool)}
    for key in ("turn", "junction"):
        flags = _check_flags(arrays, path, key, length)
        if flags is not None:
            episode[key] = flags
    return validate_episode(episode, str(path))


def load_episode(path: str | Path, size: int = 32, min_length: int = 1) -> Episode:
    """Load and check one episode file (:func:`read_episode`), frames resized to ``size x size``.

    Raises:
        MazeDataError: unreadable file, missing key, wrong dtype or shape, or fewer
            than ``min_length`` frames; the message names the file and key
            (:class:`~worldmodels.data.episodes.EpisodeError` for a malformed file in the
            package's format).
    """
    path = Path(path)
    episode = read_episode(path)
    video, length = episode["image"], len(episode["image"])
    if length < min_length:
        raise MazeDataError(f"{path}: key 'image' has {length} frames, fewer than seq_len={min_length}; use a "
                            "shorter seq_len or longer episodes")
    actions = episode["action"].argmax(-1).astype(np.int64)
    turn, junction = episode.get("turn"), episode.get("junction")
    return Episode(
        video=resize_video(video, size),
        actions=torch.from_numpy(actions),
        turn=torch.from_numpy(actions != 0 if turn is None else turn.astype(bool)),
        junction=torch.from_numpy(np.zeros(length, bool) if junction is None else junction.astype(bool)),
        path=path,
        has_junction=junction is not None,
    )


def episode_files(root: str | Path, split: str) -> list[Path]:
    """Sorted ``{root}/{split}/*.npz``.

    Raises:
        MazeDataNotFoundError: the root or split is missing or holds no npz file;
            the message prints the command that generates the dataset.
    """
    root = Path(root)
    folder = root / split
    if not root.is_dir():
        problem = f"maze dataset root {root} does not exist"
    elif not folder.is_dir():
        problem = f"maze dataset split {folder} does not exist"
    else:
        files = sorted(folder.glob("*.npz"))
        if files:
            return files
        problem = f"maze dataset split {folder} holds no *.npz episode"
    raise MazeDataNotFoundError(f"{problem}. Generate the dataset with:\n  {generate_command(root)}")


# --------------------------------------------------------------------------- dataset


class MazeDataset:
    """Every episode of one split, checked and resized, in memory (uint8).

    Args:
        root: dataset folder holding ``train/`` and ``test/``.
        split: "train" or "test" (any sub-folder name works).
        seq_len: window length T; every episode must have at least T frames.
        size: frames are resized to ``size x size`` (32 for VTA).
        on_error: "raise" (default) stops at the first bad file; "skip" leaves bad
            files out with a notice on stderr (``skipped`` lists them).

    ``dataset[i]`` is the first window of episode i; :meth:`windows` gathers a batch.
    """

    def __init__(self, root: str | Path, split: str, seq_len: int, size: int = 32,
                 on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root, self.split = Path(root), split
        self.seq_len = _positive_int("seq_len", seq_len)
        self.size = _positive_int("size", size)
        self.episodes: list[Episode] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in episode_files(root, split):
            try:
                self.episodes.append(load_episode(path, self.size, self.seq_len))
            except (MazeDataError, EpisodeError) as error:
                if on_error == "raise":
                    raise
                self.skipped.append((path, str(error)))
                print(f"worldmodels: skipping {error}", file=sys.stderr)
        if not self.episodes:
            raise MazeDataError(f"every episode of {self.root / split} is bad; first: "
                                f"{self.skipped[0][1]}")
        self.has_junction = all(e.has_junction for e in self.episodes)
        self._pack()

    def _pack(self) -> None:
        """Concatenate the episodes along time so a batch is one index_select each."""
        lengths = torch.tensor([e.actions.shape[0] for e in self.episodes])
        self._offsets = (torch.cumsum(lengths, 0) - lengths).numpy()
        self._flat = {name: torch.cat([getattr(e, name) for e in self.episodes])
                      for name in ("video", "actions", "turn", "junction")}

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode index {index} out of range for {len(self)} episodes")
        batch = self.windows([index % len(self)], [0])
        return {key: value[0] for key, value in batch.items()}

    def num_starts(self) -> np.ndarray:
        """Valid window starts per episode [N] int64 (``T_i - seq_len + 1``)."""
        return np.array([e.actions.shape[0] - self.seq_len + 1 for e in self.episodes])

    def windows(self, indices, starts, device: str | torch.device = "cpu") -> dict:
        """Windows ``[start, start + seq_len)`` of the given episodes, as a batch.

        Returns:
            {"frames": float32 [B, T, 3, S, S] in [0, 1], "actions": float32 one-hot
            [B, T, 3], "turn": bool [B, T], "junction": bool [B, T]} on ``device``.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if indices.shape != starts.shape or ((starts < 0) | (starts >= self.num_starts()[indices])).any():
            raise ValueError(f"starts {starts.tolist()} must be one per episode and leave "
                             f"seq_len={self.seq_len} frames")
        first = self._offsets[indices] + starts
        rows = torch.from_numpy((first[:, None] + np.arange(self.seq_len)).reshape(-1))
        shape = (len(indices), self.seq_len)

        def take(name: str) -> torch.Tensor:
            x = self._flat[name].index_select(0, rows)
            return x.view(*shape, *x.shape[1:]).to(device)

        return {
            "frames": take("video").to(torch.float32).div_(255.0),
            "actions": F.one_hot(take("actions"), NUM_ACTIONS).to(torch.float32),
            "turn": take("turn"),
            "junction": take("junction"),
        }


class MazeProvider(StepStream):
    """Deterministic, resumable stream of random maze windows.

    The batch at ``step`` draws its episodes (without replacement when the split has
    at least ``batch_size`` episodes) and window starts from
    ``SeedSequence([seed, 1, step])``.

    Args:
        root: dataset folder; or pass a loaded ``dataset`` instead.
        batch_size: B. seq_len: T. seed: base seed (>= 0).
        split, size, on_error: as in :class:`MazeDataset`. device: where batches go.

    Example::

        data = MazeProvider("data/3d_maze_default", 32, 50, seed=0)
        batch = data.next_batch()   # {"frames": [32, 50, 3, 32, 32] float32, ...}
    """

    def __init__(self, root: str | Path | None, batch_size: int, seq_len: int, *, seed: int,
                 split: str = "train", size: int = 32, device: str | torch.device = "cpu",
                 on_error: str = "raise", dataset: MazeDataset | None = None) -> None:
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        if dataset is None:
            dataset = MazeDataset(root, split, seq_len, size, on_error)
        self.dataset = dataset
        if self.dataset.seq_len != seq_len:
            raise ValueError(f"seq_len={seq_len} differs from the dataset's {self.dataset.seq_len}")
        self.device = torch.device(device)
        self.step = 0

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode indices and window starts, each [batch_size] int64, of ``step``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _INDEX_STREAM, step]))
        count = len(self.dataset)
        episodes = rng.choice(count, size=self.batch_size, replace=count < self.batch_size)
        starts = rng.integers(0, self.dataset.num_starts()[episodes])
        return episodes.astype(np.int64), starts.astype(np.int64)

    def batch(self, step: int) -> dict:
        """The batch at ``step`` (a pure function of seed and step); see
        :meth:`MazeDataset.windows` for the format."""
        step = check_step(step)
        episodes, starts = self.indices(step)
        return self.dataset.windows(episodes, starts, self.device)


def make_eval_set(root: str | Path, num_sequences: int, seq_len: int, split: str = "test",
                  size: int = 32, device: str | torch.device = "cpu") -> dict:
    """A fixed held-out batch of up to ``num_sequences`` windows of ``split``.

    Windows are non-overlapping, taken at starts 0, seq_len, 2 seq_len, ... : first
    the window at 0 of every episode, then the window at seq_len of every episode
    long enough, and so on, so a small split still fills the batch. Format as in
    :meth:`MazeDataset.windows`.
    """
    num_sequences = _positive_int("num_sequences", num_sequences)
    dataset = MazeDataset(root, split, seq_len, size)
    last = dataset.num_starts() - 1  # [N] last valid start per episode
    picks = [(e, k * dataset.seq_len) for k in range(int(last.max()) // dataset.seq_len + 1)
             for e in range(len(dataset)) if k * dataset.seq_len <= last[e]]
    picks = picks[:num_sequences]
    return dataset.windows([e for e, _ in picks], [s for _, s in picks], device)
