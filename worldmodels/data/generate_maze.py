"""Write a 3D-maze dataset: ``{out}/{train,test}/episode_NNNNNN.npz`` + ``meta.json``.

    python -m worldmodels.data.generate_maze --out data/3d_maze_default \\
        --train 200 --test 20 --length 100 --size 32 --seed 0

One episode per file in the package's episode format (:mod:`worldmodels.data.episodes`,
compressed npz, no pickle; the same loader reads every dataset): ``image`` [T, H, W, 3]
uint8, ``action`` [T, 3] one-hot float32, ``reward`` (zeros), the flags, the events
``turn`` and ``junction`` [T] bool, ``pose`` [T, 3] float32 and the layout ``maze``
[T, n, n] uint8.
Train episode e comes from ``SeedSequence([seed, 0, e])``, test episode e from
``SeedSequence([seed, 1, e])``, so counts do not change the episodes. Every file is
written to a temporary name and renamed (``os.replace``); ``meta.json`` comes last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodels.data.episodes import save_episode
from worldmodels.data.maze import generate_command
from worldmodels.envs import maze as env

SPLIT_STREAMS = {"train": 0, "test": 1}
_SHARED_MAZE_STREAM = 2
FORMAT_VERSION = 2
log = logging.getLogger(__name__)


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a hidden temporary beside ``path``, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def episode_arrays(video: np.ndarray, actions: np.ndarray, turn: np.ndarray, junction: np.ndarray,
                   poses: np.ndarray, maze: np.ndarray) -> dict[str, np.ndarray]:
    """One generated episode in the package's episode format
    (:mod:`worldmodels.data.episodes`); ``video`` is [T, 3, H, W] uint8."""
    length = len(actions)
    flags = np.zeros(length, bool)
    return {
        "image": np.ascontiguousarray(video.transpose(0, 2, 3, 1)),
        "action": np.eye(len(env.ACTIONS), dtype=np.float32)[actions.astype(np.int64)],
        "reward": np.zeros(length, np.float32),
        "is_first": np.arange(length) == 0, "is_last": np.arange(length) == length - 1, "is_terminal": flags,
        "turn": turn.astype(bool), "junction": junction.astype(bool),
        "pose": poses.astype(np.float32),
        "maze": np.broadcast_to(maze.astype(np.uint8), (length, *maze.shape)),
    }


def _clear_split(folder: Path) -> None:
    for old in folder.glob("episode_*.npz"):
        old.unlink()


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new dataset into an existing one unless ``overwrite``."""
    existing = [p for split in SPLIT_STREAMS for p in (out / split).glob("*.npz")]
    if (existing or (out / "meta.json").exists()) and not overwrite:
        raise FileExistsError(f"{out} already holds a maze dataset ({len(existing)} episodes); "
                              "pass --overwrite to replace it or choose another --out")


def write_split(out: Path, split: str, count: int, args: argparse.Namespace,
                maze: np.ndarray | None, bar: tqdm) -> None:
    """Generate and write ``count`` episodes of ``split`` in chunks of ``args.chunk``."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    _clear_split(folder)
    for first in range(0, count, args.chunk):
        n = min(args.chunk, count - first)
        data = env.generate_episodes(
            n, args.length, size=args.size, maze_cells=args.maze_cells,
            seed=[args.seed, SPLIT_STREAMS[split]], num_threads=args.num_threads,
            impl=args.impl, fov=args.fov, maze=maze, first_episode=first)
        for k in range(n):
            arrays = episode_arrays(data.video[k].numpy(), data.actions[k].numpy(), data.turn[k].numpy(),
                                    data.junction[k].numpy(), data.poses[k].numpy(), data.mazes[k].numpy())
            save_episode(folder / f"episode_{first + k:06d}.npz", arrays)
            bar.update(1)


def write_dataset(args: argparse.Namespace) -> dict:
    """Write the dataset described by parsed ``args``; returns the metadata written."""
    out = Path(args.out)
    _check_target(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    maze = None
    if args.shared_maze:
        maze = env.make_maze(args.maze_cells, np.random.SeedSequence([args.seed, _SHARED_MAZE_STREAM]))
    counts = {"train": args.train, "test": args.test}
    with tqdm(total=sum(counts.values()), desc="maze episodes", unit="ep",
              disable=args.no_progress) as bar:
        for split, count in counts.items():
            write_split(out, split, count, args, maze, bar)
    meta = {
        "format_version": FORMAT_VERSION, "size": args.size, "length": args.length,
        "maze_cells": args.maze_cells, "fov_degrees": args.fov, "seed": args.seed,
        "shared_maze": bool(args.shared_maze), "counts": counts,
        "actions": list(env.ACTIONS),
        "keys": {"image": "[T, H, W, 3] uint8", "action": "[T, 3] float32 one-hot", "reward": "[T] float32 (0)",
                 "is_first": "[T] bool", "is_last": "[T] bool", "is_terminal": "[T] bool", "turn": "[T] bool",
                 "junction": "[T] bool", "pose": "[T, 3] float32 (x, y, theta)",
                 "maze": "[T, n, n] uint8 (the layout at every step; 0 empty, k > 0 wall colour id)"},
    }
    text = json.dumps(meta, indent=2).encode()
    _atomic_write(out / "meta.json", lambda handle: handle.write(text))
    return meta


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def ensure_dataset(root: str | Path) -> bool:
    """Write the default dataset (:func:`generate_command`'s settings, a few seconds on
    one core) at ``root`` when ``root`` does not exist; a folder that exists is left as
    it is, so a partial or foreign dataset still fails with the loader's message.
    Returns whether it wrote one."""
    root = Path(root)
    if root.exists():
        return False
    log.info("maze dataset %s does not exist: generating it (%s)", root, generate_command(root))
    write_dataset(build_parser().parse_args(["--out", str(root), "--no-progress"]))
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worldmodels.data.generate_maze",
                                description="Write first-person 3D-maze episodes for VTA.")
    p.add_argument("--out", required=True, help="dataset folder (train/, test/, meta.json)")
    p.add_argument("--train", type=_nonnegative, default=200, help="train episodes")
    p.add_argument("--test", type=_nonnegative, default=20, help="test episodes")
    p.add_argument("--length", type=_positive, default=100, help="frames per episode")
    p.add_argument("--size", type=int, default=32, help="frame side in pixels (>= 8)")
    p.add_argument("--maze-cells", type=int, default=11, help="maze grid side (odd, >= 5)")
    p.add_argument("--fov", type=float, default=env.DEFAULT_FOV, help="field of view, degrees")
    p.add_argument("--seed", type=_nonnegative, default=0)
    p.add_argument("--shared-maze", action="store_true", help="one maze for every episode")
    p.add_argument("--chunk", type=_positive, default=32, help="episodes rendered at once")
    p.add_argument("--num-threads", type=_positive, default=None, help="OpenMP threads")
    p.add_argument("--impl", choices=env.IMPLS, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        env.generate_episodes(1, 1, size=args.size, maze_cells=args.maze_cells, fov=args.fov,
                              impl="ref")  # check the settings before writing anything
        meta = write_dataset(args)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f"wrote {meta['counts']['train']} train and {meta['counts']['test']} test episodes "
          f"to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
