"""One episode evaluator: ``N`` episodes of an agent in its own env.

The env is separate from the training env (its own seed, and its own settings where
an experiment wants them, e.g. IRIS's test env with one no-op and no sticky actions).
The ``N`` episodes are the first ``N`` to *start*, spread over the env's copies, so
short episodes are not favoured when one env finishes several before another ends.
Actions are the policy's ``greedy`` mode or its ``sample`` (at the agent's
temperature); the first episodes can be recorded step by step for media.

    evaluator = EpisodeEvaluator(make_env(spec), episodes=16, mode="greedy", record_envs=1)
    result = evaluator.run(agent)      # result.returns [16], result.lengths, result.recorded

An env whose observations hold ``log_success`` (robosuite's tasks) also gives each
episode's success: whether ``log_success`` was set at any of its steps, the final one
included (``result.successes``, ``eval/success_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..envs.spaces import VectorEnv
from .collector import Collector
from .protocols import Agent, check_mode

EVAL_SEED_OFFSET = 10_000   # evaluation envs are seeded seed + EVAL_SEED_OFFSET
SUCCESS_KEY = "log_success"  # an env's per-step success flag (worldmodels.envs.robosuite)
PROTOCOL_TEMPERATURE = {"iris": 0.5, "delta_iris": 1.0}   # IRIS's and Δ-IRIS's test collection


def eval_env_config(cfg: Any) -> Any:
    """The evaluation env's config: ``cfg.env`` with the keys of ``cfg.eval_env`` (when
    set) replacing its own, e.g. IRIS's test env ``{noop_max: 1, sticky_actions: 0,
    terminal_on_life_loss: false}``."""
    from omegaconf import OmegaConf

    override = OmegaConf.select(cfg, "eval_env", default=None)
    return cfg.env if not override else OmegaConf.merge(cfg.env, override)


def checkpoint_path(path: str | Path) -> Path:
    """``path`` itself, or ``<path>/checkpoints/last.pt`` for a run directory."""
    path = Path(path)
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


def policy_settings(algo: str, cfg: Any, temperature: float | None) -> tuple[str, dict[str, float], float]:
    """``(mode, policy kwargs, temperature)``: ``sample`` at the temperature, or ``greedy`` at 0.
    A run whose ``algo.eval_mode`` is ``sample`` or ``greedy`` (DreamerV3) is evaluated
    that way unless a temperature is given; its policy has no temperature, so only 1
    (``sample``, at the policy's own temperature) and 0 (``greedy``) are accepted."""
    eval_mode = (cfg.get("algo") or {}).get("eval_mode")
    if eval_mode in ("sample", "greedy"):  # a policy with no temperature argument (DreamerV3)
        if temperature is None:
            return (eval_mode, {}, 1.0) if eval_mode == "sample" else ("greedy", {}, 0.0)
        if temperature in (0.0, 1.0):
            return ("sample", {}, 1.0) if temperature == 1.0 else ("greedy", {}, 0.0)
        raise ValueError(f"{algo}'s policy samples at its own temperature only; give --temperature 1 (sample) "
                         f"or 0 (greedy), not {temperature}.")
    if temperature is None:
        temperature = PROTOCOL_TEMPERATURE.get(algo)
    if temperature is None:
        temperature = float((cfg.get("algo") or {}).get("eval_temperature", 0.0) or 0.0)
    if temperature <= 0:
        return "greedy", {}, 0.0
    return "sample", {"temperature": float(temperature)}, float(temperature)


@dataclass
class EvalResult:
    """``returns`` and ``lengths`` ``[N]`` (agent steps) in the order the episodes
    started; ``recorded``: for each recorded env, its first episode's stored steps
    ``{key: [T, ...]}`` (the final ``is_last`` step included, up to ``record_steps``);
    ``successes``: bool ``[N]`` for envs that report ``log_success`` (None otherwise)."""

    returns: np.ndarray
    lengths: np.ndarray
    recorded: list[dict[str, np.ndarray]] = field(default_factory=list)
    successes: np.ndarray | None = None

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """``{prefix}/return_{mean,std,min,max}``, ``{prefix}/length_mean`` and
        ``{prefix}/neg_return`` (minus the mean: lower is better, for ``train.best_metric``),
        and ``{prefix}/success_rate`` when the env reports successes."""
        mean = float(self.returns.mean())
        metrics = {f"{prefix}/return_mean": mean, f"{prefix}/return_std": float(self.returns.std()),
                   f"{prefix}/return_min": float(self.returns.min()), f"{prefix}/return_max": float(self.returns.max()),
                   f"{prefix}/length_mean": float(self.lengths.mean()), f"{prefix}/neg_return": -mean}
        if self.successes is not None:
            metrics[f"{prefix}/success_rate"] = float(self.successes.mean())
        return metrics


class EpisodeEvaluator:
    """Runs ``episodes`` episodes per call of :meth:`run` (module docstring).

    Args:
        env: the evaluation env (closed by :meth:`close`).
        episodes: ``N``. mode: ``"greedy"`` or ``"sample"``; ``policy_kwargs`` go to
            ``agent.policy`` (e.g. ``temperature``).
        record_envs, record_steps: keep the first episode of the first ``record_envs``
            envs, at most ``record_steps`` steps each.
        seed: seed of the random policy (``run(None)``).
    """

    def __init__(self, env: VectorEnv, episodes: int, *, mode: str = "greedy", record_envs: int = 0,
                 record_steps: int = 1000, seed: int = 0, **policy_kwargs: Any):
        if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
            raise ValueError(f"evaluation episodes must be an integer >= 1, got {episodes!r}.")
        self.collector = Collector(env, seed=seed, replayable=False)
        self.episodes, self.mode = int(episodes), check_mode(mode)
        self.record_envs, self.record_steps = min(int(record_envs), env.num_envs), int(record_steps)
        self.policy_kwargs = policy_kwargs

    @property
    def env(self) -> VectorEnv:
        return self.collector.env

    def run(self, agent: Agent | None, mode: str | None = None, **policy_kwargs: Any) -> EvalResult:
        """``N`` new episodes with ``agent`` (uniformly random actions when None)."""
        collector, n = self.collector, self.collector.num_envs
        counting = np.arange(n) < self.episodes
        started, returns, lengths = int(counting.sum()), [], []
        slot = {i: i for i in range(n) if counting[i]}   # env -> index of the episode it runs
        results: dict[int, tuple[float, int, bool]] = {}
        recording = {i: [] for i in range(self.record_envs)}
        tracks_success = SUCCESS_KEY in collector.env.obs_space
        succeeded = np.zeros(n, bool)   # log_success seen in the env's current episode

        def on_step(step: dict[str, np.ndarray]) -> None:
            if tracks_success:
                succeeded[:] = np.where(step["is_first"], False, succeeded) | (step[SUCCESS_KEY] > 0)
            for i, steps in recording.items():
                if len(steps) < self.record_steps and (not steps or not steps[-1]["is_last"]):
                    steps.append({key: np.array(value[i]) for key, value in step.items()})

        def on_episode(index: int, ret: float, length: int) -> None:
            nonlocal started
            if counting[index]:
                final = tracks_success and bool(collector.last_obs[SUCCESS_KEY][index] > 0)
                results[slot[index]] = (ret, length, bool(succeeded[index]) or final)
            counting[index] = started < self.episodes
            if counting[index]:
                slot[index], started = started, started + 1

        collector.reset()
        collector.on_step[:], collector.on_episode[:] = [on_step], [on_episode]
        kwargs = {**self.policy_kwargs, **policy_kwargs}
        while len(results) < self.episodes:
            collector.step(agent, mode or self.mode, **kwargs)
        self._finish_recordings(recording)
        returns = np.array([results[i][0] for i in range(self.episodes)], np.float64)
        lengths = np.array([results[i][1] for i in range(self.episodes)], np.int64)
        recorded = [{key: np.stack([s[key] for s in steps]) for key in steps[0]}
                    for steps in recording.values() if steps]
        successes = np.array([results[i][2] for i in range(self.episodes)], bool) if tracks_success else None
        return EvalResult(returns, lengths, recorded, successes)

    def _finish_recordings(self, recording: dict[int, list]) -> None:
        """Add the final observation of recorded episodes that ended on the last step."""
        obs = self.collector.last_obs
        for i, steps in recording.items():
            if obs is None or not steps or steps[-1]["is_last"] or len(steps) >= self.record_steps:
                continue
            if obs["is_last"][i]:
                final = {key: np.array(obs[key][i]) for key in steps[-1] if key in obs}
                final["action"] = np.zeros_like(steps[-1]["action"])
                steps.append(final)

    def close(self) -> None:
        self.collector.close()


__all__ = ["EVAL_SEED_OFFSET", "PROTOCOL_TEMPERATURE", "SUCCESS_KEY", "EpisodeEvaluator", "EvalResult",
           "checkpoint_path", "eval_env_config", "policy_settings"]
