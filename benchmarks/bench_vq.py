"""Vector quantisation: the fused Triton path against the eager reference and
``torch.compile`` of the reference, forward + backward, same process, same inputs.

* CUDA (skipped without a GPU): N = 20480 vectors (IRIS: 64 frames x 320 tokens),
  K in {512, 1024} codes, D in {64, 256, 512}, fp32 and bf16; rows for "triton",
  "ref" (eager) and "compiled_ref" (``torch.compile(vq_ref)``, inductor).
* CPU: one small row (N = 2048, K = 512, D = 64), "ref" vs "compiled_ref".

Each row stores in ``extra_info`` its shape, dtype, the eager reference's median
seconds measured in this process (``reference_s``) and ``speedup_vs_reference``; the
Triton rows add ``compiled_ref_s`` and ``speedup_vs_compiled_ref``. CUDA rows store the
peak memory of one step (``torch.cuda.max_memory_allocated``), in MiB, absolute
(``peak_mib``) and above the inputs (``peak_over_inputs_mib``): the reference holds
the ``N x K`` distances, the Triton path does not.

    pytest benchmarks/bench_vq.py --benchmark-only
"""

from __future__ import annotations

import functools

import pytest
import torch

from worldmodels.ops.vq import vq, vq_ref

from conftest import median_seconds, sync

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA_ROWS = 20480
CUDA_CODES = [512, 1024]
CUDA_DIMS = [64, 256, 512]
CUDA_DTYPES = [torch.float32, torch.bfloat16]
CPU_SHAPE = (2048, 512, 64)  # (N, K, D)
IMPLS = ["triton", "ref", "compiled_ref"]


@functools.cache
def _compiled_reference():
    """``vq_ref`` compiled for static shapes; the suite's 13 shape/dtype rows need
    more than Dynamo's default of 8 recompiles of one function."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(vq_ref, dynamic=False)


def _quantizer(impl: str):
    """``(z, codebook) -> VQOutput`` for one of :data:`IMPLS`."""
    if impl == "compiled_ref":
        return _compiled_reference()
    return functools.partial(vq, impl=impl)


def vq_step(quantize, z, codebook, grad, one) -> None:
    """Forward + backward: ``z_q`` gets ``grad``, each loss a unit gradient."""
    out = quantize(z, codebook)
    torch.autograd.backward((out.z_q, out.codebook_loss, out.commitment_loss), (grad, one, one))
    z.grad = codebook.grad = None


def _inputs(rows: int, codes: int, dim: int, dtype: torch.dtype, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(rows, dim, device=device, generator=gen).to(dtype).requires_grad_()
    codebook = torch.randn(codes, dim, device=device, generator=gen).to(dtype).requires_grad_()
    grad = torch.randn(rows, dim, device=device, generator=gen).to(dtype)
    return z, codebook, grad, torch.ones((), device=device)


@functools.cache
def anchor_seconds(impl: str, shape: tuple[int, int, int], dtype: torch.dtype, device: str) -> float:
    inputs = _inputs(*shape, dtype, device)
    quantize = _quantizer(impl)
    return median_seconds(lambda: vq_step(quantize, *inputs), device, repeats=20)


def finish_row(benchmark, anchors: dict[str, float]) -> None:
    """Store each anchor's time and the speed-up against it."""
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    for name, seconds in anchors.items():
        benchmark.extra_info[f"{name}_s"] = seconds
        benchmark.extra_info[f"speedup_vs_{name}"] = seconds / stats.median


def peak_memory_mib(step) -> tuple[float, float]:
    """(peak, peak above what was allocated before) of one ``step()``, in MiB."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak / 2**20, (peak - before) / 2**20


def _vq_row(benchmark, shape: tuple[int, int, int], dtype: torch.dtype, impl: str, device: str) -> None:
    rows, codes, dim = shape
    inputs = _inputs(rows, codes, dim, dtype, device)
    quantize = _quantizer(impl)
    benchmark.group = f"vq fwd+bwd {device} N={rows} K={codes} D={dim} {dtype}"
    benchmark.extra_info.update(rows=rows, codes=codes, dim=dim, dtype=str(dtype), impl=impl,
                                device_kind=device)
    anchors = {"reference": anchor_seconds("ref", shape, dtype, device)}
    if impl == "triton":
        anchors["compiled_ref"] = anchor_seconds("compiled_ref", shape, dtype, device)
    vq_step(quantize, *inputs)  # compile / autotune outside the timed rounds
    if device == "cuda":
        peak, extra = peak_memory_mib(lambda: vq_step(quantize, *inputs))
        benchmark.extra_info.update(device=torch.cuda.get_device_name(), peak_mib=peak,
                                    peak_over_inputs_mib=extra)

    def run():
        vq_step(quantize, *inputs)
        sync(device)

    benchmark(run)
    finish_row(benchmark, anchors)


@pytest.mark.parametrize("impl", ["ref", "compiled_ref"])
def test_vq_cpu(record_env, impl):
    _vq_row(record_env, CPU_SHAPE, torch.float32, impl, "cpu")


@needs_cuda
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("dim", CUDA_DIMS)
@pytest.mark.parametrize("codes", CUDA_CODES)
def test_vq_cuda(record_env, codes, dim, dtype, impl):
    _vq_row(record_env, (CUDA_ROWS, codes, dim), dtype, impl, "cuda")
