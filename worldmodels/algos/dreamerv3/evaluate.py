"""Held-out evaluation of a DreamerV3 agent: episodes in a separate env with sampled
actions by default (``algo.eval_mode``; :class:`~worldmodels.rl.evaluator.EpisodeEvaluator`),
and an open-loop video of the world model's predictions on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...envs.factory import VectorEnv, make_env, spec_from_config
from ...rl.evaluator import EVAL_SEED_OFFSET, EpisodeEvaluator, eval_env_config
from ...training.contract import Evaluator
from ...utils.images import openloop_frames, write_gif
from .collect import batch_to_torch

__all__ = ["DreamerEvaluator", "EVAL_MODES", "EVAL_SEED_OFFSET", "build_evaluator", "openloop_frames"]

EVAL_MODES = ("sample", "greedy")  # sample the actor (as the references) | its mode (argmax for discrete actions)


class DreamerEvaluator(Evaluator):
    """``algo.eval_episodes`` episodes in a vectorised env of ``min(eval_episodes,
    eval_envs)`` copies seeded ``seed + 10_000`` (built from ``cfg.env`` updated by
    ``cfg.eval_env``; the first ``eval_episodes`` episodes to start count), acting with
    ``algo.eval_mode``: ``sample`` (default; danijar/dreamerv3's eval policy samples, and
    its 2023 Atari100k config sets ``actor_eval_sample: True``) or ``greedy`` (the actor's
    mode: argmax for discrete actions, the mean for continuous ones).

    Config: ``cfg.algo.eval_episodes``, ``eval_mode``, ``eval_envs``,
    ``cfg.algo.openloop_context`` (posterior steps before the open-loop prediction),
    ``cfg.algo.openloop_length`` (steps per video) and ``cfg.algo.openloop_sequences``.
    Configs without ``eval_mode``/``eval_envs`` get ``sample`` and one env per episode.
    """

    def __init__(self, cfg: Any, device: torch.device | str = "cpu", env: VectorEnv | None = None):
        algo = cfg.algo
        self.episodes = int(algo.eval_episodes)
        if self.episodes < 1:
            raise ValueError(f"algo.eval_episodes={self.episodes} must be >= 1.")
        self.mode = str(algo.get("eval_mode", "sample"))
        if self.mode not in EVAL_MODES:
            raise ValueError(f"algo.eval_mode={self.mode!r} is not one of {EVAL_MODES}.")
        num_envs = min(self.episodes, int(algo.get("eval_envs") or self.episodes))
        self.context, self.length = int(algo.openloop_context), int(algo.openloop_length)
        self.sequences = min(int(algo.openloop_sequences), num_envs)
        self.device = torch.device(device)
        env = env or make_env(spec_from_config(eval_env_config(cfg), seed=int(cfg.seed) + EVAL_SEED_OFFSET,
                                               num_envs=num_envs))
        self.image_keys = [k for k, (shape, dtype) in env.obs_space.items() if len(shape) == 3 and dtype == np.uint8]
        self.runner = EpisodeEvaluator(env, self.episodes, mode=self.mode,
                                       record_envs=self.sequences if self.image_keys else 0,
                                       record_steps=self.length, seed=int(cfg.seed))
        self._media: dict[str, np.ndarray] | None = None

    @property
    def env(self) -> VectorEnv:
        return self.runner.env

    def evaluate(self, model: Any) -> dict[str, float]:
        """``eval/return_{mean,std,min,max}``, ``eval/length_mean`` and ``eval/neg_return``
        (minus the mean return, for ``train.best_metric``: lower is better)."""
        result = self.runner.run(model)
        if result.recorded:
            usable = min(len(r["is_first"]) for r in result.recorded)
            self._media = {k: np.stack([r[k][:usable] for r in result.recorded]) for k in result.recorded[0]}
        return result.metrics()

    def write_media(self, model: Any, directory: Path, step: int) -> list[Path]:
        """``openloop_step{step:06d}.gif``: per frame, rows truth | prediction | error and one
        column per sequence; a bar on top is green while the model sees the frames
        (context) and red while it predicts open loop. ``[]`` without image observations."""
        if not self.image_keys:
            return []
        if self._media is None:
            self.evaluate(model)
        steps = self._media["is_first"].shape[1]
        context = max(1, min(self.context, steps - 1)) if steps > 1 else 1
        video = model.open_loop(batch_to_torch(self._media, _device(model, self.device)), context)
        if not video:
            return []
        frames = openloop_frames(video["truth"], video["prediction"], video.get("error"), context)
        return [write_gif(Path(directory) / f"openloop_step{step:06d}.gif", frames, duration=120)]

    def close(self) -> None:
        self.runner.close()


def _device(model: Any, default: torch.device) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return default


def build_evaluator(cfg: Any, device: torch.device) -> DreamerEvaluator:
    return DreamerEvaluator(cfg, device)
