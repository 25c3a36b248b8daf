"""``python -m worldmodels.visualize <checkpoint> [--idx 0] [--num_samples 10]``.

Rebuilds the model and its held-out data from the configuration stored in the
checkpoint and writes the family's pictures (for VTA ``vis_seq_<idx>.png`` with the
true events and predicted boundaries marked, and ``jumpy_<idx>.png``) into the
run's ``media/`` folder or ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .algos import registry
from .errors import INTERRUPTED, WorldModelsError
from .training.checkpoint import load_checkpoint
from .training.precision import resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worldmodels.visualize", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoints/last.pt or best.pt of a run")
    parser.add_argument("--idx", type=int, default=0, help="held-out sequence to show")
    parser.add_argument("--num_samples", type=int, default=3, help="prior samples to draw")
    parser.add_argument("--out", type=Path, default=None, help="folder for the pictures (default: <run>/media)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    return parser.parse_args(argv)


def main(argv=None) -> list[Path]:
    """Draw the pictures; a user mistake or a run with nothing to draw ends with one ``error:`` line."""
    args = parse_args(argv)
    try:
        paths = draw(args)
    except (WorldModelsError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {' '.join(str(error).split())}") from None
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED) from None
    for path in paths:
        print(path)
    return paths


def draw(args: argparse.Namespace) -> list[Path]:
    """Rebuild the checkpoint's model and evaluator and write its pictures; ValueError when
    the run's family has nothing to draw."""
    if args.num_samples < 0:
        raise ValueError(f"--num_samples {args.num_samples} must be >= 0")
    state = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.create(state["config"])
    device = resolve_device(args.device)
    if not registry.family(str(cfg.algo.name)).visualizer:
        raise ValueError(_nothing_to_draw(args.checkpoint, str(cfg.algo.name)))
    factories = registry.factories(str(cfg.algo.name))
    model = factories.model(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    evaluator = factories.evaluator(cfg, device)
    out = args.out or args.checkpoint.resolve().parent.parent / "media"
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    try:
        with torch.no_grad():
            paths = evaluator.visualize(model, out, args.idx, args.num_samples)
    finally:
        evaluator.close()
    if not paths:
        if made:
            out.rmdir()
        raise ValueError(_nothing_to_draw(args.checkpoint, str(cfg.algo.name)))
    return paths


def _nothing_to_draw(checkpoint: Path, algo: str) -> str:
    return (f"{checkpoint} is a {algo} run with nothing to draw (its evaluator makes no pictures of this run, "
            "e.g. one on vector observations); visualize draws VTA boundaries, VAE reconstructions and image "
            "rollouts.")


if __name__ == "__main__":
    main()
