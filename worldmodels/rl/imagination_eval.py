"""Evaluation of the component agents (IRIS, Δ-IRIS): episodes in a separate env, the
first one kept for held-out model scores and media.

:class:`ImaginationEvaluator` plays ``algo.eval_episodes`` episodes
(:class:`~worldmodels.rl.evaluator.EpisodeEvaluator`, seeded ``seed + 10_000``, in
``cfg.env`` updated by ``cfg.eval_env``) at ``algo.eval_temperature`` (0: greedy), keeps
up to ``algo.held_out_frames`` frames of the first in IRIS's layout, and writes
``reconstruction_step*.png`` (frames | reconstructions) and ``imagination_step*.gif``
(real | tokenizer reconstruction | imagined, side by side: the world model replays the
episode's actions from its first frame). A family subclasses it for its held-out scores (:meth:`held_out_metrics`) and
its reconstructions (:meth:`reconstructions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..envs.factory import VectorEnv, make_env, spec_from_config
from ..training.contract import Evaluator
from ..utils.images import image_grid, save_png, write_gif
from .evaluator import EVAL_SEED_OFFSET, EpisodeEvaluator, eval_env_config
from .imagination_agent import ImaginationAgent, frames_first


def next_frame_scores(predicted: torch.Tensor, copy: torch.Tensor, truth: torch.Tensor, changed: torch.Tensor,
                      space: str) -> dict[str, float]:
    """The world model's one-step predictions against a copy of the last frame.

    ``predicted``, ``copy``, ``truth`` ``[N, C, H, W]`` (uint8 or [0, 1]): the frame decoded
    from the world model's most likely tokens (teacher forced on the real past), the
    copy baseline and the target; ``changed [N]`` bool marks the frames where something
    changes (the real frame differs from the previous one). ``space`` names the
    comparison: ``frame`` (target: the real frame; copy: the real previous frame) or
    ``recon`` (target: the tokenizer's reconstruction of the real frame; copy: the
    decoded tokens of "nothing changed", so the tokenizer's own error cancels). Returns
    PSNR (dB, mean over frames) of the prediction and of the copy, on every frame and
    on the changed ones: ``eval/{space}_wm_psnr``, ``eval/{space}_copy_psnr``, the same
    with ``_changed``, and ``eval/changed_frames`` (their fraction).
    """
    truth, copy, predicted = as_unit(truth), as_unit(copy), as_unit(predicted).clamp(0, 1)

    def mean_psnr(images: torch.Tensor, mask: torch.Tensor) -> float:
        if not bool(mask.any()):
            return float("nan")
        mse = (images[mask] - truth[mask]).square().flatten(1).mean(1)
        return float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())

    out = {"eval/changed_frames": float(changed.float().mean())}
    for suffix, mask in (("", torch.ones_like(changed)), ("_changed", changed)):
        out[f"eval/{space}_wm_psnr{suffix}"] = mean_psnr(predicted, mask)
        out[f"eval/{space}_copy_psnr{suffix}"] = mean_psnr(copy, mask)
    return out


def frames_changed(frames: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: frame ``n`` differs from ``previous[n]`` in at least one pixel value."""
    return (frames != previous).flatten(1).any(1)


def as_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [0, 1]; float frames unchanged (as float32)."""
    return frames.float().div(255.0) if frames.dtype == torch.uint8 else frames.float()


def imagination_frames(real: torch.Tensor, recon: torch.Tensor, imagined: torch.Tensor, context: int = 1,
                       scale: int = 3, bar: int = 3) -> np.ndarray:
    """``[T, C, H, W]`` in [0, 1] each -> ``[T, H', W', 3]`` uint8 GIF frames: real |
    reconstruction | imagined side by side, under a bar that is green for the ``context``
    frames the world model was given and red for those it imagined."""
    frames = []
    for t in range(len(real)):
        grid = image_grid([torch.stack([real[t], recon[t], imagined[t]])], scale=scale)
        colour = np.array([0, 200, 0] if t < context else [220, 0, 0], np.uint8)
        frames.append(np.concatenate([np.broadcast_to(colour, (bar, grid.shape[1], 3)), grid], 0))
    return np.stack(frames)


@torch.no_grad()
def imagination_gap(model: ImaginationAgent, episode: dict[str, np.ndarray], horizon: int, gamma: float,
                    context: int, max_starts: int = 64) -> dict[str, float]:
    """Imagined against real along a real episode's own actions: from up to ``max_starts``
    frames ``t`` (with ``context`` real frames before, where there are), the world model
    replays the episode's next ``horizon`` actions; the imagined discounted return and
    whether an end was sampled are compared with what really followed. Starts whose real
    continuation is cut by the recording are left out. Returns
    ``eval/imagined_return_h`` beside ``eval/real_return_h`` and
    ``eval/imagined_end_rate_h`` beside ``eval/real_end_rate_h`` (fraction of starts
    where the episode ends within ``horizon`` steps); ``{}`` without a usable start.

    ``episode``: ``image`` uint8 ``[T, H, W, C]``, ``action`` int64 ``[T]``, ``reward`` and
    ``end`` ``[T]`` (what followed each action), as :class:`ImaginationEvaluator` keeps it.
    """
    ends, rewards = episode["end"].astype(bool), episode["reward"].astype(np.float64)
    steps = len(ends)
    starts = [t for t in range(steps) if t + horizon <= steps or ends[t:].any()]
    if not starts or horizon < 1:
        return {}
    starts = [starts[i] for i in np.linspace(0, len(starts) - 1, min(max_starts, len(starts))).round().astype(int)]
    device = next(model.parameters()).device
    frames = frames_first(torch.from_numpy(episode["image"]).to(device))
    actions = torch.from_numpy(episode["action"]).to(device)
    index = torch.tensor([[t - context + j for j in range(context + 1)] for t in starts], device=device)
    mask = index >= 0
    index = index.clamp(min=0)
    batch = {"observations": frames[index], "actions": actions[index], "mask_padding": mask}
    dream = model.dream()
    dream.start(batch)
    alive = torch.ones(len(starts), dtype=torch.bool, device=device)
    imagined_return = torch.zeros(len(starts), device=device)
    for k in range(horizon):
        step_actions = actions[torch.tensor([min(t + k, steps - 1) for t in starts], device=device)]
        _, reward, done = dream.step(step_actions)
        imagined_return += alive.float() * gamma**k * reward.float()
        alive &= ~done.bool()
    real_return, real_end = [], []
    for t in starts:
        total, ended = 0.0, False
        for k in range(min(horizon, steps - t)):
            total += gamma**k * rewards[t + k]
            if ends[t + k]:
                ended = True
                break
        real_return.append(total)
        real_end.append(ended)
    return {"eval/imagined_return_h": float(imagined_return.mean()), "eval/real_return_h": float(np.mean(real_return)),
            "eval/imagined_end_rate_h": float((~alive).float().mean()), "eval/real_end_rate_h": float(np.mean(real_end))}


class ImaginationEvaluator(Evaluator):
    """See the module docstring. ``self.episode`` holds the kept frames: ``image`` uint8
    ``[T, H, W, C]``, ``action`` int64 ``[T]``, ``reward`` float ``[T]`` and ``end`` bool
    ``[T]`` (what followed each action)."""

    def __init__(self, cfg: Any, device: torch.device | str = "cpu", env: VectorEnv | None = None):
        algo = cfg.algo
        self.episodes, self.temperature = int(algo.eval_episodes), float(algo.eval_temperature)
        self.length, self.device = int(algo.media_length), torch.device(device)
        self.held_out_frames = max(int(algo.held_out_frames), self.length)
        if self.episodes < 1 or self.length < 2:
            raise ValueError(f"algo.eval_episodes={self.episodes} must be >= 1 and media_length={self.length} >= 2.")
        env = env or make_env(spec_from_config(eval_env_config(cfg), seed=int(cfg.seed) + EVAL_SEED_OFFSET,
                                               num_envs=self.episodes))
        mode = "greedy" if self.temperature <= 0 else "sample"
        kwargs = {} if mode == "greedy" else {"temperature": self.temperature}
        self.runner = EpisodeEvaluator(env, self.episodes, mode=mode, record_envs=1,
                                       record_steps=self.held_out_frames + 1, seed=int(cfg.seed), **kwargs)
        self.episode: dict[str, np.ndarray] = {}

    @property
    def env(self) -> VectorEnv:
        return self.runner.env

    def evaluate(self, model: ImaginationAgent) -> dict[str, float]:
        """``eval/return_{mean,std,min,max}``, ``eval/length_mean``, ``eval/neg_return``, the
        family's :meth:`held_out_metrics` and :func:`imagination_gap` on the kept episode
        (``imagine_horizon - 1`` steps, the actor-critic's discount and burn-in)."""
        result = self.runner.run(model)
        steps = result.recorded[0]
        self.episode = {"image": steps["image"][:-1], "action": steps["action"][:-1].argmax(-1).astype(np.int64),
                        "reward": steps["reward"][1:].astype(np.float32), "end": steps["is_terminal"][1:].astype(bool)}
        ac = model.actor_critic.config
        gap = imagination_gap(model, self.episode, ac.imagine_horizon - 1, ac.gamma, ac.burn_in)
        return {**result.metrics(), **self.held_out_metrics(model), **gap}

    def held_out_metrics(self, model: ImaginationAgent) -> dict[str, float]:
        """The family's scores of its models on :attr:`episode` (``eval/...``)."""
        return {}

    def reconstructions(self, model: ImaginationAgent, frames: torch.Tensor,
                        actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frames uint8 [N, C, R, R], their reconstructions in [0, 1])`` for the media."""
        raise NotImplementedError

    def write_media(self, model: ImaginationAgent, directory: Path, step: int) -> list[Path]:
        """``reconstruction_step{step:06d}.png`` and ``imagination_step{step:06d}.gif``."""
        if not self.episode:
            self.evaluate(model)
        device = next(model.parameters()).device
        frames = frames_first(torch.from_numpy(self.episode["image"][:self.length]).to(device))
        actions = torch.from_numpy(self.episode["action"][:self.length]).to(device)
        directory = Path(directory)
        with torch.no_grad():
            truth, recon = self.reconstructions(model, frames[:9], actions[:9])
        grid = image_grid([truth.float().div(255.0).cpu(), recon.float().cpu()], scale=2)
        paths = [save_png(directory / f"reconstruction_step{step:06d}.png", grid)]
        gif = self._imagination_gif(model, frames, actions, directory / f"imagination_step{step:06d}.gif")
        return paths + ([gif] if gif is not None else [])

    def reconstruct_sequence(self, model: ImaginationAgent, frames: torch.Tensor,
                             actions: torch.Tensor) -> torch.Tensor:
        """The tokenizer's reconstruction of each of ``frames [T, C, R, R]`` uint8 (with the
        actions taken there), ``[T, C, R, R]`` in [0, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def _imagination_gif(self, model: ImaginationAgent, frames: torch.Tensor, actions: torch.Tensor,
                         path: Path) -> Path | None:
        """``real | tokenizer reconstruction | imagined`` side by side, frame by frame: the
        world model starts from the first real frame and replays the episode's actions
        (green bar: the frame it was given; red: imagined)."""
        steps = min(len(frames), model.world_model.config.max_blocks)
        if steps < 2:
            return None
        dream = model.dream()
        start = {"observations": frames[None, :1], "actions": actions[None, :1],
                 "mask_padding": torch.ones(1, 1, dtype=torch.bool, device=frames.device)}
        _, frame = dream.start(start)
        imagined = [frame]
        for t in range(steps - 1):
            frame, _, _ = dream.step(actions[t:t + 1])
            imagined.append(frame)
        real = frames[:steps].float().div(255.0).cpu()
        recon = self.reconstruct_sequence(model, frames[:steps], actions[:steps]).float().clamp(0, 1).cpu()
        dreamt = torch.cat(imagined).float().clamp(0, 1).cpu()
        return write_gif(path, imagination_frames(real, recon, dreamt, context=1), duration=150)

    def close(self) -> None:
        self.runner.close()


__all__ = ["ImaginationEvaluator", "as_unit", "frames_changed", "imagination_frames", "imagination_gap",
           "next_frame_scores"]
