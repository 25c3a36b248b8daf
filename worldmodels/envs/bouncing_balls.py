"""Batched bouncing-balls videos: the data of VTA's Bouncing Balls experiment.

``generate()`` samples initial states with NumPy, simulates elastic balls in a
square box and renders smooth discs, returning torch tensors (zero-copy views of
NumPy arrays). The hot path runs in the C++ extension (``worldmodels._C``,
OpenMP over sequences, GIL released); ``bouncing_balls_ref`` is the pure-NumPy
specification it is tested against.

Units: pixels and frames. The box is ``[0, size] x [0, size]``; pixel
``(row i, col j)`` has its centre at ``(x, y) = (j + 0.5, i + 0.5)``; positions
are ``(x, y)``; velocities are pixels per frame. Physics and rendering equations
are in :mod:`worldmodels.envs.bouncing_balls_ref`.

Example::

    data = generate(batch=64, seq_len=100)        # 3 gray balls, 32x32, uint8
    data.frames.shape                             # torch.Size([64, 100, 1, 32, 32])
    data.ball_collisions.float().mean()           # event rate, the VTA ground truth
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from worldmodels import _ext
from worldmodels.envs import bouncing_balls_ref as ref

Range = Union[float, tuple[float, float]]
IMPLS = ("auto", "cpp", "ref")
DTYPES = ("uint8", "float32")
MAX_SUBSTEPS = 10_000
PALETTE = np.array(
    [
        [1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.4, 1.0], [1.0, 1.0, 0.2],
        [1.0, 0.2, 1.0], [0.2, 1.0, 1.0], [1.0, 0.6, 0.2], [0.7, 0.7, 0.7],
    ],
    dtype=np.float32,
)
"""Colours of balls 0..7 (ball k uses ``PALETTE[k % 8]``) when ``channels == 3``."""


@dataclass(frozen=True)
class InitialState:
    """NumPy initial state of a batch: positions/velocities [B, N, 2] float64
    (pixels, pixels per frame), radii/masses [B, N] float64."""

    positions: np.ndarray
    velocities: np.ndarray
    radii: np.ndarray
    masses: np.ndarray


@dataclass(frozen=True)
class Trajectory:
    """NumPy simulation output: positions/velocities [B, T, N, 2] float64,
    ball_collisions/wall_collisions [B, T] bool (events during step t-1 -> t)."""

    positions: np.ndarray
    velocities: np.ndarray
    ball_collisions: np.ndarray
    wall_collisions: np.ndarray


@dataclass(frozen=True)
class BouncingBalls:
    """A generated batch, as torch tensors sharing memory with NumPy arrays.

    Attributes:
        frames: [B, T, C, H, W] uint8 (0..255) or float32 (0..1), H = W = size.
        ball_collisions: [B, T] bool, a ball-ball impulse during step t-1 -> t.
        wall_collisions: [B, T] bool, a wall reflection during step t-1 -> t.
        positions: [B, T, N, 2] float64 centres (x, y) in pixels.
        velocities: [B, T, N, 2] float64 in pixels per frame.
        radii: [B, N] float64 in pixels.
        masses: [B, N] float64.
        substeps: physics sub-steps per frame used for the whole batch.
    """

    frames: torch.Tensor
    ball_collisions: torch.Tensor
    wall_collisions: torch.Tensor
    positions: torch.Tensor
    velocities: torch.Tensor
    radii: torch.Tensor
    masses: torch.Tensor
    substeps: int


# ----------------------------------------------------------------------------- checks


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_range(name: str, value: Range, *, allow_zero: bool = False) -> tuple[float, float]:
    """A float or (min, max) pair as (lo, hi) with 0 < lo <= hi (0 <= lo if allow_zero)."""
    try:
        lo, hi = (value, value) if np.isscalar(value) else tuple(value)
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float or a (min, max) pair, got {value!r}") from None
    bad_lo = lo < 0.0 if allow_zero else lo <= 0.0
    if not (math.isfinite(lo) and math.isfinite(hi)) or bad_lo or hi <= 0.0 or lo > hi:
        need = "0 <= min <= max, max > 0" if allow_zero else "0 < min <= max"
        raise ValueError(f"{name} must be a positive float or a (min, max) range with {need}, "
                         f"got {value!r}")
    return lo, hi


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _check_threads(num_threads) -> int:
    """The extension's thread argument: 0 means OpenMP's default."""
    return 0 if num_threads is None else _check_int("num_threads", num_threads, 1)


def _use_cpp(impl: str, what: str = "bouncing_balls") -> bool:
    """Whether to run the C++ path for ``impl`` ('auto' falls back with one notice)."""
    if _check_impl(impl) == "ref":
        return False
    if impl == "cpp":
        _ext.require_extension(what)
        return True
    if _ext.extension() is None:
        _ext.notify_fallback(what)
        return False
    return True


# ----------------------------------------------------------------------- initial state


def _place_balls(rng: np.random.Generator, radii: np.ndarray, size: int, max_tries: int):
    """Non-overlapping centres [B, N, 2] inside the walls by per-ball rejection sampling.

    Ball k is drawn for every sequence at once; the sequences where it overlaps an
    earlier ball are redrawn, up to ``max_tries`` rounds.
    """
    batch, n = radii.shape
    pos = np.empty((batch, n, 2))
    for k in range(n):
        todo = np.arange(batch)
        for _ in range(max_tries):
            r = radii[todo, k, None]
            pos[todo, k] = r + rng.random((todo.size, 2)) * (size - 2.0 * r)
            gap = pos[todo, :k] - pos[todo, k, None]
            touching = (gap**2).sum(-1) < (radii[todo, :k] + r) ** 2  # [b, k]
            todo = todo[touching.any(axis=1)]
            if todo.size == 0:
                break
        if todo.size:
            return None
    return pos


def sample_initial_state(
    batch: int,
    num_balls: int = 3,
    size: int = 32,
    radius: Range = 3.0,
    speed: Range = (1.0, 2.0),
    mass: Range | None = None,
    seed: int | np.random.SeedSequence = 0,
    max_tries: int = 1000,
) -> InitialState:
    """Sample B initial states of N non-overlapping balls inside the box.

    Per ball: radius ~ U[radius], centre uniform with every ball inside the walls
    and no two overlapping, direction ~ U[0, 2 pi), speed ~ U[speed], mass ~ U[mass]
    or ``r^2`` when ``mass is None``. Ranges are a float or a (min, max) pair.

    Raises:
        ValueError: on bad arguments, or when the balls cannot be placed.
    """
    batch = _check_int("batch", batch, 1)
    num_balls = _check_int("num_balls", num_balls, 1)
    size = _check_int("size", size, 8)
    r_lo, r_hi = _check_range("radius", radius)
    s_lo, s_hi = _check_range("speed", speed, allow_zero=True)
    m_range = None if mass is None else _check_range("mass", mass)
    if 2.0 * r_hi >= size:
        raise ValueError(f"balls cannot fit: radius={radius!r} needs 2 * radius < size={size}")
    rng = np.random.default_rng(seed)
    radii = rng.uniform(r_lo, r_hi, (batch, num_balls)) if r_hi > r_lo else np.full((batch, num_balls), r_lo)
    masses = radii**2 if m_range is None else rng.uniform(*m_range, (batch, num_balls))
    positions = _place_balls(rng, radii, size, max_tries)
    if positions is None:
        raise ValueError(
            f"cannot place num_balls={num_balls} of radius={radius!r} without overlap in a "
            f"box of size={size} ({max_tries} tries); use fewer or smaller balls or a larger size"
        )
    angle = rng.uniform(0.0, 2.0 * np.pi, (batch, num_balls))
    speeds = rng.uniform(s_lo, s_hi, (batch, num_balls))
    velocities = np.stack([speeds * np.cos(angle), speeds * np.sin(angle)], axis=-1)
    return InitialState(positions, velocities, radii, np.ascontiguousarray(masses, dtype=np.float64))


def auto_substeps(velocities: np.ndarray, radii: np.ndarray, masses: np.ndarray) -> int:
    """Sub-steps per frame so that no ball moves more than half the smallest radius.

    Per sequence the kinetic energy ``E = sum 1/2 m |v|^2`` bounds every ball's
    speed at any time by ``sqrt(2 E / m_min)``; the count is
    ``ceil(max_b v_max / (r_min / 2))`` over the batch, at least 1.
    """
    energy = 0.5 * (masses * (velocities**2).sum(-1)).sum(-1)  # [B]
    v_max = np.sqrt(2.0 * energy / masses.min(-1))
    ratio = float((v_max / (0.5 * radii.min(-1))).max())
    if not math.isfinite(ratio) or ratio > MAX_SUBSTEPS:
        raise ValueError(f"speed too high for the radius: substeps would be {ratio:.3g} "
                         f"> {MAX_SUBSTEPS}; lower speed or raise radius")
    return max(1, math.ceil(ratio))


# -------------------------------------------------------------------------- simulate


def _as_f64(name: str, value, shape: tuple) -> np.ndarray:
    """``value`` as a C-contiguous float64 array of ``shape`` (-1: any), finite."""
    array = np.ascontiguousarray(value, dtype=np.float64)
    if array.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, array.shape)):
        raise ValueError(f"{name} must have shape {list(shape)} (-1: any), got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def simulate(
    positions: np.ndarray,
    velocities: np.ndarray,
    radii: np.ndarray,
    masses: np.ndarray,
    seq_len: int,
    size: int = 32,
    substeps: int | str = "auto",
    num_threads: int | None = None,
    impl: str = "auto",
) -> Trajectory:
    """Simulate elastic balls in the box ``[0, size]^2`` for ``seq_len`` frames.

    Args:
        positions: [B, N, 2] initial centres (x, y) in pixels, inside the walls.
        velocities: [B, N, 2] initial velocities in pixels per frame.
        radii: [B, N] radii in pixels; masses: [B, N] positive masses.
        seq_len: T >= 1 frames; frame 0 is the initial state.
        size: side of the box in pixels.
        substeps: sub-steps per frame (``dt = 1 / substeps``), or "auto"
            (:func:`auto_substeps`, one count for the whole batch).
        num_threads: OpenMP threads of the C++ path (None: OpenMP's default);
            the result is bit-identical for any count.
        impl: "auto" (C++ when built, else the reference), "cpp" or "ref".

    Returns:
        :class:`Trajectory` of NumPy arrays; energy ``sum 1/2 m |v|^2`` is conserved
        to rounding and ball-ball collisions conserve momentum.
    """
    positions = _as_f64("positions", positions, (-1, -1, 2))
    batch, n = positions.shape[:2]
    velocities = _as_f64("velocities", velocities, (batch, n, 2))
    radii = _as_f64("radii", radii, (batch, n))
    masses = _as_f64("masses", masses, (batch, n))
    seq_len = _check_int("seq_len", seq_len, 1)
    size = _check_int("size", size, 8)
    if (radii <= 0).any() or (masses <= 0).any():
        raise ValueError("radii and masses must be positive")
    if substeps == "auto":
        substeps = auto_substeps(velocities, radii, masses)
    substeps = _check_int("substeps", substeps, 1)
    threads = _check_threads(num_threads)
    if _use_cpp(impl):
        out = _ext.extension().bouncing_balls_simulate(
            positions, velocities, radii, masses, seq_len, float(size), substeps, threads
        )
        pos, vel, ball, wall = out
        return Trajectory(pos, vel, ball.view(np.bool_), wall.view(np.bool_))
    return Trajectory(*ref.simulate_ref(positions, velocities, radii, masses, seq_len, size, substeps))


# ---------------------------------------------------------------------------- render


def ball_colors(batch: int, num_balls: int, channels: int) -> np.ndarray:
    """Per-ball colours [B, N, C] float32: ones for gray, ``PALETTE[k % 8]`` for RGB."""
    if channels == 1:
        return np.ones((batch, num_balls, 1), dtype=np.float32)
    if channels == 3:
        rows = PALETTE[np.arange(num_balls) % len(PALETTE)]
        return np.ascontiguousarray(np.broadcast_to(rows, (batch, num_balls, 3)))
    raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def render(
    positions: np.ndarray,
    radii: np.ndarray,
    size: int = 32,
    channels: int = 1,
    colors: np.ndarray | None = None,
    dtype: str = "uint8",
    num_threads: int | None = None,
    impl: str = "auto",
) -> np.ndarray:
    """Render smooth discs: ``v_c = clip(sum_k colors[k, c] exp(-(d_k^2/r_k^2)^4), 0, 1)``.

    Args:
        positions: [B, T, N, 2] centres (x, y) in pixels.
        radii: [B, N] radii in pixels.
        size: H = W >= 8 pixels.
        channels: 1 (gray) or 3 (RGB, :data:`PALETTE` unless ``colors`` is given).
        colors: optional [B, N, C] colours in [0, 1].
        dtype: "uint8" (``round(255 v)``) or "float32" (``v`` in [0, 1]).
        num_threads, impl: as in :func:`simulate`. The C++ path renders in float32
            with a lookup table: within 1/255 of the float64 reference.

    Returns:
        frames [B, T, C, size, size] of ``dtype``.
    """
    positions = _as_f64("positions", positions, (-1, -1, -1, 2))
    batch, _, n = positions.shape[:3]
    radii = _as_f64("radii", radii, (batch, n))
    size = _check_int("size", size, 8)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if colors is None:
        colors = ball_colors(batch, n, channels)
    colors = np.ascontiguousarray(colors, dtype=np.float32)
    if colors.shape != (batch, n, channels) or colors.min(initial=0) < 0 or colors.max(initial=0) > 1:
        raise ValueError(f"colors must be [B, N, C] = {[batch, n, channels]} in [0, 1], "
                         f"got shape {list(colors.shape)}")
    threads = _check_threads(num_threads)
    if _use_cpp(impl):
        return _ext.extension().bouncing_balls_render(
            positions, radii, colors, size, dtype == "float32", threads
        )
    return ref.render_ref(positions, radii, colors, size, dtype)


# -------------------------------------------------------------------------- generate


def generate(
    batch: int,
    seq_len: int,
    num_balls: int = 3,
    size: int = 32,
    radius: Range = 3.0,
    speed: Range = (1.0, 2.0),
    mass: Range | None = None,
    channels: int = 1,
    dtype: str = "uint8",
    substeps: int | str = "auto",
    seed: int | np.random.SeedSequence = 0,
    num_threads: int | None = None,
    impl: str = "auto",
) -> BouncingBalls:
    """Generate a batch of bouncing-balls videos.

    Samples the initial state (:func:`sample_initial_state`, NumPy, from ``seed``),
    simulates (:func:`simulate`) and renders (:func:`render`). The defaults (3 balls
    of radius 3 at 1-2 px/frame in 32x32) give a wall or ball event every few frames.

    Args:
        batch, seq_len: B and T (>= 1).
        num_balls: N >= 1. size: H = W >= 8 pixels.
        radius, speed, mass: a float or a (min, max) range per ball, in pixels,
            pixels per frame, and arbitrary units (None: mass = r^2).
        channels: 1 (gray) or 3 (colour). dtype: "uint8" or "float32".
        substeps, num_threads, impl: as in :func:`simulate`.

    Returns:
        :class:`BouncingBalls` of torch tensors (zero-copy views of NumPy arrays).
    """
    _check_impl(impl)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    seq_len = _check_int("seq_len", seq_len, 1)
    state = sample_initial_state(batch, num_balls, size, radius, speed, mass, seed)
    if substeps == "auto":
        substeps = auto_substeps(state.velocities, state.radii, state.masses)
    traj = simulate(state.positions, state.velocities, state.radii, state.masses, seq_len,
                    size, substeps, num_threads, impl)
    frames = render(traj.positions, state.radii, size, channels, None, dtype, num_threads, impl)
    return BouncingBalls(
        frames=torch.from_numpy(frames),
        ball_collisions=torch.from_numpy(traj.ball_collisions),
        wall_collisions=torch.from_numpy(traj.wall_collisions),
        positions=torch.from_numpy(traj.positions),
        velocities=torch.from_numpy(traj.velocities),
        radii=torch.from_numpy(state.radii),
        masses=torch.from_numpy(state.masses),
        substeps=int(substeps),
    )
