"""Pure-NumPy reference of the first-person maze raycaster.

This is the specification the C++ extension (``csrc/maze_render.cpp``) is tested
against. Both follow the same float64 operations in the same order (the C++ build
disables FMA contraction, and ``cos``/``sin`` of the heading come from the C
library in both), so the uint8 frames agree exactly. Vectorised over every ray
of every frame; loops over the DDA steps.

World: a maze is a grid ``[rows, cols]`` of cells, ``0`` empty and ``k > 0`` a wall
of colour ``palette[k]``; cell ``(i, j)`` covers ``x in [j, j+1)``, ``y in [i, i+1)``.
A pose is ``(x, y, theta)`` in cell units and radians.

Camera, per frame: view direction ``d = (cos theta, sin theta)``, right vector
``r = (-sin theta, cos theta)``, ``plane = tan(fov / 2)``. Column ``c`` of ``W``
casts the ray ``d + r * plane * u`` with ``u = (2c + 1) / W - 1``.

Per ray (DDA over the grid lines): step into the next cell along x when
``side_x < side_y`` else along y, until a wall cell; the perpendicular distance is
``D = max(side - delta, MIN_DISTANCE)`` of the axis last crossed. The wall covers
the rows ``r`` with ``(H - H/D)/2 <= r + 0.5 < (H + H/D)/2``; its colour is
``floor(palette[id] * s + 0.5)`` with ``s = side_factor / (1 + DISTANCE_FALLOFF * D)``,
``side_factor = SIDE_SHADE`` for a face crossed along y, else 1. Rows above the
wall are ceiling, rows below are floor (flat colours).
"""

from __future__ import annotations

import math

import numpy as np

SIDE_SHADE = 0.7
"""Brightness of faces crossed along y (north/south) relative to x faces."""
DISTANCE_FALLOFF = 0.25
"""Shade ``1 / (1 + DISTANCE_FALLOFF * D)`` at perpendicular distance ``D`` (cells)."""
MIN_DISTANCE = 1e-3
"""Perpendicular distances are clamped to this (cells), bounding the wall height."""
_BIG = 1e30  # |1 / ray component| when that component is exactly 0


def _directions(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [F] of headings [F] from the C library (like the C++ path)."""
    flat = [float(t) for t in theta]
    return np.array([math.cos(t) for t in flat]), np.array([math.sin(t) for t in flat])


def ray_directions(poses: np.ndarray, width: int, plane: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray directions (rdx, rdy), each [F, W], of frames with poses [F, 3]."""
    cos_t, sin_t = _directions(poses[:, 2])
    cam = (2.0 * np.arange(width, dtype=np.float64) + 1.0) / float(width) - 1.0
    off = cam * plane  # [W]
    rdx = cos_t[:, None] - sin_t[:, None] * off[None, :]
    rdy = sin_t[:, None] + cos_t[:, None] * off[None, :]
    return rdx, rdy


def _axis_setup(p: np.ndarray, rd: np.ndarray):
    """Start cell, step, distance between grid lines and to the first line of one axis.

    p [F, 1] positions, rd [F, W] ray components -> (cell, step, delta, side), [F, W].
    """
    cell = np.floor(p).astype(np.int64) + np.zeros(rd.shape, dtype=np.int64)
    with np.errstate(divide="ignore"):
        delta = np.where(rd == 0.0, _BIG, np.abs(1.0 / np.where(rd == 0.0, 1.0, rd)))
    negative = rd < 0.0
    step = np.where(negative, -1, 1).astype(np.int64)
    cf = cell.astype(np.float64)
    side = np.where(negative, (p - cf) * delta, (cf + 1.0 - p) * delta)
    return cell, step, delta, side


def cast_rays(mazes: np.ndarray, frame_maze: np.ndarray, poses: np.ndarray,
              rdx: np.ndarray, rdy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk every ray [F, W] through its frame's maze to the first wall cell.

    Args:
        mazes: [B, rows, cols] uint8 with a solid border.
        frame_maze: [F] int64, the maze index of each frame.
        poses: [F, 3] (x, y, theta), strictly inside the border.
        rdx, rdy: [F, W] ray directions.

    Returns:
        (ids [F, W] int64 wall ids, sides [F, W] int64 (0: crossed an x line, 1: a y
        line), distances [F, W] float64 perpendicular distances in cells).
    """
    mx, sx, ddx, side_x = _axis_setup(poses[:, 0:1], rdx)
    my, sy, ddy, side_y = _axis_setup(poses[:, 1:2], rdy)
    which = np.broadcast_to(frame_maze[:, None], rdx.shape)
    ids = np.zeros(rdx.shape, dtype=np.int64)
    sides = np.zeros(rdx.shape, dtype=np.int64)
    active = np.ones(rdx.shape, dtype=bool)
    for _ in range(mazes.shape[1] + mazes.shape[2]):
        if not active.any():
            break
        along_x = side_x < side_y
        move_x = active & along_x
        move_y = active & ~along_x
        side_x = np.where(move_x, side_x + ddx, side_x)
        side_y = np.where(move_y, side_y + ddy, side_y)
        mx = np.where(move_x, mx + sx, mx)
        my = np.where(move_y, my + sy, my)
        sides = np.where(move_x, 0, np.where(move_y, 1, sides))
        cell = mazes[which, my, mx].astype(np.int64)
        hit = active & (cell != 0)
        ids = np.where(hit, cell, ids)
        active &= ~hit
    distance = np.where(sides == 0, side_x - ddx, side_y - ddy)
    return ids, sides, np.maximum(distance, MIN_DISTANCE)


def shade_columns(ids: np.ndarray, sides: np.ndarray, distances: np.ndarray,
                  palette: np.ndarray, height: int):
    """Wall spans and colours of every column.

    Returns:
        (start [F, W] int64, end [F, W] int64: the wall rows are [start, end);
        colors [F, W, 3] uint8).
    """
    h = float(height)
    wall = h / distances
    start = np.clip(np.ceil(0.5 * (h - wall) - 0.5), 0.0, h).astype(np.int64)
    end = np.clip(np.ceil(0.5 * (h + wall) - 0.5), 0.0, h).astype(np.int64)
    shade = np.where(sides == 1, SIDE_SHADE, 1.0) / (1.0 + DISTANCE_FALLOFF * distances)
    colors = np.floor(palette.astype(np.float64)[ids] * shade[..., None] + 0.5)
    return start, end, colors.astype(np.uint8)


def render_ref(mazes: np.ndarray, poses: np.ndarray, palette: np.ndarray, floor: np.ndarray,
               ceiling: np.ndarray, height: int, width: int, plane: float) -> np.ndarray:
    """Raycast frames (module docstring); inputs are assumed checked by the caller.

    Args:
        mazes: [B, rows, cols] uint8, 0 empty, k > 0 wall id, border all walls.
        poses: [B, T, 3] float64 (x, y, theta), 1 <= x < cols - 1, 1 <= y < rows - 1.
        palette: [P, 3] uint8 wall colours (every id < P).
        floor, ceiling: [3] uint8 flat colours.
        height, width: H and W in pixels.
        plane: tan(fov / 2).

    Returns:
        frames [B, T, 3, H, W] uint8.
    """
    batch, seq_len = poses.shape[:2]
    flat = poses.reshape(-1, 3)
    frame_maze = np.repeat(np.arange(batch, dtype=np.int64), seq_len)
    rdx, rdy = ray_directions(flat, width, plane)
    ids, sides, distances = cast_rays(mazes, frame_maze, flat, rdx, rdy)
    start, end, colors = shade_columns(ids, sides, distances, palette, height)
    rows = np.arange(height, dtype=np.int64)[None, :, None]  # [1, H, 1]
    above = rows < start[:, None, :]  # [F, H, W]
    inside = rows < end[:, None, :]
    frames = np.empty((flat.shape[0], 3, height, width), dtype=np.uint8)
    for c in range(3):
        wall = np.broadcast_to(colors[:, None, :, c], above.shape)
        frames[:, c] = np.where(above, ceiling[c], np.where(inside, wall, floor[c]))
    return frames.reshape(batch, seq_len, 3, height, width)
