"""The IRIS agent: tokenizer, world model and actor-critic, trained one after another
in each update (:func:`~worldmodels.rl.imagination_agent.component_step`) as IRIS
trains them. The world model's tokens come from the tokenizer under
``torch.no_grad()``, and the actor-critic imagines with the tokenizer and the world
model frozen (no gradient, world model in eval mode). :meth:`IrisAgent.param_groups`
gives each component its own AdamW learning rate, weight decay and ``max_grad_norm``
(clipped separately, as IRIS clips each component). IRIS runs in fp32 throughout
(``model.precision``).
"""

from __future__ import annotations

import torch

from ...nn.tokenizer import Tokenizer, TokenizerConfig
from ...rl.imagination_agent import (  # noqa: F401  (re-exported)
    COMPONENTS,
    ImaginationAgent,
    OptimConfig,
    frames_first,
    split_weight_decay,
)
from ...rl.lstm_actor_critic import IrisActorCritic, IrisActorCriticConfig
from .world_model import IrisWorldModel, IrisWorldModelConfig

Tensor = torch.Tensor


class IrisDream:
    """IRIS's imagined environment: the policy sees tokenizer reconstructions; the world
    model predicts the next frame's tokens, decoded by the tokenizer. Sampling of the
    tokens at ``temperature`` (or ``greedy``)."""

    def __init__(self, tokenizer: Tokenizer, world_model: IrisWorldModel, temperature: float = 1.0,
                 greedy: bool = False):
        self.tokenizer, self.world_model = tokenizer, world_model
        self.temperature, self.greedy = temperature, greedy

    @torch.no_grad()
    def start(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
        obs = batch["observations"]
        context = self.tokenizer.encode_decode(obs[:, :-1]) if obs.shape[1] > 1 else None
        tokens = self.tokenizer.encode(obs[:, -1]).tokens
        self.world_model.reset_imagination(tokens)
        return context, self.tokenizer.decode_tokens(tokens)

    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens, reward, done = self.world_model.step(action, temperature=self.temperature, greedy=self.greedy)
        return self.tokenizer.decode_tokens(tokens), reward, done


class IrisAgent(ImaginationAgent):
    """IRIS's three components; see the module docstring.

    Args:
        tokenizer, world_model, actor_critic: the components' configs; the world model's
            ``vocab_size`` and ``tokens_per_obs`` and the actor-critic's frame shape must
            match the tokenizer, and ``imagine_horizon - 1 <= max_blocks - 1``.
        optim: :class:`OptimConfig` per component name (defaults: IRIS's).
        precision: per component, ``run`` | ``fp32`` | ``bf16`` (default: fp32, as IRIS).
    """

    def __init__(self, tokenizer: TokenizerConfig, world_model: IrisWorldModelConfig,
                 actor_critic: IrisActorCriticConfig, optim: dict[str, OptimConfig] | None = None,
                 precision: dict[str, str] | None = None):
        super().__init__()
        self.set_precision({name: "fp32" for name in COMPONENTS} if precision is None else precision)
        _check_compatible(tokenizer, world_model, actor_critic)
        self.tokenizer = Tokenizer(tokenizer)
        self.world_model = IrisWorldModel(world_model)
        self.actor_critic = IrisActorCritic(actor_critic)
        defaults = {"tokenizer": OptimConfig(), "world_model": OptimConfig(weight_decay=0.01),
                    "actor_critic": OptimConfig()}
        self.optim = {**defaults, **(optim or {})}

    def tokenizer_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """``batch["observations"] [B, T, C, R, R]`` uint8 -> :meth:`Tokenizer.compute_loss`."""
        return self.tokenizer.compute_loss({"observations": batch["observations"]})

    def world_model_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """``observations [B, T, C, R, R]`` uint8, ``actions [B, T]`` int64, ``rewards [B, T]``,
        ``ends [B, T]``, ``mask_padding [B, T]``: tokens from the frozen tokenizer (in eval
        mode, so its codebook statistics follow the tokenizer's own batches only), then
        :meth:`IrisWorldModel.compute_loss`."""
        training = self.tokenizer.training
        self.tokenizer.eval()
        try:
            with torch.no_grad():
                tokens = self.tokenizer.encode(batch["observations"]).tokens
        finally:
            self.tokenizer.train(training)
        wm_batch = {key: batch[key] for key in ("actions", "rewards", "ends", "mask_padding")}
        return self.world_model.compute_loss({"obs_tokens": tokens, **wm_batch})

    def dream(self) -> IrisDream:
        return IrisDream(self.tokenizer, self.world_model)

    def policy_frames(self, frames: Tensor) -> Tensor:
        """The tokenizer's reconstruction of the frames (IRIS's ``use_original_obs=False``)."""
        return self.tokenizer.encode_decode(frames)


def _check_compatible(tok: TokenizerConfig, wm: IrisWorldModelConfig, ac: IrisActorCriticConfig) -> None:
    if wm.vocab_size != tok.vocab_size or wm.tokens_per_obs != tok.tokens_per_frame:
        raise ValueError(f"world model vocab_size={wm.vocab_size}, tokens_per_obs={wm.tokens_per_obs} must match the "
                         f"tokenizer's vocab_size={tok.vocab_size}, tokens_per_frame={tok.tokens_per_frame}.")
    if (ac.in_channels, ac.resolution) != (tok.in_channels, tok.resolution):
        raise ValueError(f"actor-critic frames {ac.in_channels}x{ac.resolution}x{ac.resolution} differ from the "
                         f"tokenizer's {tok.in_channels}x{tok.resolution}x{tok.resolution}.")
    if ac.num_actions != wm.num_actions:
        raise ValueError(f"actor-critic num_actions={ac.num_actions} != world model num_actions={wm.num_actions}.")
    if ac.imagine_horizon > wm.max_blocks:
        raise ValueError(f"imagine_horizon={ac.imagine_horizon} needs {ac.imagine_horizon - 1} world-model steps, "
                         f"more than max_blocks - 1 = {wm.max_blocks - 1}; lower it or raise max_blocks.")


__all__ = [
    "COMPONENTS",
    "ImaginationAgent",
    "IrisAgent",
    "IrisDream",
    "OptimConfig",
    "frames_first",
    "split_weight_decay",
]
