"""The runtime every online family shares (DreamerV3, IRIS, Δ-IRIS) and that ``play``,
``record``, evaluation and behaviour cloning use: one collector over vector envs, one
replay that streams unfinished episodes with pluggable selectors, one episode
evaluator, the agent and world-model-as-env protocols, and the shared RL maths.

    from worldmodels.rl import Collector, Replay, EpisodeEvaluator
"""

from .collector import Collector
from .evaluator import EpisodeEvaluator, EvalResult
from .protocols import Agent, WorldModelEnv
from .replay import Replay
from .returns import lambda_returns
from .selectors import Balanced, CountPriority, OnlineQueue, Recency, Uniform, make_selector

__all__ = ["Agent", "Balanced", "Collector", "CountPriority", "EpisodeEvaluator", "EvalResult", "OnlineQueue",
           "Recency", "Replay", "Uniform", "WorldModelEnv", "lambda_returns", "make_selector"]
