"""Offline action-conditioned next-frame prediction on recorded frames (Procgen CoinRun):
frame stack and action in, next frame out; PSNR/SSIM and open-loop rollouts against
copy-last-frame and shuffled actions. Two models: a U-Net on pixels
(:class:`NextFramePredictor`) and an autoencoder with a latent predictor
(:class:`AutoencoderNextFrame`)."""

from .experiment import FACTORIES, MODELS, FrameStackBatches, NextFrameEvaluator, build_model
from .latent import AutoencoderNextFrame, LatentNextFrameConfig
from .model import NextFrameConfig, NextFramePredictor

__all__ = ["FACTORIES", "MODELS", "AutoencoderNextFrame", "FrameStackBatches", "LatentNextFrameConfig",
           "NextFrameConfig", "NextFrameEvaluator", "NextFramePredictor", "build_model"]
