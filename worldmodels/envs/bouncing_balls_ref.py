"""Pure-NumPy reference of the bouncing-balls simulator and renderer.

This is the specification the C++ extension (``csrc/bouncing_balls_*.cpp``) is
tested against. Both follow the same float64 operations in the same order, so
trajectories agree bit for bit. Vectorised over the batch; loops over time,
sub-steps and ball pairs.

World units are pixels: the box is ``[0, size] x [0, size]`` and pixel
``(row i, col j)`` has its centre at ``(x, y) = (j + 0.5, i + 0.5)``.

Each sub-step of length ``dt = 1 / substeps``:

1. drift: ``x <- x + v dt``;
2. walls, per ball and axis: if ``x - r < 0`` and ``v < 0`` then ``v <- -v``,
   ``x <- 2 r - x``; then if ``x + r > size`` and ``v > 0`` then ``v <- -v``,
   ``x <- 2 (size - r) - x``;
3. ball pairs ``i < j`` in order, when overlapping (``|x_j - x_i| < r_i + r_j``):
   with ``n = (x_j - x_i) / |x_j - x_i|`` and ``v_n = (v_j - v_i) . n``, if
   approaching (``v_n < 0``) the elastic impulse ``J = 2 v_n / (1/m_i + 1/m_j)``
   gives ``v_i <- v_i + (J/m_i) n``, ``v_j <- v_j - (J/m_j) n``; then the overlap
   ``o = r_i + r_j - |x_j - x_i|`` is pushed apart by inverse mass,
   ``x_i <- x_i - o w_i n``, ``x_j <- x_j + o w_j n`` with
   ``w_i = (1/m_i) / (1/m_i + 1/m_j)`` (keeps the centre of mass), and both
   centres are clamped into ``[r, size - r]``.
"""

from __future__ import annotations

import numpy as np

PROFILE_REACH = 1.6
"""Beyond ``d = 1.6 r`` the disc profile ``exp(-(d^2/r^2)^4)`` is below 1e-18."""


def _reflect_axis(p, v, r, size):
    """Mirror at the walls 0 and ``size`` of one axis. Arrays [B]; returns (p, v, hit)."""
    low = (p - r < 0.0) & (v < 0.0)
    v = np.where(low, -v, v)
    p = np.where(low, 2.0 * r - p, p)
    high = (p + r > size) & (v > 0.0)
    v = np.where(high, -v, v)
    p = np.where(high, 2.0 * (size - r) - p, p)
    return p, v, low | high


def _walls(px, py, vx, vy, radii, size, hits):
    """Wall reflections of every ball, in place on [B, N] arrays; ORs them into hits [B, N]."""
    for k in range(px.shape[1]):
        r = radii[:, k]
        px[:, k], vx[:, k], hit_x = _reflect_axis(px[:, k], vx[:, k], r, size)
        py[:, k], vy[:, k], hit_y = _reflect_axis(py[:, k], vy[:, k], r, size)
        hits[:, k] |= hit_x | hit_y


def _collide_pair(px, py, vx, vy, radii, masses, i, j, size, ball):
    """Resolve pair (i, j) in place on [B, N] arrays (module docstring, step 3)."""
    dx = px[:, j] - px[:, i]
    dy = py[:, j] - py[:, i]
    d2 = dx * dx + dy * dy
    rs = radii[:, i] + radii[:, j]
    touch = (d2 < rs * rs) & (d2 > 0.0)
    if not touch.any():
        return
    d = np.sqrt(d2)
    nx = dx / d
    ny = dy / d
    inv_i = 1.0 / masses[:, i]
    inv_j = 1.0 / masses[:, j]
    inv_sum = inv_i + inv_j
    vn = (vx[:, j] - vx[:, i]) * nx + (vy[:, j] - vy[:, i]) * ny
    hit = touch & (vn < 0.0)
    impulse = 2.0 * vn / inv_sum
    ci = impulse * inv_i
    cj = impulse * inv_j
    vx[:, i] = np.where(hit, vx[:, i] + ci * nx, vx[:, i])
    vy[:, i] = np.where(hit, vy[:, i] + ci * ny, vy[:, i])
    vx[:, j] = np.where(hit, vx[:, j] - cj * nx, vx[:, j])
    vy[:, j] = np.where(hit, vy[:, j] - cj * ny, vy[:, j])
    overlap = rs - d
    si = overlap * (inv_i / inv_sum)
    sj = overlap * (inv_j / inv_sum)
    ri, rj = radii[:, i], radii[:, j]
    px[:, i] = np.where(touch, np.minimum(np.maximum(px[:, i] - si * nx, ri), size - ri), px[:, i])
    py[:, i] = np.where(touch, np.minimum(np.maximum(py[:, i] - si * ny, ri), size - ri), py[:, i])
    px[:, j] = np.where(touch, np.minimum(np.maximum(px[:, j] + sj * nx, rj), size - rj), px[:, j])
    py[:, j] = np.where(touch, np.minimum(np.maximum(py[:, j] + sj * ny, rj), size - rj), py[:, j])
    ball |= hit


def simulate_ref(
    positions0: np.ndarray,
    velocities0: np.ndarray,
    radii: np.ndarray,
    masses: np.ndarray,
    seq_len: int,
    size: float,
    substeps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate ``B`` sequences of ``N`` balls for ``T = seq_len`` frames in float64.

    Args:
        positions0: [B, N, 2] float64 initial centres (x, y) in pixels.
        velocities0: [B, N, 2] float64 initial velocities in pixels per frame.
        radii: [B, N] float64 radii in pixels.
        masses: [B, N] float64 positive masses.
        seq_len: T >= 1; frame 0 is the initial state.
        size: side of the box in pixels.
        substeps: sub-steps per frame (>= 1).

    Returns:
        ``(positions [B, T, N, 2] float64, velocities [B, T, N, 2] float64,
        ball_collisions [B, T] bool, wall_collisions [B, T] bool, ball_wall_hits
        [B, T, N] bool)``; the flags at ``t >= 1`` say whether an event happened
        during the step from ``t-1`` to ``t`` (``ball_wall_hits[:, t, n]``: ball ``n``
        reflected at a wall; ``wall_collisions`` is its any over ``n``).
    """
    p0 = np.asarray(positions0, dtype=np.float64)
    v0 = np.asarray(velocities0, dtype=np.float64)
    radii = np.ascontiguousarray(radii, dtype=np.float64)
    masses = np.ascontiguousarray(masses, dtype=np.float64)
    batch, n = p0.shape[:2]
    px, py = p0[..., 0].copy(), p0[..., 1].copy()
    vx, vy = v0[..., 0].copy(), v0[..., 1].copy()
    size = float(size)
    dt = 1.0 / float(substeps)
    positions = np.empty((batch, seq_len, n, 2))
    velocities = np.empty((batch, seq_len, n, 2))
    ball_flags = np.zeros((batch, seq_len), dtype=bool)
    wall_hits = np.zeros((batch, seq_len, n), dtype=bool)
    positions[:, 0], velocities[:, 0] = p0, v0
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(1, seq_len):
            for _ in range(substeps):
                px = px + vx * dt
                py = py + vy * dt
                _walls(px, py, vx, vy, radii, size, wall_hits[:, t])
                for i in range(n):
                    for j in range(i + 1, n):
                        _collide_pair(px, py, vx, vy, radii, masses, i, j, size, ball_flags[:, t])
            positions[:, t, :, 0], positions[:, t, :, 1] = px, py
            velocities[:, t, :, 0], velocities[:, t, :, 1] = vx, vy
    return positions, velocities, ball_flags, wall_hits.any(axis=2), wall_hits


def profile(q: np.ndarray) -> np.ndarray:
    """Disc profile ``exp(-q^4)`` of ``q = d^2 / r^2`` (1 at the centre, ~0 past 1.3 r)."""
    q2 = q * q
    return np.exp(-(q2 * q2))


def render_ref(
    positions: np.ndarray,
    radii: np.ndarray,
    colors: np.ndarray,
    size: int,
    dtype: str = "uint8",
) -> np.ndarray:
    """Render frames in float64, then clip and convert.

    ``v[c, i, j] = clip(sum_k colors[k, c] * exp(-(d_k^2 / r_k^2)^4), 0, 1)`` with
    ``d_k`` the distance from pixel centre ``(j + 0.5, i + 0.5)`` to ball ``k``.

    Args:
        positions: [B, T, N, 2] ball centres (x, y) in pixels.
        radii: [B, N] radii in pixels.
        colors: [B, N, C] per-ball colour, or [B, T, N, C] per frame, in [0, 1],
            C = 1 or 3.
        size: H = W in pixels.
        dtype: "uint8" (``round(255 v)``) or "float32" (``v``).

    Returns:
        frames [B, T, C, size, size] of ``dtype``.
    """
    positions = np.asarray(positions, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    colors = np.asarray(colors, dtype=np.float64)
    batch, seq_len = positions.shape[:2]
    channels = colors.shape[-1]
    out = np.empty((batch, seq_len, channels, size, size), dtype=np.dtype(dtype))
    centres = np.arange(size, dtype=np.float64) + 0.5
    inv_r2 = (1.0 / (radii * radii))[:, :, None, None]
    for t in range(seq_len):
        dx = centres[None, None, None, :] - positions[:, t, :, 0, None, None]  # [B, N, 1, W]
        dy = centres[None, None, :, None] - positions[:, t, :, 1, None, None]  # [B, N, H, 1]
        p = profile((dx * dx + dy * dy) * inv_r2)  # [B, N, H, W]
        frame_colors = colors[:, t] if colors.ndim == 4 else colors  # [B, N, C]
        value = np.clip(np.einsum("bnhw,bnc->bchw", p, frame_colors), 0.0, 1.0)
        out[:, t] = np.rint(value * 255.0) if dtype == "uint8" else value
    return out
