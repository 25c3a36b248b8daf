"""Training batches of bouncing-balls videos, generated on the fly.

:class:`BouncingBallsProvider` keeps one chunk of ``chunk_sequences`` uint8
sequences in memory and replaces it by a fresh chunk every ``refresh_steps``
steps, so training never sees one fixed set for long and memory stays flat. A
batch is a pure function of ``(seed, step)``: chunk ``step // refresh_steps`` is
generated from ``SeedSequence([seed, 0, chunk])`` and the batch indices are drawn
from ``SeedSequence([seed, 1, step])``, so a resumed run (``load_state_dict``)
sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..envs.bouncing_balls import BouncingBalls, generate, recolor_events
from .stream import StepStream, check_step

_CHUNK_STREAM = 0
_INDEX_STREAM = 1
_EVAL_STREAM = 2
_RESERVED = ("batch", "seq_len", "seed", "dtype")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_kwargs(generate_kwargs: dict) -> None:
    clash = sorted(set(generate_kwargs) & set(_RESERVED))
    if clash:
        raise ValueError(f"generate_kwargs may not set {clash}: the provider sets {list(_RESERVED)}")


def _to_batch(data: BouncingBalls, index: torch.Tensor | None, device) -> dict:
    """The batch dict of :meth:`BouncingBallsProvider.batch` on ``device``.

    The uint8 frames are moved first and converted on the device (4x less traffic);
    the recolour events are computed on the CPU from the picked colours.
    """
    def pick(x: torch.Tensor) -> torch.Tensor:
        return x if index is None else x.index_select(0, index)

    return {
        "frames": pick(data.frames).to(device).float().div_(255.0),
        "ball_collisions": pick(data.ball_collisions).to(device),
        "wall_collisions": pick(data.wall_collisions).to(device),
        "ball_wall_hits": pick(data.ball_wall_hits).to(device),
        "recolor_events": recolor_events(pick(data.colors)).to(device),
    }


class BouncingBallsProvider(StepStream):
    """Deterministic, resumable stream of bouncing-balls training batches.

    Args:
        batch_size: sequences per batch (B); drawn without replacement from the
            current chunk, so ``chunk_sequences >= batch_size``.
        seq_len: frames per sequence (T).
        chunk_sequences: sequences kept in memory (uint8) at any time.
        refresh_steps: a new chunk every this many steps (>= 1).
        seed: base seed of chunks and batch indices.
        device: where the batches go.
        **generate_kwargs: passed to :func:`worldmodels.envs.bouncing_balls.generate`
            (num_balls, size, radius, speed, mass, channels, substeps, num_threads,
            impl, recolor_on_wall_hit); not batch, seq_len, seed or dtype.

    Example::

        data = BouncingBallsProvider(32, 50, chunk_sequences=1024, refresh_steps=500, seed=0)
        batch = data.next_batch()   # {"frames": [32, 50, 1, 32, 32] float32, ...}
    """

    def __init__(self, batch_size: int, seq_len: int, *, chunk_sequences: int,
                 refresh_steps: int, seed: int, device: str | torch.device = "cpu",
                 **generate_kwargs) -> None:
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seq_len = _positive_int("seq_len", seq_len)
        self.chunk_sequences = _positive_int("chunk_sequences", chunk_sequences)
        self.refresh_steps = _positive_int("refresh_steps", refresh_steps)
        if self.chunk_sequences < self.batch_size:
            raise ValueError(f"chunk_sequences={chunk_sequences} must be >= batch_size="
                             f"{batch_size} (batches are drawn without replacement)")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        _check_kwargs(generate_kwargs)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.generate_kwargs = dict(generate_kwargs)
        self.step = 0
        self._chunk_index = -1
        self._chunk: BouncingBalls | None = None
        self.chunk(0)  # fail early on bad generate_kwargs

    def chunk(self, index: int) -> BouncingBalls:
        """Chunk ``index`` (uint8, on the CPU); the previous chunk is dropped."""
        if index != self._chunk_index:
            self._chunk = None  # free the old chunk before building the new one
            self._chunk = generate(
                self.chunk_sequences, self.seq_len, dtype="uint8",
                seed=np.random.SeedSequence([self.seed, _CHUNK_STREAM, index]),
                **self.generate_kwargs,
            )
            self._chunk_index = index
        return self._chunk

    def indices(self, step: int) -> torch.Tensor:
        """Sequence indices [batch_size] int64 of the batch at ``step``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _INDEX_STREAM, step]))
        picked = rng.choice(self.chunk_sequences, size=self.batch_size, replace=False)
        return torch.from_numpy(picked.astype(np.int64))

    def batch(self, step: int) -> dict:
        """The batch at ``step`` (a pure function of seed and step).

        Returns:
            {"frames": float32 [B, T, C, H, W] in [0, 1], "ball_collisions": bool [B, T],
            "wall_collisions": bool [B, T], "ball_wall_hits": bool [B, T, N],
            "recolor_events": bool [B, T]}, all on ``device``. ``recolor_events[:, t]``:
            some ball changed colour at t; with ``recolor_on_wall_hit=True`` it equals
            ``wall_collisions``, without it is all False.
        """
        step = check_step(step)
        data = self.chunk(step // self.refresh_steps)
        return _to_batch(data, self.indices(step), self.device)


def make_eval_set(num_sequences: int, seq_len: int, seed: int,
                  device: str | torch.device = "cpu", **generate_kwargs) -> dict:
    """A fixed held-out set, in the format of :meth:`BouncingBallsProvider.batch`.

    Generated from ``SeedSequence([seed, 2])``, a stream no provider with the same
    seed uses, so it never overlaps the training chunks.
    """
    num_sequences = _positive_int("num_sequences", num_sequences)
    seq_len = _positive_int("seq_len", seq_len)
    _check_kwargs(generate_kwargs)
    data = generate(num_sequences, seq_len, dtype="uint8",
                    seed=np.random.SeedSequence([seed, _EVAL_STREAM]), **generate_kwargs)
    return _to_batch(data, None, torch.device(device))


def renderer_kwargs(env: Any) -> dict[str, Any]:
    """The keyword arguments of the renderer's ``generate`` taken from ``env``."""
    return {
        "num_balls": int(env.num_balls),
        "size": int(env.size),
        "radius": _scalar_or_range(env.radius),
        "speed": _scalar_or_range(env.speed),
        "channels": int(env.channels),
        "recolor_on_wall_hit": bool(env.get("recolor_on_wall_hit", False)),
    }


def _scalar_or_range(value):
    return tuple(float(v) for v in value) if not isinstance(value, (int, float)) else float(value)
