"""The loop's declared contract: base classes with no-op hooks, ``fit`` closing what it
opened, and a factory's own step (a gradient-free stage) through the same loop."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from worldmodels.training.contract import Evaluator, TrainData
from worldmodels.training.loop import Factories, fit
from worldmodels.training.step import StepResult


class Quadratic(nn.Module):
    """``f(w) = |w - target|^2``; no gradient is ever taken by the random search below."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4), requires_grad=False)
        self.target = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def cost(self, w: torch.Tensor) -> torch.Tensor:
        return (w - self.target).square().sum(-1)


class Noise(TrainData):
    """Candidate perturbations, one population per update; records close()."""

    def __init__(self):
        self.generator, self.closed = torch.Generator().manual_seed(0), False

    def next_batch(self) -> torch.Tensor:
        return torch.randn(16, 4, generator=self.generator)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    def close(self) -> None:
        self.closed = True


class CostEval(Evaluator):
    closed = False

    def evaluate(self, model):
        return {"eval/cost": float(model.cost(model.w))}

    def close(self):
        self.closed = True


def evolution_step(run) -> StepResult:
    """A (1, 16) evolution strategy: move to the best of 16 perturbations if it is better."""
    model, noise = run.model, run.data.next_batch()
    candidates = model.w + 0.5 * noise
    costs = model.cost(candidates)
    best = int(costs.argmin())
    if costs[best] < model.cost(model.w):
        model.w.copy_(candidates[best])
    return StepResult(float(model.cost(model.w)), 0.0, True, {"population_best": float(costs[best])})


def test_a_gradient_free_step_runs_through_the_loop_checkpoints_and_logs(tiny_config, tmp_path):
    made = {}

    def data(cfg, device):
        made["data"] = Noise()
        return made["data"]

    def evaluator(cfg, device):
        made["eval"] = CostEval()
        return made["eval"]

    factories = Factories(model=lambda cfg: Quadratic(), data=data, evaluator=evaluator,
                          optimizer=lambda cfg, model: None, step=evolution_step)
    cfg = tiny_config("train.max_steps=40", "train.log_every=10", "train.eval_every=20", "train.checkpoint_every=20",
                      "train.best_metric=eval/cost")
    summary = fit(cfg, factories, tmp_path)
    assert summary["step"] == 40 and summary["best"] < 1.0           # from 14.25 at w = 0
    assert made["data"].closed and made["eval"].closed                # fit closes what it opened
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizer"] is None and state["step"] == 40


def test_fit_closes_the_data_when_the_run_fails(tiny_config, tmp_path):
    made = {}

    def data(cfg, device):
        made["data"] = Noise()
        return made["data"]

    def failing_step(run):
        raise RuntimeError("boom")

    factories = Factories(model=lambda cfg: Quadratic(), data=data, evaluator=lambda cfg, d: CostEval(),
                          optimizer=lambda cfg, model: None, step=failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tiny_config("train.max_steps=2"), factories, tmp_path)
    assert made["data"].closed


def test_factories_must_return_the_declared_bases(tiny_config, tmp_path):
    class Bare:
        def next_batch(self):
            return None

    factories = Factories(model=lambda cfg: Quadratic(), data=lambda cfg, d: Bare(),
                          evaluator=lambda cfg, d: CostEval(), optimizer=lambda cfg, model: None)
    with pytest.raises(TypeError, match="the data factory returned a Bare, which does not derive from "
                                        "worldmodels.training.contract.TrainData"):
        fit(tiny_config("train.max_steps=1"), factories, tmp_path)


def test_base_hooks_are_no_ops():
    data, evaluator = TrainData(), Evaluator()
    assert data.log_metrics() == {} and data.state_dict() == {} and data.bind_model(nn.Linear(1, 1)) is None
    assert evaluator.evaluate(nn.Linear(1, 1)) == {} and evaluator.visualize(nn.Linear(1, 1), None) == []
    with pytest.raises(NotImplementedError, match="must implement next_batch"):
        data.next_batch()
