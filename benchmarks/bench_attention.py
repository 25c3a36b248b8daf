"""Frame-block-causal attention: the Triton kernels against SDPA, same process.

* CUDA (skipped without a GPU), IRIS shapes ``B=64, H=4, Dh=64``, bf16:
  - training forward + backward at ``T = 340`` and ``1360`` (20 and 80 frames of 17
    tokens): Triton (``block=17``) vs ``F.scaled_dot_product_attention`` with an
    explicit boolean mask (the anchor); and for ``block=1`` Triton vs SDPA with
    ``is_causal=True`` (its fastest backend). Rows also store the peak memory of one
    step.
  - decode: 17 new tokens (one frame) against ``cache_len`` of up to 1360 cached
    tokens, Triton (``attention_decode``, cache read in place) vs SDPA over the valid
    slice of the cache with a boolean mask.
* CPU: one tiny training shape, the reference vs SDPA with a boolean mask.

Each row stores in ``extra_info`` its shape, dtype, block, the anchor's median seconds
measured in this process on the same inputs, and ``speedup_vs_<anchor>``.

    pytest benchmarks/bench_attention.py --benchmark-only
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from worldmodels.ops.attention import attention, attention_decode, block_causal_mask

from conftest import finish_row, median_seconds, sync

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BATCH, HEADS, HEAD_DIM, FRAME = 64, 4, 64, 17
TRAIN_STEPS = [340, 1360]
DECODE_CACHE_LENS = [17, 340, 1360]
CPU_SHAPE = (2, 2, 68, 32)  # B, H, T, Dh


# ------------------------------------------------------------------------ training


def _training_inputs(shape, dtype: torch.dtype, block: int, device: str):
    """q, k, v (requiring grad), the output gradient and the boolean mask."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, grad = (torch.randn(shape, device=device, generator=gen).to(dtype) for _ in range(4))
    mask = block_causal_mask(shape[2], shape[2], block, device=device)
    return [t.requires_grad_() for t in (q, k, v)], grad, mask


def _training_forward(q, k, v, mask, block: int, impl: str):
    if impl == "sdpa_mask":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if impl == "sdpa_causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attention(q, k, v, block=block, impl=impl)


def training_step(qkv, grad, mask, block: int, impl: str) -> None:
    """One forward + backward; ``impl`` is "triton", "ref", "sdpa_mask" or "sdpa_causal"."""
    out = _training_forward(*qkv, mask, block, impl)
    torch.autograd.backward(out, grad)
    for t in qkv:
        t.grad = None


@functools.cache
def training_anchor_seconds(shape, dtype: torch.dtype, block: int, anchor: str, device: str) -> float:
    qkv, grad, mask = _training_inputs(shape, dtype, block, device)
    return median_seconds(lambda: training_step(qkv, grad, mask, block, anchor), device, repeats=20)


def _peak_memory_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _training_row(benchmark, shape, dtype, block: int, impl: str, anchor: str, device: str) -> None:
    qkv, grad, mask = _training_inputs(shape, dtype, block, device)
    benchmark.group = f"attention fwd+bwd {device} {list(shape)} block={block} {dtype}"
    benchmark.extra_info.update(shape=list(shape), block=block, dtype=str(dtype), impl=impl,
                                device_kind=device)
    anchor_s = training_anchor_seconds(shape, dtype, block, anchor, device)

    def run():
        training_step(qkv, grad, mask, block, impl)
        sync(device)

    benchmark(run)
    finish_row(benchmark, anchor, anchor_s)
    if device == "cuda":
        benchmark.extra_info["peak_mib"] = _peak_memory_mib(run)


@needs_cuda
@pytest.mark.parametrize("impl", ["sdpa_mask", "triton"])
@pytest.mark.parametrize("steps", TRAIN_STEPS)
def test_training_block_cuda(record_env, steps, impl):
    record_env.extra_info["device"] = torch.cuda.get_device_name()
    shape = (BATCH, HEADS, steps, HEAD_DIM)
    _training_row(record_env, shape, torch.bfloat16, FRAME, impl, "sdpa_mask", "cuda")


@needs_cuda
@pytest.mark.parametrize("impl", ["sdpa_causal", "triton"])
@pytest.mark.parametrize("steps", TRAIN_STEPS)
def test_training_causal_cuda(record_env, steps, impl):
    record_env.extra_info["device"] = torch.cuda.get_device_name()
    shape = (BATCH, HEADS, steps, HEAD_DIM)
    _training_row(record_env, shape, torch.bfloat16, 1, impl, "sdpa_causal", "cuda")


@pytest.mark.parametrize("impl", ["ref", "sdpa_mask"])
def test_training_cpu(record_env, impl):
    _training_row(record_env, CPU_SHAPE, torch.float32, FRAME, impl, "ref", "cpu")


# -------------------------------------------------------------------------- decode


def _decode_inputs(cache_len: int, dtype: torch.dtype):
    """The newest frame's queries, caches of capacity 1360 and the SDPA mask."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    k_cache, v_cache = torch.randn(2, BATCH, HEADS, max(DECODE_CACHE_LENS), HEAD_DIM, device="cuda",
                                   generator=gen).to(dtype)
    q = torch.randn(BATCH, HEADS, FRAME, HEAD_DIM, device="cuda", generator=gen).to(dtype)
    mask = block_causal_mask(FRAME, cache_len, FRAME, cache_len - FRAME, device="cuda")
    return q, k_cache, v_cache, mask


@torch.no_grad()
def decode_step(q, k_cache, v_cache, mask, cache_len: int, impl: str):
    """``impl`` "triton": ``attention_decode``; "sdpa_mask": SDPA over the valid slice."""
    if impl == "sdpa_mask":
        return F.scaled_dot_product_attention(q, k_cache[:, :, :cache_len], v_cache[:, :, :cache_len],
                                              attn_mask=mask)
    return attention_decode(q, k_cache, v_cache, cache_len=cache_len, block=FRAME, impl=impl)


@functools.cache
def decode_anchor_seconds(cache_len: int, dtype: torch.dtype) -> float:
    inputs = _decode_inputs(cache_len, dtype)
    return median_seconds(lambda: decode_step(*inputs, cache_len, "sdpa_mask"), "cuda", repeats=50)


@needs_cuda
@pytest.mark.parametrize("impl", ["sdpa_mask", "triton"])
@pytest.mark.parametrize("cache_len", DECODE_CACHE_LENS)
def test_decode_cuda(record_env, cache_len, impl):
    dtype = torch.bfloat16
    inputs = _decode_inputs(cache_len, dtype)
    record_env.group = f"attention decode {FRAME} new tokens, cache_len={cache_len} {dtype}"
    record_env.extra_info.update(batch=BATCH, heads=HEADS, head_dim=HEAD_DIM, new_tokens=FRAME,
                                 cache_len=cache_len, dtype=str(dtype), impl=impl,
                                 device=torch.cuda.get_device_name())
    anchor = decode_anchor_seconds(cache_len, dtype)

    def run():
        decode_step(*inputs, cache_len, impl)
        torch.cuda.synchronize()

    record_env(run)
    finish_row(record_env, "sdpa_mask", anchor)
