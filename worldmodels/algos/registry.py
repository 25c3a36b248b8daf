"""The family registry: every entry point (``train``, ``play``, ``record``,
``visualize``) asks it, none imports a family's internals.

Each ``algo.name`` maps to where its factories live and what else the family offers:

- ``factories``: ``"module:attribute"`` of its :class:`~worldmodels.training.loop.Factories`
  (imported only when that algorithm is chosen);
- ``agent_loader``: ``"module:function"``, ``load_agent(state) -> agent`` that rebuilds
  the agent of a checkpoint (its ``config`` and ``env_spaces``) with its weights, for
  ``record --checkpoint`` and ``play``; None when the family has no agent;
- ``playable``: ``play``'s world-model modes work with it (an
  :class:`~worldmodels.rl.imagination_agent.ImaginationAgent`);
- ``visualizer``: ``python -m worldmodels.visualize`` can draw its checkpoints;
- ``steps_env``: it steps the env of its config (an offline family's env config only
  describes its data, so no env package is checked for it);
- ``best_metrics``: the lower-is-better evaluation metrics ``train.best_metric`` may name;
- ``data_parallel``: ``torchrun`` runs it data-parallel
  (:mod:`worldmodels.training.distributed`): its step averages the gradients over the
  processes (the generic gradient step through DDP; IRIS's and Δ-IRIS's component step
  by an all-reduce per component) and its data draws a stream of its own per process
  (offline or generated data: the seed offset by the rank; online: a replay shard per
  rank). A family without it is refused under torchrun;
- ``runner``: ``"module:function"``, ``run(cfg, run_dir, resume=...) -> summary`` for a
  family that runs its own stages instead of :func:`~worldmodels.training.loop.fit`
  (World Models' staged pipeline); its ``factories`` is then None;
- ``population_parallel``: under ``torchrun`` its runner splits a gradient-free search's
  population across the ranks;
- ``openloop``: ``"module:function"``, ``build_openloop(frame_shape, num_actions, size,
  seed, device) -> OpenLoopModel`` (:mod:`worldmodels.training.openloop`): its world
  model as an offline action-conditioned frame predictor, trained and scored on recorded
  frames by ``python -m worldmodels.compare_openloop``; None when it has none.

Adding a family: one folder ``worldmodels/algos/<family>/`` with its model, losses and
factories, its configs (``configs/algo/<name>.yaml``, ``configs/model/...``,
``configs/exp/...``), and one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import WorldModelsError


class UnknownAlgorithmError(WorldModelsError, ValueError):
    """``algo.name`` (or a checkpoint's) names no registered family."""


@dataclass(frozen=True)
class Family:
    """One registry entry (see the module docstring)."""

    factories: str | None
    agent_loader: str | None = None
    playable: bool = False
    visualizer: bool = False
    steps_env: bool = True
    best_metrics: tuple[str, ...] = ()
    data_parallel: bool = False
    runner: str | None = None
    population_parallel: bool = False
    openloop: str | None = None


_VAE = ("eval/loss", "eval/recon", "eval/kl")
_VTA = ("eval/loss", "eval/obs_cost", "eval/kl_abs", "eval/kl_obs", "eval/kl_mask")
_OFFLINE = ("eval/loss", "eval/episode_loss", "eval/kl", "eval/reward", "eval/cont")
_RETURN = ("eval/neg_return",)
_NEXTFRAME = ("eval/loss", "eval/mse")

FAMILIES: dict[str, Family] = {
    "vae": Family("worldmodels.algos.vae:FACTORIES", visualizer=True, best_metrics=_VAE, data_parallel=True),
    "vta": Family("worldmodels.algos.vta.experiment:FACTORIES", visualizer=True, best_metrics=_VTA,
                  data_parallel=True, openloop="worldmodels.algos.vta.openloop:build_openloop"),
    "dreamerv3": Family("worldmodels.algos.dreamerv3.experiment:FACTORIES",
                        agent_loader="worldmodels.algos.dreamerv3.experiment:load_agent", visualizer=True,
                        best_metrics=_RETURN, data_parallel=True,
                        openloop="worldmodels.algos.dreamerv3.openloop:build_openloop"),
    "dreamer_offline": Family("worldmodels.algos.dreamerv3.offline:FACTORIES",
                              agent_loader="worldmodels.algos.dreamerv3.experiment:load_agent", visualizer=True,
                              steps_env=False, best_metrics=_OFFLINE, data_parallel=True),
    "dreamer_bc": Family("worldmodels.algos.dreamerv3.bc:FACTORIES", best_metrics=_RETURN, data_parallel=True),
    "iris": Family("worldmodels.algos.iris.experiment:FACTORIES", agent_loader="worldmodels.algos.iris.experiment:load_agent",
                   playable=True, visualizer=True, best_metrics=_RETURN, data_parallel=True,
                   openloop="worldmodels.algos.iris.openloop:build_openloop"),
    "delta_iris": Family("worldmodels.algos.delta_iris.experiment:FACTORIES",
                         agent_loader="worldmodels.algos.delta_iris.experiment:load_agent", playable=True,
                         visualizer=True, best_metrics=_RETURN, data_parallel=True,
                         openloop="worldmodels.algos.delta_iris.openloop:build_openloop"),
    "nextframe": Family("worldmodels.algos.nextframe:FACTORIES", steps_env=False, best_metrics=_NEXTFRAME,
                        data_parallel=True, openloop="worldmodels.algos.nextframe.openloop:build_openloop"),
    "world_models": Family(None, steps_env=False, runner="worldmodels.algos.world_models.experiment:run",
                           population_parallel=True,
                           openloop="worldmodels.algos.world_models.openloop:build_openloop"),
}


def family(name: str) -> Family:
    """The entry of ``algo.name``; an unknown name lists the known ones."""
    if name not in FAMILIES:
        raise UnknownAlgorithmError(f"algo.name={name!r} is not one of {', '.join(sorted(FAMILIES))}.")
    return FAMILIES[name]


def data_parallel_names() -> list[str]:
    """The families ``torchrun`` runs data-parallel."""
    return sorted(name for name, entry in FAMILIES.items() if entry.data_parallel)


def torchrun_names() -> list[str]:
    """The families ``torchrun`` runs: data-parallel ones and those that split a population."""
    return sorted(name for name, entry in FAMILIES.items() if entry.data_parallel or entry.population_parallel)


def _resolve(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def factories(name: str) -> Any:
    """The :class:`~worldmodels.training.loop.Factories` of ``algo.name``."""
    entry = family(name)
    if entry.factories is None:
        raise UnknownAlgorithmError(f"algo.name={name!r} runs its own stages ({entry.runner}), not the training "
                                    "loop; it has no factories.")
    return _resolve(entry.factories)


def runner(name: str) -> Any:
    """The function that runs a whole experiment of ``algo.name`` in place of the
    training loop, or None for a family trained by the loop."""
    entry = family(name)
    return None if entry.runner is None else _resolve(entry.runner)


def openloop_names() -> list[str]:
    """The families with an open-loop model (:mod:`worldmodels.training.openloop`)."""
    return sorted(name for name, entry in FAMILIES.items() if entry.openloop)


def openloop_builder(name: str) -> Any:
    """``build_openloop(frame_shape, num_actions, size, seed, device)`` of family ``name``;
    a name that is not registered for open loop lists those that are."""
    entry = FAMILIES.get(name)
    if entry is None or entry.openloop is None:
        what = "is not a family" if entry is None else "has no open-loop model yet"
        raise UnknownAlgorithmError(f"{name!r} {what}; the families registered for open loop are "
                                    f"{', '.join(openloop_names())}.")
    return _resolve(entry.openloop)


def algo_name(state: dict[str, Any]) -> str:
    """The ``algo.name`` recorded in a checkpoint's config."""
    name = ((state.get("config") or {}).get("algo") or {}).get("name")
    if not name:
        raise UnknownAlgorithmError("the checkpoint records no config with algo.name; was it written by "
                                    "python -m worldmodels.train?")
    return str(name)


def load_agent(state: dict[str, Any]) -> Any:
    """The agent of a checkpoint ``state`` (``torch.load`` of ``last.pt``/``best.pt``),
    rebuilt from its recorded config and env spaces, weights loaded, in eval mode."""
    name = algo_name(state)
    loader = family(name).agent_loader
    if loader is None:
        raise UnknownAlgorithmError(f"algo.name={name!r} has no agent to act with; runs of "
                                    f"{', '.join(n for n, f in FAMILIES.items() if f.agent_loader)} do.")
    return _resolve(loader)(state)


__all__ = ["FAMILIES", "Family", "UnknownAlgorithmError", "algo_name", "data_parallel_names", "factories", "family",
           "load_agent", "openloop_builder", "openloop_names", "runner", "torchrun_names"]
