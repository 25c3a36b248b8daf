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

    # VTA's variant: RGB balls that change colour at every wall hit.
    data = generate(64, 100, channels=3, recolor_on_wall_hit=True)
    data.colors.shape                             # torch.Size([64, 100, 3, 3]), per frame
    recolor_events(data.colors)                   # [64, 100], equals data.wall_collisions
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
        [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0],
        [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.5, 0.0], [1.0, 1.0, 1.0],
    ],
    dtype=np.float32,
)
"""Colours of balls 0..7 (ball k uses ``PALETTE[k % 8]``) when ``channels == 3``;
with ``recolor_on_wall_hit`` every colour is drawn from these rows. Saturated (every
channel 0 or 1, orange aside), so a colour change moves whole channels of the ball's
pixels and is plain under any pixel likelihood."""


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
    ball_collisions/wall_collisions [B, T] bool (events during step t-1 -> t) and
    ball_wall_hits [B, T, N] bool (ball n reflected at a wall during step t-1 -> t;
    wall_collisions is its any over n)."""

    positions: np.ndarray
    velocities: np.ndarray
    ball_collisions: np.ndarray
    wall_collisions: np.ndarray
    ball_wall_hits: np.ndarray


@dataclass(frozen=True)
class BouncingBalls:
    """A generated batch, as torch tensors sharing memory with NumPy arrays.

    Attributes:
        frames: [B, T, C, H, W] uint8 (0..255) or float32 (0..1), H = W = size.
        ball_collisions: [B, T] bool, a ball-ball impulse during step t-1 -> t.
        wall_collisions: [B, T] bool, a wall reflection during step t-1 -> t.
        ball_wall_hits: [B, T, N] bool, ball n reflected at a wall during step
            t-1 -> t (``wall_collisions`` is its any over n).
        positions: [B, T, N, 2] float64 centres (x, y) in pixels.
        velocities: [B, T, N, 2] float64 in pixels per frame.
        radii: [B, N] float64 in pixels.
        masses: [B, N] float64.
        colors: [B, T, N, C] float32 colour of each ball in each frame, always
            present: with ``recolor_on_wall_hit`` the per-frame colours, else a
            zero-copy broadcast (stride 0 over T) of the constant [B, N, C] colours.
        substeps: physics sub-steps per frame used for the whole batch.
    """

    frames: torch.Tensor
    ball_collisions: torch.Tensor
    wall_collisions: torch.Tensor
    ball_wall_hits: torch.Tensor
    positions: torch.Tensor
    velocities: torch.Tensor
    radii: torch.Tensor
    masses: torch.Tensor
    colors: torch.Tensor
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
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
    max_tries: int = 1000,
) -> InitialState:
    """Sample B initial states of N non-overlapping balls inside the box.

    Per ball: radius ~ U[radius], centre uniform with every ball inside the walls
    and no two overlapping, direction ~ U[0, 2 pi), speed ~ U[speed], mass ~ U[mass]
    or ``r^2`` when ``mass is None``. Ranges are a float or a (min, max) pair.
    ``seed`` may be a ``np.random.Generator``, which is then advanced in place.

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
        pos, vel, ball, wall, hits = out
        return Trajectory(pos, vel, ball.view(np.bool_), wall.view(np.bool_), hits.view(np.bool_))
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


def _check_colors(colors, batch: int, seq_len: int, n: int, channels: int) -> np.ndarray:
    """``colors`` as C-contiguous float32 [B, N, C] or [B, T, N, C] with values in [0, 1]."""
    colors = np.ascontiguousarray(colors, dtype=np.float32)
    shapes = ((batch, n, channels), (batch, seq_len, n, channels))
    if colors.shape not in shapes or not ((colors >= 0) & (colors <= 1)).all():
        raise ValueError(f"colors must be [B, N, C] = {list(shapes[0])} or [B, T, N, C] = "
                         f"{list(shapes[1])} in [0, 1], got shape {list(colors.shape)}")
    return colors


def recolor_indices(ball_wall_hits: np.ndarray, rng: np.random.Generator,
                    num_colors: int = len(PALETTE)) -> np.ndarray:
    """Palette indices [B, T, N] int64 of balls that change colour at each wall hit.

    Ball n starts with ``c[:, 0, n] ~ U{0..P-1}`` and at every frame t where it hit
    a wall moves to a different colour, uniform over the other P - 1:
    ``c[:, t] = (c[:, t-1] + hit[:, t] * s[:, t]) mod P`` with ``s ~ U{1..P-1}``.
    The draws ([B, N] starts, then [B, T-1, N] shifts) do not depend on the hits.

    Args:
        ball_wall_hits: [B, T, N] bool wall hits (:attr:`Trajectory.ball_wall_hits`).
        rng: the generator the draws come from (advanced in place).
        num_colors: P >= 2.
    """
    hits = np.asarray(ball_wall_hits, dtype=bool)
    if hits.ndim != 3:
        raise ValueError(f"ball_wall_hits must be [B, T, N], got shape {list(hits.shape)}")
    num_colors = _check_int("num_colors", num_colors, 2)
    batch, seq_len, n = hits.shape
    steps = np.empty((batch, seq_len, n), dtype=np.int64)
    steps[:, 0] = rng.integers(0, num_colors, (batch, n))
    steps[:, 1:] = rng.integers(1, num_colors, (batch, seq_len - 1, n)) * hits[:, 1:]
    return np.cumsum(steps, axis=1) % num_colors


def recolor_events(colors: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: some ball's colour differs from the previous frame (False at t = 0).

    Args:
        colors: [B, T, N, C] per-frame colours (:attr:`BouncingBalls.colors`).
    """
    if colors.ndim != 4:
        raise ValueError(f"colors must be [B, T, N, C], got shape {list(colors.shape)}")
    events = torch.zeros(colors.shape[:2], dtype=torch.bool, device=colors.device)
    events[:, 1:] = (colors[:, 1:] != colors[:, :-1]).flatten(2).any(-1)
    return events


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
        colors: optional colours in [0, 1], constant [B, N, C] or per frame
            [B, T, N, C].
        dtype: "uint8" (``round(255 v)``) or "float32" (``v`` in [0, 1]).
        num_threads, impl: as in :func:`simulate`. The C++ path renders in float32
            with a lookup table: within 1/255 of the float64 reference.

    Returns:
        frames [B, T, C, size, size] of ``dtype``.
    """
    positions = _as_f64("positions", positions, (-1, -1, -1, 2))
    batch, seq_len, n = positions.shape[:3]
    radii = _as_f64("radii", radii, (batch, n))
    size = _check_int("size", size, 8)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    colors = _check_colors(ball_colors(batch, n, channels) if colors is None else colors,
                           batch, seq_len, n, channels)
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
    recolor_on_wall_hit: bool = False,
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
        recolor_on_wall_hit: VTA's variant (needs ``channels=3``): each ball starts
            with a random :data:`PALETTE` colour and switches to a different random
            one at every frame where it hit a wall (:func:`recolor_indices`, drawn
            from the same NumPy generator as the initial state, after it, so the
            trajectories equal those without the option and both impls agree).

    Returns:
        :class:`BouncingBalls` of torch tensors (zero-copy views of NumPy arrays).
    """
    _check_impl(impl)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if not isinstance(recolor_on_wall_hit, (bool, np.bool_)):
        raise ValueError(f"recolor_on_wall_hit must be a bool, got {recolor_on_wall_hit!r}")
    if recolor_on_wall_hit and channels != 3:
        raise ValueError(f"recolor_on_wall_hit=True needs channels=3, got channels={channels}")
    seq_len = _check_int("seq_len", seq_len, 1)
    rng = np.random.default_rng(seed)
    state = sample_initial_state(batch, num_balls, size, radius, speed, mass, rng)
    if substeps == "auto":
        substeps = auto_substeps(state.velocities, state.radii, state.masses)
    traj = simulate(state.positions, state.velocities, state.radii, state.masses, seq_len,
                    size, substeps, num_threads, impl)
    if recolor_on_wall_hit:
        colors = PALETTE[recolor_indices(traj.ball_wall_hits, rng)]  # [B, T, N, 3]
    else:
        colors = ball_colors(batch, num_balls, channels)  # [B, N, C]
    frames = render(traj.positions, state.radii, size, channels, colors, dtype, num_threads, impl)
    colors = torch.from_numpy(colors)
    return BouncingBalls(
        frames=torch.from_numpy(frames),
        ball_collisions=torch.from_numpy(traj.ball_collisions),
        wall_collisions=torch.from_numpy(traj.wall_collisions),
        ball_wall_hits=torch.from_numpy(traj.ball_wall_hits),
        positions=torch.from_numpy(traj.positions),
        velocities=torch.from_numpy(traj.velocities),
        radii=torch.from_numpy(state.radii),
        masses=torch.from_numpy(state.masses),
        colors=colors if recolor_on_wall_hit else colors[:, None].expand(-1, seq_len, -1, -1),
        substeps=int(substeps),
    )
