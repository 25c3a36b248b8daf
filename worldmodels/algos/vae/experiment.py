"""Factories that let :func:`worldmodels.training.loop.fit` train a beta-VAE on
frames from the C++ bouncing-balls renderer."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ...data.bouncing_balls import BouncingBallsProvider, make_eval_set, renderer_kwargs
from ...nn.vae import ConvVAE, ConvVAEConfig
from ...training.contract import Evaluator, TrainData
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from ...utils.images import image_grid, save_png


def build_model(cfg: DictConfig) -> ConvVAE:
    return ConvVAE(dataclass_from_config(ConvVAEConfig, cfg.model))


class FrameBatches(TrainData):
    """Batches of single frames ``{"image": [B*T, C, H, W]}`` from the sequence provider."""

    def __init__(self, provider: BouncingBallsProvider):
        self.provider = provider

    def next_batch(self) -> dict[str, torch.Tensor]:
        return {"image": self.provider.next_batch()["frames"].flatten(0, 1)}

    def state_dict(self) -> dict:
        return self.provider.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.provider.load_state_dict(state)


def build_data(cfg: DictConfig, device: torch.device) -> FrameBatches:
    env = cfg.env
    provider = BouncingBallsProvider(
        int(cfg.train.batch_size), int(env.seq_len),
        chunk_sequences=int(env.chunk_sequences), refresh_steps=int(env.refresh_steps),
        seed=int(cfg.seed), device=device, **renderer_kwargs(env),
    )
    return FrameBatches(provider)


class VAEEvaluator(Evaluator):
    """ELBO terms and reconstruction PSNR on a fixed held-out set of frames, with the
    PSNR of predicting the held-out mean frame as a baseline; reconstruction grids
    (truth above reconstruction, then prior samples) as PNG."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        env = cfg.env
        held_out = make_eval_set(
            int(env.eval_sequences), int(env.seq_len), int(cfg.seed), device=device, **renderer_kwargs(env)
        )
        self.images = held_out["frames"].flatten(0, 1)
        self.media_count = int(cfg.algo.media_count)
        self.seed = int(cfg.seed)

    def evaluate(self, model: ConvVAE) -> dict[str, float]:
        mu, logvar = model.encode(self.images)
        parts = model.losses(self.images, mu, mu, logvar)
        recon = model.decode(mu).float()
        mean_frame = self.images.mean(0, keepdim=True).expand_as(self.images)
        return {
            "eval/loss": parts["loss"].item(),
            "eval/recon": parts["recon"].item(),
            "eval/kl": parts["kl"].item(),
            "eval/psnr": psnr(recon, self.images).item(),
            "eval/psnr_mean_frame": psnr(mean_frame, self.images).item(),
        }

    def write_media(self, model: ConvVAE, directory: Path, step: int) -> list[Path]:
        shown = self.images[: self.media_count]
        generator = torch.Generator().manual_seed(self.seed)
        grid = image_grid([shown, model.reconstruct(shown), model.sample(len(shown), generator)])
        return [save_png(Path(directory) / f"reconstruction_step{step:06d}.png", grid)]


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images of 10 log10(1 / MSE) for images in [0, 1] ``[N, C, H, W]``."""
    mse = (prediction - target).square().flatten(1).mean(1).clamp_min(1e-10)
    return (-10.0 * torch.log10(mse)).mean()


def build_evaluator(cfg: DictConfig, device: torch.device) -> VAEEvaluator:
    return VAEEvaluator(cfg, device)


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator)

__all__ = ["FACTORIES", "FrameBatches", "VAEEvaluator", "build_data", "build_evaluator", "build_model", "psnr"]
