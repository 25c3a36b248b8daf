"""The shared open-loop scoring: the model beside copy-last-frame and shuffled actions,
on fake models whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldmodels.ops import psnr_ref, ssim_ref
from worldmodels.training.openloop import (
    SCORES, OpenLoopModel, check_rollout, mean_and_ci95, parameter_count, score_rollouts, shuffle_actions,
)

STACK, HORIZON = 3, 4


class CopyLast:
    """Predicts the last given frame at every step (and ignores the actions)."""

    name, uses_actions = "copy", False

    def parameters(self):
        return iter(())

    def train_step(self, frames, actions):
        return {}

    def rollout(self, context, actions, horizon):
        return context[:, -1:].expand(-1, horizon, -1, -1, -1).clone()


class ShiftWorld(CopyLast):
    """Knows the dynamics: each frame is the previous rolled right by the action's pixels.
    Records the actions it was given."""

    name, uses_actions = "shift", True

    def __init__(self):
        self.seen = []

    def rollout(self, context, actions, horizon):
        self.seen.append(actions.clone())
        frame, out = context[:, -1], []
        for i in range(horizon):
            frame = torch.stack([torch.roll(f, int(a), dims=-1) for f, a in zip(frame, actions[:, STACK - 1 + i])])
            out.append(frame)
        return torch.stack(out, 1)


def shift_sequences(count=6, seed=0):
    """``frames [B, K + H, 3, 12, 12]`` moved by ``actions [B, K + H - 1]`` (the context
    frames by their own actions too)."""
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 4, (count, STACK + HORIZON - 1), generator=generator)
    frames = [torch.rand(count, 3, 12, 12, generator=generator)]
    for step in range(STACK + HORIZON - 1):
        frames.append(torch.stack([torch.roll(f, int(a), dims=-1) for f, a in zip(frames[-1], actions[:, step])]))
    return torch.stack(frames, 1), actions


def test_a_model_that_predicts_the_last_frame_scores_exactly_copy_last():
    frames, actions = shift_sequences()
    scores, prediction = score_rollouts(CopyLast(), frames, actions, STACK, seed=0)
    assert set(scores) == set(SCORES) and all(v.shape == (6, HORIZON) for v in scores.values())
    truth = frames[:, STACK:]
    copy = frames[:, STACK - 1:STACK].expand_as(truth)
    torch.testing.assert_close(scores["psnr"], scores["copy_last_psnr"])
    torch.testing.assert_close(scores["ssim"], scores["copy_last_ssim"])
    torch.testing.assert_close(scores["copy_last_psnr"], psnr_ref(copy, truth))
    torch.testing.assert_close(scores["copy_last_ssim"], ssim_ref(copy, truth))
    torch.testing.assert_close(scores["delta_psnr"], torch.zeros(6, HORIZON))   # ignores the actions
    torch.testing.assert_close(prediction, copy)


def test_an_exact_model_loses_to_itself_with_shuffled_actions():
    frames, actions = shift_sequences()
    model = ShiftWorld()
    scores, prediction = score_rollouts(model, frames, actions, STACK, seed=0)
    torch.testing.assert_close(prediction, frames[:, STACK:])
    assert (scores["psnr"] > 90).all()                 # exact (PSNR capped by the 1e-10 MSE floor)
    assert scores["delta_psnr"].mean() > 20            # wrong actions cost the exact model dearly
    torch.testing.assert_close(scores["delta_psnr"], scores["psnr"] - scores["shuffled_psnr"])
    recorded, shuffled = model.seen
    assert torch.equal(recorded, actions)
    assert torch.equal(shuffled[:, :STACK - 1], actions[:, :STACK - 1])   # the context's actions stay
    assert torch.equal(shuffled[:, STACK - 1:], shuffle_actions(actions[:, STACK - 1:], 0))
    assert sorted(shuffled[:, STACK - 1:].flatten().tolist()) == sorted(actions[:, STACK - 1:].flatten().tolist())


def test_bad_shapes_and_values_are_errors_that_name_the_model():
    frames, actions = shift_sequences()
    with pytest.raises(ValueError, match=r"actions must be \[B, K \+ H - 1\] = \[6, 6\], got \(6, 5\)"):
        score_rollouts(CopyLast(), frames, actions[:, :5], STACK, seed=0)

    class Short(CopyLast):
        def rollout(self, context, actions, horizon):
            return super().rollout(context, actions, horizon - 1)

    with pytest.raises(ValueError,
                       match=r"copy: rollout returned shape \(6, 3, 3, 12, 12\), expected \(6, 4, 3, 12, 12\)"):
        score_rollouts(Short(), frames, actions, STACK, seed=0)
    with pytest.raises(ValueError, match="copy: rollout values must be finite and in \\[0, 1\\]"):
        check_rollout(torch.full((1, 2, 3, 12, 12), 1.5), torch.zeros(1, 2, 3, 12, 12), "copy")


def test_mean_and_interval_are_over_sequences():
    values = torch.tensor([[1.0, 10.0], [3.0, 10.0], [8.0, 10.0]])
    summary = mean_and_ci95(values)
    assert summary["mean"] == pytest.approx([4.0, 10.0])
    assert summary["ci95"] == pytest.approx([1.96 * np.std([1, 3, 8], ddof=1) / math.sqrt(3), 0.0])
    assert mean_and_ci95(values[:1])["ci95"] == [0.0, 0.0]


def test_the_fakes_meet_the_protocol_and_parameters_are_counted_once():
    assert isinstance(ShiftWorld(), OpenLoopModel)
    shared = torch.nn.Linear(3, 2)

    class Twice(CopyLast):
        def parameters(self):
            yield from shared.parameters()
            yield from shared.parameters()

    assert parameter_count(Twice()) == 8
