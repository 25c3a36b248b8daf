"""The open-loop adapters of DreamerV3, World Models (V + M) and the next-frame U-Net:
shapes and range of the rollouts, determinism, training that lowers the loss, and
predictions that depend on the actions."""

from __future__ import annotations

import pytest
import torch

from worldmodels.algos import registry
from worldmodels.errors import WorldModelsError
from worldmodels.training.openloop import OpenLoopModel, parameter_count

FAMILIES = ("dreamerv3", "world_models", "nextframe")
SHAPE = (3, 32, 32)
ACTIONS = 5
MOVES = ((0, 0), (0, -3), (0, 3), (-3, 0), (3, 0))   # action -> (dy, dx) of the square


def square_world(batch: int, steps: int, seed: int, flicker: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``[B, T, 3, 32, 32]`` of a bright square on a dark gradient, moved by each
    action (:data:`MOVES`, wrapping around), and their actions ``[B, T]``; ``flicker``
    inverts every other frame (so copying the last frame is far from the truth)."""
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, ACTIONS, (batch, steps), generator=generator)
    background = torch.linspace(0, 0.3, SHAPE[2]).expand(SHAPE[1], -1)
    square = torch.zeros(SHAPE[1:])
    square[:6, :6] = 1.0
    start = torch.randint(0, SHAPE[1], (batch, 2), generator=generator)
    frames = []
    for b in range(batch):
        position, window = start[b].tolist(), []
        for t in range(steps):
            shifted = torch.roll(square, (position[0], position[1]), (0, 1))
            frame = torch.stack([torch.maximum(background, shifted), background, shifted])
            window.append(1 - frame if flicker and t % 2 else frame)
            dy, dx = MOVES[int(actions[b, t])]
            position = [position[0] + dy, position[1] + dx]
        frames.append(torch.stack(window))
    return torch.stack(frames), actions


def build(name: str) -> OpenLoopModel:
    return registry.openloop_builder(name)(SHAPE, ACTIONS, "tiny", 0, "cpu")


@pytest.mark.parametrize("name", FAMILIES)
def test_a_rollout_has_the_truth_shape_stays_in_range_and_is_deterministic(name):
    model = build(name)
    assert isinstance(model, OpenLoopModel) and model.name == name and model.uses_actions
    assert parameter_count(model) > 1000
    frames, actions = square_world(3, 10, seed=1)
    context, horizon = frames[:, :4], 6
    first = model.rollout(context, actions[:, :4 + horizon - 1], horizon)
    assert first.shape == (3, horizon, *SHAPE) and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(model.rollout(context, actions[:, :4 + horizon - 1], horizon), first, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_training_lowers_the_loss_and_the_prediction_depends_on_the_actions(name):
    model = build(name)
    frames, actions = square_world(4, 8, seed=2, flicker=True)
    losses = [model.train_step(frames, actions)["loss"] for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.9 * losses[0], losses
    context, rollout_actions = frames[:2, :4], actions[:2, :7]
    moved = model.rollout(context, rollout_actions, 4)
    other = rollout_actions.clone()
    other[:, 3:] = (other[:, 3:] + 1) % ACTIONS    # other actions from the last given frame on
    assert (model.rollout(context, other, 4) - moved).abs().max() > 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_an_unknown_size_is_a_one_line_error(name):
    with pytest.raises(WorldModelsError, match=r"^size='huge' is not one of tiny, small\.$"):
        registry.openloop_builder(name)(SHAPE, ACTIONS, "huge", 0, "cpu")


def test_the_frame_stack_needs_four_given_frames():
    model = build("nextframe")
    frames, actions = square_world(1, 8, seed=3)
    with pytest.raises(ValueError, match="stacks 4 frames; got a context of 3"):
        model.rollout(frames[:, :3], actions[:, :5], 3)


@pytest.mark.parametrize("name", FAMILIES)
def test_prediction_i_follows_the_action_at_frame_k_minus_1_plus_i(name):
    """Changing the action that drives prediction 3 leaves predictions 0-2 as they were
    (and, for the models whose action path is live at initialisation, changes 3)."""
    model = build(name)
    frames, actions = square_world(2, 10, seed=4)
    actions = actions[:, :9]
    base = model.rollout(frames[:, :4], actions, 6)
    later = actions.clone()
    later[:, 4 - 1 + 3] = (later[:, 4 - 1 + 3] + 2) % ACTIONS
    changed = model.rollout(frames[:, :4], later, 6)
    torch.testing.assert_close(changed[:, :3], base[:, :3], rtol=0, atol=0)
    if name != "nextframe":   # the U-Net's FiLM starts as the identity: no action effect before training
        assert (changed[:, 3] - base[:, 3]).abs().max() > 0
