"""BouncingBallsProvider: determinism, refresh, resume, flat memory, format."""

from __future__ import annotations

import pytest
import torch

from worldmodels.data.bouncing_balls import BouncingBallsProvider, make_eval_set

SMALL = {"size": 16, "radius": 2.0, "num_balls": 2}


def _provider(**overrides):
    args = {"batch_size": 4, "seq_len": 6, "chunk_sequences": 12, "refresh_steps": 3,
            "seed": 0, **SMALL, **overrides}
    return BouncingBallsProvider(args.pop("batch_size"), args.pop("seq_len"), **args)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batch_format():
    batch = _provider(channels=3).batch(0)
    assert set(batch) == {"frames", "ball_collisions", "wall_collisions", "ball_wall_hits",
                          "recolor_events"}
    assert batch["frames"].shape == (4, 6, 3, 16, 16) and batch["frames"].dtype == torch.float32
    assert 0.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
    assert batch["frames"].max() > 0.5  # balls are visible
    for key in ("ball_collisions", "wall_collisions", "recolor_events"):
        assert batch[key].shape == (4, 6) and batch[key].dtype == torch.bool
    assert batch["ball_wall_hits"].shape == (4, 6, 2) and batch["ball_wall_hits"].dtype == torch.bool
    assert not batch["recolor_events"].any()  # constant colours without the option


def test_recolour_option_passes_through():
    data = _provider(channels=3, recolor_on_wall_hit=True, seq_len=20)
    batch = data.batch(0)
    assert batch["wall_collisions"].any()
    assert torch.equal(batch["recolor_events"], batch["wall_collisions"])
    assert torch.equal(batch["ball_wall_hits"].any(-1), batch["wall_collisions"])
    held_out = make_eval_set(5, 20, seed=0, channels=3, recolor_on_wall_hit=True, **SMALL)
    assert torch.equal(held_out["recolor_events"], held_out["wall_collisions"])
    assert held_out["recolor_events"].any()


def test_batch_is_a_pure_function_of_seed_and_step():
    a, b = _provider(), _provider()
    assert _equal(a.batch(7), b.batch(7))
    assert _equal(a.batch(1), a.batch(1))
    a.batch(50)  # visiting another chunk does not change what step 7 gives
    assert _equal(a.batch(7), b.batch(7))
    assert not _equal(a.batch(7), _provider(seed=1).batch(7))
    assert not _equal(a.batch(0), a.batch(1))


def test_chunk_changes_after_refresh_steps_and_memory_stays_flat():
    data = _provider()
    first = data.chunk(0)
    assert data.chunk(1 // 3) is first  # steps 0..2 share chunk 0
    data.batch(2)
    assert data._chunk is first
    data.batch(3)  # step 3 starts chunk 1
    second = data._chunk
    assert second is not first and not torch.equal(second.frames, first.frames)
    assert second.frames.shape == first.frames.shape == (12, 6, 1, 16, 16)
    assert second.frames.dtype == torch.uint8
    for step in range(4, 20):
        data.batch(step)
        assert data._chunk.frames.shape == first.frames.shape  # one chunk, constant size


def test_indices_are_distinct_and_in_range():
    data = _provider()
    for step in range(5):
        index = data.indices(step)
        assert index.unique().numel() == 4 and 0 <= index.min() and index.max() < 12


def test_state_dict_round_trip_resumes_identical_batches():
    run = _provider()
    for _ in range(4):
        run.next_batch()
    state = run.state_dict()
    assert state == {"step": 4}
    expected = [run.next_batch() for _ in range(3)]
    resumed = _provider()
    resumed.load_state_dict(state)
    assert all(_equal(resumed.next_batch(), batch) for batch in expected)
    assert resumed.state_dict() == {"step": 7}


def test_eval_set_is_fixed_and_held_out():
    a = make_eval_set(5, 6, seed=0, **SMALL)
    b = make_eval_set(5, 6, seed=0, **SMALL)
    assert _equal(a, b) and a["frames"].shape == (5, 6, 1, 16, 16)
    assert not torch.equal(a["frames"][:4], _provider().batch(0)["frames"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"seq_len": 0}, "seq_len"),
        ({"chunk_sequences": 2}, "chunk_sequences"),
        ({"refresh_steps": 0}, "refresh_steps"),
        ({"seed": -1}, "seed"),
        ({"dtype": "float32"}, "dtype"),
        ({"num_balls": 0}, "num_balls"),
        ({"recolor_on_wall_hit": True}, "channels"),
    ],
)
def test_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        _provider(**overrides)


def test_bad_state_and_step():
    data = _provider()
    with pytest.raises(ValueError, match="step"):
        data.batch(-1)
    with pytest.raises(ValueError, match="step"):
        data.load_state_dict({"steps": 3})
