"""The Δ-IRIS agent: delta tokenizer, world model and Δ-IRIS's actor-critic
(:class:`~worldmodels.algos.delta_iris.actor_critic.DeltaActorCritic`: residual frame
encoder, EMA target critic, bootstrapped returns, two-hot critic on Crafter).

Unlike IRIS, the policy reads real frames in the env and during burn-in, and decoded
frames in imagination: each imagined frame is decoded from the previous frame, the
action and the sampled delta tokens (:class:`DeltaDream`). Training follows
:class:`~worldmodels.rl.imagination_agent.ImaginationAgent`: components one after
another, one AdamW group per component (weight decay on linear weights only), the
actor-critic in fp32 and the others in the run's precision (Δ-IRIS: bf16 on a GPU).
"""

from __future__ import annotations

import torch

from ...nn.delta_tokenizer import DeltaTokenizer, DeltaTokenizerConfig
from ...nn.tokenizer import as_unit_frames
from ...rl.imagination_agent import ImaginationAgent, OptimConfig
from .actor_critic import DeltaActorCritic, DeltaActorCriticConfig
from .world_model import DeltaWorldModel, DeltaWorldModelConfig

Tensor = torch.Tensor


class DeltaDream:
    """Δ-IRIS's imagined environment.

    :meth:`start` tokenises the real context (pairs of consecutive frames), fills the
    world model's KV caches with it and returns the real frames; :meth:`step` samples
    the next frame's delta tokens, decodes the frame from the previous one and feeds
    its embedding back to the world model.
    """

    def __init__(self, tokenizer: DeltaTokenizer, world_model: DeltaWorldModel, temperature: float = 1.0,
                 greedy: bool = False):
        self.tokenizer, self.world_model = tokenizer, world_model
        self.temperature, self.greedy = temperature, greedy
        self.frame: Tensor | None = None

    @torch.no_grad()
    def start(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
        frames, actions = as_unit_frames(batch["observations"]), batch["actions"]
        batch_size, steps = frames.shape[:2]
        k = self.tokenizer.config.tokens_per_frame
        if steps > 1:
            tokens = self.tokenizer.encode(frames[:, :-1], actions[:, :-1], frames[:, 1:]).tokens
        else:
            tokens = torch.zeros(batch_size, 0, k, dtype=torch.int64, device=frames.device)
        self.world_model.reset_imagination(frames, actions[:, :-1], tokens)
        self.frame = frames[:, -1]
        return (frames[:, :-1] if steps > 1 else None), self.frame

    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.frame is None:
            raise RuntimeError("DeltaDream.step: call start(batch) first.")
        out = self.world_model.step(action, temperature=self.temperature, greedy=self.greedy)
        frame = self.tokenizer.decode_tokens(self.frame[:, None], action[:, None], out.tokens[:, None])[:, 0]
        self.world_model.observe_frame(frame)
        self.frame = frame
        return frame, out.reward, out.done


class DeltaIrisAgent(ImaginationAgent):
    """Δ-IRIS's three components.

    Args:
        tokenizer, world_model, actor_critic: the components' configs; vocabulary, tokens
            per frame, frame shape and action count must agree, and the world model's
            context must hold the actor-critic's burn-in, horizon and the frame that
            bootstraps (``burn_in + imagine_horizon + 1 <= max_blocks``).
        optim: :class:`OptimConfig` per component (defaults: Δ-IRIS's Crafter settings).
        precision: per component, ``run`` | ``fp32`` | ``bf16`` (default: the actor-critic
            in fp32, the others in the run's precision, as Δ-IRIS).
    """

    def __init__(self, tokenizer: DeltaTokenizerConfig, world_model: DeltaWorldModelConfig,
                 actor_critic: DeltaActorCriticConfig, optim: dict[str, OptimConfig] | None = None,
                 precision: dict[str, str] | None = None):
        super().__init__()
        check_compatible(tokenizer, world_model, actor_critic)
        self.set_precision({"actor_critic": "fp32"} if precision is None else precision)
        self.tokenizer = DeltaTokenizer(tokenizer)
        self.world_model = DeltaWorldModel(world_model)
        self.actor_critic = DeltaActorCritic(actor_critic)
        defaults = {"tokenizer": OptimConfig(weight_decay=0.01), "world_model": OptimConfig(weight_decay=0.01),
                    "actor_critic": OptimConfig()}
        self.optim = {**defaults, **(optim or {})}

    def tokenizer_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """``observations [B, T, C, R, R]``, ``actions [B, T]``, ``mask_padding [B, T]`` ->
        :meth:`DeltaTokenizer.compute_loss` over the ``T - 1`` pairs."""
        return self.tokenizer.compute_loss(batch)

    def world_model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """IRIS-layout sequences (``observations``, ``actions``, ``rewards``, ``ends``,
        ``mask_padding``): the frozen tokenizer (eval mode: no codebook update) gives the
        delta tokens, then :meth:`DeltaWorldModel.compute_loss`."""
        frames, actions = batch["observations"], batch["actions"]
        training = self.tokenizer.training
        self.tokenizer.eval()
        try:
            with torch.no_grad():
                tokens = self.tokenizer.encode(frames[:, :-1], actions[:, :-1], frames[:, 1:]).tokens
        finally:
            self.tokenizer.train(training)
        return self.world_model.compute_loss({**batch, "latent_tokens": tokens})

    def after_update(self, name: str) -> None:
        """After each actor-critic update the target critic moves ``1 - tau`` towards it."""
        if name == "actor_critic":
            self.actor_critic.update_target()

    def dream(self) -> DeltaDream:
        return DeltaDream(self.tokenizer, self.world_model)

    def policy_frames(self, frames: Tensor) -> Tensor:
        """The real frames, in [0, 1] (Δ-IRIS acts on observations, not reconstructions)."""
        return as_unit_frames(frames)


def check_compatible(tok: DeltaTokenizerConfig, wm: DeltaWorldModelConfig, ac: DeltaActorCriticConfig) -> None:
    """Raise ``ValueError`` when the three configs cannot work together."""
    pairs = {"vocab_size": (tok.vocab_size, wm.vocab_size), "tokens_per_frame": (tok.tokens_per_frame,
                                                                                 wm.tokens_per_frame),
             "num_actions": (tok.num_actions, wm.num_actions, ac.num_actions),
             "in_channels": (tok.in_channels, wm.in_channels, ac.in_channels),
             "resolution": (tok.resolution, wm.resolution, ac.resolution)}
    for name, values in pairs.items():
        if len(set(values)) != 1:
            raise ValueError(f"Δ-IRIS components disagree on {name}: tokenizer/world model(/actor-critic) "
                             f"give {list(values)}.")
    if ac.burn_in + ac.imagine_horizon + 1 > wm.max_blocks:
        raise ValueError(f"burn_in={ac.burn_in} + imagine_horizon={ac.imagine_horizon} + 1 frames exceed the world "
                         f"model's context max_blocks={wm.max_blocks}; lower them or raise max_blocks.")


__all__ = ["DeltaDream", "DeltaIrisAgent", "check_compatible"]
