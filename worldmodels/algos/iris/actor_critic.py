"""IRIS's CNN-LSTM actor-critic; it lives in :mod:`worldmodels.rl.lstm_actor_critic`,
shared with Δ-IRIS."""

from ...rl.lstm_actor_critic import Dream, Imagination, IrisActorCritic, IrisActorCriticConfig

__all__ = ["Dream", "Imagination", "IrisActorCritic", "IrisActorCriticConfig"]
