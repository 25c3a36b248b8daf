"""Samplers: the fast paths against their anchors, forward + backward, same process.

* CPU: VTA's boundary sampler, C++ vs the eager reference, at VTA-like shapes.
* CUDA (skipped without a GPU): the straight-through categorical at B x 32 x 64,
  Triton vs ``F.gumbel_softmax(hard=True)`` (the anchor) and vs the reference, with
  the achieved GB/s and the device's copy bandwidth (a 1 GiB clone) measured in the
  same run; the boundary sampler, Triton vs the reference.

Each row stores in ``extra_info`` its shape, dtype, the anchor's median seconds
measured in this process on the same inputs, and ``speedup_vs_<anchor>``.

    pytest benchmarks/bench_sampling.py --benchmark-only
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from worldmodels import _ext
from worldmodels.ops.sampling import boundary_sample, st_categorical

from conftest import finish_row, median_seconds, sync

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BOUNDARY_CPU_SHAPES = [(32, 20), (32, 50), (64, 50)]  # (B, T)
CATEGORICAL_CUDA_ROWS = [1024, 4096]                   # B of B x 32 x 64
CATEGORICAL_CUDA_DTYPES = [torch.float32, torch.bfloat16]


# ---------------------------------------------------------------- boundary sampler


def boundary_step(logits, grads, impl: str, seg_len: int, seg_num: int):
    """One forward + backward of the boundary sampler (seed 0, beta 0.5)."""
    out = boundary_sample(logits, 0.5, seg_len, seg_num, seed=0, impl=impl)
    torch.autograd.backward(list(out), list(grads))
    logits.grad = None


def _boundary_inputs(batch: int, steps: int, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(batch, steps, device=device, generator=gen).requires_grad_()
    grads = (torch.randn(batch, steps, device=device, generator=gen),
             torch.randn(batch, steps, device=device, generator=gen),
             torch.randn(batch, steps, 2, device=device, generator=gen))
    seg_len = max(1, steps // 4)
    return logits, grads, seg_len, -(-steps // seg_len) + 2


@functools.lru_cache(maxsize=None)
def boundary_reference_seconds(batch: int, steps: int, device: str) -> float:
    logits, grads, seg_len, seg_num = _boundary_inputs(batch, steps, device)
    return median_seconds(lambda: boundary_step(logits, grads, "ref", seg_len, seg_num), device,
                          repeats=20)


def _boundary_row(benchmark, batch: int, steps: int, impl: str, device: str) -> None:
    logits, grads, seg_len, seg_num = _boundary_inputs(batch, steps, device)
    benchmark.group = f"boundary_sample fwd+bwd {device} B={batch} T={steps}"
    benchmark.extra_info.update(batch=batch, steps=steps, seg_len=seg_len, seg_num=seg_num,
                                dtype="float32", impl=impl, device_kind=device)
    anchor = boundary_reference_seconds(batch, steps, device)

    def run():
        boundary_step(logits, grads, impl, seg_len, seg_num)
        sync(device)

    benchmark(run)
    finish_row(benchmark, "reference", anchor)


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("batch,steps", BOUNDARY_CPU_SHAPES)
def test_boundary_cpu(record_env, batch, steps, impl):
    _boundary_row(record_env, batch, steps, impl, "cpu")


@needs_cuda
@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("batch,steps", [(64, 50), (1024, 64)])
def test_boundary_cuda(record_env, batch, steps, impl):
    record_env.extra_info["device"] = torch.cuda.get_device_name()
    _boundary_row(record_env, batch, steps, impl, "cuda")


# ------------------------------------------------------ straight-through categorical


def categorical_step(logits, grads, impl: str):
    """Forward + backward of one straight-through sample; ``impl`` "gumbel_softmax"
    is ``F.gumbel_softmax(hard=True)`` (no unimix, only the sample's gradient)."""
    if impl == "gumbel_softmax":
        sample = F.gumbel_softmax(logits, tau=1.0, hard=True)
        torch.autograd.backward(sample, grads[0])
    else:
        out = st_categorical(logits, 0.01, seed=0, impl=impl)
        torch.autograd.backward(list(out), list(grads))
    logits.grad = None


def _categorical_inputs(batch: int, dtype: torch.dtype):
    shape = (batch, 32, 64)
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(shape, device="cuda", generator=gen).to(dtype).requires_grad_()
    grads = tuple(torch.randn(shape, device="cuda", generator=gen).to(dtype) for _ in range(2))
    return logits, grads


@functools.lru_cache(maxsize=None)
def categorical_anchor_seconds(batch: int, dtype: torch.dtype) -> float:
    logits, grads = _categorical_inputs(batch, dtype)
    return median_seconds(lambda: categorical_step(logits, grads, "gumbel_softmax"), "cuda")


@functools.lru_cache(maxsize=1)
def copy_bandwidth_gbps() -> float:
    """The device's copy bandwidth: bytes read + written by a 1 GiB clone, per second."""
    big = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    seconds = median_seconds(big.clone, "cuda", repeats=20)
    return 2 * big.numel() * big.element_size() / seconds / 1e9


@needs_cuda
@pytest.mark.parametrize("impl", ["gumbel_softmax", "ref", "triton"])
@pytest.mark.parametrize("dtype", CATEGORICAL_CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("batch", CATEGORICAL_CUDA_ROWS)
def test_st_categorical_cuda(record_env, batch, dtype, impl):
    logits, grads = _categorical_inputs(batch, dtype)
    record_env.group = f"st_categorical fwd+bwd {batch}x32x64 {dtype}"
    record_env.extra_info.update(shape=[batch, 32, 64], dtype=str(dtype), impl=impl,
                                 device=torch.cuda.get_device_name())
    anchor = categorical_anchor_seconds(batch, dtype)

    def run():
        categorical_step(logits, grads, impl)
        torch.cuda.synchronize()

    record_env(run)
    median = finish_row(record_env, "gumbel_softmax", anchor)
    if median is not None:
        # The fused path's minimum traffic: forward reads logits and writes sample and
        # probs; backward reads logits and both gradients and writes grad_logits.
        moved = 7 * logits.numel() * logits.element_size()
        copy = copy_bandwidth_gbps()
        record_env.extra_info.update(achieved_gbps=moved / median / 1e9, copy_gbps=copy,
                                     fraction_of_copy=moved / median / 1e9 / copy)
