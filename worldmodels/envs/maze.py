"""A first-person 3D maze: the data of VTA's 3D Maze experiment.

:func:`make_maze` carves a perfect maze (randomised depth-first search) in a block
grid whose walls are coloured per region, so places can be told apart;
:func:`rollout_policy` walks its corridors and turns at junctions, recording the
ground-truth events VTA's boundaries are scored against; :func:`render` raycasts
first-person frames (C++ extension ``worldmodels._C``, OpenMP over frames, GIL
released; :mod:`worldmodels.envs.maze_ref` is the NumPy specification);
:func:`generate_episodes` does all three for a batch of episodes.

Units: a maze is a grid ``[n, n]`` of cells (``0`` empty, ``k > 0`` a wall of colour
``PALETTE[k]``), cell ``(i, j)`` covering ``x in [j, j+1)``, ``y in [i, i+1)``. The
agent stands at cell centres facing one of four headings ``k`` (``theta = k pi/2``:
0 east +x, 1 south +y, 2 west, 3 north). Actions: 0 forward one cell, 1 turn left
90 degrees (``k - 1``), 2 turn right (``k + 1``). ``actions[t]`` is taken after frame
``t`` is seen and leads to frame ``t + 1``.

Example::

    data = generate_episodes(16, 100)       # 11x11 mazes, 32x32 frames
    data.video.shape                        # torch.Size([16, 100, 3, 32, 32]) uint8
    data.turn.float().mean(), data.junction.float().mean()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from worldmodels import _ext
from worldmodels.envs import maze_ref as ref

Seed = Union[int, np.random.SeedSequence, np.random.Generator]
IMPLS = ("auto", "cpp", "ref")
ACTIONS = ("forward", "turn_left", "turn_right")
FORWARD, TURN_LEFT, TURN_RIGHT = 0, 1, 2
STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))
"""Cell offsets (di, dj) of one step forward along headings 0..3 (east, south, west, north)."""
DEFAULT_FOV = 66.0
REGIONS = 3
"""The maze is split into REGIONS x REGIONS regions, each with its own wall colour."""
PALETTE = np.array(
    [
        [0, 0, 0],  # id 0: empty (never drawn)
        [220, 50, 50], [50, 180, 60], [60, 90, 230], [230, 200, 40], [200, 60, 200],
        [40, 200, 200], [240, 130, 30], [150, 90, 40], [240, 240, 240], [120, 200, 120],
        [140, 60, 160], [250, 150, 170],
    ],
    dtype=np.uint8,
)
"""Wall colours by id (row 0 unused); ids 1..12 are drawn from per maze."""
FLOOR = np.array([70, 60, 50], dtype=np.uint8)
CEILING = np.array([110, 130, 160], dtype=np.uint8)


@dataclass(frozen=True)
class Rollout:
    """One policy episode (NumPy). actions [T] int64; poses [T, 3] float64 (x, y, theta)
    of frame t; turn [T] bool (actions[t] is a turn); junction [T] bool (frame t's cell
    has >= 3 open sides)."""

    actions: np.ndarray
    poses: np.ndarray
    turn: np.ndarray
    junction: np.ndarray


@dataclass(frozen=True)
class MazeEpisodes:
    """Generated episodes as torch tensors (zero-copy views of NumPy arrays).

    Attributes:
        video: [N, T, 3, H, W] uint8 first-person frames.
        actions: [N, T] int64 in {0 forward, 1 turn left, 2 turn right}.
        turn: [N, T] bool, ``actions != 0``.
        junction: [N, T] bool, the agent's cell at frame t has >= 3 open sides.
        poses: [N, T, 3] float64 (x, y, theta) in cells and radians.
        mazes: [N, n, n] uint8 grids (0 empty, k > 0 wall colour id).
    """

    video: torch.Tensor
    actions: torch.Tensor
    turn: torch.Tensor
    junction: torch.Tensor
    poses: torch.Tensor
    mazes: torch.Tensor


# ----------------------------------------------------------------------------- checks


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_cells(maze_cells) -> int:
    n = _check_int("maze_cells", maze_cells, 5)
    if n % 2 == 0:
        raise ValueError(f"maze_cells must be odd (walls on even rows/columns), got {maze_cells!r}")
    return n


def _check_fov(fov) -> float:
    if not isinstance(fov, (int, float, np.number)) or not 0.0 < float(fov) < 180.0:
        raise ValueError(f"fov must be in degrees in (0, 180), got {fov!r}")
    return float(fov)


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _use_cpp(impl: str) -> bool:
    """Whether to run the C++ path for ``impl`` ('auto' falls back with one notice)."""
    if _check_impl(impl) == "ref":
        return False
    if impl == "cpp":
        if not hasattr(_ext.require_extension("maze render"), "maze_render"):
            raise _ext.ExtensionUnavailableError(
                f"maze render needs worldmodels._C.maze_render, which this build lacks; "
                f"{_ext.BUILD_HINT}, or use impl='ref'.")
        return True
    extension = _ext.extension()
    if extension is None or not hasattr(extension, "maze_render"):
        _ext.notify_fallback("maze render")
        return False
    return True


# ------------------------------------------------------------------------------ maze


def _carve(rooms: int, rng: np.random.Generator) -> np.ndarray:
    """Open cells [2 rooms + 1]^2 bool of a perfect maze: randomised iterative DFS."""
    n = 2 * rooms + 1
    open_ = np.zeros((n, n), dtype=bool)
    visited = np.zeros((rooms, rooms), dtype=bool)
    start = (int(rng.integers(rooms)), int(rng.integers(rooms)))
    visited[start] = True
    open_[2 * start[0] + 1, 2 * start[1] + 1] = True
    stack = [start]
    while stack:
        a, b = stack[-1]
        nexts = [(a + di, b + dj) for di, dj in STEPS
                 if 0 <= a + di < rooms and 0 <= b + dj < rooms and not visited[a + di, b + dj]]
        if not nexts:
            stack.pop()
            continue
        na, nb = nexts[int(rng.integers(len(nexts)))]
        visited[na, nb] = True
        open_[a + na + 1, b + nb + 1] = True  # the cell between the two rooms
        open_[2 * na + 1, 2 * nb + 1] = True
        stack.append((na, nb))
    return open_


def make_maze(maze_cells: int = 11, seed: Seed = 0) -> np.ndarray:
    """A perfect maze in a block grid, walls coloured per region.

    Rooms sit at odd (row, col); a depth-first search from a random room opens the
    cells between neighbouring rooms, so every room is reachable by exactly one path.
    The grid is split into :data:`REGIONS` x :data:`REGIONS` regions; each gets a
    distinct wall colour id drawn from ``PALETTE[1:]``.

    Args:
        maze_cells: side n of the grid in cells (odd, >= 5), walls included;
            11 gives 5 x 5 rooms.
        seed: int, SeedSequence or Generator.

    Returns:
        maze [n, n] uint8: 0 empty, k > 0 wall of colour ``PALETTE[k]``; border all walls.
    """
    n = _check_cells(maze_cells)
    rng = np.random.default_rng(seed)
    open_ = _carve((n - 1) // 2, rng)
    band = np.arange(n) * REGIONS // n
    region = band[:, None] * REGIONS + band[None, :]
    colors = 1 + rng.permutation(len(PALETTE) - 1)[: REGIONS * REGIONS]
    return np.where(open_, 0, colors[region]).astype(np.uint8)


def open_headings(maze: np.ndarray, i: int, j: int) -> list[int]:
    """Headings (0..3) whose neighbouring cell of interior cell (i, j) is empty."""
    return [k for k, (di, dj) in enumerate(STEPS) if maze[i + di, j + dj] == 0]


def _solid_border(maze: np.ndarray) -> bool:
    return bool((maze[[0, -1]] != 0).all() and (maze[:, [0, -1]] != 0).all())


def open_map(maze: np.ndarray) -> np.ndarray:
    """open [n, n, 4] bool: heading k leads from cell (i, j) to an empty cell
    (False on the border, whose outward neighbours do not exist)."""
    empty = np.pad(np.asarray(maze) == 0, 1)  # outside the grid counts as wall
    n_rows, n_cols = maze.shape
    return np.stack([empty[1 + di:1 + di + n_rows, 1 + dj:1 + dj + n_cols] for di, dj in STEPS], -1)


# ---------------------------------------------------------------------------- policy


def _plan(headings: list[int], k: int, rng: np.random.Generator) -> list[int]:
    """Actions from a cell with open ``headings`` facing k: turn towards the chosen
    heading, then forward.

    Straight on in a corridor; at a bend the only way on; at a junction (>= 3 open
    sides) a random open heading other than back; at a dead end turn around by two
    turns of a random side.
    """
    if not headings:
        return [TURN_LEFT]  # enclosed cell: spin in place
    back = (k + 2) % 4
    ahead = [h for h in headings if h != back] or [back]
    if len(headings) >= 3:
        target = ahead[int(rng.integers(len(ahead)))]
    else:
        target = k if k in ahead else ahead[0]
    turn = (target - k) % 4
    if turn == 1:
        return [TURN_RIGHT, FORWARD]
    if turn == 3:
        return [TURN_LEFT, FORWARD]
    if turn == 2:
        side = TURN_LEFT if rng.integers(2) == 0 else TURN_RIGHT
        return [side, side, FORWARD]
    return [FORWARD]


def step(maze: np.ndarray, i: int, j: int, k: int, action: int) -> tuple[int, int, int]:
    """The state (i, j, k) after ``action``; forward into a wall does not move."""
    if action == TURN_LEFT:
        return i, j, (k - 1) % 4
    if action == TURN_RIGHT:
        return i, j, (k + 1) % 4
    di, dj = STEPS[k]
    return (i + di, j + dj, k) if maze[i + di, j + dj] == 0 else (i, j, k)


def rollout_policy(maze: np.ndarray, length: int, seed: Seed = 0) -> Rollout:
    """Walk ``length`` frames from a random room (an empty cell at odd row and
    column; any empty cell if there is none) with a random heading.

    The policy (:func:`_plan`) never walks into a wall and makes a U-turn only at
    dead ends. ``poses[t]`` is the pose seen in frame t; ``actions[t]`` moves it to
    ``poses[t + 1]``.
    """
    length = _check_int("length", length, 1)
    maze = np.asarray(maze)
    free = np.argwhere(maze == 0) if maze.ndim == 2 else np.zeros((0, 2), int)
    if not len(free) or (open_map(maze).sum(-1)[maze == 0] == 0).all() or not _solid_border(maze):
        raise ValueError(f"maze must be a 2-D grid with a solid border and connected empty "
                         f"cells, got shape {list(maze.shape)}")
    rng = np.random.default_rng(seed)
    rooms = free[(free % 2 == 1).all(axis=1)]  # rooms of make_maze's layout, when present
    pool = rooms if len(rooms) else free
    i, j = (int(v) for v in pool[rng.integers(len(pool))])
    k = int(rng.integers(4))
    actions = np.empty(length, dtype=np.int64)
    cells = np.empty((length, 3), dtype=np.int64)
    junction = np.empty(length, dtype=bool)
    opens = open_map(maze)
    headings = [[np.flatnonzero(row).tolist() for row in line] for line in opens]
    plan: list[int] = []
    for t in range(length):
        plan = plan or _plan(headings[i][j], k, rng)
        actions[t] = plan.pop(0)
        cells[t] = (i, j, k)
        junction[t] = len(headings[i][j]) >= 3
        i, j, k = step(maze, i, j, k, int(actions[t]))
    poses = np.stack([cells[:, 1] + 0.5, cells[:, 0] + 0.5, cells[:, 2] * (math.pi / 2)], axis=-1)
    return Rollout(actions, poses, actions != FORWARD, junction)


# ---------------------------------------------------------------------------- render


def _check_scene(mazes, poses, palette) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mazes [B, R, C] uint8 (a 2-D maze is shared by the batch), poses [B, T, 3]
    float64 inside the border, palette [P, 3] uint8 covering every wall id."""
    poses = np.ascontiguousarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[2] != 3:
        raise ValueError(f"poses must be [B, T, 3] (x, y, theta), got {list(poses.shape)}")
    mazes = np.asarray(mazes)
    if mazes.ndim == 2:
        mazes = np.broadcast_to(mazes, (poses.shape[0], *mazes.shape))
    if mazes.ndim != 3 or mazes.shape[0] != poses.shape[0] or min(mazes.shape[1:]) < 3:
        raise ValueError(f"mazes must be [B, rows, cols] (rows, cols >= 3) with B = "
                         f"{poses.shape[0]} as poses, got {list(mazes.shape)}")
    if mazes.dtype != np.uint8:
        raise ValueError(f"mazes must be uint8 wall ids, got {mazes.dtype}")
    mazes = np.ascontiguousarray(mazes)
    palette = np.ascontiguousarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or int(mazes.max(initial=0)) >= len(palette):
        raise ValueError(f"palette must be [P, 3] with P > every wall id "
                         f"(max {int(mazes.max(initial=0))}), got {list(palette.shape)}")
    if not all(_solid_border(m) for m in mazes):
        raise ValueError("mazes must have walls on the whole border (rays must stop)")
    rows, cols = mazes.shape[1:]
    x, y = poses[..., 0], poses[..., 1]
    inside = (x >= 1) & (x < cols - 1) & (y >= 1) & (y < rows - 1) & np.isfinite(poses[..., 2])
    if not inside.all():
        b, t = np.argwhere(~inside)[0]
        raise ValueError(f"poses[{b}, {t}] = {poses[b, t].tolist()} must be finite with "
                         f"1 <= x < {cols - 1} and 1 <= y < {rows - 1}")
    return mazes, poses, palette


def render(mazes: np.ndarray, poses: np.ndarray, size: int = 32, fov: float = DEFAULT_FOV,
           palette: np.ndarray | None = None, floor: Sequence[int] | None = None,
           ceiling: Sequence[int] | None = None, num_threads: int | None = None,
           impl: str = "auto") -> np.ndarray:
    """First-person raycast frames (equations in :mod:`worldmodels.envs.maze_ref`).

    Args:
        mazes: [B, rows, cols] uint8 (or one [rows, cols] maze for the whole batch),
            border all walls.
        poses: [B, T, 3] (x, y, theta) in cells and radians, inside the border.
        size: H = W >= 8 pixels.
        fov: horizontal field of view in degrees, in (0, 180).
        palette: [P, 3] uint8 wall colours by id (default :data:`PALETTE`).
        floor, ceiling: [3] uint8 flat colours (default :data:`FLOOR`, :data:`CEILING`).
        num_threads: OpenMP threads of the C++ path (None: OpenMP's default); the
            frames are identical for any count.
        impl: "auto" (C++ when built, else the reference), "cpp" or "ref"; both give
            the same frames.

    Returns:
        frames [B, T, 3, size, size] uint8.
    """
    _check_impl(impl)
    size = _check_int("size", size, 8)
    plane = math.tan(math.radians(_check_fov(fov)) / 2.0)
    mazes, poses, palette = _check_scene(mazes, poses, PALETTE if palette is None else palette)
    floor = np.ascontiguousarray(FLOOR if floor is None else floor, dtype=np.uint8).reshape(3)
    ceiling = np.ascontiguousarray(CEILING if ceiling is None else ceiling, dtype=np.uint8).reshape(3)
    threads = 0 if num_threads is None else _check_int("num_threads", num_threads, 1)
    if _use_cpp(impl):
        return _ext.extension().maze_render(mazes, poses, palette, floor, ceiling, size, size,
                                            plane, threads)
    return ref.render_ref(mazes, poses, palette, floor, ceiling, size, size, plane)


# -------------------------------------------------------------------------- generate


def _seed_words(seed) -> list[int]:
    words = [seed] if isinstance(seed, (int, np.integer)) else list(seed) if seed is not None else []
    if not words or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0
                        for w in words):
        raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    return [int(w) for w in words]


def generate_episodes(num_episodes: int, length: int, size: int = 32, maze_cells: int = 11,
                      seed: int | Sequence[int] = 0, num_threads: int | None = None,
                      impl: str = "auto", fov: float = DEFAULT_FOV,
                      maze: np.ndarray | None = None, first_episode: int = 0) -> MazeEpisodes:
    """Generate first-person maze episodes: maze, policy rollout, frames.

    Episode e (``e = first_episode + k`` for the k-th of this call) draws its maze
    (unless ``maze`` is given) and its walk from ``SeedSequence([*seed, e])``, so an
    episode does not depend on how the episodes are split into calls.

    Args:
        num_episodes, length: N and T (>= 1).
        size: H = W >= 8 pixels. maze_cells: grid side (odd, >= 5) of new mazes.
        seed: a non-negative int or a sequence of them.
        num_threads, impl, fov: as in :func:`render`.
        maze: optional [n, n] uint8 maze shared by every episode (e.g. from :func:`make_maze`).
        first_episode: global index of the first episode of this call.

    Returns:
        :class:`MazeEpisodes` of torch tensors.
    """
    _check_impl(impl)
    num_episodes = _check_int("num_episodes", num_episodes, 1)
    length = _check_int("length", length, 1)
    size = _check_int("size", size, 8)
    first_episode = _check_int("first_episode", first_episode, 0)
    _check_fov(fov)
    words = _seed_words(seed)
    if maze is None:
        _check_cells(maze_cells)
    else:
        maze = np.asarray(maze)
        if maze.ndim != 2 or maze.shape[0] != maze.shape[1]:
            raise ValueError(f"maze must be a square [n, n] grid, got {list(maze.shape)}")
        _check_cells(maze.shape[0])
    mazes, rollouts = [], []
    for e in range(first_episode, first_episode + num_episodes):
        rng = np.random.default_rng(np.random.SeedSequence([*words, e]))
        grid = make_maze(maze_cells, rng) if maze is None else maze
        mazes.append(grid)
        rollouts.append(rollout_policy(grid, length, rng))
    grids = np.stack(mazes).astype(np.uint8)
    poses = np.stack([r.poses for r in rollouts])
    video = render(grids, poses, size, fov, num_threads=num_threads, impl=impl)
    return MazeEpisodes(
        video=torch.from_numpy(video),
        actions=torch.from_numpy(np.stack([r.actions for r in rollouts])),
        turn=torch.from_numpy(np.stack([r.turn for r in rollouts])),
        junction=torch.from_numpy(np.stack([r.junction for r in rollouts])),
        poses=torch.from_numpy(poses),
        mazes=torch.from_numpy(grids),
    )
