"""VTA (Variational Temporal Abstraction): hierarchical RSSM with learned boundaries."""

from .model import VTA, VTAConfig, VTAOutput

__all__ = ["VTA", "VTAConfig", "VTAOutput"]
