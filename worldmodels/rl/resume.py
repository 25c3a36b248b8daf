"""What an online run checkpoints besides the model, and how a resume puts it back.

An online run's data (DreamerV3's :class:`~worldmodels.algos.dreamerv3.collect.OnlineData`,
IRIS's :class:`~worldmodels.rl.component_data.ComponentData`) is a collector, a replay and
an :class:`~worldmodels.data.episodes.EpisodeWriter`. :func:`online_state` saves

- the replay's exact contents as of the checkpoint (``<run dir>/replay/replay_<tag>.npz``,
  named in the state) and its sampling RNG and selectors;
- the collector's counters, RNG, policy state, current observation and env history
  (:class:`~worldmodels.rl.collector.Collector`), from which the env's state is rebuilt;
- the index of the next episode file.

The data keeps the snapshot its last checkpoint names (told by
:meth:`~worldmodels.training.contract.TrainData.checkpoint_saved`) until the next
checkpoint replaces it, however many snapshots evaluations write in between.

:func:`restore_online_state` first deletes what a killed run wrote after the checkpoint
(replay snapshots tagged later, episode files numbered later), loads the replay, replays
the env, and, when the env is back in its saved state, hands the episode writer the
unfinished episodes from the replay so that they are written whole when they end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.episodes import EpisodeWriter
from .collector import Collector
from .replay import Replay


def online_state(collector: Collector, replay: Replay, writer: EpisodeWriter | None, run_dir: Path | None,
                 tag: int, protect: str | None = None) -> dict[str, Any]:
    """The collector's, replay's and writer's state; with a run directory, the replay's
    contents are written to ``<run_dir>/replay/replay_<tag>.npz`` and named in it (older
    snapshots are deleted, except ``protect``: the one ``last.pt`` names until it is
    replaced; the evaluations' ``best.pt`` saves snapshots too)."""
    state = {"collector": collector.state_dict(), "replay": replay.state_dict()}
    if writer is not None:
        state["episodes"] = writer.state_dict()
    if run_dir is not None:
        state["replay_file"] = replay.snapshot(run_dir / "replay", tag, protect=protect)
    return state


def restore_online_state(state: dict[str, Any], collector: Collector, replay: Replay, writer: EpisodeWriter | None,
                         run_dir: Path | None, tag: int) -> None:
    """Put back :func:`online_state` taken at ``tag`` (see the module docstring)."""
    if run_dir is not None:
        Replay.drop_snapshots_after(run_dir / "replay", tag)
        if state.get("replay_file"):
            replay.load(run_dir / "replay" / state["replay_file"])
    replay.load_state_dict(state["replay"])
    collector.load_state_dict(state["collector"])
    if writer is None or "episodes" not in state:
        return
    writer.load_state_dict(state["episodes"])
    if collector.restored:
        for worker in range(collector.num_envs):
            steps = replay.open_episode(worker)
            if steps is not None:
                writer.builder.restore(worker, steps)
            elif not collector.last_obs["is_first"][worker]:
                writer.builder.skip_to_next_episode(worker)


__all__ = ["online_state", "restore_online_state"]


class OnlineResumable:
    """The snapshot bookkeeping an online run's data shares: subclasses hold
    ``collector``, ``replay``, ``writer``, ``run_dir`` and ``updates``, and call
    :meth:`_online_state` from ``state_dict`` and :meth:`_restore_online` from
    ``load_state_dict``."""

    collector: Collector
    replay: Replay
    writer: EpisodeWriter | None
    run_dir: Path | None
    updates: int
    _snapshot: str | None = None   # the replay snapshot of the latest state_dict
    _kept: str | None = None       # the one last.pt names

    def _online_state(self) -> dict[str, Any]:
        state = online_state(self.collector, self.replay, self.writer, self.run_dir, self.updates, self._kept)
        self._snapshot = state.get("replay_file")
        return state

    def _restore_online(self, state: dict[str, Any]) -> None:
        restore_online_state(state, self.collector, self.replay, self.writer, self.run_dir, int(state["updates"]))
        self._kept = state.get("replay_file")

    def checkpoint_saved(self) -> None:
        """Keep the replay snapshot ``last.pt`` now names until the next checkpoint."""
        self._kept = self._snapshot
