"""beta-VAE on bouncing-balls frames: the default experiment and World Models' vision model."""

from .experiment import FACTORIES, FrameBatches, VAEEvaluator, build_model

__all__ = ["FACTORIES", "FrameBatches", "VAEEvaluator", "build_model"]
