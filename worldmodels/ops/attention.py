"""Frame-block-causal self-attention for IRIS / Δ-IRIS transformer world models.

A sequence is a run of frames of ``block`` tokens (e.g. 16 observation tokens + 1
action token = 17); every token sees all tokens of its own frame and of earlier
frames. With queries at absolute positions ``i`` and keys at ``j``::

    mask[i, j] = 0 if j // block <= i // block else -inf      (block = 1: causal)
    out = softmax(q k^T * scale + mask) v,  scale = Dh ** -0.5 by default

* :func:`attention_ref`: plain PyTorch, the specification.
* :func:`attention`: training (``Tq == Tk``), ``impl="auto" | "triton" | "ref"``;
  the Triton path is FlashAttention-style (``kernels/attention.py``), registered as
  ``worldmodels::block_causal_attention`` with its fused backward.
* :func:`attention_decode`: the newest tokens against a preallocated key/value cache
  (see :class:`worldmodels.nn.kv_cache.KVCache`), forward only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._dispatch import resolve_impl

Tensor = torch.Tensor

# What the Triton kernels take: power-of-two head dims and these operand dtypes.
TRITON_HEAD_DIMS = (16, 32, 64, 128)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def block_causal_mask(tq: int, tk: int, block: int = 1, kv_offset: int = 0,
                      device: torch.device | str | None = None) -> Tensor:
    """Bool ``[tq, tk]``, True where query ``kv_offset + iq`` may see key ``j``:
    ``j // block <= (kv_offset + iq) // block`` (the form SDPA's ``attn_mask`` takes)."""
    q_frame = torch.div(torch.arange(tq, device=device) + kv_offset, block, rounding_mode="floor")
    k_frame = torch.div(torch.arange(tk, device=device), block, rounding_mode="floor")
    return k_frame[None, :] <= q_frame[:, None]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The reference's maths dtype: fp32, or fp64 for fp64 inputs (for gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _default_scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def attention_ref(q: Tensor, k: Tensor, v: Tensor, *, block: int = 1, scale: float | None = None,
                  kv_offset: int = 0) -> Tensor:
    """Frame-block-causal attention, ``softmax(q k^T * scale + mask) v``.

    Args:
        q: queries ``[B, H, Tq, Dh]`` at absolute positions ``kv_offset .. kv_offset + Tq - 1``.
        k, v: keys and values ``[B, H, Tk, Dh]`` at positions ``0 .. Tk - 1``, with
            ``kv_offset + Tq <= Tk``.
        block: tokens per frame (>= 1); query ``i`` sees key ``j`` iff
            ``j // block <= i // block``.
        scale: the score scale, ``Dh ** -0.5`` when None.
    Returns:
        ``[B, H, Tq, Dh]`` in the dtype of ``q``; maths in fp32 (fp64 for fp64 inputs).
    """
    _check_qkv("attention_ref", q, k, v, block, scale)
    _check_offset("attention_ref", q, k, kv_offset)
    dtype = _compute_dtype(q)
    scores = q.to(dtype) @ k.to(dtype).transpose(-2, -1) * _default_scale(q, scale)
    allowed = block_causal_mask(q.shape[2], k.shape[2], block, kv_offset, q.device)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (weights @ v.to(dtype)).to(q.dtype)


# ---------------------------------------------------------------------- checks


def _check_tensor(op: str, name: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got dtype {x.dtype}; cast with .float().")
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be [B, H, T, Dh] (rank 4), got shape {list(x.shape)}.")


def _check_int(op: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}.")
    if value < low:
        raise ValueError(f"{op}: {name}={value} must be >= {low}.")


def _check_qkv(op: str, q: Tensor, k: Tensor, v: Tensor, block: int, scale: float | None,
               names: tuple[str, str, str] = ("q", "k", "v")) -> None:
    """Rank-4 floating tensors on one device, one dtype; k and v alike; B, H, Dh shared."""
    for name, x in zip(names, (q, k, v)):
        _check_tensor(op, name, x)
    listed = ", ".join(names)
    if not q.device == k.device == v.device:
        raise ValueError(f"{op}: {listed} must be on one device, got {q.device}, {k.device}, {v.device}.")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{op}: {listed} must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    if k.shape != v.shape:
        raise ValueError(f"{op}: {names[1]} and {names[2]} must have one shape, got {list(k.shape)} and "
                         f"{list(v.shape)}.")
    (batch, heads, steps, head_dim), keys = q.shape, k.shape
    if (batch, heads, head_dim) != (keys[0], keys[1], keys[3]):
        raise ValueError(f"{op}: {names[0]} {list(q.shape)} and {names[1]}/{names[2]} {list(keys)} must agree "
                         "in B, H and Dh ([B, H, T, Dh]).")
    if min(batch, heads, steps, head_dim, keys[2]) == 0:
        raise ValueError(f"{op}: empty input: {names[0]} {list(q.shape)}, {names[1]}/{names[2]} {list(keys)}.")
    _check_int(op, "block", block, 1)
    if scale is not None and not math.isfinite(float(scale)):
        raise ValueError(f"{op}: scale={scale} must be finite (or None for Dh ** -0.5).")


def _check_offset(op: str, q: Tensor, k: Tensor, kv_offset: int) -> None:
    _check_int(op, "kv_offset", kv_offset, 0)
    if kv_offset + q.shape[2] > k.shape[2]:
        raise ValueError(f"{op}: the queries' positions end at kv_offset + Tq = {kv_offset + q.shape[2]} "
                         f"but there are only Tk={k.shape[2]} keys.")


def _check_triton(op: str, q: Tensor) -> None:
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        raise ValueError(f"{op}: impl='triton' supports head dims {TRITON_HEAD_DIMS}, got Dh={q.shape[-1]}; "
                         "use impl='auto' or impl='ref'.")
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"{op}: impl='triton' supports float16, bfloat16 and float32, got {q.dtype}; "
                        "use impl='auto' or impl='ref'.")


def _triton_fits(q: Tensor) -> bool:
    return q.shape[-1] in TRITON_HEAD_DIMS and q.dtype in TRITON_DTYPES


def _path(op: str, impl: str, q: Tensor, prefer_sdpa: bool) -> str:
    """"triton", "ref" or "sdpa". ``auto``: on CUDA the Triton kernel, or SDPA where
    ``prefer_sdpa`` or the kernel does not take the input; on the CPU the reference."""
    path = resolve_impl(op, impl, q.device, triton=True, cpp_symbol=None, cpu_auto="ref")
    if impl != "auto":
        if path == "triton":
            _check_triton(op, q)
        return path
    if q.device.type != "cuda":
        return path
    return "triton" if path == "triton" and not prefer_sdpa and _triton_fits(q) else "sdpa"


def _sdpa(q: Tensor, k: Tensor, v: Tensor, block: int, scale: float, kv_offset: int) -> Tensor:
    """``F.scaled_dot_product_attention``: ``is_causal`` for plain causal square
    attention, else an explicit boolean mask."""
    if block == 1 and kv_offset == 0 and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = block_causal_mask(q.shape[2], k.shape[2], block, kv_offset, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# ------------------------------------------------------------------ public ops


def attention(q: Tensor, k: Tensor, v: Tensor, *, block: int = 1, scale: float | None = None,
              impl: str = "auto") -> Tensor:
    """Frame-block-causal self-attention for training; same maths as :func:`attention_ref`
    with ``kv_offset = 0``: ``softmax(q k^T * scale + mask) v``, ``mask[i, j] = 0`` iff
    ``j // block <= i // block``.

    The Triton path tiles queries and keys with an online softmax, stores only the row
    logsumexp (never the ``T x T`` scores), skips key tiles past the frame frontier
    and recomputes the probabilities in its backward pass.

    Args:
        q, k, v: ``[B, H, T, Dh]``, one floating dtype and device (any strides).
        block: tokens per frame (>= 1); 1 is plain causal attention.
        scale: the score scale, ``Dh ** -0.5`` when None.
        impl: "auto" (on CUDA: SDPA with ``is_causal`` for ``block == 1``, else Triton,
            or SDPA with a boolean mask where the kernel does not take the head dim or
            dtype; on the CPU the reference), "triton" (Dh in 16/32/64/128; fp16, bf16,
            fp32) or "ref".
    Returns:
        ``[B, H, T, Dh]`` in the dtype of ``q``; maths and accumulation in fp32.
    """
    _check_qkv("attention", q, k, v, block, scale)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"attention: training attention needs Tq == Tk, got Tq={q.shape[2]}, "
                         f"Tk={k.shape[2]}; use attention_decode for new tokens against a cache.")
    scale = _default_scale(q, scale)
    path = _path("attention", impl, q, prefer_sdpa=block == 1)
    if path == "ref":
        return attention_ref(q, k, v, block=block, scale=scale)
    if path == "sdpa":
        return _sdpa(q, k, v, block, scale, 0)
    from . import _attention_custom as custom

    return custom.block_causal_attention(q, k, v, block, scale)[0]


def _check_cache(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_len: int) -> None:
    op = "attention_decode"
    _check_int(op, "cache_len", cache_len, 1)
    new, capacity = q.shape[2], k_cache.shape[2]
    if cache_len > capacity:
        raise ValueError(f"{op}: cache_len={cache_len} exceeds the cache's capacity Tmax={capacity}.")
    if cache_len < new:
        raise ValueError(f"{op}: cache_len={cache_len} < Tq_new={new}: the new tokens' keys and values "
                         "must already be written into the cache.")


def attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, *, cache_len: int, block: int,
                     scale: float | None = None, impl: str = "auto") -> Tensor:
    """The newest ``Tq_new`` tokens attending to a preallocated key/value cache.

    The queries sit at absolute positions ``cache_len - Tq_new .. cache_len - 1``;
    their keys and values are already in the cache, whose first ``cache_len`` rows are
    valid. Equals the last ``Tq_new`` rows of ``attention_ref`` over the first
    ``cache_len`` tokens: block-causal among the new tokens, full over older frames.
    The Triton kernel runs one program per (query tile, batch x head) and reads the
    caches in place; no gradient flows through it.

    Args:
        q: ``[B, H, Tq_new, Dh]``.
        k_cache, v_cache: ``[B, H, Tmax, Dh]`` (same dtype and device as ``q``).
        cache_len: valid rows, ``Tq_new <= cache_len <= Tmax``.
        block: tokens per frame (>= 1). scale: ``Dh ** -0.5`` when None.
        impl: "auto" (Triton on CUDA, SDPA with a boolean mask where the kernel does
            not take the input, the reference on the CPU), "triton" or "ref".
    Returns:
        ``[B, H, Tq_new, Dh]`` in the dtype of ``q``.
    """
    _check_qkv("attention_decode", q, k_cache, v_cache, block, scale, ("q", "k_cache", "v_cache"))
    _check_cache(q, k_cache, v_cache, cache_len)
    scale = _default_scale(q, scale)
    offset = cache_len - q.shape[2]
    path = _path("attention_decode", impl, q, prefer_sdpa=False)
    if path == "triton":
        from . import _attention_custom as custom

        return custom.block_causal_attention_decode(q, k_cache, v_cache, cache_len, block, scale)
    keys, values = k_cache[:, :, :cache_len], v_cache[:, :, :cache_len]
    if path == "sdpa":
        return _sdpa(q, keys, values, block, scale, offset)
    return attention_ref(q, keys, values, block=block, scale=scale, kv_offset=offset)
