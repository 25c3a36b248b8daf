"""3D maze: maze generation, policy and events, raycaster parity, determinism, sanity, errors."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch

from worldmodels import _ext
from worldmodels.envs import maze as mz
from worldmodels.envs import maze_ref

needs_cpp = pytest.mark.skipif(
    not (_ext.has_extension() and hasattr(_ext.extension(), "maze_render")),
    reason="C++ extension worldmodels._C with maze_render not built "
    "(pip install --no-build-isolation -e .)",
)
IMPLS = ["ref", pytest.param("cpp", marks=needs_cpp)]
WALL = 3  # a wall id of the hand-made corridor


def _corridor(length: int = 5) -> np.ndarray:
    """A 3 x (length + 2) grid of walls (id WALL) with one open row of `length` cells."""
    grid = np.full((3, length + 2), WALL, dtype=np.uint8)
    grid[1, 1:-1] = 0
    return grid


def _shaded(color, distance: float, side: int) -> np.ndarray:
    factor = (maze_ref.SIDE_SHADE if side else 1.0) / (1.0 + maze_ref.DISTANCE_FALLOFF * distance)
    return np.floor(np.asarray(color, dtype=np.float64) * factor + 0.5).astype(np.uint8)


def _random_poses(maze: np.ndarray, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """Continuous poses [batch, seq_len, 3] anywhere in empty cells, any heading."""
    rng = np.random.default_rng(seed)
    free = np.argwhere(maze == 0)
    cells = free[rng.integers(len(free), size=(batch, seq_len))]
    offset = rng.uniform(0.05, 0.95, (batch, seq_len, 2))
    theta = rng.uniform(-math.pi, 3 * math.pi, (batch, seq_len))
    return np.stack([cells[..., 1] + offset[..., 0], cells[..., 0] + offset[..., 1], theta], -1)


# ------------------------------------------------------------------------------ maze


@pytest.mark.parametrize("cells", [5, 11, 15])
def test_maze_is_perfect_with_a_solid_border_and_coloured_regions(cells):
    maze = mz.make_maze(cells, seed=cells)
    assert maze.shape == (cells, cells) and maze.dtype == np.uint8
    border = np.concatenate([maze[0], maze[-1], maze[:, 0], maze[:, -1]])
    assert (border > 0).all()
    rooms = (cells - 1) // 2
    assert (maze[1::2, 1::2] == 0).all()  # every room is open
    free = {tuple(c) for c in np.argwhere(maze == 0)}
    assert len(free) == rooms**2 + rooms**2 - 1  # a spanning tree: rooms + passages
    seen, todo = {next(iter(free))}, deque([next(iter(free))])
    while todo:  # flood fill: every open cell is reachable
        i, j = todo.popleft()
        for di, dj in mz.STEPS:
            if (i + di, j + dj) in free and (i + di, j + dj) not in seen:
                seen.add((i + di, j + dj))
                todo.append((i + di, j + dj))
    assert seen == free
    walls = maze[maze > 0]
    assert len(np.unique(walls)) == mz.REGIONS**2 and walls.max() < len(mz.PALETTE)


def test_same_seed_same_maze_different_seed_differs():
    assert np.array_equal(mz.make_maze(11, 4), mz.make_maze(11, 4))
    assert not np.array_equal(mz.make_maze(11, 4), mz.make_maze(11, 5))


# ---------------------------------------------------------------------------- policy


def test_policy_never_walks_through_walls_and_events_match_the_map():
    for seed in range(12):
        maze = mz.make_maze(11, seed)
        roll = mz.rollout_policy(maze, 200, seed)
        i = (roll.poses[:, 1] - 0.5).astype(int)
        j = (roll.poses[:, 0] - 0.5).astype(int)
        k = np.rint(roll.poses[:, 2] / (math.pi / 2)).astype(int)
        assert (maze[i, j] == 0).all()
        open_sides = np.array([len(mz.open_headings(maze, a, b)) for a, b in zip(i, j)])
        np.testing.assert_array_equal(roll.junction, open_sides >= 3)
        np.testing.assert_array_equal(roll.turn, roll.actions != mz.FORWARD)
        for t in range(199):
            a = roll.actions[t]
            if a == mz.FORWARD:
                di, dj = mz.STEPS[k[t]]
                assert (i[t + 1], j[t + 1], k[t + 1]) == (i[t] + di, j[t] + dj, k[t])
            else:
                turn = -1 if a == mz.TURN_LEFT else 1
                assert (i[t + 1], j[t + 1], k[t + 1] % 4) == (i[t], j[t], (k[t] + turn) % 4)
            if t > 0 and a != mz.FORWARD and roll.actions[t - 1] == a:
                assert open_sides[t] == 1  # two turns in a row: only at dead ends


def test_policy_turns_and_passes_junctions_often():
    data = mz.generate_episodes(16, 100, size=8, seed=1, impl="ref")
    assert 0.1 < data.turn.float().mean() < 0.5
    assert 0.02 < data.junction.float().mean() < 0.5


def test_policy_on_a_custom_maze_and_bad_mazes():
    roll = mz.rollout_policy(_corridor(4), 30, seed=0)  # no odd-odd room: any empty cell
    assert (roll.poses[:, 1] == 1.5).all() and 1.0 < roll.poses[:, 0].min()
    assert roll.poses[:, 0].max() < 5.0
    with pytest.raises(ValueError, match="solid border"):
        mz.rollout_policy(np.zeros((5, 5), np.uint8), 3)
    with pytest.raises(ValueError, match="length"):
        mz.rollout_policy(_corridor(4), 0)


def test_step_into_a_wall_does_not_move():
    grid = _corridor(3)
    assert mz.step(grid, 1, 1, 3, mz.FORWARD) == (1, 1, 3)  # facing north, a wall
    assert mz.step(grid, 1, 1, 0, mz.FORWARD) == (1, 2, 0)
    assert mz.step(grid, 1, 1, 0, mz.TURN_LEFT) == (1, 1, 3)
    assert mz.step(grid, 1, 1, 3, mz.TURN_RIGHT) == (1, 1, 0)


# ---------------------------------------------------------------------------- parity


@needs_cpp
@pytest.mark.parametrize(("size", "fov"), [(32, mz.DEFAULT_FOV), (64, 90.0), (13, 60.0), (260, 75.0)])
def test_frames_match_reference(size, fov):
    mazes = np.stack([mz.make_maze(13, seed=1), mz.make_maze(13, seed=2)])
    poses = _random_poses(mazes[0], 2, 40, seed=size)
    poses[1] = _random_poses(mazes[1], 1, 40, seed=size + 1)[0]
    policy = mz.rollout_policy(mazes[0], 40, seed=3).poses  # exact cell centres, axis headings
    poses = np.concatenate([poses, policy[None]])
    mazes = np.concatenate([mazes, mazes[:1]])
    cpp = mz.render(mazes, poses, size, fov, impl="cpp")
    ref = mz.render(mazes, poses, size, fov, impl="ref")
    assert cpp.shape == ref.shape == (3, 40, 3, size, size) and cpp.dtype == ref.dtype == np.uint8
    diff = np.abs(cpp.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3  # identical in practice


# ----------------------------------------------------------------------- determinism


@pytest.mark.parametrize("impl", IMPLS)
def test_same_seed_same_episodes_different_seed_differs(impl):
    a = mz.generate_episodes(3, 20, seed=5, impl=impl)
    b = mz.generate_episodes(3, 20, seed=5, impl=impl)
    c = mz.generate_episodes(3, 20, seed=6, impl=impl)
    for name in ("video", "actions", "turn", "junction", "poses", "mazes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.video, c.video)


def test_episodes_do_not_depend_on_how_calls_split_them():
    whole = mz.generate_episodes(4, 10, size=8, seed=[2, 0], impl="ref")
    tail = mz.generate_episodes(2, 10, size=8, seed=[2, 0], first_episode=2, impl="ref")
    assert torch.equal(whole.video[2:], tail.video) and torch.equal(whole.mazes[2:], tail.mazes)


@needs_cpp
def test_thread_count_does_not_change_frames():
    maze = mz.make_maze(15, 1)
    poses = _random_poses(maze, 6, 50, seed=9)
    one = mz.render(maze, poses, 32, num_threads=1, impl="cpp")
    two = mz.render(maze, poses, 32, num_threads=2, impl="cpp")
    assert np.array_equal(one, two)


# ------------------------------------------------------------------ what is rendered


@pytest.mark.parametrize("impl", IMPLS)
def test_an_adjacent_wall_fills_the_centre_column(impl):
    grid = _corridor(5)
    poses = np.array([[[1.5, 1.5, math.pi], [1.5, 1.5, -math.pi / 2]]])  # west (x face), north (y face)
    frames = mz.render(grid, poses, 32, impl=impl)[0]
    for t, side in ((0, 0), (1, 1)):
        column = frames[t, :, :, 16].T  # [H, 3]
        assert (column == _shaded(mz.PALETTE[WALL], 0.5, side)).all()
    assert (frames[1, :, :, 16] < frames[0, :, :, 16]).all()  # y faces are darker


@pytest.mark.parametrize("impl", IMPLS)
def test_a_long_corridor_shows_a_short_far_wall_between_ceiling_and_floor(impl):
    grid = _corridor(5)
    frame = mz.render(grid, np.array([[[1.5, 1.5, 0.0]]]), 32, impl=impl)[0, 0]  # facing east
    column = frame[:, :, 16].T  # [H, 3]
    far = _shaded(mz.PALETTE[WALL], 4.5, 0)
    band = (column == far).all(axis=1)
    assert 6 <= band.sum() <= 8  # 32 / 4.5 rows, centred
    rows = np.flatnonzero(band)
    assert rows.min() > 10 and rows.max() < 22 and np.all(np.diff(rows) == 1)
    assert (column[: rows.min()] == mz.CEILING).all() and (column[rows.max() + 1:] == mz.FLOOR).all()
    centre = frame[:, :, 12:20]  # these columns all see the far wall
    assert (centre[:, 0].T == mz.CEILING).all() and (centre[:, -1].T == mz.FLOOR).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_custom_palette_and_flat_colours(impl):
    grid = _corridor(2)
    palette = np.zeros((WALL + 1, 3), dtype=np.uint8)
    palette[WALL] = (0, 255, 0)
    frame = mz.render(grid, np.array([[[1.5, 1.5, 0.0]]]), 16, palette=palette,
                      floor=(255, 0, 0), ceiling=(0, 0, 255), impl=impl)[0, 0]
    assert tuple(frame[:, 0, 8]) == (0, 0, 255) and tuple(frame[:, -1, 8]) == (255, 0, 0)
    assert frame[0, 8, 8] == 0 and frame[1, 8, 8] > 100 and frame[2, 8, 8] == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_generate_shapes_and_dtypes(impl):
    data = mz.generate_episodes(2, 7, size=16, maze_cells=9, seed=1, impl=impl)
    assert data.video.shape == (2, 7, 3, 16, 16) and data.video.dtype == torch.uint8
    assert data.actions.shape == (2, 7) and data.actions.dtype == torch.int64
    assert data.turn.dtype == data.junction.dtype == torch.bool
    assert data.poses.shape == (2, 7, 3) and data.poses.dtype == torch.float64
    assert data.mazes.shape == (2, 9, 9) and data.mazes.dtype == torch.uint8
    shared = mz.generate_episodes(2, 3, size=8, maze=mz.make_maze(9, 0), impl=impl)
    assert torch.equal(shared.mazes[0], shared.mazes[1])


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 7}, "size"),
        ({"length": 0}, "length"),
        ({"num_episodes": 0}, "num_episodes"),
        ({"maze_cells": 3}, "maze_cells"),
        ({"maze_cells": 10}, "maze_cells must be odd"),
        ({"impl": "cuda"}, "impl"),
        ({"fov": 180.0}, "fov"),
        ({"num_threads": 0}, "num_threads"),
        ({"seed": -1}, "seed"),
        ({"maze": np.zeros((3, 4), np.uint8)}, "maze"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = {"num_episodes": 1, "length": 2, "impl": "ref", **kwargs}
    with pytest.raises(ValueError, match=match):
        mz.generate_episodes(**args)


@pytest.mark.parametrize("impl", IMPLS)
def test_render_checks_the_scene(impl):
    grid = _corridor(3)
    good = np.array([[[1.5, 1.5, 0.0]]])
    open_border = grid.copy()
    open_border[1, 0] = 0
    with pytest.raises(ValueError, match="border"):
        mz.render(open_border, good, 16, impl=impl)
    with pytest.raises(ValueError, match=r"poses\[0, 0\]"):
        mz.render(grid, np.array([[[0.5, 1.5, 0.0]]]), 16, impl=impl)
    with pytest.raises(ValueError, match="palette"):
        mz.render(grid, good, 16, palette=np.zeros((2, 3), np.uint8), impl=impl)
    with pytest.raises(ValueError, match="poses must be"):
        mz.render(grid, np.zeros((1, 3)), 16, impl=impl)
    with pytest.raises(ValueError, match="uint8"):
        mz.render(grid.astype(np.int32), good, 16, impl=impl)


def test_unknown_impl_lists_the_choices():
    with pytest.raises(ValueError, match="auto.*cpp.*ref"):
        mz.render(_corridor(3), np.array([[[1.5, 1.5, 0.0]]]), 16, impl="fast")


@needs_cpp
def test_extension_checks_its_inputs_too():
    render = _ext.extension().maze_render
    grid = _corridor(3)[None]
    args = (np.zeros((4, 3), np.uint8), np.zeros(3, np.uint8), np.zeros(3, np.uint8), 8, 8, 0.6)
    with pytest.raises(ValueError, match="pose 0"):
        render(grid, np.array([[[4.5, 1.5, 0.0]]]), *args)
    with pytest.raises(ValueError, match="wall id 3 >= palette size 2"):
        render(grid, np.array([[[1.5, 1.5, 0.0]]]), np.zeros((2, 3), np.uint8), *args[1:])


# ------------------------------------------------------------------------- fallback


def test_fallback_without_extension_warns_once_and_cpp_says_how_to_build(without_extension):
    done = without_extension(
        """
        from worldmodels.envs import maze as mz
        a = mz.generate_episodes(2, 3, size=8, impl="auto")
        b = mz.generate_episodes(2, 3, size=8, impl="auto")
        assert a.video.shape == (2, 3, 3, 8, 8)
        try_cpp(lambda: mz.generate_episodes(1, 2, impl="cpp"))
        """
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(notices) == 1 and "pure-Python" in notices[0], done.stderr
    assert "CPP-ERROR:" in done.stdout and "pip install" in done.stdout
