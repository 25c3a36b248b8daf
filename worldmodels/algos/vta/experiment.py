"""Factories that let :func:`worldmodels.training.loop.fit` train VTA on bouncing
balls (generated on the fly) or on 3D-maze episodes (from npz files)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig

from ...data.bouncing_balls import BouncingBallsProvider, make_eval_set, renderer_kwargs
from ...data.stream import StepStream
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from .evaluate import VTAEvaluator
from .model import VTA, VTAConfig

BALL_EVENTS = ("any", "ball", "wall")
MAZE_EVENTS = ("turn", "junction", "any")


def build_model(cfg: DictConfig) -> VTA:
    return VTA(dataclass_from_config(VTAConfig, cfg.model))


def sequence_length(cfg: DictConfig) -> int:
    """Frames per training sequence: context + modelled window + margin."""
    return int(cfg.model.init_size) + int(cfg.model.seq_size) + int(cfg.algo.margin)


def ball_events(batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Ground-truth boundaries of bouncing balls: collisions of the chosen kind."""
    if kind not in BALL_EVENTS:
        raise ValueError(f"env.events={kind!r} is not one of {BALL_EVENTS}.")
    if kind == "ball":
        return batch["ball_collisions"]
    if kind == "wall":
        return batch["wall_collisions"]
    return batch["ball_collisions"] | batch["wall_collisions"]


def maze_events(batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Ground-truth boundaries in the maze: the first frame after a turn (``turn[t]``
    marks the action taken after frame t, so the new view starts a segment at
    t + 1), the frames at junctions, or either."""
    if kind not in MAZE_EVENTS:
        raise ValueError(f"env.events={kind!r} is not one of {MAZE_EVENTS}.")
    after_turn = torch.nn.functional.pad(batch["turn"][:, :-1], (1, 0))
    if kind == "turn":
        return after_turn
    if kind == "junction":
        return batch["junction"]
    return after_turn | batch["junction"]


class WithEvents(StepStream):
    """A step-indexed stream whose batches also carry ``events`` (bool ``[B, T]``),
    the ground-truth boundaries that the control runs (``model.boundary_source``
    ``events`` or ``random``) train on."""

    def __init__(self, stream: StepStream, events: Callable[[dict], torch.Tensor]):
        self.stream, self.events, self.step = stream, events, 0

    def batch(self, step: int) -> dict:
        batch = self.stream.batch(step)
        return {**batch, "events": self.events(batch)}


def _ensure_maze(env: DictConfig) -> None:
    """``env.generate_if_missing``: write the default maze dataset (seconds) where
    ``env.root`` does not exist yet."""
    if env.get("generate_if_missing", False):
        from ...data.generate_maze import ensure_dataset

        ensure_dataset(str(env.root))


def build_data(cfg: DictConfig, device: torch.device) -> Any:
    env = cfg.env
    if env.name == "bouncing_balls":
        stream = BouncingBallsProvider(
            int(cfg.train.batch_size), sequence_length(cfg),
            chunk_sequences=int(env.chunk_sequences), refresh_steps=int(env.refresh_steps),
            seed=int(cfg.seed), device=device, **renderer_kwargs(env),
        )
        return WithEvents(stream, lambda batch: ball_events(batch, str(env.events)))
    if env.name == "maze":
        from ...data.maze import MazeProvider

        _ensure_maze(env)
        stream = MazeProvider(str(env.root), int(cfg.train.batch_size), sequence_length(cfg),
                              seed=int(cfg.seed), size=int(env.size), device=device)
        return WithEvents(stream, lambda batch: maze_events(batch, str(env.events)))
    raise ValueError(f"env.name={env.name!r}: VTA trains on 'bouncing_balls' or 'maze'.")


def held_out_set(cfg: DictConfig, device: torch.device) -> dict[str, torch.Tensor]:
    env = cfg.env
    if env.name == "bouncing_balls":
        batch = make_eval_set(int(env.eval_sequences), sequence_length(cfg), int(cfg.seed), device=device,
                              **renderer_kwargs(env))
        return {"frames": batch["frames"], "events": ball_events(batch, str(env.events))}
    if env.name == "maze":
        from ...data.maze import make_eval_set as maze_eval_set

        _ensure_maze(env)
        batch = maze_eval_set(str(env.root), int(env.eval_sequences), sequence_length(cfg),
                              size=int(env.size), device=device)
        return {"frames": batch["frames"], "actions": batch["actions"], "events": maze_events(batch, str(env.events))}
    raise ValueError(f"env.name={env.name!r}: VTA evaluates on 'bouncing_balls' or 'maze'.")


def build_evaluator(cfg: DictConfig, device: torch.device) -> VTAEvaluator:
    return VTAEvaluator(held_out_set(cfg, device), tolerance=int(cfg.algo.tolerance),
                        num_samples=int(cfg.algo.num_samples))


def build_optimizer(cfg: DictConfig, model: VTA) -> torch.optim.Optimizer:
    """AdamW with ``train.lr``; the boundary detector's learning rate is
    ``train.lr * algo.detector_lr_scale``."""
    detector = list(model.hrssm.post_boundary.parameters())
    ids = {id(p) for p in detector}
    rest = [p for p in model.parameters() if id(p) not in ids]
    lr = float(cfg.train.lr)
    scale = float(cfg.algo.get("detector_lr_scale", 1.0))
    groups = [{"params": rest, "lr": lr, "name": "model"},
              {"params": detector, "lr": lr * scale, "name": "detector"}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=float(cfg.train.weight_decay))


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer)
