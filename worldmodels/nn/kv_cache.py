"""Preallocated key/value caches for autoregressive decoding of transformer world
models (IRIS / Δ-IRIS imagination): one :class:`KVCache` per attention layer, read in
place by :func:`worldmodels.ops.attention.attention_decode`."""

from __future__ import annotations

import torch

from ..ops.attention import attention_decode

Tensor = torch.Tensor


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"KVCache: {name} must be an int >= 1, got {value!r}.")


class KVCache:
    """Keys and values of one attention layer, ``[B, H, Tmax, Dh]`` each, allocated once;
    the first :attr:`length` rows are valid.

    Appended tensors are stored detached (decoding is inference). ``k`` and ``v`` are
    views of the valid rows, not copies.
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        for name, value in (("batch", batch), ("heads", heads), ("max_len", max_len), ("head_dim", head_dim)):
            _check_size(name, value)
        shape = (batch, heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @classmethod
    def per_layer(cls, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int, *,
                  dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> list[KVCache]:
        """One cache for each of ``num_layers`` layers."""
        _check_size("num_layers", num_layers)
        return [cls(batch, heads, max_len, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def __len__(self) -> int:
        return self.length

    @property
    def k(self) -> Tensor:
        """The valid keys ``[B, H, length, Dh]`` (a view)."""
        return self.keys[:, :, : self.length]

    @property
    def v(self) -> Tensor:
        """The valid values ``[B, H, length, Dh]`` (a view)."""
        return self.values[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> None:
        """Write ``k, v [B, H, T_new, Dh]`` after the valid rows."""
        self._check_new(k, v)
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KVCache overflow: {start} cached + {k.shape[2]} new = {end} tokens exceed "
                             f"max_len={self.capacity}; allocate a longer cache or reset() it.")
        with torch.no_grad():
            self.keys[:, :, start:end].copy_(k)
            self.values[:, :, start:end].copy_(v)
        self.length = end

    def attend(self, q: Tensor, *, block: int, scale: float | None = None, impl: str = "auto") -> Tensor:
        """:func:`attention_decode` of the newest ``q [B, H, T_new, Dh]`` (already
        appended) against the cache."""
        return attention_decode(q, self.keys, self.values, cache_len=self.length, block=block,
                                scale=scale, impl=impl)

    def reset(self) -> None:
        """Forget every cached token (the memory is kept)."""
        self.length = 0

    def _check_new(self, k: Tensor, v: Tensor) -> None:
        expected = [*self.keys.shape[:2], "T_new", self.keys.shape[3]]
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[:2] != self.keys.shape[:2] \
                    or x.shape[3] != self.keys.shape[3]:
                got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"KVCache.append: {name} must be {expected}, got {got}.")
            if x.device != self.keys.device:
                raise ValueError(f"KVCache.append: {name} is on {x.device}, the cache on {self.keys.device}.")
        if k.shape != v.shape:
            raise ValueError(f"KVCache.append: k {list(k.shape)} and v {list(v.shape)} differ.")
