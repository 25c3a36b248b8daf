"""World Models' V + M (Ha & Schmidhuber 2018) as an offline action-conditioned frame
predictor (:class:`~worldmodels.training.openloop.OpenLoopModel`), for the cross-family
open-loop table (``python -m worldmodels.compare_openloop``).

V is the package's conv VAE with the pipeline's loss (Gaussian reconstruction plus the
KL floored at ``kl_tolerance * latent_dim``, :func:`~.vm_stages.train_vae`); M the
MDN-RNN on V's latents, conditioned on the one-hot action, with its mixture NLL
(:meth:`~.mdnrnn.MDNRNN.compute_loss`, no reward or done head: recorded frames carry
neither). The pipeline trains V, then encodes, then trains M; here each update trains
both: V on the window's frames, M on V's detached posterior means of the same frames
(the means, not samples: the rollout feeds M means too). Optimisers as the pipeline's:
Adam at 1e-3 for each, M's gradient norm clipped at 1.

Sizes: ``tiny`` (the table's CPU default): 32 latents, VAE widths 16-32-64-128, LSTM 128,
5 Gaussians; ``small``: the pipeline's (32 latents, widths 32-64-128-256, LSTM 256).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import WorldModelsError
from ...nn.vae import ConvVAE, ConvVAEConfig
from ...training.openloop import clipped_step, unknown_size
from .config import PipelineConfig
from .mdnrnn import MDNRNN, MDNRNNConfig, sample_mixture

SIZES = {
    "tiny": {"latent_dim": 32, "widths": [16, 32, 64, 128], "hidden_size": 128, "num_mixtures": 5},
    "small": {"latent_dim": 32, "widths": [32, 64, 128, 256], "hidden_size": 256, "num_mixtures": 5},
}
PIPELINE = PipelineConfig()   # the pipeline's learning rates and KL tolerance


class WorldModelsOpenLoop:
    """V (conv VAE) + M (MDN-RNN) trained and rolled out on recorded frames and actions.

    ``rollout`` is deterministic: the given frames are encoded to their posterior means,
    M reads them with their actions, then steps on its own predictions taking, per latent
    dimension, the most probable component's mean (temperature tau -> 0); V decodes each
    predicted latent (the decoder's mean image).
    """

    name = "world_models"
    uses_actions = True

    def __init__(self, frame_shape: tuple[int, int, int], num_actions: int, size: dict, device: str):
        channels, height, width = frame_shape
        if height != width:
            raise ValueError(f"the VAE takes square frames, got {height}x{width}.")
        self.num_actions, self.device = num_actions, torch.device(device)
        self.vae = ConvVAE(ConvVAEConfig(image_size=height, channels=channels, latent_dim=size["latent_dim"],
                                         widths=list(size["widths"]), beta=1.0, likelihood="gaussian")).to(self.device)
        self.mdnrnn = MDNRNN(MDNRNNConfig(latent_dim=size["latent_dim"], action_dim=num_actions,
                                          hidden_size=size["hidden_size"], num_mixtures=size["num_mixtures"],
                                          predict_reward=False, predict_done=False)).to(self.device)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=PIPELINE.vae_lr)
        self.mdn_optimizer = torch.optim.Adam(self.mdnrnn.parameters(), lr=PIPELINE.mdn_lr)
        self.kl_floor = PIPELINE.kl_tolerance * size["latent_dim"]

    def parameters(self):
        yield from self.vae.parameters()
        yield from self.mdnrnn.parameters()

    def _one_hot(self, actions: Tensor) -> Tensor:
        return F.one_hot(actions.to(self.device), self.num_actions).float()

    def train_step(self, frames: Tensor, actions: Tensor) -> dict[str, float]:
        """V on every frame of the windows, then M on their detached posterior means."""
        self.vae.train()
        self.mdnrnn.train()
        images = frames.to(self.device).flatten(0, 1)
        mu, logvar = self.vae.encode(images)
        parts = self.vae.losses(images, mu + torch.randn_like(mu) * (0.5 * logvar).exp(), mu, logvar)
        vae_loss = parts["recon"] + parts["kl"].clamp_min(self.kl_floor)
        clipped_step(self.vae_optimizer, self.vae.parameters(), vae_loss, None)

        z = mu.detach().unflatten(0, frames.shape[:2])
        mdn_loss, metrics = self.mdnrnn.compute_loss({"z": z, "action": self._one_hot(actions[:, :-1])})
        clipped_step(self.mdn_optimizer, self.mdnrnn.parameters(), mdn_loss, 1.0)
        values = {"loss": vae_loss + mdn_loss, "vae_loss": vae_loss, "recon": parts["recon"], "kl": parts["kl"],
                  "mdn_nll_per_dim": metrics["nll_per_dim"]}
        return {name: float(value.detach()) for name, value in values.items()}

    def _most_likely(self, hidden: Tensor) -> Tensor:
        """M's next latent at tau = 0: the most probable component's mean, per dimension."""
        heads = self.mdnrnn.heads(hidden)
        unused = torch.zeros(heads["mu"].shape[:-1], device=hidden.device)
        return sample_mixture(heads["logit_pi"], heads["mu"], heads["log_sigma"], 0.0, unused, unused)

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Encode the K given frames, run M over them with their actions, then step M on its
        own predictions with ``actions[:, K:]``; decode each predicted latent."""
        self.vae.eval()
        self.mdnrnn.eval()
        batch, given = context.shape[:2]
        mu, _ = self.vae.encode(context.to(self.device).flatten(0, 1))
        inputs = torch.cat([mu.unflatten(0, (batch, given)), self._one_hot(actions[:, :given])], -1)
        hidden, (h, c) = self.mdnrnn.lstm(inputs)
        z, state, latents = self._most_likely(hidden[:, -1]), (h[0], c[0]), []
        for step in range(horizon):
            latents.append(z)
            if step + 1 < horizon:
                state = self.mdnrnn.step(z, self._one_hot(actions[:, given + step]), state)
                z = self._most_likely(state[0])
        frames = self.vae.decode(torch.stack(latents, 1).flatten(0, 1))
        return frames.unflatten(0, (batch, horizon)).to(context.device)


def build_openloop(frame_shape: tuple[int, int, int], num_actions: int, size: str, seed: int,
                   device: str) -> WorldModelsOpenLoop:
    """The registry's ``openloop`` builder (:mod:`worldmodels.algos.registry`)."""
    if size not in SIZES:
        raise WorldModelsError(unknown_size(size))
    torch.manual_seed(seed)
    return WorldModelsOpenLoop(tuple(frame_shape), num_actions, SIZES[size], device)


__all__ = ["SIZES", "WorldModelsOpenLoop", "build_openloop"]
