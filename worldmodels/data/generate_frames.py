"""Record a Procgen frame dataset with a random policy (envpool's Procgen games).

    python -m worldmodels.data.generate_frames --game coinrun --steps 100000 --out data/coinrun

writes memory-mapped shards of whole episodes and ``manifest.json``
(:mod:`worldmodels.data.frames`). The manifest is rewritten after each shard, so an
interrupted run leaves a readable dataset; ``--resume`` continues it up to ``--steps``
(the episodes in progress when it stopped are lost, a new seed is drawn for the rest).
An existing dataset is never overwritten.

Procgen renders 64x64 RGB; ``--size 84 --gray`` stores the 84x84 grayscale frames of
older setups instead (BT.601 luma, then a bilinear resize), recorded in the manifest's
``transform`` and ``frame_shape`` (``[1, 84, 84]``), which the loader and the models read.

Procgen comes from envpool (``CoinrunEasy-v0``, ...), which needs the system Qt5
runtime: ``sudo apt-get install libqt5gui5`` on Debian/Ubuntu.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import WorldModelsError
from .frames import MANIFEST, FrameDataError, new_manifest, read_manifest, write_json_atomic, write_shard

GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot", "heist",
         "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
MODES = ("easy", "hard")
NATIVE_SIZE = 64       # Procgen's frames: 64x64 RGB
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as OpenCV's RGB2GRAY
SEED_STRIDE = 100_003  # a resumed segment's seed: seed + segment * SEED_STRIDE (envs seed + 0..num_envs-1)


class ProcgenUnavailableError(WorldModelsError, ImportError):
    """envpool or the Qt5 runtime its Procgen games link is missing."""


def _unavailable(error: BaseException) -> ProcgenUnavailableError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "qt" in detail.lower():
        return ProcgenUnavailableError(f"Procgen (envpool) needs the system Qt5 runtime: sudo apt-get install "
                                       f"libqt5gui5 (Debian/Ubuntu) [{detail}]")
    return ProcgenUnavailableError(f"Procgen needs envpool >= 1.0 (pip install envpool; Linux, Python >= 3.11) "
                                   f"and the Qt5 runtime (sudo apt-get install libqt5gui5) [{detail}]")


def make_procgen(game: str, mode: str, num_envs: int, seed: int, options: dict[str, Any]) -> Any:
    """An envpool gymnasium batch of ``num_envs`` Procgen ``game`` envs (``mode`` easy or
    hard); ``options`` are envpool's Procgen settings (``num_levels``, ``start_level``,
    ``use_backgrounds``, ...)."""
    if game not in GAMES:
        raise ValueError(f"--game {game!r} is not a Procgen game: {', '.join(GAMES)}.")
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} is not one of {', '.join(MODES)}.")
    try:
        import envpool

        return envpool.make_gymnasium(f"{game.capitalize()}{mode.capitalize()}-v0", num_envs=num_envs, seed=seed,
                                      **options)
    except (ImportError, OSError) as error:
        raise _unavailable(error) from None


def frame_transform(size: int, gray: bool) -> dict[str, Any]:
    """The manifest's record of how frames were stored (``transform``)."""
    return {"size": size, "gray": gray, "resize": "bilinear (antialiased)" if size != NATIVE_SIZE else "none",
            "gray_weights": list(GRAY_WEIGHTS) if gray else None}


def transform_frames(frames: np.ndarray, size: int, gray: bool) -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` RGB -> uint8 ``[N, 1 if gray else 3, size, size]``: luma
    (BT.601 weights) when ``gray``, then a bilinear, antialiased resize when ``size`` is
    not ``H``; unchanged frames are returned as they are."""
    if not gray and frames.shape[-1] == size and frames.shape[-2] == size:
        return frames
    import torch
    import torch.nn.functional as F

    images = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if gray:
        images = (images * torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images.round().clamp(0, 255).to(torch.uint8).numpy()


class ShardWriter:
    """Collects whole episodes and writes a shard each time ``shard_steps`` frames are
    gathered, rewriting the manifest after each."""

    def __init__(self, root: Path, manifest: dict[str, Any], shard_steps: int):
        self.root, self.manifest, self.shard_steps = root, manifest, shard_steps
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []

    @property
    def pending(self) -> int:
        return sum(len(f) for f in self._frames)

    def add_episode(self, frames: list[np.ndarray], actions: list[int]) -> None:
        """An episode of ``len(actions) + 1`` frames (the action after the last is 0)."""
        self._frames.append(np.stack(frames))
        self._actions.append(np.asarray([*actions, 0], np.int64))
        if self.pending >= self.shard_steps:
            self.flush()

    def flush(self) -> None:
        if not self._frames:
            return
        done = np.concatenate([np.arange(len(a)) == len(a) - 1 for a in self._actions])
        entry = write_shard(self.root, len(self.manifest["shards"]), np.concatenate(self._frames),
                            np.concatenate(self._actions), done)
        self.manifest["shards"].append(entry)
        self.manifest["steps"] += entry["steps"]
        self.manifest["episodes"] += entry["episodes"]
        write_json_atomic(self.root / MANIFEST, self.manifest)
        self._frames, self._actions = [], []


def _start(out: Path, args: argparse.Namespace, options: dict[str, Any], env: Any) -> dict[str, Any]:
    """The manifest to continue: a new one, or with ``--resume`` the existing one."""
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if not args.resume:
            raise FileExistsError(f"{out} already holds a frame dataset ({manifest['steps']} steps); choose another "
                                  "--out, delete it, or add --resume to continue it.")
        expected = {"game": args.game, "options": options,
                    "transform": frame_transform(args.size, args.gray)}
        manifest.setdefault("transform", frame_transform(NATIVE_SIZE, False))   # datasets from before the key
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise FrameDataError(f"{out / MANIFEST}: key {key!r} is {manifest.get(key)!r}, not {value!r}; "
                                     "resume with the options the dataset was started with.")
        return manifest
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    channels = 1 if args.gray else int(env.observation_space.shape[0])
    manifest = new_manifest(args.game, options, "random (uniform over the actions)", (channels, args.size, args.size),
                            int(env.action_space.n))
    manifest["transform"] = frame_transform(args.size, args.gray)
    return manifest


def record(env: Any, writer: ShardWriter, total_steps: int, rng: np.random.Generator, progress: bool,
           size: int = NATIVE_SIZE, gray: bool = False) -> float:
    """Step ``env`` with uniform random actions until ``total_steps`` frames are stored
    (each passed through :func:`transform_frames`); returns the env steps per second.
    Episodes still running at the end are stored truncated (their last frame marked done)."""
    num_actions = int(env.action_space.n)
    obs, info = env.reset()
    obs = transform_frames(obs, size, gray)
    num_envs = len(obs)
    frames: list[list[np.ndarray]] = [[obs[i].copy()] for i in range(num_envs)]
    actions: list[list[int]] = [[] for _ in range(num_envs)]
    resetting = np.zeros(num_envs, bool)
    stored = writer.manifest["steps"]
    bar = tqdm(total=total_steps, initial=stored, unit="step", disable=not progress, desc="frames")
    start, stepped = time.perf_counter(), 0
    while stored + writer.pending + sum(len(f) for f in frames) < total_steps:
        action = rng.integers(0, num_actions, num_envs)
        obs, _, terminated, truncated, info = env.step(action)
        obs = transform_frames(obs, size, gray)
        stepped += num_envs
        for row, i in enumerate(info["env_id"]):
            if resetting[i]:   # envpool's reset call: the action was ignored, a new episode starts
                frames[i], actions[i], resetting[i] = [obs[row].copy()], [], False
                continue
            actions[i].append(int(action[row]))
            frames[i].append(obs[row].copy())
            if terminated[row] or truncated[row]:
                writer.add_episode(frames[i], actions[i])
                frames[i], actions[i], resetting[i] = [], [], True
        bar.update(num_envs)
        stored = writer.manifest["steps"]
    for i in range(num_envs):
        if len(frames[i]) >= 2:
            writer.add_episode(frames[i], actions[i])
    writer.flush()
    bar.close()
    return stepped / max(time.perf_counter() - start, 1e-9)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (``num_levels=200``, ``use_backgrounds=false``) as envpool options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option {pair!r}: expected key=value, e.g. num_levels=200.")
        lowered = value.lower()
        options[key] = lowered == "true" if lowered in ("true", "false") else int(value)
    return options


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or continue) the dataset of ``args``; returns the manifest."""
    out = Path(args.out)
    options = {"num_levels": args.num_levels, "start_level": args.start_level, **parse_options(args.option)}
    options["mode"] = args.mode
    env_options = {k: v for k, v in options.items() if k != "mode"}
    probe = make_procgen(args.game, args.mode, 1, args.seed, env_options)
    manifest = _start(out, args, options, probe)
    if manifest["steps"] >= args.steps:
        print(f"{out} already holds {manifest['steps']} >= {args.steps} steps; nothing to do.")
        return manifest
    segment_seed = args.seed + len(manifest["seeds"]) * SEED_STRIDE
    manifest["seeds"].append({"seed": segment_seed, "num_envs": args.num_envs, "first_shard": len(manifest["shards"])})
    manifest["complete"] = False
    env = make_procgen(args.game, args.mode, args.num_envs, segment_seed, env_options)
    writer = ShardWriter(out, manifest, args.shard_steps)
    rate = record(env, writer, args.steps, np.random.default_rng(segment_seed), progress=not args.no_progress,
                  size=args.size, gray=args.gray)
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    print(f"{out}: {manifest['steps']} steps, {manifest['episodes']} episodes in {len(manifest['shards'])} shards; "
          f"{rate:.0f} env steps/s with {args.num_envs} envs")
    return manifest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worldmodels.data.generate_frames", description=__doc__.split("\n\n")[0])
    p.add_argument("--game", default="coinrun", help=f"one of {', '.join(GAMES)}")
    p.add_argument("--mode", default="easy", choices=MODES, help="Procgen distribution mode")
    p.add_argument("--steps", type=int, default=100_000, help="frames to store in all")
    p.add_argument("--out", required=True, help="dataset folder (must not hold a dataset unless --resume)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-levels", type=int, default=0, help="0: unlimited levels")
    p.add_argument("--start-level", type=int, default=0)
    p.add_argument("--option", action="append", default=[], help="other envpool Procgen option, key=value")
    p.add_argument("--size", type=int, default=NATIVE_SIZE,
                   help=f"stored frame size in pixels (Procgen renders {NATIVE_SIZE}; 84 for the older setups)")
    p.add_argument("--gray", action="store_true", help="store one grayscale channel (BT.601 luma)")
    p.add_argument("--shard-steps", type=int, default=10_000, help="frames per shard (whole episodes)")
    p.add_argument("--resume", action="store_true", help="continue an existing dataset up to --steps")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.steps < 2 or args.num_envs < 1 or args.shard_steps < 1 or args.size < 8:
        print("error: --steps must be >= 2, --num-envs and --shard-steps >= 1, --size >= 8.", file=sys.stderr)
        return 2
    try:
        generate(args)
    except (FileExistsError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
