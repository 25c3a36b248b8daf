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
    args = parse_args(argv)
    if args.num_samples < 0:
        raise SystemExit(f"error: --num_samples {args.num_samples} must be >= 0")
    state = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.create(state["config"])
    device = resolve_device(args.device)
    factories = registry.factories(str(cfg.algo.name))
    model = factories.model(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    evaluator = factories.evaluator(cfg, device)
    out = args.out or args.checkpoint.resolve().parent.parent / "media"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    try:
        with torch.no_grad():
            paths = evaluator.visualize(model, out, args.idx, args.num_samples)
    finally:
        evaluator.close()
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
