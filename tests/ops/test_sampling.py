"""Samplers: the fast paths (Triton under the interpreter on CPU, C++) against the
references, statistics of the draws, segment limits, seeds and bad input.

Tolerances: fp32 outputs and gradients agree to ~1e-6 (the paths differ only in the
order of fp32 operations); bf16 results are rounded from fp32 values that agree to
~1e-6, so they may differ by one bf16 ulp (2**-8 relative): atol = rtol = 2e-2.
fp64 inputs: the references compute in fp64, the kernels in fp32: atol 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch

from worldmodels import _ext
from worldmodels.ops import _dispatch
from worldmodels.ops._dispatch import ImplUnavailableError
from worldmodels.ops.sampling import (
    boundary_sample,
    boundary_sample_ref,
    st_categorical,
    st_categorical_ref,
)

# The interpreter evaluates kernels with NumPy, which warns on log(0) (unimix=0) and
# exp overflow (saturated sigmoids); both give the intended -inf / inf values.
pytestmark = pytest.mark.filterwarnings("ignore:(divide by zero|overflow) encountered:RuntimeWarning")

needs_triton = pytest.mark.skipif(
    not _dispatch.triton_runs_on(torch.device("cpu")), reason="triton (interpreter) not available"
)
needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TRITON = pytest.param("triton", marks=needs_triton)
CPP = pytest.param("cpp", marks=needs_cpp)
BOUNDARY_IMPLS = ["ref", CPP, TRITON]
CATEGORICAL_IMPLS = ["ref", TRITON]
TOL = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float64: (1e-6, 1e-5)}


def chi2_critical_even_df(df: int, p: float) -> float:
    """The x with P(chi2_df > x) = p for even ``df``, from the closed form of the
    survival function for even df, exp(-x/2) sum_{i < df/2} (x/2)^i / i!, solved by
    bisection (e.g. df=4, p=1e-4 gives 23.51, as tables list)."""
    assert df % 2 == 0 and df > 0

    def survival(x: float) -> float:
        half = x / 2
        return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(df // 2))

    low, high = 0.0, 1000.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if survival(mid) > p else (low, mid)
    return (low + high) / 2


def weighted_grad(outputs, weights, logits):
    loss = sum((out.float() * w).sum() for out, w in zip(outputs, weights) if w is not None)
    return torch.autograd.grad(loss, logits)[0]


def assert_segments_valid(mask: torch.Tensor, seg_len: int, seg_num: int) -> None:
    """Step 0 is a boundary, no segment is longer than seg_len, at most seg_num segments."""
    hard = mask.detach().float().cpu()
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    hard = hard.bool()
    assert hard[:, 0].all(), "the first step must start a segment"
    assert (hard.sum(1) <= seg_num).all(), "more than seg_num segments"
    length = torch.zeros(hard.shape[0], dtype=torch.long)
    for t in range(hard.shape[1]):
        length = torch.where(hard[:, t], torch.ones_like(length), length + 1)
        assert (length <= seg_len).all(), f"a segment longer than seg_len at t={t}"


# ------------------------------------------------------------- st_categorical


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 5), (3, 33), (17, 4, 7), (2, 3, 32), (5, 1)])
def test_st_categorical_triton_matches_reference(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(shape, generator=gen)).to(dtype).requires_grad_()
    noise = torch.rand(shape, generator=gen)
    fast = st_categorical(logits, 0.01, noise=noise, impl="triton")
    ref = st_categorical(logits, 0.01, noise=noise, impl="ref")
    atol, rtol = TOL[dtype]
    assert fast.sample.dtype == fast.probs.dtype == dtype and fast.sample.shape == shape
    assert torch.equal(fast.sample, ref.sample)
    assert torch.equal(fast.sample.sum(-1), torch.ones(shape[:-1], dtype=dtype))
    torch.testing.assert_close(fast.probs, ref.probs, atol=atol, rtol=rtol)
    for weights in [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)),
                    (torch.randn(shape, generator=gen), None), (None, torch.randn(shape, generator=gen))]:
        fast = st_categorical(logits, 0.01, noise=noise, impl="triton")
        ref = st_categorical(logits, 0.01, noise=noise, impl="ref")
        torch.testing.assert_close(weighted_grad(fast, weights, logits),
                                   weighted_grad(ref, weights, logits), atol=atol, rtol=rtol)


@needs_triton
def test_st_categorical_triton_non_contiguous_and_unimix_zero():
    logits = torch.randn(6, 4, 9).transpose(0, 1).requires_grad_()
    noise = torch.rand(4, 6, 9)
    for unimix in (0.0, 0.3):
        fast = st_categorical(logits, unimix, noise=noise, impl="triton")
        ref = st_categorical_ref(logits, unimix, noise)
        assert torch.equal(fast.sample, ref.sample)
        torch.testing.assert_close(fast.probs, ref.probs)


def test_st_categorical_reference_gradcheck():
    logits = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    noise = torch.rand(3, 2, 5)
    assert torch.autograd.gradcheck(lambda x: st_categorical_ref(x, 0.1, noise).probs, (logits,))


def test_st_categorical_straight_through_gradient():
    """d sample / d probs is the identity: the sample's gradient is the probs' one."""
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    noise, weight = torch.rand(4, 6), torch.randn(4, 6, dtype=torch.float64)
    out = st_categorical_ref(logits, 0.01, noise)
    g_sample = torch.autograd.grad((out.sample * weight).sum(), logits, retain_graph=True)[0]
    g_probs = torch.autograd.grad((out.probs * weight).sum(), logits)[0]
    torch.testing.assert_close(g_sample, g_probs)


@pytest.mark.parametrize("impl", CATEGORICAL_IMPLS)
def test_st_categorical_frequencies_chi_square(impl):
    draws, logits_row = 100_000, torch.tensor([1.0, 0.5, 0.0, -1.0, 2.0])
    unimix = 0.05
    sample = st_categorical(logits_row.expand(draws, 5), unimix, seed=1234, impl=impl).sample
    counts = sample.sum(0).double()
    probs = (1 - unimix) * torch.softmax(logits_row.double(), -1) + unimix / 5
    expected = draws * probs
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    assert statistic < chi2_critical_even_df(4, 1e-4), (statistic, counts, expected)


@pytest.mark.parametrize("kind", ["huge", "equal"])
@pytest.mark.parametrize("impl", CATEGORICAL_IMPLS)
def test_st_categorical_finite_for_extreme_logits(impl, kind):
    draws, classes = 1_000_000, 2
    gen = torch.Generator().manual_seed(0)
    if kind == "huge":
        logits = 1e4 * torch.randn(draws, classes, generator=gen)
    else:
        logits = torch.zeros(draws, classes)
    logits.requires_grad_()
    out = st_categorical(logits, 0.01, seed=7, impl=impl)
    assert torch.isfinite(out.probs).all() and torch.isfinite(out.sample).all()
    assert torch.equal(out.sample.detach().sum(-1), torch.ones(draws))
    grad = torch.autograd.grad(out.sample.sum() + out.probs[:, 0].sum(), logits)[0]
    assert torch.isfinite(grad).all()
    if kind == "equal":  # each class is drawn about half of the time
        freq = out.sample.detach().mean(0)
        assert (freq - 1 / 2).abs().max() < 0.005


@pytest.mark.parametrize("impl", CATEGORICAL_IMPLS)
def test_st_categorical_seeds(impl):
    logits = torch.randn(64, 8)
    first = st_categorical(logits, seed=5, impl=impl).sample
    assert torch.equal(first, st_categorical(logits, seed=5, impl=impl).sample)
    assert not torch.equal(first, st_categorical(logits, seed=6, impl=impl).sample)
    torch.manual_seed(3)
    drawn = st_categorical(logits, impl=impl).sample
    torch.manual_seed(3)
    assert torch.equal(drawn, st_categorical(logits, impl=impl).sample)


# ---------------------------------------------------------------- boundary_sample

# (B, T, seg_len, seg_num): odd batches, T = 1, tight limits (seg_len * seg_num == T).
BOUNDARY_SHAPES = [(1, 1, 1, 1), (3, 7, 3, 3), (17, 20, 4, 5), (2, 33, 8, 6)]


BOUNDARY_CASES = [(*shape, torch.float32) for shape in BOUNDARY_SHAPES] + [
    (17, 20, 4, 5, torch.bfloat16), (3, 7, 3, 3, torch.bfloat16), (3, 7, 3, 3, torch.float64)]


@pytest.mark.parametrize("batch,steps,seg_len,seg_num,dtype", BOUNDARY_CASES)
@pytest.mark.parametrize("impl", [CPP, TRITON])
def test_boundary_matches_reference(impl, batch, steps, seg_len, seg_num, dtype):
    gen = torch.Generator().manual_seed(batch * 100 + steps)
    logits = (1.5 * torch.randn(batch, steps, generator=gen)).to(dtype).requires_grad_()
    noise = torch.rand(batch, steps, generator=gen)
    fast = boundary_sample(logits, 0.7, seg_len, seg_num, noise=noise, impl=impl)
    ref = boundary_sample(logits, 0.7, seg_len, seg_num, noise=noise, impl="ref")
    atol, rtol = TOL[dtype]
    assert all(out.dtype == dtype for out in fast)
    assert fast.log_probs.shape == (batch, steps, 2)
    assert torch.equal(fast.mask, ref.mask)
    torch.testing.assert_close(fast.probs, ref.probs, atol=atol, rtol=rtol)
    torch.testing.assert_close(fast.log_probs, ref.log_probs, atol=atol, rtol=rtol)
    shapes = [(batch, steps), (batch, steps), (batch, steps, 2)]
    for keep in [(0, 1, 2), (2,)]:
        weights = [torch.randn(s, generator=gen) if i in keep else None for i, s in enumerate(shapes)]
        fast = boundary_sample(logits, 0.7, seg_len, seg_num, noise=noise, impl=impl)
        ref = boundary_sample(logits, 0.7, seg_len, seg_num, noise=noise, impl="ref")
        torch.testing.assert_close(weighted_grad(fast, weights, logits),
                                   weighted_grad(ref, weights, logits), atol=atol, rtol=rtol)


def test_boundary_reference_gradcheck():
    """d probs / d logits (the soft mask where no constraint applied) and d log_probs."""
    logits = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    noise = torch.rand(3, 8)

    def soft_parts(x):
        out = boundary_sample_ref(x, 0.6, 3, 4, noise)
        return out.probs, out.log_probs

    assert torch.autograd.gradcheck(soft_parts, (logits,))


def test_boundary_mask_gradient_is_soft_where_free():
    logits = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    out = boundary_sample_ref(logits, 0.5, 3, 4, torch.rand(5, 9))
    g_mask = torch.autograd.grad(out.mask.sum(), logits, retain_graph=True)[0]
    g_probs = torch.autograd.grad(out.probs.sum(), logits)[0]
    torch.testing.assert_close(g_mask, g_probs)


@pytest.mark.parametrize("impl", BOUNDARY_IMPLS)
def test_boundary_proposal_frequencies_chi_square(impl):
    """With seg_len = seg_num = T no step after the first is constrained, so each
    step is Bernoulli(sigmoid(logit)): 4 free steps, 1 degree of freedom each."""
    draws, logits_row = 100_000, torch.tensor([0.0, -2.0, -0.5, 0.3, 1.5])
    out = boundary_sample(logits_row.expand(draws, 5), 1.0, 5, 5, seed=99, impl=impl)
    assert out.mask[:, 0].eq(1).all()
    ones = out.mask[:, 1:].sum(0).double()
    p = torch.sigmoid(logits_row[1:].double())
    statistic = ((ones - draws * p) ** 2 / (draws * p * (1 - p))).sum().item()
    assert statistic < chi2_critical_even_df(4, 1e-4), (statistic, ones / draws, p)


@pytest.mark.parametrize("kind", ["huge", "equal"])
@pytest.mark.parametrize("impl", BOUNDARY_IMPLS)
def test_boundary_finite_for_extreme_logits(impl, kind):
    batch, steps = 20_000, 50  # 1e6 draws
    gen = torch.Generator().manual_seed(1)
    logits = 1e4 * torch.randn(batch, steps, generator=gen) if kind == "huge" else torch.zeros(batch, steps)
    logits.requires_grad_()
    out = boundary_sample(logits, 0.5, 10, 10, seed=3, impl=impl)
    assert all(torch.isfinite(t).all() for t in out)
    grad = torch.autograd.grad(out.mask.sum() + out.probs.sum() + out.log_probs.sum(), logits)[0]
    assert torch.isfinite(grad).all()
    assert_segments_valid(out.mask, 10, 10)


@pytest.mark.parametrize("kind", ["random", "plus", "minus"])
@pytest.mark.parametrize("batch,steps,seg_len,seg_num", BOUNDARY_SHAPES + [(64, 12, 5, 3)])
@pytest.mark.parametrize("impl", BOUNDARY_IMPLS)
def test_boundary_masks_obey_limits(impl, batch, steps, seg_len, seg_num, kind):
    batch = max(batch, 64)
    gen = torch.Generator().manual_seed(steps)
    logits = {"random": 3 * torch.randn(batch, steps, generator=gen),
              "plus": torch.full((batch, steps), 1e4), "minus": torch.full((batch, steps), -1e4)}[kind]
    out = boundary_sample(logits, 0.3, seg_len, seg_num, seed=11, impl=impl)
    assert_segments_valid(out.mask, seg_len, seg_num)
    if kind == "minus":  # boundaries only where forced: every seg_len steps
        assert torch.equal(out.mask[0].nonzero().flatten(), torch.arange(0, steps, seg_len))


@pytest.mark.parametrize("impl", BOUNDARY_IMPLS)
def test_boundary_seeds(impl):
    logits = torch.randn(32, 16)
    first = boundary_sample(logits, 1.0, 4, 8, seed=5, impl=impl).mask
    assert torch.equal(first, boundary_sample(logits, 1.0, 4, 8, seed=5, impl=impl).mask)
    assert not torch.equal(first, boundary_sample(logits, 1.0, 4, 8, seed=6, impl=impl).mask)
    torch.manual_seed(3)
    drawn = boundary_sample(logits, 1.0, 4, 8, impl=impl).mask
    torch.manual_seed(3)
    assert torch.equal(drawn, boundary_sample(logits, 1.0, 4, 8, impl=impl).mask)


@needs_cpp
@needs_triton
def test_boundary_cpp_and_triton_share_philox():
    logits = torch.randn(9, 12)
    for seed in (0, 12345, 2**40 + 7):
        cpp = boundary_sample(logits, 0.8, 6, 6, seed=seed, impl="cpp")
        tri = boundary_sample(logits, 0.8, 6, 6, seed=seed, impl="triton")
        assert torch.equal(cpp.mask, tri.mask)
        torch.testing.assert_close(cpp.probs, tri.probs)


# ------------------------------------------------------ custom ops and torch.compile


def _custom():
    from worldmodels.ops import _sampling_custom

    return _sampling_custom


@needs_triton
@pytest.mark.parametrize("with_noise", [True, False])
def test_opcheck_st_categorical(with_noise):
    ops = _custom()
    logits = torch.randn(5, 7, requires_grad=True)
    noise = torch.rand(5, 7) if with_noise else None
    torch.library.opcheck(ops.st_categorical_fwd, (logits, 0.01, noise, 3))
    grads = (torch.randn(5, 7), torch.randn(5, 7))
    torch.library.opcheck(ops.st_categorical_bwd, (*grads, logits.detach(), 0.01))
    torch.library.opcheck(ops.st_categorical_bwd, (grads[0], None, logits.detach(), 0.01))


@pytest.mark.parametrize("impl", [CPP, TRITON])
@pytest.mark.parametrize("with_noise", [True, False])
def test_opcheck_boundary(impl, with_noise):
    fwd = _custom().BOUNDARY_OPS[impl]
    bwd = getattr(torch.ops.worldmodels, f"boundary_sample_{impl}_bwd")
    logits = torch.randn(5, 7, requires_grad=True)
    noise = torch.rand(5, 7) if with_noise else None
    torch.library.opcheck(fwd, (logits, noise, 3, 0.5, 3, 3))
    _, _, _, soft, free = fwd(logits.detach(), noise, 3, 0.5, 3, 3)
    grads = (torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 7, 2))
    torch.library.opcheck(bwd, (*grads, logits.detach(), soft, free, 0.5))
    torch.library.opcheck(bwd, (None, grads[1], None, logits.detach(), soft, free, 0.5))


@pytest.mark.parametrize("impl", [CPP, TRITON])
def test_torch_compile_traces_boundary(impl):
    logits, noise = torch.randn(4, 9, requires_grad=True), torch.rand(4, 9)

    def loss(x):
        out = boundary_sample(x, 0.5, 3, 3, noise=noise, impl=impl)
        return (out.mask * torch.arange(9.0)).sum() + out.log_probs[..., 1].sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits), loss(logits))
    torch.testing.assert_close(torch.autograd.grad(compiled(logits), logits)[0],
                               torch.autograd.grad(loss(logits), logits)[0])


@pytest.mark.parametrize("impl,draws", [
    ("ref", "noise"),
    pytest.param("cpp", "noise", marks=needs_cpp), pytest.param("triton", "noise", marks=needs_triton),
    pytest.param("cpp", "seed", marks=needs_cpp), pytest.param("triton", "seed", marks=needs_triton),
])
def test_samplers_compile_without_graph_breaks_given_noise_or_seed(impl, draws):
    """Without ``noise`` or ``seed`` the op draws a seed with ``.item()``: a graph break.
    With noise, no path breaks; with a seed, the fast paths do not (the reference makes a
    ``torch.Generator``, which dynamo does not trace)."""
    logits = torch.randn(4, 9)
    given = {"noise": torch.rand(4, 9)} if draws == "noise" else {"seed": 7}

    def boundary(x):
        out = boundary_sample(x, 0.5, 3, 3, impl=impl, **given)
        return out.mask.sum() + out.log_probs.sum()

    torch._dynamo.reset()
    assert torch._dynamo.explain(boundary)(logits).graph_break_count == 0
    if impl == "cpp":
        return

    def categorical(x):
        return st_categorical(x, impl=impl, **given).sample.sum()

    torch._dynamo.reset()
    assert torch._dynamo.explain(categorical)(logits).graph_break_count == 0


@needs_triton
def test_torch_compile_traces_st_categorical():
    logits, noise = torch.randn(4, 3, 6, requires_grad=True), torch.rand(4, 3, 6)
    weight = torch.randn(4, 3, 6)

    def loss(x):
        return (st_categorical(x, noise=noise, impl="triton").sample * weight).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(torch.autograd.grad(compiled(logits), logits)[0],
                               torch.autograd.grad(loss(logits), logits)[0])


# -------------------------------------------------------------------- bad input

X = torch.zeros(3, 4)
BAD_CATEGORICAL = [
    (dict(logits=torch.zeros(3, 4, dtype=torch.long)), TypeError, "floating"),
    (dict(logits=torch.zeros(3, 0)), ValueError, "K >= 1"),
    (dict(logits=torch.zeros(0, 4)), ValueError, "at least one row"),
    (dict(logits=X, unimix=1.0), ValueError, "unimix"),
    (dict(logits=X, unimix=-0.1), ValueError, "unimix"),
    (dict(logits=X, seed=1, noise=torch.rand(3, 4)), ValueError, "either seed or noise"),
    (dict(logits=X, noise=torch.rand(3, 5)), ValueError, "noise has shape"),
    (dict(logits=X, noise=torch.zeros(3, 4, dtype=torch.long)), TypeError, "noise"),
    (dict(logits=X, noise=torch.rand(3, 4, device="meta")), ValueError, "noise is on meta"),
    (dict(logits=X, seed=-1), ValueError, "seed"),
    (dict(logits=X, seed=1.5), ValueError, "seed"),
    (dict(logits=X, impl="cpp"), ImplUnavailableError, "no C\\+\\+ path"),
    (dict(logits=X, impl="fast"), ValueError, "impl='fast'"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_CATEGORICAL)
def test_st_categorical_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        st_categorical(**kwargs)


BAD_BOUNDARY = [
    (dict(logits=torch.zeros(3, 4, 5)), ValueError, r"\[B, T\]"),
    (dict(logits=torch.zeros(3)), ValueError, r"\[B, T\]"),
    (dict(logits=torch.zeros(3, 0)), ValueError, "T >= 1"),
    (dict(logits=torch.zeros(0, 4)), ValueError, "B=0"),
    (dict(logits=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "floating"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(beta=-1.0), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(seg_len=1, seg_num=3), ValueError, "no segmentation"),
    (dict(seg_len=0), ValueError, ">= 1"),
    (dict(seg_num=2.5), TypeError, "seg_num must be an int"),
    (dict(noise=torch.rand(4, 3)), ValueError, "noise has shape"),
    (dict(noise=torch.rand(3, 4), seed=0), ValueError, "either seed or noise"),
]


@pytest.mark.parametrize("impl", BOUNDARY_IMPLS)
@pytest.mark.parametrize("kwargs,error,match", BAD_BOUNDARY)
def test_boundary_bad_input(kwargs, error, match, impl):
    args = dict(logits=X, beta=1.0, seg_len=2, seg_num=2, impl=impl)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        boundary_sample(**args)


def test_references_validate_too():
    with pytest.raises(ValueError, match="unimix"):
        st_categorical_ref(X, unimix=2.0)
    with pytest.raises(ValueError, match="beta"):
        boundary_sample_ref(X, 0.0, 2, 2)


@pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
def test_cpu_auto_picks_cpp_for_boundary():
    logits, noise = torch.randn(2, 6), torch.rand(2, 6)
    auto = boundary_sample(logits, 1.0, 3, 3, noise=noise)
    assert torch.equal(auto.mask, boundary_sample(logits, 1.0, 3, 3, noise=noise, impl="cpp").mask)


# ---------------------------------------------------------------------- GPU only


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_st_categorical_cuda_real_shapes(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (1024, 32, 64)
    logits = torch.randn(shape, device="cuda", generator=gen).to(dtype).requires_grad_()
    noise = torch.rand(shape, device="cuda", generator=gen)
    fast = st_categorical(logits, noise=noise)  # auto: Triton on CUDA
    ref = st_categorical(logits, noise=noise, impl="ref")
    atol, rtol = TOL[dtype]
    assert (fast.sample != ref.sample).any(-1).float().mean() < 1e-4  # ties within 1 ulp only
    torch.testing.assert_close(fast.probs, ref.probs, atol=atol, rtol=rtol)
    weights = (torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda"))
    fast = st_categorical(logits, noise=noise)
    ref = st_categorical(logits, noise=noise, impl="ref")
    torch.testing.assert_close(weighted_grad(fast, weights, logits),
                               weighted_grad(ref, weights, logits), atol=atol, rtol=rtol)
    seeded = st_categorical(logits.detach(), seed=1).sample.float().mean((0, 1))
    expected = st_categorical(logits.detach(), noise=noise).probs.float().mean((0, 1))
    assert (seeded - expected).abs().max() < 0.01


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_boundary_cuda_real_shapes(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(64, 50, device="cuda", generator=gen).to(dtype).requires_grad_()
    noise = torch.rand(64, 50, device="cuda", generator=gen)
    fast = boundary_sample(logits, 0.5, 10, 8, noise=noise)
    ref = boundary_sample(logits, 0.5, 10, 8, noise=noise, impl="ref")
    atol, rtol = TOL[dtype]
    assert torch.equal(fast.mask, ref.mask)
    torch.testing.assert_close(fast.log_probs, ref.log_probs, atol=atol, rtol=rtol)
    torch.testing.assert_close(torch.autograd.grad(fast.mask.sum() + fast.log_probs.sum(), logits)[0],
                               torch.autograd.grad(ref.mask.sum() + ref.log_probs.sum(), logits)[0],
                               atol=atol, rtol=rtol)
    assert_segments_valid(boundary_sample(logits.detach(), 0.5, 10, 8, seed=4).mask, 10, 8)
