"""Bouncing balls: C++ vs NumPy parity, conservation, determinism, sanity, recolouring
on wall hits, errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from worldmodels import _ext
from worldmodels.envs import bouncing_balls as bb

needs_cpp = pytest.mark.skipif(
    not _ext.has_extension(),
    reason="C++ extension worldmodels._C not built (pip install --no-build-isolation -e .)",
)
IMPLS = ["ref", pytest.param("cpp", marks=needs_cpp)]


def _state(batch, num_balls, size, seed, radius=(1.5, 3.0), speed=(1.0, 3.0)):
    return bb.sample_initial_state(batch, num_balls, size, radius=radius, speed=speed, seed=seed)


def _run(state, seq_len, size, impl, **kwargs):
    return bb.simulate(state.positions, state.velocities, state.radii, state.masses,
                       seq_len, size, impl=impl, **kwargs)


def _energy(masses, velocities):
    """Kinetic energy [B, T] from masses [B, N] and velocities [B, T, N, 2]."""
    return 0.5 * (masses[:, None] * (velocities**2).sum(-1)).sum(-1)


def _pair_overlap(positions, radii):
    """Overlap r_i + r_j - |x_i - x_j| of each pair i < j: [B, T, P]."""
    n = radii.shape[1]
    i, j = np.triu_indices(n, 1)
    dist = np.linalg.norm(positions[:, :, i] - positions[:, :, j], axis=-1)
    return (radii[:, i] + radii[:, j])[:, None] - dist


# ---------------------------------------------------------------------------- parity


@needs_cpp
@pytest.mark.parametrize("num_balls", [1, 2, 3, 4])
def test_trajectories_match_reference(num_balls):
    state = _state(8, num_balls, 16, seed=num_balls)
    cpp = _run(state, 60, 16, "cpp")
    ref = _run(state, 60, 16, "ref")
    np.testing.assert_allclose(cpp.positions, ref.positions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cpp.velocities, ref.velocities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cpp.ball_collisions, ref.ball_collisions)
    np.testing.assert_array_equal(cpp.wall_collisions, ref.wall_collisions)
    np.testing.assert_array_equal(cpp.ball_wall_hits, ref.ball_wall_hits)
    np.testing.assert_array_equal(ref.ball_wall_hits.any(2), ref.wall_collisions)
    assert ref.ball_wall_hits.shape == (8, 60, num_balls) and ref.ball_wall_hits.dtype == bool
    assert ref.wall_collisions.sum() > 20
    if num_balls > 1:
        assert ref.ball_collisions.sum() > 10  # the small box makes collisions frequent


@needs_cpp
@pytest.mark.parametrize("size", [32, 64, 13])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_frames_match_reference(size, channels, dtype):
    state = _state(3, 4, size, seed=size, radius=(1.0, 4.0) if size > 13 else 2.0)
    traj = _run(state, 10, size, "ref")
    cpp = bb.render(traj.positions, state.radii, size, channels, dtype=dtype, impl="cpp")
    ref = bb.render(traj.positions, state.radii, size, channels, dtype=dtype, impl="ref")
    assert cpp.dtype == ref.dtype == np.dtype(dtype)
    assert cpp.shape == ref.shape == (3, 10, channels, size, size)
    diff = np.abs(cpp.astype(np.float64) - ref.astype(np.float64))
    assert diff.max() <= (1 if dtype == "uint8" else 1 / 255)


# ---------------------------------------------------------------------- conservation


@pytest.mark.parametrize("impl", IMPLS)
def test_energy_is_conserved(impl):
    state = _state(4, 4, 20, seed=7)
    traj = _run(state, 300, 20, impl)
    energy = _energy(state.masses, traj.velocities)
    assert traj.ball_collisions.sum() > 50
    np.testing.assert_allclose(energy, energy[:, :1].repeat(300, 1), rtol=1e-9, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("offset", [0.0, 2.5])  # head-on and oblique
def test_momentum_is_conserved_by_ball_collisions(impl, offset):
    positions = np.array([[[22.0, 32.0], [42.0, 32.0 + offset]]])
    velocities = np.array([[[1.0, 0.1], [-1.5, -0.2]]])
    radii = np.array([[3.0, 4.0]])
    masses = np.array([[1.0, 2.5]])
    traj = bb.simulate(positions, velocities, radii, masses, 12, 64, impl=impl)
    assert traj.ball_collisions.any() and not traj.wall_collisions.any()
    momentum = (masses[:, None, :, None] * traj.velocities).sum(2)  # [B, T, 2]
    np.testing.assert_allclose(momentum, momentum[:, :1].repeat(12, 1), rtol=0, atol=1e-12)
    centre = (masses[:, None, :, None] * traj.positions).sum(2) / masses.sum()
    drift = centre[:, -1] - centre[:, 0] - 11 * momentum[:, 0] / masses.sum()
    np.testing.assert_allclose(drift, 0.0, atol=1e-9)  # push-apart keeps the centre of mass


# ----------------------------------------------------------------------- determinism


@pytest.mark.parametrize("impl", IMPLS)
def test_same_seed_same_output_different_seed_differs(impl):
    a = bb.generate(3, 12, seed=5, impl=impl)
    b = bb.generate(3, 12, seed=5, impl=impl)
    c = bb.generate(3, 12, seed=6, impl=impl)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.positions, b.positions)
    assert not torch.equal(a.frames, c.frames)


@needs_cpp
@pytest.mark.parametrize("recolor", [False, True])
def test_thread_count_does_not_change_output(recolor):
    kwargs = {"num_balls": 4, "channels": 3, "seed": 3, "impl": "cpp", "recolor_on_wall_hit": recolor}
    one = bb.generate(7, 40, num_threads=1, **kwargs)
    two = bb.generate(7, 40, num_threads=2, **kwargs)
    for name in ("frames", "positions", "velocities", "ball_collisions", "wall_collisions",
                 "ball_wall_hits", "colors"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name


# --------------------------------------------------------------------- physics sanity


@pytest.mark.parametrize("impl", IMPLS)
def test_balls_stay_inside_and_do_not_stay_overlapped(impl):
    state = _state(16, 6, 24, seed=11)
    traj = _run(state, 150, 24, impl)
    r = state.radii[:, None, :, None]
    assert (traj.positions >= r - 1e-9).all() and (traj.positions <= 24 - r + 1e-9).all()
    overlapping = _pair_overlap(traj.positions, state.radii) > 1e-9
    assert not (overlapping[:, 1:] & overlapping[:, :-1]).any()  # never two frames in a row


@pytest.mark.parametrize("impl", IMPLS)
def test_fast_balls_do_not_tunnel(impl):
    # Two fast balls on one line: without tunnelling their order along x never flips.
    positions = np.array([[[8.0, 16.0], [24.0, 16.0]]])
    velocities = np.array([[[23.0, 0.0], [-19.0, 0.0]]])
    radii, masses = np.array([[2.0, 2.0]]), np.array([[1.0, 1.0]])
    traj = bb.simulate(positions, velocities, radii, masses, 40, 32, impl=impl)
    x = traj.positions[0, :, :, 0]
    assert traj.ball_collisions.sum() > 10 and traj.wall_collisions.sum() > 10
    assert (x[:, 0] < x[:, 1]).all() and (x >= 2.0).all() and (x <= 30.0).all()
    one = bb.simulate(positions, velocities, radii, masses, 40, 32, substeps=1, impl=impl)
    assert not (one.positions[0, :, 0, 0] < one.positions[0, :, 1, 0]).all()  # the control


def test_auto_substeps_bounds_the_move_per_substep():
    state = _state(32, 3, 32, seed=2, radius=(1.0, 3.0), speed=(0.5, 6.0))
    substeps = bb.auto_substeps(state.velocities, state.radii, state.masses)
    traj = _run(state, 50, 32, "ref")
    speed = np.linalg.norm(traj.velocities, axis=-1).max(axis=(1, 2))
    assert (speed / substeps <= 0.5 * state.radii.min(-1) + 1e-12).all()


def test_collision_flags_start_false_and_events_are_frequent():
    data = bb.generate(64, 60, seed=0)
    assert not data.ball_collisions[:, 0].any() and not data.wall_collisions[:, 0].any()
    events = (data.ball_collisions | data.wall_collisions)[:, 1:].float().mean()
    assert 0.1 < events < 0.8  # an event every few frames with the defaults


# ------------------------------------------------------------------- rendering sanity


@pytest.mark.parametrize("impl", IMPLS)
def test_single_ball_peaks_at_its_centre_and_background_is_zero(impl):
    positions = np.array([[[[10.5, 20.5]]]])  # pixel (row 20, col 10)
    radii = np.array([[3.0]])
    smooth = bb.render(positions, radii, 32, dtype="float32", impl=impl)[0, 0, 0]
    assert np.unravel_index(smooth.argmax(), smooth.shape) == (20, 10)  # unique maximum
    assert smooth[20, 10] == 1.0 and (smooth[20, 10] > np.delete(smooth.ravel(), 20 * 32 + 10)).all()
    frame = bb.render(positions, radii, 32, impl=impl)[0, 0, 0]
    assert frame[20, 10] == 255
    rows, cols = np.mgrid[0:32, 0:32] + 0.5
    far = np.hypot(cols - 10.5, rows - 20.5) > 1.6 * 3.0
    assert (frame[far] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_colour_frames_use_the_palette(impl):
    positions = np.array([[[[8.5, 8.5], [24.5, 24.5]]]])
    frame = bb.render(positions, np.array([[3.0, 3.0]]), 32, channels=3, dtype="float32",
                      impl=impl)[0, 0]
    np.testing.assert_allclose(frame[:, 8, 8], bb.PALETTE[0], atol=1 / 255)
    np.testing.assert_allclose(frame[:, 24, 24], bb.PALETTE[1], atol=1 / 255)


@pytest.mark.parametrize("impl", IMPLS)
def test_generate_shapes_and_dtypes(impl):
    data = bb.generate(2, 5, num_balls=2, size=16, radius=(1.5, 2.5), channels=3,
                       dtype="float32", impl=impl)
    assert data.frames.shape == (2, 5, 3, 16, 16) and data.frames.dtype == torch.float32
    assert 0.0 <= data.frames.min() and data.frames.max() <= 1.0
    assert data.ball_collisions.shape == data.wall_collisions.shape == (2, 5)
    assert data.ball_collisions.dtype == data.ball_wall_hits.dtype == torch.bool
    assert data.ball_wall_hits.shape == (2, 5, 2)
    assert data.colors.shape == (2, 5, 2, 3) and data.colors.dtype == torch.float32
    assert data.positions.shape == data.velocities.shape == (2, 5, 2, 2)
    assert data.positions.dtype == torch.float64
    assert data.radii.shape == data.masses.shape == (2, 2)
    torch.testing.assert_close(data.masses, data.radii**2)
    assert data.substeps >= 1


# --------------------------------------------------------------- recolour on wall hit


def _palette_index(colors: torch.Tensor) -> torch.Tensor:
    """Row of PALETTE equal to each colour [..., 3] -> [...] (-1: none)."""
    match = (colors[..., None, :] == torch.from_numpy(bb.PALETTE)).all(-1)  # [..., P]
    return torch.where(match.any(-1), match.int().argmax(-1), -1)


@needs_cpp
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_per_frame_colour_frames_match_reference(dtype):
    state = _state(3, 4, 32, seed=4, radius=(1.0, 4.0))
    traj = _run(state, 8, 32, "ref")
    colors = np.random.default_rng(0).random((3, 8, 4, 3), dtype=np.float32)
    cpp = bb.render(traj.positions, state.radii, 32, 3, colors, dtype=dtype, impl="cpp")
    ref = bb.render(traj.positions, state.radii, 32, 3, colors, dtype=dtype, impl="ref")
    diff = np.abs(cpp.astype(np.float64) - ref.astype(np.float64))
    assert diff.max() <= (1 if dtype == "uint8" else 1 / 255)


@pytest.mark.parametrize("impl", IMPLS)
def test_per_frame_colours_are_used_frame_by_frame(impl):
    positions = np.full((1, 3, 1, 2), 16.5)  # pixel (16, 16) in all three frames
    colors = bb.PALETTE[None, [0, 3, 5], None]  # [1, T=3, N=1, 3]
    frames = bb.render(positions, np.array([[3.0]]), 32, 3, colors, dtype="float32", impl=impl)
    np.testing.assert_allclose(frames[0, :, :, 16, 16], bb.PALETTE[[0, 3, 5]], atol=1 / 255)
    constant = bb.render(positions, np.array([[3.0]]), 32, 3, colors[:, 0], dtype="float32",
                         impl=impl)
    np.testing.assert_array_equal(constant[0, 1], frames[0, 0])  # [B, N, C] still works


@needs_cpp
def test_recolour_matches_reference_end_to_end():
    cpp = bb.generate(4, 30, channels=3, seed=8, recolor_on_wall_hit=True, impl="cpp")
    ref = bb.generate(4, 30, channels=3, seed=8, recolor_on_wall_hit=True, impl="ref")
    assert torch.equal(cpp.ball_wall_hits, ref.ball_wall_hits) and cpp.ball_wall_hits.any()
    assert torch.equal(cpp.colors, ref.colors)
    assert (cpp.frames.int() - ref.frames.int()).abs().max() <= 1


@pytest.mark.parametrize("impl", IMPLS)
def test_colour_changes_exactly_at_wall_hits_and_stays_in_the_palette(impl):
    data = bb.generate(16, 40, channels=3, seed=2, recolor_on_wall_hit=True, impl=impl)
    index = _palette_index(data.colors)  # [B, T, N]
    assert (index >= 0).all()  # every colour is a palette row
    changed = index[:, 1:] != index[:, :-1]
    hits = data.ball_wall_hits[:, 1:]
    assert hits.sum() > 20 and torch.equal(changed, hits)
    assert index[:, 0].unique().numel() > 3  # random initial colours
    assert torch.equal(bb.recolor_events(data.colors), data.wall_collisions)
    plain = bb.generate(16, 40, channels=3, seed=2, impl=impl)
    assert torch.equal(plain.positions, data.positions)  # recolouring keeps the physics
    assert not bb.recolor_events(plain.colors).any()
    assert torch.equal(plain.colors[:, 0], torch.from_numpy(bb.ball_colors(16, 3, 3)))


def test_recolour_is_seeded():
    a = bb.generate(4, 30, channels=3, seed=5, recolor_on_wall_hit=True, impl="ref")
    b = bb.generate(4, 30, channels=3, seed=5, recolor_on_wall_hit=True, impl="ref")
    c = bb.generate(4, 30, channels=3, seed=6, recolor_on_wall_hit=True, impl="ref")
    assert torch.equal(a.colors, b.colors) and torch.equal(a.frames, b.frames)
    assert not torch.equal(a.colors, c.colors)


def test_recolor_indices_follow_the_rule():
    hits = np.zeros((1, 5, 2), dtype=bool)
    hits[0, 2, 0] = hits[0, 3, 0] = hits[0, 4, 1] = True
    index = bb.recolor_indices(hits, np.random.default_rng(0), num_colors=3)
    assert index.shape == (1, 5, 2) and ((index >= 0) & (index < 3)).all()
    changed = index[:, 1:] != index[:, :-1]
    np.testing.assert_array_equal(changed, hits[:, 1:])


def test_recolour_errors():
    with pytest.raises(ValueError, match="recolor_on_wall_hit.*channels"):
        bb.generate(2, 3, channels=1, recolor_on_wall_hit=True, impl="ref")
    with pytest.raises(ValueError, match="recolor_on_wall_hit"):
        bb.generate(2, 3, channels=3, recolor_on_wall_hit="yes", impl="ref")
    positions = np.full((2, 3, 1, 2), 8.0)
    with pytest.raises(ValueError, match=r"colors must be \[B, N, C\].*\[B, T, N, C\]"):
        bb.render(positions, np.ones((2, 1)), 16, 3, np.ones((2, 4, 1, 3)), impl="ref")
    with pytest.raises(ValueError, match="colors"):
        bb.render(positions, np.ones((2, 1)), 16, 3, np.full((2, 3, 1, 3), 2.0), impl="ref")
    with pytest.raises(ValueError, match="ball_wall_hits"):
        bb.recolor_indices(np.zeros((2, 3), dtype=bool), np.random.default_rng(0))


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_balls": 0}, "num_balls"),
        ({"batch": 0}, "batch"),
        ({"seq_len": -1}, "seq_len"),
        ({"size": 7}, "size"),
        ({"radius": 0.0}, "radius"),
        ({"radius": (3.0, 2.0)}, "radius"),
        ({"radius": 16.0}, "radius"),
        ({"speed": -1.0}, "speed"),
        ({"mass": (0.0, 1.0)}, "mass"),
        ({"num_balls": 40, "radius": 4.0}, "num_balls=40"),
        ({"channels": 2}, "channels"),
        ({"dtype": "int16"}, "dtype"),
        ({"substeps": 0}, "substeps"),
        ({"impl": "cuda"}, "impl"),
        ({"num_threads": 0}, "num_threads"),
        ({"speed": 1e6}, "speed too high"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = {"batch": 2, "seq_len": 3, "impl": "ref", **kwargs}
    with pytest.raises(ValueError, match=match):
        bb.generate(**args)


def test_unknown_impl_lists_the_choices():
    with pytest.raises(ValueError, match="auto.*cpp.*ref"):
        bb.render(np.zeros((1, 1, 1, 2)) + 5, np.ones((1, 1)), 16, impl="fast")


def test_simulate_checks_shapes():
    with pytest.raises(ValueError, match="velocities"):
        bb.simulate(np.full((2, 3, 2), 5.0), np.zeros((2, 2, 2)), np.ones((2, 3)),
                    np.ones((2, 3)), 4, 16)


# ------------------------------------------------------------------------- fallback


def test_fallback_without_extension_warns_once_and_cpp_says_how_to_build(without_extension):
    done = without_extension(
        """
        from worldmodels.envs import bouncing_balls as bb
        a = bb.generate(2, 4, impl="auto")
        b = bb.generate(2, 4, impl="auto")
        assert a.frames.shape == (2, 4, 1, 32, 32)
        try_cpp(lambda: bb.generate(2, 4, impl="cpp"))
        """
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(notices) == 1 and "pure-Python" in notices[0], done.stderr
    assert "CPP-ERROR:" in done.stdout and "pip install" in done.stdout
