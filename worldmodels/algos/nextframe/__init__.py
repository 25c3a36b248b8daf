"""Offline action-conditioned next-frame prediction on recorded frames (Procgen CoinRun):
frame stack and action in, next frame out; PSNR/SSIM and open-loop rollouts against
copy-last-frame and shuffled actions."""

from .experiment import FACTORIES, FrameStackBatches, NextFrameEvaluator, build_model
from .model import NextFrameConfig, NextFramePredictor

__all__ = ["FACTORIES", "FrameStackBatches", "NextFrameConfig", "NextFrameEvaluator", "NextFramePredictor",
           "build_model"]
