"""Held-out evaluation of a DreamerV3 agent: greedy episodes in a separate env, and an
open-loop video of the world model's predictions on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...envs.factory import VectorEnv, make_env
from ...utils.images import image_grid
from .collect import batch_to_torch, env_spec, replay_action, to_env_action

EVAL_SEED_OFFSET = 10_000


def image_keys(env: VectorEnv) -> list[str]:
    """Observation keys holding uint8 ``[H, W, C]`` images."""
    return [k for k, (shape, dtype) in env.obs_space.items() if len(shape) == 3 and dtype == np.uint8]


class DreamerEvaluator:
    """``eval_episodes`` episodes (one per env of a vectorised env seeded ``seed + 10_000``)
    with the policy's mode (``explore=False``).

    Config: ``cfg.env`` (as for training), ``cfg.algo.eval_episodes``,
    ``cfg.algo.openloop_context`` (posterior steps before the open-loop prediction),
    ``cfg.algo.openloop_length`` (steps per video) and ``cfg.algo.openloop_sequences``.
    """

    def __init__(self, cfg: Any, device: torch.device | str = "cpu", env: VectorEnv | None = None):
        algo = cfg.algo
        self.episodes = int(algo.eval_episodes)
        if self.episodes < 1:
            raise ValueError(f"algo.eval_episodes={self.episodes} must be >= 1.")
        self.context, self.length = int(algo.openloop_context), int(algo.openloop_length)
        self.sequences = min(int(algo.openloop_sequences), self.episodes)
        self.device = torch.device(device)
        self.env = env or make_env(env_spec(cfg, seed=int(cfg.seed) + EVAL_SEED_OFFSET, num_envs=self.episodes))
        self.image_keys = image_keys(self.env)
        self._media: dict[str, np.ndarray] | None = None

    def evaluate(self, model: Any) -> dict[str, float]:
        """``eval/return_{mean,std,min,max}``, ``eval/length_mean`` and ``eval/neg_return``
        (minus the mean return, for ``train.best_metric``: lower is better)."""
        returns, lengths = self._rollout(model)
        mean = float(returns.mean())
        return {"eval/return_mean": mean, "eval/return_std": float(returns.std()),
                "eval/return_min": float(returns.min()), "eval/return_max": float(returns.max()),
                "eval/length_mean": float(lengths.mean()), "eval/neg_return": -mean}

    def _rollout(self, model: Any) -> tuple[np.ndarray, np.ndarray]:
        """One episode per env; returns ``(returns [N], lengths [N])`` (agent steps) and
        keeps the first ``openloop_length`` steps of the first envs for :meth:`write_media`."""
        env, n = self.env, self.env.num_envs
        obs, state = env.reset(), model.init_policy_state(n)
        done = np.zeros(n, bool)
        returns, lengths = np.zeros(n, np.float64), np.zeros(n, np.int64)
        recorded: list[dict[str, np.ndarray]] = []
        while not done.all():
            action, state = model.policy(obs, state, explore=False)
            if self.image_keys and len(recorded) < self.length:
                step = {**obs, "action": replay_action(env.act_space, action)}
                recorded.append({k: np.array(v[:self.sequences]) for k, v in step.items()})
            obs = env.step(to_env_action(env.act_space, action))
            active = ~done
            returns[active] += obs["reward"][active]
            lengths[active] += 1
            done |= obs["is_last"]
        if recorded:
            usable = max(1, min(len(recorded), int(lengths[:self.sequences].min())))
            self._media = {k: np.stack([r[k] for r in recorded[:usable]], 1) for k in recorded[0]}
        return returns, lengths

    def write_media(self, model: Any, directory: Path, step: int) -> list[Path]:
        """``openloop_step{step:06d}.gif``: per frame, rows truth | prediction | error and one
        column per sequence; a bar on top is green while the model sees the frames
        (context) and red while it predicts open loop. ``[]`` without image observations."""
        if not self.image_keys:
            return []
        if self._media is None:
            self._rollout(model)
        steps = self._media["is_first"].shape[1]
        context = max(1, min(self.context, steps - 1)) if steps > 1 else 1
        video = model.open_loop(batch_to_torch(self._media, _device(model, self.device)), context)
        if not video:
            return []
        frames = openloop_frames(video["truth"], video["prediction"], video.get("error"), context)
        path = Path(directory) / f"openloop_step{step:06d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        import imageio.v3 as iio

        iio.imwrite(path, frames, duration=120, loop=0)
        return [path]

    def close(self) -> None:
        self.env.close()


def _device(model: Any, default: torch.device) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return default


def openloop_frames(truth: torch.Tensor, prediction: torch.Tensor, error: torch.Tensor | None,
                    context: int, scale: int = 2, bar: int = 3) -> np.ndarray:
    """uint8 ``[B, T, H, W, C]`` videos -> ``[T, H', W', 3]`` uint8 frames (rows truth,
    prediction, error; columns the ``B`` sequences; a green/red bar marks context/open loop).
    ``error`` defaults to ``(prediction - truth + 255) / 2``."""
    if error is None:
        error = ((prediction.float() - truth.float() + 255.0) / 2.0).round().to(torch.uint8)
    as_unit = [(v.detach().cpu().float() / 255.0).permute(1, 0, 4, 2, 3) for v in (truth, prediction, error)]
    frames = []
    for t in range(as_unit[0].shape[0]):
        grid = image_grid([v[t] for v in as_unit], scale=scale)
        colour = np.array([0, 200, 0] if t < context else [220, 0, 0], np.uint8)
        top = np.broadcast_to(colour, (bar, grid.shape[1], 3))
        frames.append(np.concatenate([top, grid], 0))
    return np.stack(frames)


def build_evaluator(cfg: Any, device: torch.device) -> DreamerEvaluator:
    return DreamerEvaluator(cfg, device)
