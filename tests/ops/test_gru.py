"""GRU cells and scans: fused paths (C++, Triton under the interpreter) vs references.

Tolerances: float32 atol 2e-5 / rtol 1e-4 on states and gradients (the fused paths
reorder sums and use a polynomial exp in C++); bf16 inputs are computed in float32 by
the fused paths, compared with the float32 reference on the same bf16-rounded inputs
at atol 2e-2 / rtol 2e-2 (one bf16 rounding of each output).
"""

from __future__ import annotations

import pytest
import torch

from worldmodels import _ext
from worldmodels.ops import (block_gru_cell, block_gru_cell_ref, block_gru_scan, block_gru_scan_ref, gru_cell,
                             gru_cell_ref, gru_scan, gru_scan_ref)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FP32 = dict(atol=2e-5, rtol=1e-4)


def classic_args(batch, steps, inputs, hidden, ln, bias, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype).to(device).requires_grad_()
    return [rand(batch, steps, inputs), rand(batch, hidden), rand(3 * hidden, inputs, scale=0.3),
            rand(3 * hidden, hidden, scale=0.3), rand(3 * hidden) if bias else None,
            rand(3 * hidden) if bias else None,
            (1 + 0.1 * torch.randn(2, 3 * hidden, generator=g)).to(dtype).to(device).requires_grad_() if ln else None,
            rand(2, 3 * hidden, scale=0.1) if ln else None]


def block_args(batch, steps, inputs, groups, hg, ln, bias, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype).to(device).requires_grad_()
    return [rand(batch, steps, inputs), rand(batch, groups * hg), rand(groups, hg + inputs, 3 * hg, scale=0.3),
            rand(groups, 3 * hg) if bias else None,
            (1 + 0.1 * torch.randn(groups, 3 * hg, generator=g)).to(dtype).to(device).requires_grad_() if ln else None,
            rand(groups, 3 * hg, scale=0.1) if ln else None]


def outputs_and_grads(fn, args, seed=1):
    out = fn(*args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    inputs = [a for a in args if a is not None]
    return out, torch.autograd.grad(out, inputs, grad_out)


def assert_matches_ref(fast, ref, args, **tol):
    out, grads = outputs_and_grads(fast, args)
    out_ref, grads_ref = outputs_and_grads(ref, args)
    torch.testing.assert_close(out, out_ref, **tol)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **tol)


# ---------------------------------------------------------------- C++ path

CPP_CLASSIC = [(1, 1, 5, 20), (3, 4, 7, 20), (17, 3, 6, 200)]
CPP_BLOCK = [(1, 1, 5, 1, 20), (3, 4, 7, 4, 5), (17, 3, 6, 4, 50)]
FLAGS = [(False, False), (False, True), (True, False), (True, True)]


@needs_cpp
@pytest.mark.parametrize("ln,bias", FLAGS)
@pytest.mark.parametrize("shape", CPP_CLASSIC)
def test_cpp_gru_scan_matches_reference(shape, ln, bias):
    args = classic_args(*shape, ln, bias)
    assert_matches_ref(lambda *a: gru_scan(*a, impl="cpp"), gru_scan_ref, args, **FP32)


@needs_cpp
@pytest.mark.parametrize("ln,bias", FLAGS)
@pytest.mark.parametrize("shape", CPP_BLOCK)
def test_cpp_block_gru_scan_matches_reference(shape, ln, bias):
    args = block_args(*shape, ln, bias)
    assert_matches_ref(lambda *a: block_gru_scan(*a, impl="cpp"), block_gru_scan_ref, args, **FP32)


@needs_cpp
def test_cpp_cells_match_reference():
    args = classic_args(3, 1, 7, 20, True, True)
    args[0] = args[0].detach()[:, 0].requires_grad_()
    assert_matches_ref(lambda *a: gru_cell(*a, impl="cpp"), gru_cell_ref, args, **FP32)
    args = block_args(3, 1, 7, 4, 5, True, False)
    args[0] = args[0].detach()[:, 0].requires_grad_()
    assert_matches_ref(lambda *a: block_gru_cell(*a, impl="cpp"), block_gru_cell_ref, args, **FP32)


@needs_cpp
def test_cpp_float64_gradcheck():
    args = classic_args(2, 3, 3, 4, True, True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: gru_scan(*a, impl="cpp"), args)
    args = block_args(2, 3, 3, 2, 2, True, True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: block_gru_scan(*a, impl="cpp"), args)


def _bf16_case(make, fast, ref, impl):
    args = make(torch.bfloat16)
    args32 = [None if a is None else a.detach().float().requires_grad_() for a in args]
    out, grads = outputs_and_grads(lambda *a: fast(*a, impl=impl), args)
    out_ref, grads_ref = outputs_and_grads(ref, args32)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    torch.testing.assert_close(out.float(), out_ref, atol=2e-2, rtol=2e-2)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.float(), g_ref, atol=2e-2 * g_ref.abs().max().item() + 2e-2, rtol=2e-2)


@needs_cpp
def test_cpp_bf16_matches_float32_reference():
    _bf16_case(lambda d: classic_args(3, 4, 7, 20, True, True, dtype=d), gru_scan, gru_scan_ref, "cpp")
    _bf16_case(lambda d: block_args(3, 4, 7, 4, 5, True, False, dtype=d), block_gru_scan, block_gru_scan_ref, "cpp")


# ---------------------------------------------------------------- Triton path

TRITON_CLASSIC = [((1, 1, 5, 12), False, True), ((3, 3, 7, 20), False, False), ((3, 3, 7, 20), True, True),
                  ((2, 2, 4, 12), True, False)]
TRITON_BLOCK = [((3, 2, 7, 1, 12), True, False), ((2, 3, 5, 4, 5), True, True), ((3, 2, 7, 1, 12), False, True),
                ((1, 1, 5, 4, 5), False, False)]


@pytest.mark.parametrize("shape,ln,bias", TRITON_CLASSIC)
def test_triton_gru_scan_matches_reference(shape, ln, bias):
    args = classic_args(*shape, ln, bias, device=DEVICE)
    assert_matches_ref(lambda *a: gru_scan(*a, impl="triton"), gru_scan_ref, args, **FP32)


@pytest.mark.parametrize("shape,ln,bias", TRITON_BLOCK)
def test_triton_block_gru_scan_matches_reference(shape, ln, bias):
    args = block_args(*shape, ln, bias, device=DEVICE)
    assert_matches_ref(lambda *a: block_gru_scan(*a, impl="triton"), block_gru_scan_ref, args, **FP32)


@needs_cuda
def test_triton_bf16_on_gpu():
    _bf16_case(lambda d: classic_args(17, 8, 24, 200, True, True, dtype=d, device="cuda"), gru_scan,
               gru_scan_ref, "triton")
    _bf16_case(lambda d: block_args(17, 8, 24, 8, 64, True, False, dtype=d, device="cuda"), block_gru_scan,
               block_gru_scan_ref, "triton")


@needs_cuda
def test_triton_large_shapes_on_gpu():
    args = block_args(16, 8, 64, 8, 512, True, False, device="cuda")
    assert_matches_ref(lambda *a: block_gru_scan(*a, impl="triton"), block_gru_scan_ref, args, atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- references, registration

def test_reference_float64_gradcheck():
    assert torch.autograd.gradcheck(gru_scan_ref, classic_args(2, 2, 3, 3, True, True, dtype=torch.float64))
    assert torch.autograd.gradcheck(block_gru_scan_ref, block_args(2, 2, 3, 2, 2, True, True, dtype=torch.float64))


def test_classic_reference_equals_torch_gru_cell():
    cell = torch.nn.GRUCell(5, 8)
    x, h = torch.randn(3, 5), torch.randn(3, 8)
    out = gru_cell_ref(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(out, cell(x, h))


@needs_cpp
def test_opcheck_registered_ops():
    from worldmodels.ops import _gru_custom as ops

    args = classic_args(2, 3, 4, 6, True, True)
    torch.library.opcheck(ops.gru_scan_op, (*args, 1e-5, "cpp"))
    args = classic_args(2, 2, 4, 6, False, False)
    torch.library.opcheck(ops.gru_scan_op, (*args, 1e-5, "cpp"))
    args = block_args(2, 3, 4, 2, 3, True, False)
    torch.library.opcheck(ops.block_gru_scan_op, (*args, 1e-5, "cpp"))


@needs_cpp
def test_torch_compile_traces_through_the_scan():
    args = block_args(2, 3, 4, 2, 3, True, False)
    compiled = torch.compile(lambda *a: block_gru_scan(*a, impl="cpp"), fullgraph=True, backend="aot_eager")
    assert_matches_ref(compiled, block_gru_scan_ref, args, **FP32)


@needs_cpp
def test_auto_uses_cpp_for_cpu_scans(monkeypatch):
    from worldmodels.ops import gru as gru_mod

    assert gru_mod._path("gru_scan", "auto", torch.empty(0), "gru") == "cpp"
    assert gru_mod._path("block_gru_scan", "auto", torch.empty(0), "block") == "cpp"


# ---------------------------------------------------------------- bad input

def _bad_classic():
    x, h, w_ih, w_hh, b_ih, b_hh, lw, lb = [a.detach() if a is not None else None
                                            for a in classic_args(2, 3, 4, 5, True, True)]
    return [
        ((x[0], h, w_ih, w_hh), ValueError, r"x must be \[B, T, I\]"),
        ((x, h[:1], w_ih, w_hh), ValueError, "batch"),
        ((x[:, :0], h, w_ih, w_hh), ValueError, "T = 0"),
        ((x, h, w_ih[:, :3], w_hh), ValueError, r"w_ih must have shape \[15, 4\]"),
        ((x, h, w_ih, w_hh[:6]), ValueError, r"w_hh must have shape \[15, 5\]"),
        ((x, h, w_ih, w_hh, b_ih[:3]), ValueError, r"b_ih must have shape \[15\]"),
        ((x, h, w_ih, w_hh, None, None, lw[0]), ValueError, r"ln_weight must have shape \[2, 15\]"),
        ((x, h, w_ih, w_hh, None, None, None, lb), ValueError, "without ln_weight"),
        ((x.long(), h, w_ih, w_hh), TypeError, "floating dtype"),
        ((x, h.double(), w_ih, w_hh), TypeError, "dtype"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_gru_scan_rejects_bad_input(case):
    args, error, match = _bad_classic()[case]
    with pytest.raises(error, match=match):
        gru_scan(*args)


def test_block_and_impl_errors():
    x, h, w, b, lw, lb = [a.detach() if a is not None else None for a in block_args(2, 3, 4, 2, 3, True, True)]
    with pytest.raises(ValueError, match=r"expected weight shape"):
        block_gru_scan(x, h[:, :4], w)
    with pytest.raises(ValueError, match=r"bias must have shape \[2, 9\]"):
        block_gru_scan(x, h, w, b[:1])
    with pytest.raises(ValueError, match=r"x must be \[B, I\]"):
        block_gru_cell(x, h, w)
    with pytest.raises(ValueError, match=r"impl='fast' is not one of"):
        block_gru_scan(x, h, w, impl="fast")
    with pytest.raises(ValueError, match="eps"):
        gru_cell(x[:, 0], torch.zeros(2, 5), torch.zeros(15, 4), torch.zeros(15, 5), eps=0.0)


@needs_cpp
@pytest.mark.parametrize("block", [False, True])
def test_cpp_scans_run_in_fp32_under_cpu_autocast(block):
    # precision=bf16 on the CPU: the C++ scans take fp32 inputs and run with autocast off
    # (their Python-side input products included), so they give the fp32 values and gradients
    args = block_args(3, 5, 6, 2, 4, True, True) if block else classic_args(3, 5, 6, 8, True, True)
    scan = block_gru_scan if block else gru_scan
    fp32 = outputs_and_grads(lambda *a: scan(*a, impl="cpp"), args)

    def under_autocast(*a):   # the forward under autocast, the backward after it (as training runs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return scan(*a, impl="cpp")

    under = outputs_and_grads(under_autocast, args)
    assert under[0].dtype == torch.float32
    torch.testing.assert_close(under[0], fp32[0], rtol=0, atol=0)
    for got, want in zip(under[1], fp32[1]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
