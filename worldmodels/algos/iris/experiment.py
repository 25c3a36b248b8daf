"""Factories that let :func:`worldmodels.training.loop.fit` train IRIS online.

The model is :class:`IrisAgent` from ``cfg.model.{tokenizer,world_model,actor_critic}``
(the frame size and action count come from the spaces of ``cfg.env``, which checkpoints
record); the data is the shared :class:`~worldmodels.rl.component_data.ComponentData`
(schedule and selector in ``cfg.algo``); the evaluator plays ``algo.eval_episodes``
episodes in a separate env and writes tokenizer reconstructions and an imagined
rollout to ``media/``. One AdamW holds a group per component
(:meth:`IrisAgent.param_groups`); ``train.lr`` and ``train.weight_decay`` are unused.

    python -m worldmodels.train +exp=iris_tiny
    python -m worldmodels.train +exp=iris_atari env.task=breakout
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ...envs.spaces import EnvSpaces
from ...nn.tokenizer import TokenizerConfig, as_unit_frames, psnr
from ...rl.component_data import FRAME_KEYS, ComponentData, build_component_data, frame_spaces
from ...rl.imagination_agent import build_optimizer, component_step
from ...rl.imagination_eval import ImaginationEvaluator, frames_changed, next_frame_scores
from ...rl.lstm_actor_critic import IrisActorCriticConfig
from ...rl.protocols import rebuild_agent
from ...training import distributed
from ...training.loop import Factories
from ...utils.config import dataclass_from_config, to_dict
from .agent import COMPONENTS, IrisAgent, OptimConfig, frames_first
from .world_model import IrisWorldModelConfig


def agent_configs(cfg: DictConfig, image_shape: tuple[int, int, int], num_actions: int):
    """The three dataclass configs of ``cfg.model`` for frames ``image_shape (H, W, C)``."""
    height, width, channels = image_shape
    if height != width:
        raise ValueError(f"IRIS needs square frames, got env.size {height}x{width}.")
    model = cfg.model
    tok = dataclass_from_config(TokenizerConfig, {**to_dict(model.tokenizer), "resolution": height,
                                                  "in_channels": channels})
    wm = dataclass_from_config(IrisWorldModelConfig, {**to_dict(model.world_model), "num_actions": num_actions,
                                                      "vocab_size": tok.vocab_size,
                                                      "tokens_per_obs": tok.tokens_per_frame})
    ac = dataclass_from_config(IrisActorCriticConfig, {**to_dict(model.actor_critic), "num_actions": num_actions,
                                                       "resolution": height, "in_channels": channels})
    return tok, wm, ac


def agent_from_spaces(cfg: DictConfig, spaces: EnvSpaces) -> IrisAgent:
    """The :class:`IrisAgent` of ``cfg.model`` for ``spaces`` (no env opened)."""
    optim = {name: dataclass_from_config(OptimConfig, cfg.model.optim[name]) for name in COMPONENTS}
    precision = cfg.model.get("precision")
    agent = IrisAgent(*agent_configs(cfg, tuple(spaces.obs["image"][0]), spaces.act.size), optim=optim,
                      precision=None if precision is None else to_dict(precision))
    agent.env_spaces = spaces
    return agent


def build_model(cfg: DictConfig) -> IrisAgent:
    return agent_from_spaces(cfg, frame_spaces(cfg)[0])


def load_agent(state: dict) -> IrisAgent:
    """The agent of a checkpoint (the registry's ``agent_loader``)."""
    return rebuild_agent(state, agent_from_spaces)


def build_data(cfg: DictConfig, device: torch.device) -> ComponentData:
    """IRIS's windows: single frames for the tokenizer, ``algo.sequence_length`` frames for
    the world model, ``burn_in + 1`` frames ending at a real one for the actor-critic."""
    burn_in = int(cfg.model.actor_critic.burn_in)
    shapes = {"tokenizer": (1, "start", ("observations", "mask_padding")),
              "world_model": (int(cfg.algo.sequence_length), "start", FRAME_KEYS),
              "actor_critic": (burn_in + 1, "end", ("observations", "mask_padding"))}
    return build_component_data(cfg, device, shapes)


class IrisEvaluator(ImaginationEvaluator):
    """The shared evaluation episodes and media (:class:`ImaginationEvaluator`) with IRIS's
    held-out scores."""

    @torch.no_grad()
    def held_out_metrics(self, model: IrisAgent) -> dict[str, float]:
        """Scores of the tokenizer and the world model on the kept frames of the first
        evaluation episode (an env and seed training never saw):

        * ``eval/tokenizer_psnr``: PSNR (dB) of the reconstructions, mean over frames;
        * ``eval/wm_next_frame_token_accuracy`` beside ``eval/wm_copy_token_accuracy``
          (the baseline "the next frame's tokens are this frame's"), both also on the
          frames whose tokens change (``..._changed``; ``eval/wm_changed_token_frames``
          their fraction), and ``eval/wm_reward_accuracy``, ``eval/wm_end_accuracy``: the
          world model teacher forced over windows of ``max_blocks`` frames;
        * pixels: the frames decoded from the most likely next tokens against copying
          the last frame (:func:`~worldmodels.rl.imagination_eval.next_frame_scores`),
          against the real frames (``eval/frame_wm_psnr`` beside ``eval/frame_copy_psnr``)
          and against their reconstructions (``eval/recon_...``: the copy is the last
          frame's tokens decoded), on all frames and on the changed ones.
        """
        device = next(model.parameters()).device
        frames = frames_first(torch.from_numpy(self.episode["image"]).to(device))
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
                 "actions": windows(torch.as_tensor(self.episode["action"], device=device)),
                 "rewards": windows(torch.as_tensor(self.episode["reward"], dtype=torch.float32, device=device)),
                 "ends": windows(torch.as_tensor(self.episode["end"], device=device))}
        training = model.world_model.training
        model.world_model.eval()
        _, parts = model.world_model.compute_loss(batch)
        predicted = model.world_model.predict_next_tokens(batch["obs_tokens"], batch["actions"])
        model.world_model.train(training)
        names = ("next_frame_token_accuracy", "copy_token_accuracy", "next_frame_token_accuracy_changed",
                 "copy_token_accuracy_changed", "reward_accuracy", "end_accuracy")
        metrics = {f"eval/wm_{name}": float(parts[name]) for name in names}
        metrics["eval/wm_changed_token_frames"] = float(parts["changed_frames"])
        pairs = (batch["mask_padding"][:, 1:] & batch["mask_padding"][:, :-1]).flatten()
        framed = windows(frames_first(torch.from_numpy(self.episode["image"]).to(device)))
        truth, previous = framed[:, 1:].flatten(0, 1)[pairs], framed[:, :-1].flatten(0, 1)[pairs]

        def decode(tokens: torch.Tensor) -> torch.Tensor:
            flat = tokens.flatten(0, 1)[pairs]
            return torch.cat([model.tokenizer.decode_tokens(chunk) for chunk in flat.split(64)])

        predicted_frames = decode(predicted)
        changed = frames_changed(truth, previous)
        metrics.update(next_frame_scores(predicted_frames, previous, truth, changed, "frame"))
        metrics.update(next_frame_scores(predicted_frames, decode(batch["obs_tokens"][:, :-1]),
                                         decode(batch["obs_tokens"][:, 1:]), changed, "recon"))
        return metrics

    def reconstructions(self, model: IrisAgent, frames: torch.Tensor,
                        actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(frames uint8 [N, C, R, R], their reconstructions in [0, 1])`` for the media;
        IRIS reconstructs up to 8 frames on their own."""
        return frames[:8], model.tokenizer.encode_decode(frames[:8])

    def reconstruct_sequence(self, model: IrisAgent, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Each frame through the tokenizer on its own."""
        return model.tokenizer.encode_decode(frames)


def build_evaluator(cfg: DictConfig, device: torch.device) -> IrisEvaluator:
    return IrisEvaluator(cfg, device)


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer,
                      step=component_step, data_config=distributed.same_config)  # the data shards itself
