"""DreamerV3's world model as an offline action-conditioned frame predictor
(:class:`~worldmodels.training.openloop.OpenLoopModel`), for the cross-family open-loop
table (``python -m worldmodels.compare_openloop``).

The model is the family's :class:`~worldmodels.algos.dreamerv3.world_model.WorldModel`
on one image key: CNN encoder, RSSM, CNN decoder. Training is its world-model loss
without the reward and continue heads (recorded frames carry no reward):
``image_scale * image NLL + KL`` (balanced, free bits). The heads exist in the module but
are neither trained nor counted.

Sizes: ``tiny`` (the table's CPU default) is the package's small default
(:class:`DreamerConfig`: deter 128, 8 x 8 latents, CNN depth 16); ``small`` the 2023
paper's S preset (deter 512, 32 x 32 latents, CNN depth 32). The learning rate of
``tiny`` is 3e-4 rather than the paper's 1e-4: the table trains a few hundred updates,
in which 1e-4 leaves the decoder near the mean frame; ``small`` keeps 1e-4.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import WorldModelsError
from ...training.openloop import clipped_step, unknown_size
from .config import DreamerConfig
from .world_model import WorldModel, prev_actions

KEY = "image"
SIZES = {
    "tiny": {"deter": 128, "stoch": 8, "classes": 8, "hidden": 128, "cnn_depth": 16, "model_lr": 3e-4},
    "small": {"deter": 512, "stoch": 32, "classes": 32, "hidden": 512, "cnn_depth": 32, "model_lr": 1e-4},
}
MODE_NOISE = 0.5   # the same uniform noise for every class: Gumbel-max then picks the most probable class


def to_uint8_hwc(frames: Tensor) -> Tensor:
    """``[..., C, H, W]`` floats in [0, 1] -> ``[..., H, W, C]`` uint8 (the encoder's input)."""
    return (frames * 255.0).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


class DreamerOpenLoop:
    """DreamerV3's world model trained and rolled out on recorded frames and actions.

    ``rollout`` is deterministic: the posterior over the given frames and the prior over
    the predicted ones take the mode of each categorical latent (argmax class), and the
    decoder's mean image is the prediction.
    """

    name = "dreamerv3"
    uses_actions = True

    def __init__(self, frame_shape: tuple[int, int, int], num_actions: int, config: DreamerConfig, device: str):
        channels, height, width = frame_shape
        self.config, self.num_actions, self.device = config, num_actions, torch.device(device)
        obs_space = {KEY: ((height, width, channels), np.dtype(np.uint8))}
        self.model = WorldModel(config, obs_space, num_actions).to(self.device)
        self.optimizer = torch.optim.Adam(list(self.parameters()), lr=config.model_lr, eps=config.model_eps)

    def parameters(self):
        """Encoder, RSSM and decoder (the reward and continue heads take no part)."""
        for part in (self.model.encoder, self.model.rssm, self.model.decoder):
            yield from part.parameters()

    def _batch(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """A replay-style batch: uint8 images, one-hot actions, ``is_first`` on the first frame."""
        is_first = torch.zeros(frames.shape[:2], dtype=torch.bool, device=self.device)
        is_first[:, 0] = True
        return {KEY: to_uint8_hwc(frames.to(self.device)), "is_first": is_first,
                "action": F.one_hot(actions.to(self.device), self.num_actions).float()}

    def loss(self, frames: Tensor, actions: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``image_scale * NLL(image) + KL`` over the windows, with its parts."""
        c, wm = self.config, self.model
        batch = self._batch(frames, actions)
        post = wm.observe(batch)
        feat = wm.features(post.deter, post.stoch)
        image = wm.decoder.loss(feat, {KEY: batch[KEY]})[KEY].mean()
        kl = wm.rssm.kl_loss(post.post_logits, post.prior_logits, c.free_nats, c.dyn_scale, c.rep_scale)
        total = c.image_scale * image + kl.loss.mean()
        parts = {"loss": total, "image": image, "dyn": kl.dyn.mean(), "rep": kl.rep.mean()}
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def train_step(self, frames: Tensor, actions: Tensor) -> dict[str, float]:
        self.model.train()
        total, metrics = self.loss(frames, actions)
        clipped_step(self.optimizer, self.parameters(), total, self.config.model_grad_clip)
        return metrics

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Observe the K given frames (with the actions between them), then imagine
        ``horizon`` steps with ``actions[:, K-1:]``; latents at their mode, images the
        decoder's mean (see the class docstring)."""
        self.model.eval()
        wm, given = self.model, context.shape[1]
        batch = self._batch(context, actions[:, :given])
        embed = wm.encoder({KEY: batch[KEY]})
        rssm = wm.rssm.config
        noise = torch.full((*context.shape[:2], rssm.stoch, rssm.classes), MODE_NOISE, device=self.device)
        post = wm.rssm.observe(embed, prev_actions(batch["action"], batch["is_first"]), batch["is_first"],
                               noise=noise)
        future = F.one_hot(actions[:, given - 1:given - 1 + horizon].to(self.device), self.num_actions).float()
        prior_noise = torch.full((context.shape[0], horizon, rssm.stoch, rssm.classes), MODE_NOISE,
                                 device=self.device)
        prior = wm.rssm.imagine(wm.rssm.last_state(post), future, noise=prior_noise)
        mean = wm.decoder(wm.features(prior.deter, prior.stoch))[KEY].mode()
        return (mean + 0.5).clamp(0, 1).movedim(-1, -3).to(context.device)


def build_openloop(frame_shape: tuple[int, int, int], num_actions: int, size: str, seed: int,
                   device: str) -> DreamerOpenLoop:
    """The registry's ``openloop`` builder (:mod:`worldmodels.algos.registry`)."""
    if size not in SIZES:
        raise WorldModelsError(unknown_size(size))
    torch.manual_seed(seed)
    config = DreamerConfig(cnn_keys=KEY, mlp_keys="$^", **SIZES[size])
    return DreamerOpenLoop(tuple(frame_shape), num_actions, config, device)


__all__ = ["DreamerOpenLoop", "SIZES", "build_openloop"]
