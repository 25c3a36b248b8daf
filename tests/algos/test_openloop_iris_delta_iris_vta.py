"""The open-loop adapters of IRIS, Δ-IRIS and VTA (issue 20's cross-family table): the
protocol's shapes and range, deterministic rollouts without gradient, a loss that falls
on a repeated batch, which actions each prediction reads, and the errors."""

from __future__ import annotations

import pytest
import torch

from worldmodels.algos.delta_iris import openloop as delta_openloop
from worldmodels.algos.iris import openloop as iris_openloop
from worldmodels.algos.vta import openloop as vta_openloop
from worldmodels.errors import WorldModelsError

BUILDERS = {"iris": iris_openloop.build_openloop, "delta_iris": delta_openloop.build_openloop,
            "vta": vta_openloop.build_openloop}
SHAPE, ACTIONS, K, HORIZON = (3, 32, 32), 4, 3, 4


def build(family: str, seed: int = 0):
    return BUILDERS[family](SHAPE, ACTIONS, "tiny", seed, "cpu")


def window(batch: int = 2, steps: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A coloured 8x8 square on a grey background, moved by each action (0: stay,
    1: right, 2: down, 3: left)."""
    gen = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, ACTIONS, (batch, steps), generator=gen)
    moves = torch.tensor([[0, 0], [0, 4], [4, 0], [0, -4]])
    position = torch.randint(4, 20, (batch, 2), generator=gen)
    frames = torch.full((batch, steps, *SHAPE), 0.5)
    for t in range(steps):
        for b in range(batch):
            y, x = position[b].tolist()
            frames[b, t, :, y : y + 8, x : x + 8] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
        position = (position + moves[actions[:, t]]).clamp(0, 24)
    return frames, actions


def strengthen_actions(model) -> None:
    """Scale the world model's action embedding so that an untrained model's argmax
    tokens react to the action (what a trained one learns to do)."""
    with torch.no_grad():
        model.world_model.action_embedding.weight.mul_(100.0)


def rollout(model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return model.rollout(frames[:, :K], actions[:, : K + HORIZON - 1], HORIZON)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_protocol_attributes_and_unknown_size(family):
    model = build(family)
    assert model.name == family and model.uses_actions == (family != "vta")
    tiny = sum(p.numel() for p in model.parameters())
    small = BUILDERS[family]((3, 64, 64), ACTIONS, "small", 0, "cpu")
    assert 1000 < tiny < sum(p.numel() for p in small.parameters())
    with pytest.raises(WorldModelsError, match="size='huge' is not one of tiny, small") as error:
        BUILDERS[family](SHAPE, ACTIONS, "huge", 0, "cpu")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_rollout_shape_range_determinism_and_no_grad(family):
    model = build(family)
    frames, actions = window(steps=K + HORIZON)
    first = rollout(model, frames, actions)
    assert first.shape == (2, HORIZON, *SHAPE) and not first.requires_grad
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(rollout(model, frames, actions), first, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_train_step_lowers_the_loss_on_a_repeated_batch(family):
    torch.manual_seed(0)
    model = build(family)
    frames, actions = window()
    losses = [model.train_step(frames, actions) for _ in range(20)]
    assert all(isinstance(v, float) for v in losses[0].values())
    assert losses[-1]["loss"] < 0.8 * losses[0]["loss"], [round(m["loss"], 3) for m in losses]
    parts = {"iris": ("tokenizer/loss", "world_model/loss_obs"),
             "delta_iris": ("tokenizer/loss", "world_model/loss_latents"), "vta": ("obs_cost",)}[family]
    for part in parts:      # each component learns, the next-frame tokens included (not only the sum)
        assert losses[-1][part] < 0.9 * losses[0][part], part


@pytest.mark.parametrize("family", ["iris", "delta_iris"])
def test_predictions_follow_the_actions(family):
    model = build(family)
    strengthen_actions(model)
    frames, actions = window(steps=K + HORIZON)
    shuffled = (actions + 1 + torch.arange(actions.shape[1])) % ACTIONS
    assert not torch.equal(rollout(model, frames, actions), rollout(model, frames, shuffled))


@pytest.mark.parametrize("family", ["iris", "delta_iris"])
def test_first_prediction_reads_the_action_at_the_last_context_frame(family):
    model = build(family)
    strengthen_actions(model)
    frames, actions = window(steps=K + HORIZON)
    base = rollout(model, frames, actions)
    at_last_context, after = actions.clone(), actions.clone()
    at_last_context[:, K - 1] = (actions[:, K - 1] + 1) % ACTIONS
    after[:, K] = (actions[:, K] + 1) % ACTIONS
    assert not torch.equal(rollout(model, frames, at_last_context)[:, 0], base[:, 0])
    changed_later = rollout(model, frames, after)
    torch.testing.assert_close(changed_later[:, 0], base[:, 0], rtol=0, atol=0)
    assert not torch.equal(changed_later[:, 1], base[:, 1])


def test_vta_ignores_the_actions():
    model = build("vta")
    frames, actions = window(steps=K + HORIZON)
    base = rollout(model, frames, actions)
    for changed in ((actions + 1) % ACTIONS, torch.zeros_like(actions)):
        torch.testing.assert_close(rollout(model, frames, changed), base, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["iris", "delta_iris"])
def test_rollouts_longer_than_the_trained_window_restart_the_context(family):
    model = build(family)
    frames, actions = window(steps=4)
    model.train_step(frames, actions)
    assert model.context_limit() == 4
    long_frames, long_actions = window(steps=3 + 9)
    predicted = model.rollout(long_frames[:, :3], long_actions[:, : 3 + 9 - 1], 9)
    assert predicted.shape == (2, 9, *SHAPE) and predicted.min() >= 0 and predicted.max() <= 1


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_bad_inputs_name_the_expected_shapes(family):
    model = build(family)
    frames, actions = window(steps=K + HORIZON)
    with pytest.raises(WorldModelsError, match=r"K \+ horizon - 1"):
        model.rollout(frames[:, :K], actions[:, :K], HORIZON)
    with pytest.raises(WorldModelsError, match="frames must be float"):
        model.train_step(frames[..., :16], actions)


def test_vta_window_must_fit_its_segment_limits():
    model = build("vta")
    c = model.model.config
    longest = c.init_size + c.seg_len * c.seg_num
    frames, actions = window(batch=1, steps=longest + 1)
    with pytest.raises(WorldModelsError, match=f"got T={longest + 1}"):
        model.train_step(frames, actions)
