"""Ctrl-C: the checkpoint holds the last completed step, a second Ctrl-C never breaks
the atomic write, and the command line prints one line instead of a traceback."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from worldmodels.algos.vae import FACTORIES
from worldmodels.training import checkpoint as checkpoint_module
from worldmodels.training.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.training.contract import TrainData
from worldmodels.training.interrupt import StopRequest, TrainingInterrupted, sigint_deferred
from worldmodels.training.loop import Factories, fit



def train_losses(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(handle) if r["train/loss"]]


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler, also when pytest itself was started with SIGINT ignored
    (a job in the background of a script), which the loop leaves ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class InterruptingData(TrainData):
    """The VAE's data, sending SIGINT from inside the step that draws batch ``at``
    (after the batch and its random draws are consumed)."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def next_batch(self):
        batch = self.inner.next_batch()
        self.calls += 1
        if self.calls == self.at:
            sigint()
        return batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def interrupting(at: int) -> Factories:
    return Factories(model=FACTORIES.model, evaluator=FACTORIES.evaluator,
                     data=lambda cfg, device: InterruptingData(FACTORIES.data(cfg, device), at))


def test_ctrl_c_mid_step_saves_that_step_and_the_resumed_run_matches(tiny_config, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    cfg = tiny_config("train.max_steps=10", "train.checkpoint_every=100", "train.eval_every=100")
    fit(cfg, FACTORIES, straight)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 5;.*last.pt holds step 5"):
        fit(cfg, interrupting(at=5), stopped)
    assert load_checkpoint(stopped / "checkpoints" / "last.pt")["step"] == 5
    torch.manual_seed(12345)
    fit(cfg, FACTORIES, stopped, resume=True)
    assert train_losses(stopped) == train_losses(straight)


class SigintDuringSave:
    """``torch.save`` that receives SIGINT halfway through writing a payload with ``key``
    (``optimizer``: the full checkpoint ``last.pt``)."""

    def __init__(self, real, key: str):
        self.real, self.key, self.sent = real, key, 0

    def __call__(self, obj, handle, *args, **kwargs):
        if self.key in obj:
            handle.write(b"partial")
            self.sent += 1
            sigint()
            time.sleep(0.01)
        handle.seek(0)
        handle.truncate()
        return self.real(obj, handle, *args, **kwargs)


def test_second_ctrl_c_during_the_save_keeps_a_whole_last_pt(tiny_config, tmp_path, monkeypatch):
    saver = SigintDuringSave(torch.save, "optimizer")
    monkeypatch.setattr(checkpoint_module.torch, "save", saver)
    cfg = tiny_config("train.max_steps=10", "train.checkpoint_every=100", "train.eval_every=100")
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3"):
        fit(cfg, interrupting(at=3), tmp_path)
    assert saver.sent == 1
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_ctrl_c_during_a_save_is_delivered_once_the_file_is_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module.torch, "save", SigintDuringSave(torch.save, "step"))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "x.pt", {"step": 1})
    assert load_checkpoint(tmp_path / "x.pt")["step"] == 1


def test_a_second_ctrl_c_quits_at_once_and_says_what_is_saved(tiny_config, tmp_path):
    class TwiceData(InterruptingData):
        def next_batch(self):
            batch = super().next_batch()
            if self.calls == self.at:
                sigint()
            return batch

    factories = Factories(model=FACTORIES.model, evaluator=FACTORIES.evaluator,
                          data=lambda cfg, device: TwiceData(FACTORIES.data(cfg, device), 6))
    cfg = tiny_config("train.max_steps=10", "train.checkpoint_every=4", "train.eval_every=100")
    with pytest.raises(TrainingInterrupted, match="interrupted again before the step was saved.*last.pt holds step 4"):
        fit(cfg, factories, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 4


def test_handlers_are_restored_and_deferral_without_a_signal_is_silent():
    before = signal.getsignal(signal.SIGINT)
    assert before is signal.default_int_handler
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) is not before
        sigint()
        assert stop.requested
    assert signal.getsignal(signal.SIGINT) is before
    with sigint_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored():
    """A run a script started in the background (SIGINT ignored) is not made stoppable by it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with sigint_deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_command_line_prints_one_line_on_ctrl_c(tmp_path, tiny_overrides):
    """SIGINT to ``python -m worldmodels.train``: exit 130, no traceback, the resume hint."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldmodels.train", *tiny_overrides, "train.max_steps=100000",
         "train.checkpoint_every=100000", "train.eval_every=100000", "train.log_every=1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("runs/*/*/metrics.csv")):
        time.sleep(0.2)
    time.sleep(1.0)  # some steps logged
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if "interrupted at step" in line]
    assert len(lines) == 1 and "+resume=" in lines[0], err
