"""GRU scans, forward + backward: fused paths vs the eager reference and
``torch.compile`` of the reference, measured in the same process on the same inputs.

CPU rows (C++ path): B in {16, 32}, T in {20, 50}, hidden in {200, 512}, input 128,
for the classic cell (with biases, no LayerNorm, like nn.GRUCell) and the block cell
(LayerNorm, no bias; G = 1 and 4). CUDA rows (Triton path; skipped without CUDA):
observe-like scans T = 64, B = 16, input 1024 (stoch 32x32), deter 512 (G = 1) and
4096 (G = 8), plus the single-step latency of the block cell at B = 1024.

Each row's ``extra_info`` holds the anchors' best times and ``speedup_vs_eager`` /
``speedup_vs_compile`` (anchor best / fast-path best).

    pytest benchmarks/bench_gru.py --benchmark-only                 # everything
    pytest benchmarks/bench_gru.py --benchmark-only -k "cpu and not compile"
"""

from __future__ import annotations

import time

import pytest
import torch

from worldmodels import _ext
from worldmodels.ops import block_gru_cell, block_gru_scan, block_gru_scan_ref, gru_scan, gru_scan_ref

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
INPUTS = 128


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn, device: str, rounds: int = 5, warmup: int = 2) -> float:
    """Best wall time of ``fn()`` over ``rounds`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def make_case(cell: str, batch: int, steps: int, hidden: int, groups: int, inputs: int, device: str):
    """``(args, fused_fn, ref_fn)`` for a scan of ``cell`` ("classic" or "block")."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device).requires_grad_()
    x, h0 = rand(batch, steps, inputs), rand(batch, hidden, scale=0.1)
    if cell == "classic":
        args = (x, h0, rand(3 * hidden, inputs, scale=inputs**-0.5), rand(3 * hidden, hidden, scale=hidden**-0.5),
                rand(3 * hidden, scale=0.1), rand(3 * hidden, scale=0.1))
        return args, gru_scan, gru_scan_ref
    hg = hidden // groups
    ln_w = torch.ones(groups, 3 * hg, device=device, requires_grad=True)
    ln_b = torch.zeros(groups, 3 * hg, device=device, requires_grad=True)
    args = (x, h0, rand(groups, hg + inputs, 3 * hg, scale=(hg + inputs) ** -0.5), None, ln_w, ln_b)
    return args, block_gru_scan, block_gru_scan_ref


def fwd_bwd(fn):
    """A closure running ``fn`` forward and backward on a fixed output gradient."""
    def run(args):
        out = fn(*args)
        out.backward(torch.ones_like(out))
    return run


def compare(record_env, cell, batch, steps, hidden, groups, inputs, device, impl, with_compile):
    args, fused, ref = make_case(cell, batch, steps, hidden, groups, inputs, device)
    fast = fwd_bwd(lambda *a: fused(*a, impl=impl))
    eager = fwd_bwd(ref)
    info = record_env.extra_info
    info.update(cell=cell, batch=batch, steps=steps, hidden=hidden, groups=groups, inputs=inputs,
                dtype="float32", impl=impl, device_kind=device)
    eager_s = best_seconds(lambda: eager(args), device, rounds=3)
    info["eager_ms"] = eager_s * 1e3
    if with_compile:
        compiled = fwd_bwd(torch.compile(ref))
        compile_s = best_seconds(lambda: compiled(args), device, rounds=3)
        info["compile_ms"] = compile_s * 1e3
    record_env.pedantic(fast, args=(args,), rounds=5, iterations=1, warmup_rounds=1)
    fast_s = record_env.stats.stats.min
    info["fused_ms"] = fast_s * 1e3
    info["speedup_vs_eager"] = eager_s / fast_s
    if with_compile:
        info["speedup_vs_compile"] = compile_s / fast_s


CPU_CELLS = [("classic", 1), ("block", 1), ("block", 4)]


@needs_cpp
@pytest.mark.parametrize("with_compile", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("hidden", [200, 512])
@pytest.mark.parametrize("steps", [20, 50])
@pytest.mark.parametrize("batch", [16, 32])
@pytest.mark.parametrize("cell,groups", CPU_CELLS, ids=["classic", "block_g1", "block_g4"])
def test_cpu_scan(record_env, cell, groups, batch, steps, hidden, with_compile):
    record_env.group = f"cpu gru scan fwd+bwd {cell} G={groups}"
    compare(record_env, cell, batch, steps, hidden, groups, INPUTS, "cpu", "cpp", with_compile)


@needs_cuda
@pytest.mark.parametrize("hidden,groups", [(512, 1), (4096, 8)], ids=["deter512", "deter4096"])
@pytest.mark.parametrize("cell", ["block", "classic"])
def test_cuda_scan(record_env, cell, hidden, groups):
    record_env.group = f"cuda gru scan fwd+bwd T=64 B=16 deter={hidden}"
    record_env.extra_info["device"] = torch.cuda.get_device_name()
    compare(record_env, cell, 16, 64, hidden, groups if cell == "block" else 1, 1024, "cuda", "triton", True)


@needs_cuda
@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("hidden,groups", [(512, 1), (4096, 8)], ids=["deter512", "deter4096"])
def test_cuda_block_cell_step_latency(record_env, hidden, groups, impl):
    """One imagination step (no grad) at B = 1024."""
    record_env.group = f"cuda block gru cell step B=1024 deter={hidden}"
    record_env.extra_info.update(device=torch.cuda.get_device_name(), hidden=hidden, groups=groups, impl=impl)
    (x, h0, weight, _, ln_w, ln_b), _, _ = make_case("block", 1024, 1, hidden, groups, 1024, "cuda")
    x = x[:, 0].detach()

    def step():
        with torch.no_grad():
            block_gru_cell(x, h0, weight, None, ln_w, ln_b, impl=impl)
        torch.cuda.synchronize()

    record_env.pedantic(step, rounds=50, iterations=1, warmup_rounds=3)
