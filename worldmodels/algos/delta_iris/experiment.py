"""Factories that let :func:`worldmodels.training.loop.fit` train Δ-IRIS online.

The collection schedule, replay and evaluation episodes are the shared ones of
:mod:`worldmodels.rl` (as for IRIS); what differs is the model, the windows each
component samples (the tokenizer reads sequences, since it encodes a frame given the
previous one and the action), the count-based episode priority and the held-out scores.

    python -m worldmodels.train +exp=delta_iris_crafter
    python -m worldmodels.train +exp=delta_iris_atari env.task=breakout
    python -m worldmodels.train +exp=delta_iris_tiny
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ...envs.spaces import EnvSpaces
from ...nn.delta_tokenizer import DeltaTokenizerConfig
from ...nn.tokenizer import as_unit_frames, psnr
from ...rl.component_data import FRAME_KEYS, ComponentData, build_component_data, frame_spaces
from ...rl.imagination_agent import COMPONENTS, OptimConfig, build_optimizer, component_step, frames_first
from ...rl.imagination_eval import ImaginationEvaluator, frames_changed, next_frame_scores
from ...rl.protocols import rebuild_agent
from ...training import distributed
from ...training.loop import Factories
from ...utils.config import dataclass_from_config, to_dict
from .actor_critic import DeltaActorCriticConfig
from .agent import DeltaIrisAgent
from .world_model import DeltaWorldModelConfig


def agent_configs(cfg: DictConfig, image_shape: tuple[int, int, int], num_actions: int):
    """The three dataclass configs of ``cfg.model`` for frames ``image_shape (H, W, C)``."""
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"Δ-IRIS needs square frames, got env.size {height}x{width}.")
    frames = {"resolution": height, "in_channels": channels, "num_actions": num_actions}
    model = cfg.model
    tok = dataclass_from_config(DeltaTokenizerConfig, {**to_dict(model.tokenizer), **frames})
    wm = dataclass_from_config(DeltaWorldModelConfig, {**to_dict(model.world_model), **frames,
                                                       "vocab_size": tok.vocab_size,
                                                       "tokens_per_frame": tok.tokens_per_frame})
    ac = dataclass_from_config(DeltaActorCriticConfig, {**to_dict(model.actor_critic), **frames})
    return tok, wm, ac


def agent_from_spaces(cfg: DictConfig, spaces: EnvSpaces) -> DeltaIrisAgent:
    """The :class:`DeltaIrisAgent` of ``cfg.model`` for ``spaces`` (no env opened)."""
    optim = {name: dataclass_from_config(OptimConfig, cfg.model.optim[name]) for name in COMPONENTS}
    precision = cfg.model.get("precision")
    agent = DeltaIrisAgent(*agent_configs(cfg, tuple(spaces.obs["image"][0]), spaces.act.size), optim=optim,
                           precision=None if precision is None else to_dict(precision))
    agent.env_spaces = spaces
    return agent


def build_model(cfg: DictConfig) -> DeltaIrisAgent:
    return agent_from_spaces(cfg, frame_spaces(cfg)[0])


def load_agent(state: dict) -> DeltaIrisAgent:
    """The agent of a checkpoint (the registry's ``agent_loader``)."""
    return rebuild_agent(state, agent_from_spaces)


def build_data(cfg: DictConfig, device: torch.device) -> ComponentData:
    """Δ-IRIS's windows: ``algo.tokenizer_sequence_length`` consecutive frames with their
    actions for the tokenizer (it encodes a frame given the previous one and the action),
    ``algo.sequence_length`` frames for the world model, and the burn-in window with
    actions for the actor-critic (the dream tokenises the context)."""
    algo, keys = cfg.algo, ("observations", "actions", "mask_padding")
    tokenizer_length = int(algo.tokenizer_sequence_length)
    if tokenizer_length < 2:
        raise ValueError(f"algo.tokenizer_sequence_length={tokenizer_length} must be >= 2 (pairs of frames).")
    shapes = {"tokenizer": (tokenizer_length, "start", keys),
              "world_model": (int(algo.sequence_length), "start", FRAME_KEYS),
              "actor_critic": (int(cfg.model.actor_critic.burn_in) + 1, "end", keys)}
    return build_component_data(cfg, device, shapes, initial_steps=int(float(algo.initial_collect_steps)))


class DeltaIrisEvaluator(ImaginationEvaluator):
    """The shared evaluation episodes and media (:class:`ImaginationEvaluator`), with
    Δ-IRIS's held-out scores and reconstructions (each frame decoded from the previous real frame and action)."""

    def reconstructions(self, model: DeltaIrisAgent, frames: torch.Tensor,
                        actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``1 .. N - 1`` and their reconstructions given frame ``t - 1`` and action ``t - 1``."""
        recon = model.tokenizer.encode_decode(frames[None, :-1], actions[None, :-1], frames[None, 1:])[0]
        return frames[1:], recon

    def reconstruct_sequence(self, model: DeltaIrisAgent, frames: torch.Tensor,
                             actions: torch.Tensor) -> torch.Tensor:
        """Frame 0 as it is (it has no predecessor), then each frame from its delta tokens
        given the previous real frame and action."""
        _, recon = self.reconstructions(model, frames, actions)
        return torch.cat([as_unit_frames(frames[:1]), recon])

    @torch.no_grad()
    def held_out_metrics(self, model: DeltaIrisAgent) -> dict[str, float]:
        """Scores on the kept frames of the first evaluation episode:

        * ``eval/tokenizer_psnr`` (dB) of each frame reconstructed from its delta tokens,
          the previous real frame and the action;
        * the frame decoded from the world model's most likely delta tokens (teacher
          forced) against copying the last frame, on all frames and on the changed ones
          (:func:`~worldmodels.rl.imagination_eval.next_frame_scores`): against the real
          frames (``eval/frame_wm_psnr``, ``eval/frame_copy_psnr``) and against the
          tokenizer's reconstructions (``eval/recon_...``; the copy decodes the tokens of
          "nothing changed", ``encode(x_{t-1}, a, x_{t-1})``); ``eval/wm_latent_accuracy``
          beside ``eval/wm_copy_latent_accuracy`` (those copy tokens), also ``_changed``;
        * ``eval/wm_latent_accuracy`` beside ``eval/wm_majority_latent_accuracy`` (the
          most frequent token), ``eval/wm_reward_accuracy``, ``eval/wm_end_accuracy``: the
          world model teacher forced over windows of ``max_blocks`` frames.
        """
        device = next(model.parameters()).device
        episode = self.episode
        frames = frames_first(torch.from_numpy(episode["image"]).to(device))
        if len(frames) < 2:
            return {}
        window = model.world_model.config.max_blocks
        starts = range(0, len(frames) - 1, window - 1)
        batches = [self._window(episode, frames, start, window, device) for start in starts]
        recon_scores, counts, parts, outputs, token_changed, token_hits, copy_hits, tokens_moved = ([] for _ in range(8))
        for batch in batches:
            unit = as_unit_frames(batch["observations"])
            actions = batch["actions"][:, :-1]
            encoding = model.tokenizer.encode(unit[:, :-1], actions, unit[:, 1:])
            recon = model.tokenizer.decode(unit[:, :-1], actions, encoding.q).clamp(0, 1)
            pairs = batch["mask_padding"][:, 1:] & batch["mask_padding"][:, :-1]
            count = int(pairs.sum())
            recon_scores.append(float(psnr(recon[pairs], unit[:, 1:][pairs])) * count)
            counts.append(count)
            parts.append(model.world_model_loss(batch)[1])
            logits, _ = model.world_model.predict(unit, batch["actions"], encoding.tokens)
            predicted_tokens = logits.argmax(-1)
            copy_tokens = model.tokenizer.encode(unit[:, :-1], actions, unit[:, :-1]).tokens   # "nothing changed"
            decode = model.tokenizer.decode_tokens
            changed = frames_changed(unit[:, 1:][pairs], unit[:, :-1][pairs])
            token_changed.append(changed)
            tokens_moved.append((copy_tokens != encoding.tokens)[pairs].any(-1))
            token_hits.append((predicted_tokens == encoding.tokens)[pairs].float().mean(-1))
            copy_hits.append((copy_tokens == encoding.tokens)[pairs].float().mean(-1))
            outputs.append((decode(unit[:, :-1], actions, predicted_tokens)[pairs], unit[:, :-1][pairs],
                            unit[:, 1:][pairs], decode(unit[:, :-1], actions, copy_tokens)[pairs], recon[pairs]))
        total = max(sum(counts), 1)
        predicted, previous, truth, copy, recon = (torch.cat(parts_) for parts_ in zip(*outputs))
        changed = torch.cat(token_changed)
        metrics = {"eval/tokenizer_psnr": sum(recon_scores) / total,
                   **next_frame_scores(predicted, previous, truth, changed, "frame"),
                   **next_frame_scores(predicted, copy, recon, changed, "recon")}
        hits, copies = torch.cat(token_hits), torch.cat(copy_hits)
        metrics["eval/wm_copy_latent_accuracy"] = float(copies.mean())
        metrics["eval/wm_latent_accuracy_changed"] = float(hits[changed].mean()) if changed.any() else float("nan")
        metrics["eval/wm_copy_latent_accuracy_changed"] = (float(copies[changed].mean()) if changed.any()
                                                           else float("nan"))
        moved = torch.cat(tokens_moved)   # frames whose tokens differ from "nothing changed"
        metrics["eval/wm_changed_token_frames"] = float(moved.float().mean())
        for name, values in (("wm_latent_accuracy", hits), ("wm_copy_latent_accuracy", copies)):
            metrics[f"eval/{name}_token_changed"] = float(values[moved].mean()) if moved.any() else float("nan")
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


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer,
                      step=component_step, data_config=distributed.same_config)  # the data shards itself

__all__ = ["FACTORIES", "DeltaIrisEvaluator", "agent_configs", "agent_from_spaces", "build_data", "build_model"]
