"""Which stored episode a replay sample comes from: pluggable selectors.

A selector sees the candidates (episode ids in insertion order, and the number of
steps each can start a window at) and returns an index into them per sample.
:class:`~worldmodels.rl.replay.Replay` then picks the offset inside the episode
uniformly, unless the selector fixes it too (the online queue).

| name | weight of episode ``i`` |
| --- | --- |
| ``uniform`` | its usable steps (every step equally likely; DreamerV3) |
| ``balanced`` | 1 (every episode equally likely, whatever its length; IRIS) |
| ``recency`` | ``(1 + rank)^-power``, rank 0 the newest episode |
| ``priority`` | ``(1 / (1 + n_i))^alpha``, ``n_i`` how often this selector sampled it (Δ-IRIS's count-based priority; one selector per component keeps per-component counts) |
| ``queue`` | new windows first, each once, then a fallback selector (DreamerV3's online queue) |
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Candidates:
    """Episodes a sample may come from. ``ids`` int64 ``[E]`` (increasing: insertion
    order), ``usable`` int64 ``[E]`` (window starts available, > 0)."""

    ids: np.ndarray
    usable: np.ndarray


class Selector:
    """Base class: weights over candidates; stateless unless a subclass keeps counts."""

    def weights(self, candidates: Candidates) -> np.ndarray:
        raise NotImplementedError

    def select(self, rng: np.random.Generator, candidates: Candidates,
               count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(indices into candidates [count], offsets [count] or None)``."""
        weights = np.asarray(self.weights(candidates), np.float64)
        return rng.choice(len(weights), size=count, p=weights / weights.sum()), None

    def update(self, episode_ids: np.ndarray) -> None:
        """Called with the episode id of every row just sampled."""

    def on_insert(self, episode_id: int, offset: int, worker: int) -> None:
        """Called for every step inserted into the replay (episode id, offset in it)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Uniform(Selector):
    """Every usable step equally likely."""

    def weights(self, candidates: Candidates) -> np.ndarray:
        return candidates.usable.astype(np.float64)


class Balanced(Selector):
    """Every episode equally likely."""

    def weights(self, candidates: Candidates) -> np.ndarray:
        return np.ones(len(candidates.ids))


class Recency(Selector):
    """Newer episodes more likely: weight ``(1 + rank)^-power`` (rank 0: the newest)."""

    def __init__(self, power: float = 1.0):
        if power < 0:
            raise ValueError(f"recency power={power} must be >= 0.")
        self.power = float(power)

    def weights(self, candidates: Candidates) -> np.ndarray:
        rank = np.arange(len(candidates.ids))[::-1]
        return (1.0 + rank) ** -self.power


class CountPriority(Selector):
    """Δ-IRIS's count-based priority: ``p_i ∝ (1 / (1 + n_i))^alpha`` where ``n_i`` counts
    the rows this selector drew from episode ``i`` (``alpha = 0``: balanced)."""

    def __init__(self, alpha: float = 1.0):
        if alpha < 0:
            raise ValueError(f"priority_alpha={alpha} must be >= 0.")
        self.alpha = float(alpha)
        self.counts: dict[int, int] = {}

    def weights(self, candidates: Candidates) -> np.ndarray:
        counts = np.array([self.counts.get(int(i), 0) for i in candidates.ids], np.float64)
        return (1.0 / (1.0 + counts)) ** self.alpha

    def update(self, episode_ids: np.ndarray) -> None:
        for episode in np.asarray(episode_ids).tolist():
            self.counts[episode] = self.counts.get(episode, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {int(k): int(v) for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = {int(k): int(v) for k, v in state["counts"].items()}


class OnlineQueue(Selector):
    """Windows of fresh data first: every ``length`` consecutive steps an env inserts
    into one episode form a window queued once; samples pop the queue and fall back
    to ``fallback`` when it is empty (DreamerV3's online queue)."""

    def __init__(self, length: int, fallback: Selector | None = None):
        self.length, self.fallback = int(length), fallback or Uniform()
        self.queue: collections.deque[tuple[int, int]] = collections.deque()

    def on_insert(self, episode_id: int, offset: int, worker: int) -> None:
        if (offset + 1) % self.length == 0:
            self.queue.append((episode_id, offset + 1 - self.length))

    def weights(self, candidates: Candidates) -> np.ndarray:
        return self.fallback.weights(candidates)

    def select(self, rng: np.random.Generator, candidates: Candidates,
               count: int) -> tuple[np.ndarray, np.ndarray | None]:
        position = {int(e): i for i, e in enumerate(candidates.ids.tolist())}
        rows, offsets = [], []
        while self.queue and len(rows) < count:
            episode, offset = self.queue.popleft()
            if episode in position:
                rows.append(position[episode])
                offsets.append(offset)
        if len(rows) < count:
            extra, _ = self.fallback.select(rng, candidates, count - len(rows))
            rows.extend(extra.tolist())
            offsets.extend([-1] * len(extra))
        return np.asarray(rows, np.int64), np.asarray(offsets, np.int64)

    def update(self, episode_ids: np.ndarray) -> None:
        self.fallback.update(episode_ids)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": [list(item) for item in self.queue], "fallback": self.fallback.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = collections.deque((int(e), int(o)) for e, o in state["queue"])
        self.fallback.load_state_dict(state["fallback"])


SELECTORS = {"uniform": Uniform, "balanced": Balanced, "recency": Recency, "priority": CountPriority}


def make_selector(name: str, *, priority_alpha: float = 1.0, recency_power: float = 1.0,
                  queue_length: int | None = None) -> Selector:
    """A selector by name (:data:`SELECTORS`, or ``"queue"`` over uniform sampling)."""
    if name == "priority":
        return CountPriority(priority_alpha)
    if name == "recency":
        return Recency(recency_power)
    if name == "queue":
        if not queue_length:
            raise ValueError("the queue selector needs the window length (queue_length).")
        return OnlineQueue(queue_length)
    if name not in SELECTORS:
        raise ValueError(f"unknown replay selector {name!r}; known: {', '.join([*SELECTORS, 'queue'])}.")
    return SELECTORS[name]()


__all__ = ["Balanced", "Candidates", "CountPriority", "OnlineQueue", "Recency", "SELECTORS", "Selector", "Uniform",
           "make_selector"]
