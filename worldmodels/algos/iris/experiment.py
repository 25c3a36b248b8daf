"""Factories that let :func:`worldmodels.training.loop.fit` train IRIS online.

The model is :class:`IrisAgent` from ``cfg.model.{tokenizer,world_model,actor_critic}``
(the frame size and action count come from ``cfg.env``); the data is
:class:`IrisOnlineData` (schedule in ``cfg.algo``); the evaluator plays
``algo.eval_episodes`` episodes in a separate env and writes tokenizer reconstructions
and an imagined rollout to ``media/``. One AdamW holds a group per component
(:meth:`IrisAgent.param_groups`); ``train.lr`` and ``train.weight_decay`` are unused.

    python -m worldmodels.train +exp=iris_tiny
    python -m worldmodels.train +exp=iris_atari env.task=breakout
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ...envs.factory import VectorEnv, make_env
from ...nn.tokenizer import TokenizerConfig, as_unit_frames, psnr
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from ...utils.images import image_grid, save_png
from ..dreamerv3.collect import env_spec
from ..dreamerv3.evaluate import EVAL_SEED_OFFSET, openloop_frames
from .actor_critic import IrisActorCriticConfig
from .agent import COMPONENTS, IrisAgent, OptimConfig, frames_first
from .data import IrisOnlineData
from .world_model import IrisWorldModelConfig


def env_shape(cfg: DictConfig) -> tuple[tuple[int, int, int], int]:
    """``((H, W, C), num_actions)`` of ``cfg.env``, read from a one-env copy."""
    with make_env(env_spec(cfg, seed=int(cfg.seed), num_envs=1)) as env:
        if "image" not in env.obs_space or not env.act_space.discrete:
            raise ValueError(f"IRIS needs `image` observations and discrete actions; env {cfg.env.suite}/"
                             f"{cfg.env.task} gives {sorted(env.obs_space)} and {env.act_space} "
                             "(classic tasks need env.render_image=true).")
        return tuple(env.obs_space["image"][0]), env.act_space.size


def agent_configs(cfg: DictConfig, image_shape: tuple[int, int, int], num_actions: int):
    """The three dataclass configs of ``cfg.model`` for frames ``image_shape (H, W, C)``."""
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"IRIS needs square frames, got env.size {height}x{width}.")
    model = cfg.model
    tok = dataclass_from_config(TokenizerConfig, {**_node(model.tokenizer), "resolution": height,
                                                  "in_channels": channels})
    wm = dataclass_from_config(IrisWorldModelConfig, {**_node(model.world_model), "num_actions": num_actions,
                                                      "vocab_size": tok.vocab_size,
                                                      "tokens_per_obs": tok.tokens_per_frame})
    ac = dataclass_from_config(IrisActorCriticConfig, {**_node(model.actor_critic), "num_actions": num_actions,
                                                       "resolution": height, "in_channels": channels})
    return tok, wm, ac


def _node(node: Any) -> dict:
    return dict(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) else dict(node)


def build_model(cfg: DictConfig) -> IrisAgent:
    shape, num_actions = env_shape(cfg)
    optim = {name: dataclass_from_config(OptimConfig, cfg.model.optim[name]) for name in COMPONENTS}
    return IrisAgent(*agent_configs(cfg, shape, num_actions), optim=optim)


def build_optimizer(cfg: DictConfig, model: IrisAgent) -> torch.optim.Optimizer:
    """AdamW over :meth:`IrisAgent.param_groups` (lr, weight decay and clip per component)."""
    return torch.optim.AdamW(model.param_groups())


def build_data(cfg: DictConfig, device: torch.device) -> IrisOnlineData:
    algo = cfg.algo
    return IrisOnlineData(
        make_env(env_spec(cfg, seed=int(cfg.seed))), batch_sizes=dict(algo.batch_sizes),
        sequence_length=int(algo.sequence_length), burn_in=int(cfg.model.actor_critic.burn_in),
        starts=dict(algo.starts), collect_every=int(algo.collect_every), collect_steps=int(algo.collect_steps),
        max_env_steps=int(float(algo.max_env_steps)), epsilon=float(algo.epsilon),
        temperature=float(algo.temperature), capacity=int(float(algo.capacity)), seed=int(cfg.seed),
        device=device, recent_weights=None if algo.recent_weights is None else list(algo.recent_weights))


class IrisEvaluator:
    """``algo.eval_episodes`` episodes (one env each, seeded ``seed + 10_000``) with
    ``epsilon = 0`` and ``algo.eval_temperature`` (0: greedy argmax); keeps the first
    ``algo.media_length`` frames and actions of the first episode for the media."""

    def __init__(self, cfg: Any, device: torch.device | str = "cpu", env: VectorEnv | None = None):
        algo = cfg.algo
        self.episodes, self.temperature = int(algo.eval_episodes), float(algo.eval_temperature)
        self.length, self.device = int(algo.media_length), torch.device(device)
        self.held_out_frames = max(int(algo.held_out_frames), self.length)
        if self.episodes < 1 or self.length < 2:
            raise ValueError(f"algo.eval_episodes={self.episodes} must be >= 1 and media_length={self.length} >= 2.")
        self.env = env or make_env(env_spec(cfg, seed=int(cfg.seed) + EVAL_SEED_OFFSET, num_envs=self.episodes))
        self._media: dict[str, np.ndarray] | None = None
        self._episode: dict[str, np.ndarray] = {}

    def evaluate(self, model: IrisAgent) -> dict[str, float]:
        """``eval/return_{mean,std,min,max}``, ``eval/length_mean``, ``eval/neg_return`` and
        the held-out model scores of :meth:`held_out_metrics`."""
        returns, lengths = self._rollout(model)
        mean = float(returns.mean())
        metrics = {"eval/return_mean": mean, "eval/return_std": float(returns.std()),
                   "eval/return_min": float(returns.min()), "eval/return_max": float(returns.max()),
                   "eval/length_mean": float(lengths.mean()), "eval/neg_return": -mean}
        return {**metrics, **self.held_out_metrics(model)}

    def _rollout(self, model: IrisAgent) -> tuple[np.ndarray, np.ndarray]:
        """One episode per env; keeps up to ``algo.held_out_frames`` frames of the first
        (frames, actions, rewards and terminations in IRIS's layout)."""
        env, n = self.env, self.env.num_envs
        obs, state = env.reset(), None
        done = np.zeros(n, bool)
        returns, lengths = np.zeros(n), np.zeros(n, np.int64)
        kept: dict[str, list] = {"image": [], "action": [], "reward": [], "end": []}
        while not done.all():
            action, state = model.policy(obs, state, temperature=max(self.temperature, 1e-6),
                                         greedy=self.temperature <= 0)
            keep = not done[0] and len(kept["image"]) < self.held_out_frames
            if keep:
                kept["image"].append(np.array(obs["image"][0]))
                kept["action"].append(int(action[0]))
            obs = env.step(action)
            if keep:
                kept["reward"].append(float(obs["reward"][0]))
                kept["end"].append(bool(obs["is_terminal"][0]))
            returns[~done] += obs["reward"][~done]
            lengths[~done] += 1
            done |= obs["is_last"]
        self._episode = {key: np.asarray(values) for key, values in kept.items()}
        self._media = {"image": self._episode["image"][: self.length],
                       "action": self._episode["action"][: self.length].astype(np.int64)}
        return returns, lengths

    @torch.no_grad()
    def held_out_metrics(self, model: IrisAgent) -> dict[str, float]:
        """Scores of the tokenizer and the world model on the kept frames of the first
        evaluation episode (an env and seed training never saw):

        * ``eval/tokenizer_psnr``: PSNR (dB) of the reconstructions, mean over frames;
        * ``eval/wm_next_frame_token_accuracy`` beside ``eval/wm_copy_token_accuracy``
          (the baseline "the next frame's tokens are this frame's"), and
          ``eval/wm_reward_accuracy``, ``eval/wm_end_accuracy``: the world model teacher
          forced over windows of ``max_blocks`` frames.
        """
        device = next(model.parameters()).device
        frames = frames_first(torch.from_numpy(self._episode["image"]).to(device))
        tokens, scores = [], []
        for chunk in frames.split(64):
            encoding = model.tokenizer.encode(chunk)
            scores.append(psnr(model.tokenizer.decode(encoding.z_q).clamp(0, 1), as_unit_frames(chunk)) * len(chunk))
            tokens.append(encoding.tokens)
        metrics = {"eval/tokenizer_psnr": float(torch.stack(scores).sum() / len(frames))}
        if len(frames) >= 2:
            metrics.update(self._world_model_scores(model, torch.cat(tokens), device))
        return metrics

    def _world_model_scores(self, model: IrisAgent, tokens: torch.Tensor, device: torch.device) -> dict[str, float]:
        window = model.world_model.config.max_blocks
        steps = len(tokens)
        padded = -(-steps // window) * window
        mask = torch.arange(padded, device=device) < steps

        def windows(values: torch.Tensor) -> torch.Tensor:
            pad = values.new_zeros((padded - steps, *values.shape[1:]))
            return torch.cat([values, pad]).unflatten(0, (-1, window))

        batch = {"obs_tokens": windows(tokens), "mask_padding": mask.view(-1, window),
                 "actions": windows(torch.as_tensor(self._episode["action"], device=device)),
                 "rewards": windows(torch.as_tensor(self._episode["reward"], dtype=torch.float32, device=device)),
                 "ends": windows(torch.as_tensor(self._episode["end"], device=device))}
        training = model.world_model.training
        model.world_model.eval()
        _, parts = model.world_model.compute_loss(batch)
        model.world_model.train(training)
        names = ("next_frame_token_accuracy", "copy_token_accuracy", "reward_accuracy", "end_accuracy")
        return {f"eval/wm_{name}": float(parts[name]) for name in names}

    def write_media(self, model: IrisAgent, directory: Path, step: int) -> list[Path]:
        """``reconstruction_step{step:06d}.png`` (rows: frames | tokenizer reconstructions)
        and ``imagination_step{step:06d}.gif`` (truth | imagined | error: the world model
        replays the episode's actions from its first frame)."""
        if self._media is None:
            self._rollout(model)
        device = next(model.parameters()).device
        frames = frames_first(torch.from_numpy(self._media["image"]).to(device))
        actions = torch.from_numpy(self._media["action"]).to(device)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            truth, recon = self.reconstructions(model, frames[:9], actions[:9])
        grid = image_grid([truth.float().div(255.0).cpu(), recon.float().cpu()], scale=2)
        paths = [save_png(directory / f"reconstruction_step{step:06d}.png", grid)]
        gif = self._imagination_gif(model, frames, actions, directory / f"imagination_step{step:06d}.gif")
        return paths + ([gif] if gif is not None else [])

    def reconstructions(self, model: IrisAgent, frames: torch.Tensor,
                        actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frames uint8 [N, C, R, R], their reconstructions in [0, 1])`` for the media;
        IRIS reconstructs up to 8 frames on their own."""
        return frames[:8], model.tokenizer.encode_decode(frames[:8])

    def _imagination_gif(self, model: IrisAgent, frames: torch.Tensor, actions: torch.Tensor,
                         path: Path) -> Path | None:
        steps = min(len(frames), model.world_model.config.max_blocks)
        if steps < 2:
            return None
        dream = model.dream()
        start = {"observations": frames[None, :1], "actions": actions[None, :1],
                 "mask_padding": torch.ones(1, 1, dtype=torch.bool, device=frames.device)}
        with torch.no_grad():
            _, frame = dream.start(start)
            imagined = [frame]
            for t in range(steps - 1):
                frame, _, _ = dream.step(actions[t:t + 1])
                imagined.append(frame)
        truth = frames[:steps].movedim(1, -1).unsqueeze(0)
        prediction = (torch.cat(imagined).clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).unsqueeze(0)
        video = openloop_frames(truth, prediction, None, context=1)
        import imageio.v3 as iio

        iio.imwrite(path, video, duration=150, loop=0)
        return path

    def close(self) -> None:
        self.env.close()


def build_evaluator(cfg: DictConfig, device: torch.device) -> IrisEvaluator:
    return IrisEvaluator(cfg, device)


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer)
