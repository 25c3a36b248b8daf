"""Online data for DreamerV3: the shared collector and replay (:mod:`worldmodels.rl`) fed
by the agent's exploring policy, sampled at a fixed train ratio.

Each :meth:`OnlineData.next_batch` first steps the environments so that, over the run,
replayed steps / env steps = ``train_ratio``: one update replays ``batch_size *
batch_length`` steps, so it is preceded by ``batch_size * batch_length / train_ratio``
env steps (a fraction is carried over to the next update). Env steps count every
environment: one vectorised step of ``num_envs`` envs is ``num_envs`` env steps.

Steps enter the replay as they happen, so unfinished episodes are sampled too; a batch
is ``B`` windows of ``L`` consecutive steps of one env's stream (``align="stream"``:
a window may run into that env's next episode, where ``is_first`` restarts the model).
``algo.replay_selector`` picks the windows (``uniform``, ``recency``, or ``queue``:
every fresh window once, first). The step convention is :mod:`worldmodels.data.episodes`':
``action[t]`` float32 (one-hot for discrete envs; the agent's ``[-1, 1]`` values for
continuous ones, rescaled to the env's bounds only when stepping).

Finished episodes are also written to ``<run dir>/episodes/`` (a record for ``play``
and offline training). Checkpoints save the replay's exact contents
(``<run dir>/replay/replay_<update>.npz``) and every RNG, and the envs' history, from which a resume rebuilds their state, so a
resumed run continues as the uninterrupted one would have (:mod:`worldmodels.rl.resume`).

Under torchrun each rank is one shard (:func:`~worldmodels.training.distributed.env_shard`):
envs seeded ``seed + rank * num_envs + i``, a replay of ``replay_capacity // world_size``
steps, ``ceil(prefill / world_size)`` random steps, and its episodes and replay snapshots
in :func:`~worldmodels.training.distributed.rank_dir` (``<run dir>/rank<r>/`` beside rank
0's). ``train.batch_size`` sequences per rank and the same env steps per update on every
rank keep ``train_ratio`` on the global counts: ``world_size * B * L`` replayed steps per
``world_size * B * L / train_ratio`` env steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.episodes import EpisodeWriter
from ...envs.factory import VectorEnv, make_env, spec_from_config
from ...rl.actions import onehot, random_policy, stored_action, to_env_action  # noqa: F401  (re-exported)
from ...rl.collector import Collector, shard_metrics
from ...rl.replay import Replay
from ...rl.resume import OnlineResumable
from ...rl.selectors import make_selector
from ...training import distributed
from ...training.contract import TrainData

replay_action = stored_action


def batch_to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Numpy ``[B, L, ...]`` arrays -> tensors on ``device`` with the same dtypes (uint8 stays)."""
    return {key: torch.from_numpy(np.ascontiguousarray(value)).to(device) for key, value in batch.items()}


class OnlineData(OnlineResumable, TrainData):
    """Collects experience with the bound model and samples replay batches.

    Args:
        env: the training environments (``make_env(spec)``), closed by :meth:`close`.
        batch_size, batch_length: ``B`` sequences of ``L`` steps per batch.
        train_ratio: replayed steps per env step.
        prefill: env steps taken with uniformly random actions before the first batch
            (more follow, still random, until a window of ``L`` steps fits).
        capacity: replay capacity in steps. seed: replay and random-action seed.
        device: where batches go. selector: ``uniform``, ``recency`` or ``queue``.
        on_disk: keep the replay's arrays in memory maps under ``<run_dir>/replay_store``.
    """

    def __init__(self, env: VectorEnv, *, batch_size: int, batch_length: int, train_ratio: float,
                 prefill: int, capacity: int, seed: int, device: torch.device | str = "cpu",
                 selector: str = "uniform", on_disk: bool = False):
        if train_ratio <= 0:
            raise ValueError(f"train_ratio={train_ratio} must be > 0.")
        self.batch_size, self.batch_length = int(batch_size), int(batch_length)
        self.train_ratio, self.prefill, self.device = float(train_ratio), int(prefill), torch.device(device)
        self.collector = Collector(env, seed=seed + 1)
        self.selector = selector
        self.replay = Replay(int(capacity), seed,
                             selectors={selector: make_selector(selector, queue_length=self.batch_length)})
        self.collector.on_step.append(self.replay.add)
        self.model: Any = None
        self.run_dir: Path | None = None
        self.writer: EpisodeWriter | None = None
        self.updates = 0
        self.owed = 0.0          # env steps owed to the train ratio, carried between updates
        self.prefilled = False
        self.on_disk = bool(on_disk)

    @property
    def num_envs(self) -> int:
        return self.collector.num_envs

    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    @property
    def episodes(self) -> int:
        return self.collector.episodes

    @property
    def act_space(self):
        return self.collector.act_space

    @property
    def steps_per_update(self) -> float:
        """Env steps per update: ``batch_size * batch_length / train_ratio``."""
        return self.batch_size * self.batch_length / self.train_ratio

    def bind_model(self, model: Any, run_dir: str | Path | None = None) -> None:
        """Act with ``model``; keep replay snapshots in ``<run_dir>/replay`` and every
        finished episode in ``<run_dir>/episodes`` (one npz each); under torchrun, ranks
        other than 0 keep theirs under ``<run_dir>/rank<r>/``."""
        self.model, self.run_dir = model, None if run_dir is None else distributed.rank_dir(Path(run_dir))
        if self.run_dir is not None:
            self.writer = EpisodeWriter(self.run_dir / "episodes", self.num_envs)
            self.collector.on_step.append(self.writer)
            if self.on_disk:
                self.replay.store_on_disk(self.run_dir / "replay_store")

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Collect the env steps this update owes, then ``B`` replay windows as tensors
        ``{key: [B, L, ...]}`` on the device (images uint8, ``action`` float32)."""
        if not self.prefilled:
            self.collector.collect(self.prefill)
            while not distributed.all_ranks(self.replay.can_sample(self.batch_length)):
                self.collector.collect(self.num_envs)   # every rank as many steps: the schedule is the same
            self.prefilled = True
        else:
            self.owed += self.steps_per_update
            calls = int(self.owed // self.num_envs)
            self.owed -= calls * self.num_envs
            self.collector.collect(calls * self.num_envs, self.model, "explore")
        self.updates += 1
        batch = self.replay.sample(self.batch_size, self.batch_length, selector=self.selector)
        batch.pop("mask")
        return batch_to_torch(batch, self.device)

    def log_metrics(self) -> dict[str, float]:
        """The collector's metrics and ``collect/replay_steps``, over every rank's env steps,
        episodes and replay shard under torchrun (:func:`~worldmodels.rl.collector.shard_metrics`)."""
        return shard_metrics(self.collector, self.replay.num_steps)

    def state_dict(self) -> dict[str, Any]:
        """Counters, the carried fraction, and what :func:`~worldmodels.rl.resume.online_state`
        saves (every RNG, the env's history, and, bound to a run directory, the name of the
        replay snapshot written now)."""
        return {"updates": self.updates, "owed": self.owed, "prefilled": self.prefilled,
                **self._online_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the replay as it was at the checkpoint, the envs
        where they were (replayed; see :mod:`worldmodels.rl.resume`)."""
        self._restore_online(state)
        self.updates, self.owed = int(state["updates"]), float(state["owed"])
        self.prefilled = bool(state["prefilled"]) and self.replay.can_sample(self.batch_length)

    def close(self) -> None:
        self.collector.close()


def build_online_data(cfg: Any, device: torch.device) -> OnlineData:
    """:class:`OnlineData` from ``cfg.env``, ``cfg.algo`` and ``cfg.train.batch_size``: this
    rank's shard under torchrun (:func:`~worldmodels.training.distributed.env_shard`; the
    factories pass the run's config unchanged, :func:`~worldmodels.training.distributed.same_config`)."""
    algo = cfg.algo
    shard = distributed.env_shard(int(cfg.seed), int(cfg.env.get("num_envs", 1)),
                                  int(float(algo.replay_capacity)), int(algo.prefill))
    return OnlineData(
        make_env(spec_from_config(cfg.env, seed=shard.env_seed)), batch_size=int(cfg.train.batch_size),
        batch_length=int(algo.batch_length), train_ratio=float(algo.train_ratio), prefill=shard.prefill,
        capacity=shard.capacity, seed=shard.rng_seed, device=device,
        selector=str(algo.get("replay_selector", "uniform")), on_disk=bool(algo.get("replay_on_disk", False)),
    )
