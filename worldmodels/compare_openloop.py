"""One open-loop evaluation for every family: train each family's world model on the same
recorded frames, roll it out open-loop on the same held-out sequences, and write one table.

    python -m worldmodels.compare_openloop --data data/coinrun --families all --updates 400 \\
        --batch 16 --window 12 --context 4 --horizon 16 --sequences 128 --size tiny --seed 0 \\
        --out runs/compare_openloop

The frames are a dataset of :mod:`worldmodels.data.generate_frames`, split by episode
(``--val-ratio``, seeded by ``--split-seed``, as the next-frame experiments split it).
Every family trains ``--updates`` updates on the same windows of ``--window`` frames from
the training episodes, in the same order (batch ``n`` is drawn from ``--seed`` and ``n``),
then rolls ``--sequences`` held-out windows out from ``--context`` given frames for
``--horizon`` steps (:func:`worldmodels.training.openloop.score_rollouts`). ``--out`` gets:

- ``table.csv``, ``table.md``: per family its parameters, updates, training seconds
  (the updates alone), whether it uses the actions, PSNR and SSIM at steps ahead 1, 4, 8
  and 16 with 95% intervals, ΔPSNR (recorded minus shuffled actions) at 1 and 16;
  copying the last given frame is a row;
- ``openloop_vs_horizon.png``: PSNR and SSIM against the steps ahead, one line per family
  and copy-last;
- ``rollouts.gif``: the truth, then one row per family, for ``--media`` sequences;
- ``summary.json``: the settings, the data, every family's scores per step ahead.

Families reach this command only through the registry
(:func:`worldmodels.algos.registry.openloop_builder`). They run one after another; one that
crashes is reported in the table and the output, the others still run, and the command
exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .algos import registry
from .data.frames import FrameShards, gather_windows, split_episodes, window_starts
from .errors import WorldModelsError
from .training.openloop import (
    SCORES, SIZES, image_scores, mean_and_ci95, parameter_count, score_rollouts, unknown_size,
)
from .utils.openloop_report import write_gif, write_plot, write_tables

EVAL_BATCH = 32


class CompareError(WorldModelsError, ValueError):
    """A setting or dataset the comparison cannot use; one line that says which."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worldmodels.compare_openloop", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a frame dataset (python -m worldmodels.data.generate_frames)")
    p.add_argument("--families", default="all", help="all, or names separated by commas")
    p.add_argument("--updates", type=int, default=400, help="training updates per family")
    p.add_argument("--batch", type=int, default=16, help="windows per update")
    p.add_argument("--window", type=int, default=12, help="frames per training window")
    p.add_argument("--context", type=int, default=4, help="given frames before each rollout")
    p.add_argument("--horizon", type=int, default=16, help="steps rolled out")
    p.add_argument("--sequences", type=int, default=128, help="held-out windows rolled out")
    p.add_argument("--size", default="tiny", help="model size: tiny (CPU) or small")
    p.add_argument("--seed", type=int, default=0, help="seeds the models, the training windows and the held-out draw")
    p.add_argument("--val-ratio", type=float, default=0.1, help="fraction of episodes held out")
    p.add_argument("--split-seed", type=int, default=0, help="seeds the episode split")
    p.add_argument("--media", type=int, default=4, help="sequences in rollouts.gif")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/compare_openloop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def check_args(args: argparse.Namespace) -> None:
    """One line naming the first setting out of range."""
    for name in ("batch", "window", "context", "horizon", "sequences", "media"):
        if getattr(args, name) < 1:
            raise CompareError(f"--{name}={getattr(args, name)} must be >= 1.")
    if args.updates < 0:
        raise CompareError(f"--updates={args.updates} must be >= 0.")
    if args.window < 2:
        raise CompareError(f"--window={args.window} must be >= 2 (a frame and the one after it).")
    if not 0 < args.val_ratio < 1:
        raise CompareError(f"--val-ratio={args.val_ratio} must lie in (0, 1).")
    if args.size not in SIZES:
        raise CompareError(f"--{unknown_size(args.size)}")


def select_families(spec: str) -> list[str]:
    """``all`` or comma-separated names -> registered open-loop families (one-line error
    naming the registered ones for any other)."""
    known = registry.openloop_names()
    if spec.strip() == "all":
        return known
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise CompareError(f"--families is empty; give all or some of {', '.join(known)}.")
    for name in names:
        registry.openloop_builder(name)   # raises, naming the registered families
    return list(dict.fromkeys(names))


class Frames:
    """The dataset, its episode split, the training windows and the held-out sequences."""

    def __init__(self, args: argparse.Namespace):
        self.shards = FrameShards(args.data)
        self.train_episodes, self.val_episodes = split_episodes(self.shards.episodes, args.val_ratio, args.split_seed)
        self.train_windows = self._windows(self.train_episodes, args.window, "training", "--window")
        span = args.context + args.horizon
        held_out = self._windows(self.val_episodes, span, "held-out", "--context + --horizon")
        if len(held_out) > args.sequences:
            chosen = np.random.default_rng(args.seed).choice(len(held_out), args.sequences, replace=False)
            held_out = held_out[np.sort(chosen)]
        frames, actions = gather_windows(self.shards, held_out, 1, span - 1)
        self.eval_frames, self.eval_actions = torch.from_numpy(frames), torch.from_numpy(actions)
        self.batch, self.window, self.seed = args.batch, args.window, args.seed

    def _windows(self, episodes, length: int, split: str, option: str) -> np.ndarray:
        windows = window_starts(episodes, 1, length - 1)
        if len(windows) == 0:
            longest = max((e.length for e in episodes), default=0)
            raise CompareError(f"{self.shards.root}: no {split} episode holds {length} frames (the longest has "
                               f"{longest}); lower {option} or record more steps.")
        return windows

    def train_batch(self, update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``update``'s windows: ``frames [B, T, C, H, W]`` in [0, 1] and ``actions
        [B, T]`` (the last, after the window's last frame, is 0: never used)."""
        rng = np.random.default_rng([self.seed, update])
        chosen = self.train_windows[rng.integers(0, len(self.train_windows), self.batch)]
        frames, actions = gather_windows(self.shards, chosen, 1, self.window - 1)
        actions = np.concatenate([actions, np.zeros_like(actions[:, :1])], 1)
        return torch.from_numpy(frames).float().div_(255.0), torch.from_numpy(actions)

    def eval_batches(self):
        """Held-out ``(frames [B, K + H, ...] in [0, 1], actions [B, K + H - 1])`` batches."""
        for start in range(0, len(self.eval_frames), EVAL_BATCH):
            yield (start, self.eval_frames[start:start + EVAL_BATCH].float().div(255.0),
                   self.eval_actions[start:start + EVAL_BATCH])


def train(model, frames: Frames, updates: int, progress: bool) -> tuple[float, dict[str, float]]:
    """``updates`` train steps on the shared windows; the seconds spent in them and the last losses."""
    seconds, losses = 0.0, {}
    with tqdm(range(updates), desc=f"train {model.name}", unit="update", disable=not progress) as bar:
        for update in bar:
            batch = frames.train_batch(update)
            start = time.perf_counter()
            losses = model.train_step(*batch)
            seconds += time.perf_counter() - start
            bar.set_postfix({name: f"{value:.3g}" for name, value in list(losses.items())[:3]})
    return seconds, {name: float(value) for name, value in losses.items()}


def score(model, frames: Frames, context: int, seed: int, media: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scores ``[N, H]`` per :data:`SCORES` name over the held-out sequences, and the
    rollouts of the first ``media`` of them."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in SCORES}
    shown = None
    for start, batch, actions in frames.eval_batches():
        scores, prediction = score_rollouts(model, batch, actions, context, seed + start)
        for name in SCORES:
            parts[name].append(scores[name])
        if shown is None:
            shown = prediction[:media].float().cpu()
    return {name: torch.cat(values) for name, values in parts.items()}, shown


def run_family(name: str, args: argparse.Namespace, frames: Frames) -> dict[str, Any]:
    """Build, train and score one family; a crash becomes ``status: crashed: ...``."""
    result: dict[str, Any] = {"family": name, "updates": args.updates, "status": "ok"}
    try:
        build = registry.openloop_builder(name)
        model = build(tuple(frames.shards.frame_shape), frames.shards.num_actions, args.size, args.seed, args.device)
        result.update(parameters=parameter_count(model), uses_actions=bool(model.uses_actions))
        result["train_seconds"], result["last_losses"] = train(model, frames, args.updates, not args.no_progress)
        start = time.perf_counter()
        scores, result["media"] = score(model, frames, args.context, args.seed, args.media)
        result["score_seconds"] = time.perf_counter() - start
        result["scores"] = {series: mean_and_ci95(values) for series, values in scores.items()}
    except Exception as error:   # one family's failure must not stop the others
        detail = str(error).splitlines()[0] if str(error) else ""
        result["status"] = f"crashed: {type(error).__name__}: {detail}"
        print(f"{name}: {result['status']}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    return result


def copy_last(frames: Frames, context: int) -> dict[str, Any]:
    """The copy-last-frame baseline's row: PSNR and SSIM of the last given frame."""
    parts: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": []}
    for _, batch, _ in frames.eval_batches():
        truth = batch[:, context:]
        psnr, ssim = image_scores(batch[:, context - 1:context].expand_as(truth), truth)
        parts["psnr"].append(psnr), parts["ssim"].append(ssim)
    scores = {name: mean_and_ci95(torch.cat(values)) for name, values in parts.items()}
    return {"family": "copy_last", "status": "baseline", "parameters": 0, "updates": 0, "train_seconds": 0.0,
            "uses_actions": False, "scores": scores}


def summary(args: argparse.Namespace, frames: Frames, results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    settings = {key: value for key, value in vars(args).items() if key != "no_progress"}
    data = {"root": str(frames.shards.root), "frame_shape": list(frames.shards.frame_shape),
            "num_actions": frames.shards.num_actions, "steps": frames.shards.steps,
            "train_episodes": len(frames.train_episodes), "held_out_episodes": len(frames.val_episodes),
            "train_windows": len(frames.train_windows), "sequences": len(frames.eval_frames)}
    rows = [{key: value for key, value in result.items() if key != "media"} for result in results]
    return {"settings": settings, "data": data, "wall_seconds": wall, "steps_ahead": list(range(1, args.horizon + 1)),
            "families": rows}


def compare(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Path]:
    """Run every selected family and write the outputs; returns the results and ``--out``."""
    check_args(args)
    names = select_families(args.families)
    started = time.perf_counter()
    frames = Frames(args)
    print(f"{frames.shards.root}: {len(frames.train_episodes)} training episodes ({len(frames.train_windows)} windows "
          f"of {args.window}), {len(frames.eval_frames)} held-out sequences; families: {', '.join(names)}")
    results = [run_family(name, args, frames) for name in names]
    results.append(copy_last(frames, args.context))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"{frames.shards.root.name}: {len(frames.eval_frames)} held-out sequences, {args.context} frames given, "
             f"{args.updates} updates of {args.batch} x {args.window} frames, size {args.size}")
    write_tables(out, results, args.horizon, title)
    write_plot(out / "openloop_vs_horizon.png", results, title)
    write_gif(out / "rollouts.gif", frames.eval_frames[:args.media].float().div(255.0), results, args.context)
    wall = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary(args, frames, results, wall), indent=2) + "\n")
    return results, out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        results, out = compare(args)
    except (WorldModelsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((out / "table.md").read_text())
    crashed = [r["family"] for r in results if r["status"].startswith("crashed")]
    if crashed:
        print(f"crashed: {', '.join(crashed)} (see the table's status column); the other families ran.",
              file=sys.stderr)
        return 1
    print(f"written to {out}/: table.csv, table.md, openloop_vs_horizon.png, rollouts.gif, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
