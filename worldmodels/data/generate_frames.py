"""Record a Procgen frame dataset with a random policy or a trained agent's (envpool's Procgen games).

    python -m worldmodels.data.generate_frames --game coinrun --steps 100000 --out data/coinrun
    python -m worldmodels.data.generate_frames --game coinrun --steps 100000 --out data/coinrun_agent \
        --policy runs/<date>/<time>_dreamer_coinrun [--temperature 0] [--epsilon 0.1]

writes memory-mapped shards of whole episodes and ``manifest.json``
(:mod:`worldmodels.data.frames`). The manifest is rewritten after each shard, so an
interrupted run leaves a readable dataset; ``--resume`` continues it up to ``--steps``
(the episodes in progress when it stopped are lost, a new seed is drawn for the rest).
An existing dataset is never overwritten.

Procgen renders 64x64 RGB; ``--size 84 --gray`` stores the 84x84 grayscale frames of
older setups instead (BT.601 luma, then a bilinear resize), recorded in the manifest's
``transform`` and ``frame_shape`` (``[1, 84, 84]``), which the loader and the models read.

The env is the factory's ``procgen`` suite (:mod:`worldmodels.envs.procgen`). Actions are
uniformly random by default; ``--policy`` (a checkpoint, or a run directory: its
``checkpoints/last.pt``) records with the agent of a run on the same game, acting as
``python -m worldmodels.evaluate`` plays it (:mod:`worldmodels.data.frame_policy`), and
the manifest's ``policy`` says which (``--resume`` keeps it).

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

from ..envs.factory import EnvSpec, make_env
from ..envs.procgen import GAMES, MODES, NATIVE_SIZE, check_options
from ..envs.procgen import ProcgenUnavailableError, make_procgen  # noqa: F401  (its names before envs.procgen)
from ..envs.spaces import VectorEnv
from ..errors import WorldModelsError
from ..rl.collector import Collector
from .frame_policy import FramePolicy, agent_policy, check_same_policy
from .frames import MANIFEST, FrameDataError, new_manifest, read_manifest, write_json_atomic, write_shard

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as OpenCV's RGB2GRAY
SEED_STRIDE = 100_003  # a resumed segment's seed: seed + segment * SEED_STRIDE (envs seed + 0..num_envs-1)


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


def _start(out: Path, args: argparse.Namespace, options: dict[str, Any], env: VectorEnv,
           policy: FramePolicy) -> dict[str, Any]:
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
        check_same_policy(out / MANIFEST, manifest.get("policy"), policy.record)
        return manifest
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    channels = 1 if args.gray else int(env.obs_space["image"][0][-1])
    manifest = new_manifest(args.game, options, policy.record, (channels, args.size, args.size), env.act_space.size)
    manifest["transform"] = frame_transform(args.size, args.gray)
    return manifest


class EpisodeFrames:
    """A collector hook (``on_step``) that gathers each env's episode, frames stored as
    :func:`transform_frames` makes them and the actions taken, and hands finished ones to
    ``writer``."""

    def __init__(self, num_envs: int, writer: ShardWriter, size: int, gray: bool):
        self.writer, self.size, self.gray = writer, size, gray
        self.frames: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.actions: list[list[int]] = [[] for _ in range(num_envs)]

    @property
    def running(self) -> int:
        """Frames of the episodes in progress."""
        return sum(len(f) for f in self.frames)

    def __call__(self, step: dict[str, np.ndarray]) -> None:
        frames = transform_frames(step["image"].transpose(0, 3, 1, 2), self.size, self.gray)
        actions = step["action"].argmax(-1)
        for i in range(len(frames)):
            if step["is_first"][i]:
                self.frames[i], self.actions[i] = [], []
            self.frames[i].append(frames[i].copy())
            if step["is_last"][i]:   # its action is never taken: the env resets
                self.writer.add_episode(self.frames[i], self.actions[i])
                self.frames[i], self.actions[i] = [], []
            else:
                self.actions[i].append(int(actions[i]))

    def finish(self) -> None:
        """Store the episodes still running, truncated (their last frame marked done)."""
        for i, frames in enumerate(self.frames):
            if len(frames) >= 2:
                self.writer.add_episode(frames, self.actions[i][: len(frames) - 1])
            self.frames[i], self.actions[i] = [], []
        self.writer.flush()


def record(env: VectorEnv, writer: ShardWriter, total_steps: int, policy: FramePolicy, seed: int, progress: bool,
           size: int = NATIVE_SIZE, gray: bool = False) -> float:
    """Step ``env`` with ``policy`` (uniformly random actions seeded ``seed`` when it has no
    agent) until ``total_steps`` frames are stored (each passed through
    :func:`transform_frames`); returns the env steps per second. Episodes still running at
    the end are stored truncated (their last frame marked done)."""
    collector = Collector(env, seed=seed, replayable=False)
    episodes = EpisodeFrames(env.num_envs, writer, size, gray)
    collector.on_step.append(episodes)
    stored = writer.manifest["steps"]
    bar = tqdm(total=total_steps, initial=stored, unit="step", disable=not progress, desc="frames")
    start, stepped = time.perf_counter(), 0
    while stored + writer.pending + episodes.running < total_steps:
        collector.step(policy.agent, policy.mode, **policy.kwargs)
        stepped += env.num_envs
        bar.update(env.num_envs)
        stored = writer.manifest["steps"]
    episodes.finish()
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


def procgen_spec(args: argparse.Namespace, env_options: dict[str, Any], num_envs: int, seed: int) -> EnvSpec:
    """The factory's spec of the recorded env."""
    return EnvSpec("procgen", args.game, num_envs=num_envs, seed=seed, distribution_mode=args.mode,
                   **check_options(env_options))


def frame_policy(args: argparse.Namespace, env: VectorEnv) -> FramePolicy:
    """Uniformly random, or with ``--policy`` the checkpoint's agent."""
    if args.policy is None:
        if args.temperature is not None or args.epsilon:
            raise ValueError("--temperature and --epsilon choose how an agent acts; give --policy <checkpoint> too.")
        return FramePolicy()
    return agent_policy(args.policy, args.game, env.act_space, temperature=args.temperature, epsilon=args.epsilon)


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or continue) the dataset of ``args``; returns the manifest."""
    out = Path(args.out)
    options = {"num_levels": args.num_levels, "start_level": args.start_level, **parse_options(args.option)}
    options["mode"] = args.mode
    env_options = {k: v for k, v in options.items() if k != "mode"}
    with make_env(procgen_spec(args, env_options, 1, args.seed)) as probe:
        policy = frame_policy(args, probe)
        manifest = _start(out, args, options, probe, policy)
    if manifest["steps"] >= args.steps:
        print(f"{out} already holds {manifest['steps']} >= {args.steps} steps; nothing to do.")
        return manifest
    segment_seed = args.seed + len(manifest["seeds"]) * SEED_STRIDE
    policy.reseed(segment_seed)
    manifest["seeds"].append({"seed": segment_seed, "num_envs": args.num_envs, "first_shard": len(manifest["shards"])})
    manifest["complete"] = False
    writer = ShardWriter(out, manifest, args.shard_steps)
    with make_env(procgen_spec(args, env_options, args.num_envs, segment_seed)) as env:
        rate = record(env, writer, args.steps, policy, segment_seed, progress=not args.no_progress,
                      size=args.size, gray=args.gray)
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    print(f"{out}: {manifest['steps']} steps, {manifest['episodes']} episodes in {len(manifest['shards'])} shards; "
          f"{rate:.0f} env steps/s with {args.num_envs} envs ({'agent' if args.policy else 'random'} policy)")
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
    p.add_argument("--option", action="append", default=[],
                   help="another Procgen option, key=value (use_backgrounds=false, use_sequential_levels=true, ...)")
    p.add_argument("--size", type=int, default=NATIVE_SIZE,
                   help=f"stored frame size in pixels (Procgen renders {NATIVE_SIZE}; 84 for the older setups)")
    p.add_argument("--gray", action="store_true", help="store one grayscale channel (BT.601 luma)")
    p.add_argument("--shard-steps", type=int, default=10_000, help="frames per shard (whole episodes)")
    p.add_argument("--policy", default=None,
                   help="record with the agent of this checkpoint or run directory (a run on --game); default random")
    p.add_argument("--temperature", type=float, default=None,
                   help="with --policy: sampling temperature (0: greedy; default: the family's evaluation setting)")
    p.add_argument("--epsilon", type=float, default=0.0,
                   help="with --policy: probability of a uniformly random action instead of the agent's")
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
    except (FileExistsError, ValueError, ImportError, WorldModelsError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
