"""Factories that let :func:`worldmodels.training.loop.fit` train Δ-IRIS online.

The collection schedule, episode store and evaluation episodes are IRIS's
(:mod:`worldmodels.algos.iris.data`, :mod:`worldmodels.algos.iris.experiment`); what
differs is the model, the windows each component samples (the tokenizer reads
sequences, since it encodes a frame given the previous one and the action) and the
held-out scores.

    python -m worldmodels.train +exp=delta_iris_crafter
    python -m worldmodels.train +exp=delta_iris_atari env.task=breakout
    python -m worldmodels.train +exp=delta_iris_tiny
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ...envs.factory import make_env
from ...nn.delta_tokenizer import DeltaTokenizerConfig
from ...nn.tokenizer import as_unit_frames, psnr
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from ..dreamerv3.collect import env_spec
from ..iris.actor_critic import IrisActorCriticConfig
from ..iris.agent import COMPONENTS, OptimConfig, frames_first
from ..iris.data import IRIS_KEYS, IrisOnlineData
from ..iris.experiment import IrisEvaluator, _node, build_optimizer, env_shape
from .agent import DeltaIrisAgent
from .world_model import DeltaWorldModelConfig


def agent_configs(cfg: DictConfig, image_shape: tuple[int, int, int], num_actions: int):
    """The three dataclass configs of ``cfg.model`` for frames ``image_shape (H, W, C)``."""
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"Δ-IRIS needs square frames, got env.size {height}x{width}.")
    frames = {"resolution": height, "in_channels": channels, "num_actions": num_actions}
    model = cfg.model
    tok = dataclass_from_config(DeltaTokenizerConfig, {**_node(model.tokenizer), **frames})
    wm = dataclass_from_config(DeltaWorldModelConfig, {**_node(model.world_model), **frames,
                                                       "vocab_size": tok.vocab_size,
                                                       "tokens_per_frame": tok.tokens_per_frame})
    ac = dataclass_from_config(IrisActorCriticConfig, {**_node(model.actor_critic), **frames})
    return tok, wm, ac


def build_model(cfg: DictConfig) -> DeltaIrisAgent:
    shape, num_actions = env_shape(cfg)
    optim = {name: dataclass_from_config(OptimConfig, cfg.model.optim[name]) for name in COMPONENTS}
    return DeltaIrisAgent(*agent_configs(cfg, shape, num_actions), optim=optim)


class DeltaIrisOnlineData(IrisOnlineData):
    """IRIS's online data with Δ-IRIS's windows: the tokenizer samples
    ``tokenizer_length`` consecutive frames with their actions, the actor-critic its
    burn-in window with actions (the dream tokenises the context)."""

    def __init__(self, *args, tokenizer_length: int, **kwargs):
        super().__init__(*args, **kwargs)
        if tokenizer_length < 2:
            raise ValueError(f"algo.tokenizer_sequence_length={tokenizer_length} must be >= 2 (pairs of frames).")
        self.tokenizer_length = int(tokenizer_length)

    def windows(self) -> dict[str, tuple[int, bool, tuple[str, ...]]]:
        keys = ("observations", "actions", "mask_padding")
        return {"tokenizer": (self.tokenizer_length, True, keys),
                "world_model": (self.sequence_length, True, (*IRIS_KEYS, "mask_padding")),
                "actor_critic": (self.burn_in + 1, False, keys)}


def build_data(cfg: DictConfig, device: torch.device) -> DeltaIrisOnlineData:
    algo = cfg.algo
    return DeltaIrisOnlineData(
        make_env(env_spec(cfg, seed=int(cfg.seed))), batch_sizes=dict(algo.batch_sizes),
        sequence_length=int(algo.sequence_length), burn_in=int(cfg.model.actor_critic.burn_in),
        starts=dict(algo.starts), collect_every=int(algo.collect_every), collect_steps=int(algo.collect_steps),
        max_env_steps=int(float(algo.max_env_steps)), epsilon=float(algo.epsilon),
        temperature=float(algo.temperature), capacity=int(float(algo.capacity)), seed=int(cfg.seed),
        device=device, recent_weights=None if algo.recent_weights is None else list(algo.recent_weights),
        initial_steps=int(float(algo.initial_collect_steps)), tokenizer_length=int(algo.tokenizer_sequence_length))


class DeltaIrisEvaluator(IrisEvaluator):
    """IRIS's evaluation episodes and media, with Δ-IRIS's held-out scores and
    reconstructions (each frame decoded from the previous real frame and action)."""

    def reconstructions(self, model: DeltaIrisAgent, frames: torch.Tensor,
                        actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``1 .. N - 1`` and their reconstructions given frame ``t - 1`` and action ``t - 1``."""
        recon = model.tokenizer.encode_decode(frames[None, :-1], actions[None, :-1], frames[None, 1:])[0]
        return frames[1:], recon

    @torch.no_grad()
    def held_out_metrics(self, model: DeltaIrisAgent) -> dict[str, float]:
        """Scores on the kept frames of the first evaluation episode:

        * ``eval/tokenizer_psnr`` (dB) of each frame reconstructed from its delta tokens,
          the previous real frame and the action, beside ``eval/copy_frame_psnr`` (the
          previous frame as the prediction);
        * ``eval/wm_latent_accuracy`` beside ``eval/wm_majority_latent_accuracy`` (the
          most frequent token), ``eval/wm_reward_accuracy``, ``eval/wm_end_accuracy``: the
          world model teacher forced over windows of ``max_blocks`` frames.
        """
        device = next(model.parameters()).device
        episode = self._episode
        frames = frames_first(torch.from_numpy(episode["image"]).to(device))
        if len(frames) < 2:
            return {}
        window = model.world_model.config.max_blocks
        starts = range(0, len(frames) - 1, window - 1)
        batches = [self._window(episode, frames, start, window, device) for start in starts]
        recon_scores, copy_scores, counts, parts = [], [], [], []
        for batch in batches:
            unit = as_unit_frames(batch["observations"])
            recon = model.tokenizer.encode_decode(unit[:, :-1], batch["actions"][:, :-1], unit[:, 1:])
            pairs = batch["mask_padding"][:, 1:] & batch["mask_padding"][:, :-1]
            count = int(pairs.sum())
            recon_scores.append(float(psnr(recon[pairs], unit[:, 1:][pairs])) * count)
            copy_scores.append(float(psnr(unit[:, :-1][pairs], unit[:, 1:][pairs])) * count)
            counts.append(count)
            parts.append(model.world_model_loss(batch)[1])
        total = max(sum(counts), 1)
        metrics = {"eval/tokenizer_psnr": sum(recon_scores) / total, "eval/copy_frame_psnr": sum(copy_scores) / total}
        names = ("latent_accuracy", "majority_latent_accuracy", "reward_accuracy", "end_accuracy")
        for name in names:
            metrics[f"eval/wm_{name}"] = sum(float(p[name]) * c for p, c in zip(parts, counts)) / total
        return metrics

    @staticmethod
    def _window(episode: dict, frames: torch.Tensor, start: int, window: int,
                device: torch.device) -> dict[str, torch.Tensor]:
        """Frames ``start .. start + window - 1`` of the kept episode as a one-sequence batch."""
        stop = min(start + window, len(frames))

        def part(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(episode[key][start:stop], dtype=dtype, device=device)[None]

        return {"observations": frames[None, start:stop], "actions": part("action", torch.int64),
                "rewards": part("reward", torch.float32), "ends": part("end", torch.bool),
                "mask_padding": torch.ones(1, stop - start, dtype=torch.bool, device=device)}


def build_evaluator(cfg: DictConfig, device: torch.device) -> DeltaIrisEvaluator:
    return DeltaIrisEvaluator(cfg, device)


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer)

__all__ = ["FACTORIES", "DeltaIrisEvaluator", "DeltaIrisOnlineData", "agent_configs", "build_model"]
