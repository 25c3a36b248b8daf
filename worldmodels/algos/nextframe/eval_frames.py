"""Open-loop evaluation of a trained next-frame predictor on held-out episodes.

    python -m worldmodels.algos.nextframe.eval_frames runs/<run>/checkpoints/best.pt --sequences 128

rolls ``--sequences`` held-out windows (the validation episodes of the run's split,
drawn with ``--seed``) out for ``--horizon`` steps and writes into ``--out`` (default
``<run>/eval_frames/``):

- ``rollout_metrics.json``: per steps ahead, the mean and the 95% confidence half-width
  (1.96 standard errors over sequences) of PSNR and SSIM for the model, copy-last-frame
  and the model with shuffled actions, and of ΔPSNR (model - shuffled);
- ``rollout_metrics_vs_horizon.csv``: the same table, one row per step ahead;
- ``plots/rollout_metrics_vs_horizon.png``: PSNR and SSIM against the steps ahead,
  model, copy-last-frame and shuffled actions, the 95% intervals shaded;
- ``rollout.mp4`` and ``rollout.gif``: the first ``--media`` sequences, one per row, the
  truth on the left and the prediction on the right (a green bar over the given
  frames); without imageio-ffmpeg one warning line, and the GIF only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ...errors import WorldModelsError
from ...training.checkpoint import load_checkpoint
from ...utils.images import side_by_side_frames, write_videos
from .experiment import _fixed_subset, build_model, open_shards, split, to_unit
from ...data.frames import check_stack_fits, gather_windows
from .plots import save_rollout_plot
from .rollout import rollout_scores

SERIES = ("psnr", "ssim", "copy_last_psnr", "copy_last_ssim", "shuffled_psnr", "shuffled_ssim", "delta_psnr")


def load_predictor(path: Path, overrides: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The model of a checkpoint (``weights_only`` load) and its config with ``overrides``."""
    state = load_checkpoint(path, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    if cfg.algo.name != "nextframe":
        raise WorldModelsError(f"{path}: a {cfg.algo.name} checkpoint; this command evaluates nextframe runs.")
    for key, value in overrides.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def summarise(scores: dict[str, torch.Tensor]) -> dict[str, dict[str, list[float]]]:
    """Per series: ``mean`` and ``ci95`` (1.96 x standard error) over sequences, per step ahead."""
    summary = {}
    for name in SERIES:
        values = scores[name].double()
        sem = values.std(0, unbiased=True) / math.sqrt(values.shape[0]) if values.shape[0] > 1 else values[0] * 0
        summary[name] = {"mean": values.mean(0).tolist(), "ci95": (1.96 * sem).tolist()}
    return summary


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = Path(args.checkpoint)
    model, cfg = load_predictor(checkpoint, {"data.root": args.data_root})
    stack = int(cfg.data.stack)
    shards = open_shards(cfg)
    _, val = split(cfg, shards)
    windows = _fixed_subset(check_stack_fits(val, stack, args.horizon, "validation", shards.root), args.sequences,
                            args.seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in SERIES}
    first = None
    for start in range(0, len(windows), args.batch_size):
        frames, actions = gather_windows(shards, windows[start:start + args.batch_size], stack, args.horizon)
        frames, actions = to_unit(frames, torch.device("cpu")), torch.from_numpy(actions)
        scores, prediction = rollout_scores(model, frames, actions, stack, args.seed + start)
        for name in SERIES:
            parts[name].append(scores[name])
        if first is None:
            first = (frames, prediction)
    summary = summarise({name: torch.cat(values) for name, values in parts.items()})
    out = Path(args.out) if args.out else checkpoint.parent.parent / "eval_frames"
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(checkpoint), "data_root": str(cfg.data.root), "sequences": int(len(windows)),
              "stack": stack, "horizon": args.horizon, "seed": args.seed, "steps_ahead": list(range(1, args.horizon + 1)),
              **summary}
    (out / "rollout_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_csv(out / "rollout_metrics_vs_horizon.csv", summary, args.horizon)
    title = f"{Path(str(cfg.data.root)).name}: {len(windows)} held-out sequences, {stack} frames given"
    save_rollout_plot(out / "plots" / "rollout_metrics_vs_horizon.png", summary, title)
    _write_videos(out / "rollout", *first, stack, args.media, args.fps)
    return result


def _write_csv(path: Path, summary: dict[str, dict[str, list[float]]], horizon: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["horizon", *(f"{name}_{kind}" for name in SERIES for kind in ("mean", "ci95"))])
        for h in range(horizon):
            writer.writerow([h + 1, *(f"{summary[name][kind][h]:.5f}" for name in SERIES for kind in ("mean", "ci95"))])


def _write_videos(stem: Path, frames: torch.Tensor, prediction: torch.Tensor, stack: int, count: int,
                  fps: int) -> list[Path]:
    """The first ``count`` sequences: truth left, prediction right (the given frames on both)."""
    predicted = torch.cat([frames[:count, :stack], prediction[:count].float()], 1)
    return write_videos(stem, side_by_side_frames(frames[:count].float(), predicted, context=stack), fps)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worldmodels.algos.nextframe.eval_frames",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="runs/<run>/checkpoints/best.pt (or last.pt)")
    p.add_argument("--sequences", type=int, default=128, help="held-out windows rolled out")
    p.add_argument("--horizon", type=int, default=32, help="steps ahead")
    p.add_argument("--seed", type=int, default=0, help="draws the windows and the shuffled actions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--media", type=int, default=4, help="sequences in the videos")
    p.add_argument("--fps", type=int, default=8, help="frames per second of the videos")
    p.add_argument("--data-root", default=None, help="the frame dataset, if not the run's data.root")
    p.add_argument("--out", default=None, help="output folder (default <run>/eval_frames)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if min(args.sequences, args.horizon, args.batch_size, args.media, args.fps) < 1:
        print("error: --sequences, --horizon, --batch-size, --media and --fps must be >= 1.", file=sys.stderr)
        return 2
    try:
        result = evaluate(args)
    except (WorldModelsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    h = [0, min(3, args.horizon - 1), args.horizon - 1]
    for i in sorted(set(h)):
        print(f"h={i + 1}: PSNR model {result['psnr']['mean'][i]:.2f} ± {result['psnr']['ci95'][i]:.2f}, copy-last "
              f"{result['copy_last_psnr']['mean'][i]:.2f}, shuffled {result['shuffled_psnr']['mean'][i]:.2f}; SSIM "
              f"model {result['ssim']['mean'][i]:.3f}, copy-last {result['copy_last_ssim']['mean'][i]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
