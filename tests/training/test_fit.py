"""The training loop end to end, in-process, on a tiny VAE."""

import csv

import pytest
import torch
from torch import nn

from worldmodels.algos.vae import FACTORIES
from worldmodels.training.checkpoint import load_checkpoint
from worldmodels.training.contract import Evaluator, TrainData
from worldmodels.training.loop import Factories, NonFiniteLossError, fit


def train_losses(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(handle) if r["train/loss"]]


def test_run_directory_contents(tiny_config, tmp_path):
    summary = fit(tiny_config("train.max_steps=4"), FACTORIES, tmp_path)
    assert summary["step"] == 4
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert [p.name for p in (tmp_path / "media").iterdir()] == ["reconstruction_step000004.png"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert [step for step, _ in train_losses(tmp_path)] == [1, 2, 3, 4]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 4 and state["config"]["train"]["max_steps"] == 4


def test_resumed_run_matches_an_uninterrupted_one(tiny_config, tmp_path):
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    fit(tiny_config("train.max_steps=10"), FACTORIES, straight)
    first = fit(tiny_config("train.max_steps=10", "train.stop_at=5"), FACTORIES, paused)
    assert first["step"] == 5
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG
    fit(tiny_config("train.max_steps=10", "train.stop_at=5"), FACTORIES, paused, resume=True)
    assert train_losses(paused) == train_losses(straight)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(paused / "checkpoints" / "last.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_resumed_vta_run_matches_an_uninterrupted_one(config_from, smoke_overrides, tmp_path):
    from worldmodels.algos.vta.experiment import FACTORIES as VTA

    small = ["+exp=vta_balls", *smoke_overrides, "model.feat_size=16", "model.belief_size=16", "model.state_size=4",
             "model.widths=[8,8,8]", "model.seq_size=8", "model.init_size=2", "model.seg_len=4", "model.seg_num=3",
             "env.chunk_sequences=8", "env.refresh_steps=3", "train.max_steps=4", "train.eval_every=100"]
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    fit(config_from(small), VTA, straight)
    fit(config_from([*small, "train.stop_at=2"]), VTA, paused)
    fit(config_from([*small, "train.stop_at=2"]), VTA, paused, resume=True)
    assert train_losses(paused) == train_losses(straight)


def test_the_vae_learns_to_reconstruct(tiny_config, tmp_path):
    cfg = tiny_config("size=small", "train.max_steps=300", "train.eval_every=300", "train.log_every=50",
                      "train.batch_size=8", "env.seq_len=8", "env.eval_sequences=8")
    fit(cfg, FACTORIES, tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        final = [r for r in csv.DictReader(handle) if r.get("eval/psnr")][-1]
    # a model that learned the balls beats predicting the average frame by a wide margin
    assert float(final["eval/psnr"]) > float(final["eval/psnr_mean_frame"]) + 3.0


class Exploding(nn.Module):
    """Finite for two steps, then NaN."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls = 0

    def compute_loss(self, batch):
        self.calls += 1
        scale = float("nan") if self.calls > 2 else 1.0
        return (self.w * scale).square().sum(), {}


class Counter(TrainData):
    def __init__(self):
        self.step = 0

    def next_batch(self):
        self.step += 1
        return None

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


class NoEval(Evaluator):
    def evaluate(self, model):
        return {"eval/loss": 0.0}

    def write_media(self, model, directory, step):
        return []


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    factories = Factories(model=lambda cfg: Exploding(), data=lambda cfg, d: Counter(), evaluator=lambda cfg, d: NoEval())
    cfg = tiny_config("train.max_steps=10", "train.checkpoint_every=2", "train.eval_every=100")
    with pytest.raises(NonFiniteLossError, match=r"at step 3.*last\.pt holds step 2.*\+resume="):
        fit(cfg, factories, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2


def test_nan_before_the_first_checkpoint_says_none_exists(tiny_config, tmp_path):
    factories = Factories(model=lambda cfg: Exploding(), data=lambda cfg, d: Counter(), evaluator=lambda cfg, d: NoEval())
    cfg = tiny_config("train.max_steps=10", "train.checkpoint_every=5", "train.eval_every=100")
    with pytest.raises(NonFiniteLossError, match="at step 3") as error:
        fit(cfg, factories, tmp_path)
    assert "no checkpoint was written yet" in str(error.value) and "start a new run" in str(error.value)
    assert "+resume" not in str(error.value) and "last.pt" not in str(error.value)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_unknown_best_metric_is_reported(tiny_config, tmp_path):
    with pytest.raises(KeyError, match="eval/accuracy.*eval/loss"):
        fit(tiny_config("train.max_steps=4", "train.best_metric=eval/accuracy"), FACTORIES, tmp_path)


class Noisy(nn.Module):
    """Its loss draws from the global torch RNG, so it records every draw made before it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def compute_loss(self, batch):
        return (self.w * torch.rand(1)).square().sum(), {}


class DrawingEval(Evaluator):
    """Draws a varying amount from every global RNG, as an agent's evaluation episodes do."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, model):
        import random

        import numpy as np

        self.calls += 1
        torch.rand(self.calls * 7)
        np.random.rand(self.calls)
        random.random()
        return {"eval/loss": 0.0}

    def write_media(self, model, directory, step):
        torch.rand(3)
        return []


def test_evaluation_does_not_shift_the_training_rng(tiny_config, tmp_path):
    """An evaluator that starts afresh on resume (its draws differ from the uninterrupted
    run's) must not change what training draws: evaluation runs on a copy of the RNG state."""
    losses = {}
    for every in (1, 100):
        factories = Factories(model=lambda cfg: Noisy(), data=lambda cfg, device: Counter(),
                              evaluator=lambda cfg, device: DrawingEval())
        cfg = tiny_config("train.max_steps=6", f"train.eval_every={every}", "train.best_metric=eval/loss")
        fit(cfg, factories, tmp_path / str(every))
        losses[every] = train_losses(tmp_path / str(every))
    assert len(losses[1]) == 6 and losses[1] == losses[100]
