"""World Models (Ha & Schmidhuber 2018): V (the package's conv VAE), M (the MDN-RNN) and
C (a linear controller trained by CMA-ES, in the real env or in M's dream), run as a
staged pipeline by :mod:`worldmodels.algos.world_models.pipeline`."""

from .controller import parameter_count, population_actions
from .dream import DreamSettings, dream_returns, dream_returns_loop
from .mdnrnn import MDNRNN, MDNRNNConfig, mixture_log_prob, sample_mixture

__all__ = ["MDNRNN", "DreamSettings", "MDNRNNConfig", "dream_returns", "dream_returns_loop", "mixture_log_prob",
           "parameter_count", "population_actions", "sample_mixture"]
