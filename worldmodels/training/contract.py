"""What the training loop asks of an algorithm: declared base classes with no-op hooks.

An algorithm gives :func:`worldmodels.training.loop.fit` a
:class:`~worldmodels.training.loop.Factories` whose ``data`` factory returns a
:class:`TrainData` and whose ``evaluator`` factory returns an :class:`Evaluator`.
Subclass them and override what you need; every hook but ``next_batch`` has a
default that does nothing. The loop calls, in order:

1. ``data.bind_model(model, run_dir)`` once the model exists (before a resumed run's
   ``load_state_dict``): online data acts with the model and keeps files in ``run_dir``;
2. per update ``data.next_batch()`` (``accum_steps`` times), handed to the step;
3. per log step ``data.log_metrics()``, logged with the training metrics;
4. per evaluation ``evaluator.evaluate(model)`` and, on a new best,
   ``evaluator.write_media(model, media_dir, step)``;
5. per checkpoint ``data.state_dict()`` (restored with ``load_state_dict``), and once
   ``last.pt`` holds it, ``data.checkpoint_saved()``;
6. at the end, also after an error or Ctrl-C, ``data.close()`` and ``evaluator.close()``.

A model made of named parts lists them with ``components()`` (:class:`HasComponents`);
the loop checkpoints each part on its own. ``python -m worldmodels.visualize`` calls
``evaluator.visualize(model, directory, index, num_samples)``, whose default writes the
evaluation media.

A factory may also supply its own ``step(run) -> StepResult`` (see
:func:`worldmodels.training.loop.gradient_step`, the default): a gradient-free stage
such as CMA-ES then runs through the same loop, logging and checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn


class TrainData:
    """A resumable source of training batches (see the module docstring)."""

    def next_batch(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement next_batch()")

    def bind_model(self, model: nn.Module, run_dir: Path | None = None) -> None:
        """Called once with the model and the run directory."""

    def log_metrics(self) -> dict[str, float]:
        """Metrics since the last call (collection returns, throughput, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to continue exactly (plain values, safe for ``weights_only``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def checkpoint_saved(self) -> None:
        """``checkpoints/last.pt`` now holds the latest :meth:`state_dict` (``best.pt``
        takes one too): files that state names must be kept until the next checkpoint."""

    def close(self) -> None:
        """Release envs, files, workers."""


class Evaluator:
    """Held-out evaluation (see the module docstring)."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``eval/...`` metrics; ``train.best_metric`` must be among them."""
        return {}

    def write_media(self, model: nn.Module, directory: Path, step: int) -> list[Path]:
        """Pictures a person can judge, written into ``directory``; returns their paths."""
        return []

    def visualize(self, model: nn.Module, directory: Path, index: int = 0, num_samples: int = 3) -> list[Path]:
        """What ``python -m worldmodels.visualize`` draws; by default the evaluation media."""
        return self.write_media(model, directory, 0)

    def close(self) -> None:
        """Release envs and files."""


@runtime_checkable
class HasComponents(Protocol):
    """A model made of named parts (IRIS, Δ-IRIS: tokenizer, world model, actor-critic)."""

    def components(self) -> dict[str, nn.Module]: ...


@runtime_checkable
class HasEnvSpaces(Protocol):
    """A model built for an env's spaces (:class:`~worldmodels.envs.spaces.EnvSpaces`);
    checkpoints record them (``env_spaces``) so the agent is rebuilt without the env."""

    env_spaces: Any


def check_contract(data: Any, evaluator: Any) -> None:
    """A one-line TypeError when a factory returned something that is not a
    :class:`TrainData` / :class:`Evaluator`."""
    for value, base, name in ((data, TrainData, "data"), (evaluator, Evaluator, "evaluator")):
        if not isinstance(value, base):
            raise TypeError(f"the {name} factory returned a {type(value).__name__}, which does not derive from "
                            f"worldmodels.training.contract.{base.__name__} (subclass it: its hooks default to no-ops).")


__all__ = ["Evaluator", "HasComponents", "HasEnvSpaces", "TrainData", "check_contract"]
