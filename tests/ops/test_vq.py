"""Vector quantisation: the Triton path (interpreter on CPU) against the reference over
odd shapes, ties, gradients, the EMA update, dead-code restarts, the custom ops,
torch.compile and bad input.

Tolerances: both paths compute the same fp32 distances up to the order of the sums,
so on random data they pick the same codes, and ``z_q`` is the chosen code exactly.
fp32 losses and gradients agree to ~1e-6 (atol 1e-6, rtol 1e-5). bf16 inputs are
exact in fp32, but the bf16 gradient of ``z`` is rounded from fp32 sums taken in
another order, so it may differ by one bf16 ulp (2**-8 relative): atol = rtol = 2e-2.
For bf16 the codes are compared where the reference's best and second-best distances
differ by more than ``GAP`` (elsewhere the chosen code must be within ``GAP`` of the
best), and the outputs are compared with the reference given the same codes.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from worldmodels.ops import _dispatch
from worldmodels.ops._dispatch import ImplUnavailableError
from worldmodels.ops.vq import (
    VQOutput,
    quantize_ref,
    restart_dead_codes_,
    vq,
    vq_ema_update_,
    vq_ref,
)

needs_triton = pytest.mark.skipif(
    not _dispatch.triton_runs_on(torch.device("cpu")), reason="triton (interpreter) not available"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TRITON = pytest.param("triton", marks=needs_triton)
IMPLS = ["ref", TRITON]
TOL = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}
GAP = 1e-3
ODD_SHAPES = list(itertools.product([1, 3, 17, 100], [1, 5, 64, 130], [3, 16, 33]))  # (N, K, D)


def _inputs(shape, dtype, seed=0, device="cpu"):
    rows, codes, dim = shape
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, dim, generator=gen).to(device, dtype).requires_grad_()
    codebook = torch.randn(codes, dim, generator=gen).to(device, dtype).requires_grad_()
    return z, codebook


def _exact_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` squared distances in fp64 (exact enough to rank the codes)."""
    flat = z.detach().double().reshape(-1, codebook.shape[1])
    return (flat[:, None, :] - codebook.detach().double()[None]).square().sum(-1)


def assert_nearest(indices, ref_indices, z, codebook, gap=GAP):
    """Same codes where the best is clear; elsewhere a code within ``gap`` of the best."""
    dist = _exact_distances(z, codebook).cpu()
    indices, ref_indices = indices.reshape(-1).cpu(), ref_indices.reshape(-1).cpu()
    best = dist.min(1).values
    chosen = dist.gather(1, indices[:, None]).squeeze(1)
    assert (chosen - best <= gap).all()
    if codebook.shape[0] > 1:
        top2 = dist.topk(2, dim=1, largest=False).values
        clear = top2[:, 1] - top2[:, 0] > gap
        assert torch.equal(indices[clear], ref_indices[clear])


def weighted_loss(out: VQOutput, weight: torch.Tensor) -> torch.Tensor:
    return (out.z_q.float() * weight).sum() + 1.3 * out.codebook_loss + 0.7 * out.commitment_loss


def assert_outputs_close(fast: VQOutput, ref: VQOutput, dtype) -> None:
    assert fast.z_q.dtype == dtype and fast.z_q.shape == ref.z_q.shape
    assert fast.indices.dtype == torch.int64 and fast.indices.shape == ref.indices.shape
    assert torch.equal(fast.z_q, ref.z_q)
    for name in ("codebook_loss", "commitment_loss"):
        got, want = getattr(fast, name), getattr(ref, name)
        assert got.dtype == torch.float32 and got.shape == ()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def assert_grads_close(fast: VQOutput, ref: VQOutput, z, codebook, dtype, seed=0) -> None:
    weight = torch.randn(fast.z_q.shape, generator=torch.Generator().manual_seed(seed)).to(z.device)
    got = torch.autograd.grad(weighted_loss(fast, weight), (z, codebook))
    want = torch.autograd.grad(weighted_loss(ref, weight), (z, codebook))
    atol, rtol = TOL[dtype]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- triton vs ref


@needs_triton
@pytest.mark.parametrize("rows,codes,dim", ODD_SHAPES)
def test_triton_matches_reference_fp32(rows, codes, dim):
    z, codebook = _inputs((rows, codes, dim), torch.float32, seed=rows * codes + dim)
    fast = vq(z, codebook, impl="triton")
    ref = vq(z, codebook, impl="ref")
    assert torch.equal(fast.indices, ref.indices)
    assert_outputs_close(fast, ref, torch.float32)
    assert_grads_close(fast, ref, z, codebook, torch.float32)


HALF_CASES = [(*shape, torch.bfloat16) for shape in ODD_SHAPES] + [
    (*shape, torch.float16) for shape in [(1, 5, 3), (3, 130, 33), (17, 64, 16), (100, 130, 33), (100, 1, 16)]]


@needs_triton
@pytest.mark.parametrize("rows,codes,dim,dtype", HALF_CASES)
def test_triton_matches_reference_half(rows, codes, dim, dtype):
    z, codebook = _inputs((rows, codes, dim), dtype, seed=rows + codes + dim)
    fast = vq(z, codebook, impl="triton")
    assert_nearest(fast.indices, vq_ref(z, codebook).indices, z, codebook)
    ref = quantize_ref(z, codebook, fast.indices, 0.25)
    assert_outputs_close(fast, ref, dtype)
    assert_grads_close(fast, ref, z, codebook, dtype)


@needs_triton
def test_triton_mixed_dtypes_and_leading_dims():
    """bf16 vectors with an fp32 codebook; ``z [2, 3, 5, D]`` keeps its leading shape."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 5, 16, generator=gen).bfloat16().requires_grad_()
    codebook = torch.randn(40, 16, generator=gen).requires_grad_()
    fast = vq(z, codebook, 0.4, impl="triton")
    ref = vq(z, codebook, 0.4, impl="ref")
    assert fast.indices.shape == (2, 3, 5) and fast.z_q.shape == z.shape
    assert torch.equal(fast.indices, ref.indices)
    assert_outputs_close(fast, ref, torch.bfloat16)
    assert_grads_close(fast, ref, z, codebook, torch.bfloat16)


@needs_triton
def test_triton_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(16, 7, generator=gen).T.requires_grad_()         # [7, 16], strided
    codebook = torch.randn(16, 9, generator=gen).T.requires_grad_()  # [9, 16], strided
    fast, ref = vq(z, codebook, impl="triton"), vq(z, codebook, impl="ref")
    assert torch.equal(fast.indices, ref.indices)
    assert_grads_close(fast, ref, z, codebook, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_partial_gradients(impl):
    """Only the losses, only z_q, or a codebook without grad: the other terms count as 0."""
    z, codebook = _inputs((17, 64, 16), torch.float32, seed=5)
    ref = vq_ref(z, codebook)
    for pick in (lambda o: o.codebook_loss, lambda o: o.commitment_loss, lambda o: o.z_q.sum()):
        got = torch.autograd.grad(pick(vq(z, codebook, impl=impl)), (z, codebook), allow_unused=True)
        want = torch.autograd.grad(pick(ref), (z, codebook), retain_graph=True, allow_unused=True)
        for g, w in zip(got, want):
            if w is None:
                assert g is None or torch.count_nonzero(g) == 0
            else:
                torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    frozen = codebook.detach()
    grad = torch.autograd.grad(vq(z, frozen, impl=impl).commitment_loss, z)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(vq_ref(z, frozen).commitment_loss, z)[0])


# ----------------------------------------------------------------- the maths


def check_duplicates_pick_the_lowest_index(impl: str, dtype: torch.dtype, device: str) -> None:
    """Exact duplicates inside one tile (10, 11) and across tiles (5, 70, 129), and a
    codebook of 130 copies of one code."""
    gen = torch.Generator().manual_seed(6)
    codebook = torch.randn(130, 33, generator=gen)
    codebook[[70, 129]] = codebook[5].clone()
    codebook[11] = codebook[10].clone()
    z = torch.cat([codebook[[5, 70, 129, 10, 11]], codebook[[5, 10]] + 0.01 * torch.randn(2, 33, generator=gen)])
    out = vq(z.to(device, dtype), codebook.to(device, dtype), impl=impl)
    assert out.indices.tolist() == [5, 5, 5, 10, 10, 5, 10]
    copies = codebook[:1].expand(130, 33).to(device, dtype)
    assert vq(torch.randn(9, 33, generator=gen).to(device, dtype), copies, impl=impl).indices.eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_duplicate_codes_resolve_to_the_lowest_index(impl, dtype):
    check_duplicates_pick_the_lowest_index(impl, dtype, "cpu")


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_values_and_iris_losses(impl):
    z, codebook = _inputs((100, 64, 16), torch.float32, seed=7)
    out = vq(z, codebook, 0.25, impl=impl)
    assert torch.equal(out.z_q, codebook.detach()[out.indices])
    assert torch.equal(out.indices, _exact_distances(z, codebook).argmin(1))
    z_q = codebook[out.indices]
    torch.testing.assert_close(out.codebook_loss, (z.detach() - z_q).pow(2).mean())
    torch.testing.assert_close(out.commitment_loss, 0.25 * (z - z_q.detach()).pow(2).mean())


@pytest.mark.parametrize("impl", IMPLS)
def test_straight_through_gradient(impl):
    """d z_q / d z is the identity and z_q alone sends no gradient to the codebook."""
    z, codebook = _inputs((17, 5, 3), torch.float32, seed=8)
    weight = torch.randn(17, 3)
    grad_z, grad_codebook = torch.autograd.grad((vq(z, codebook, impl=impl).z_q * weight).sum(), (z, codebook),
                                                allow_unused=True)
    torch.testing.assert_close(grad_z, weight)
    assert grad_codebook is None or torch.count_nonzero(grad_codebook) == 0


def test_reference_gradcheck():
    """Each loss against what it trains: the codebook loss stops z's gradient and the
    commitment loss the codebook's (z_q itself is straight-through, not checkable)."""
    gen = torch.Generator().manual_seed(9)
    codebook = (3 * torch.randn(5, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    index = torch.tensor([0, 2, 2, 4])
    z = (codebook.detach()[index] + 0.1 * torch.randn(4, 3, generator=gen, dtype=torch.float64)).requires_grad_()

    def codebook_loss(c):
        out = vq_ref(z.detach(), c, beta=0.3)
        assert torch.equal(out.indices, index)
        return out.codebook_loss

    def commitment_loss(x):
        return vq_ref(x, codebook.detach(), beta=0.3).commitment_loss

    assert torch.autograd.gradcheck(codebook_loss, (codebook,))
    assert torch.autograd.gradcheck(commitment_loss, (z,))


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_free_outputs_for_a_single_code(impl):
    z, codebook = _inputs((3, 1, 16), torch.float32, seed=10)
    out = vq(z, codebook, impl=impl)
    assert out.indices.eq(0).all() and torch.equal(out.z_q, codebook.detach().expand(3, 16))


# --------------------------------------------------------------- EMA and restarts


def test_ema_update_hand_computed():
    codebook = torch.tensor([[0.0], [10.0]])
    ema_count, ema_sum = torch.ones(2), codebook.clone()
    z, indices = torch.tensor([[1.0], [3.0], [11.0]]), torch.tensor([0, 0, 1])
    # count = 0.5 * 1 + 0.5 * [2, 1] = [1.5, 1]; sum = 0.5 * [0, 10] + 0.5 * [4, 11] = [2, 10.5];
    # m = 2.5; smoothed = (count + 0.1) / (2.5 + 0.2) * 2.5 = [1.6, 1.1] * 2.5 / 2.7.
    vq_ema_update_(codebook, ema_count, ema_sum, z, indices, decay=0.5, eps=0.1)
    torch.testing.assert_close(ema_count, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(ema_sum, torch.tensor([[2.0], [10.5]]))
    torch.testing.assert_close(codebook, torch.tensor([[2.0 * 2.7 / 4.0], [10.5 * 2.7 / 2.75]]))


def test_ema_update_reduce_sums_the_statistics_before_the_averages():
    """``reduce`` sees the batch's counts and sums; what it leaves enters the EMA. A reduce
    that adds another process's batch equals the update on both batches concatenated."""
    gen = torch.Generator().manual_seed(3)
    initial = torch.randn(4, 2, generator=gen)
    mine, theirs = torch.randn(6, 2, generator=gen), torch.randn(5, 2, generator=gen)
    both = torch.cat([mine, theirs])
    expected = initial.clone(), torch.ones(4), initial.clone()
    vq_ema_update_(*expected, both, vq_ref(both, initial).indices, decay=0.8)
    other = torch.zeros(4 + 8)
    other[:4] = torch.bincount(vq_ref(theirs, initial).indices, minlength=4)
    other[4:] = torch.zeros(4, 2).index_add_(0, vq_ref(theirs, initial).indices, theirs).reshape(-1)
    seen = []

    def add_theirs(statistics):
        seen.append(statistics.shape)
        statistics.add_(other)

    got = initial.clone(), torch.ones(4), initial.clone()
    vq_ema_update_(*got, mine, vq_ref(mine, initial).indices, decay=0.8, reduce=add_theirs)
    assert seen == [torch.Size([12])]   # one flat tensor: K counts, then K x D sums
    for value, want in zip(got, expected):
        torch.testing.assert_close(value, want)


def test_ema_update_converges_to_cluster_means():
    gen = torch.Generator().manual_seed(11)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    codebook = centres + 0.5
    ema_count, ema_sum = torch.ones(3), codebook.clone()
    for _ in range(300):
        z = centres.repeat(20, 1).reshape(20, 3, 2) + 0.1 * torch.randn(20, 3, 2, generator=gen)
        vq_ema_update_(codebook, ema_count, ema_sum, z, vq_ref(z, codebook).indices, decay=0.9)
    torch.testing.assert_close(codebook, centres, atol=0.05, rtol=0)


def test_restart_dead_codes():
    gen = torch.Generator().manual_seed(12)
    codebook, z = torch.zeros(6, 4), torch.randn(2, 5, 4, generator=gen)
    ema_count, ema_sum = torch.tensor([5.0, 0.1, 2.0, 0.0, 0.9, 1.0]), torch.zeros(6, 4)
    count = restart_dead_codes_(codebook, ema_count, z, 1.0, torch.Generator().manual_seed(0), ema_sum=ema_sum)
    dead = [1, 3, 4]
    assert count == 3
    rows = z.reshape(10, 4)
    matches = [(rows == code).all(1).nonzero().flatten().tolist() for code in codebook[dead]]
    assert all(len(m) == 1 for m in matches) and len({m[0] for m in matches}) == 3  # distinct rows
    assert codebook[[0, 2, 5]].eq(0).all()
    torch.testing.assert_close(ema_count, torch.tensor([5.0, 1.0, 2.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(ema_sum[dead], codebook[dead])
    assert restart_dead_codes_(codebook, ema_count, z, 1.0) == 0
    assert restart_dead_codes_(codebook, ema_count, z, 0.0) == 0


def test_restart_more_dead_codes_than_rows_and_generator_repeats():
    z = torch.randn(2, 3)
    first, second = torch.zeros(5, 3), torch.zeros(5, 3)
    for codebook in (first, second):
        assert restart_dead_codes_(codebook, torch.zeros(5), z, 0.5, torch.Generator().manual_seed(1)) == 5
    assert torch.equal(first, second)
    assert all((z == code).all(1).any() for code in first)


# ------------------------------------------------------ custom ops and torch.compile


def _custom():
    from worldmodels.ops import _vq_custom

    return _vq_custom


@needs_triton
def test_opcheck_vq_forward_and_backward():
    ops = _custom()
    z, codebook = _inputs((17, 5, 16), torch.float32, seed=13)
    torch.library.opcheck(ops.vq_forward, (z, codebook, 0.25))
    z_q, indices, _, _ = ops.vq_forward(z.detach(), codebook.detach(), 0.25)
    grad, scalar = torch.randn(17, 16), torch.tensor(0.7)
    saved = (z.detach(), z_q, indices, 5, 0.25)
    torch.library.opcheck(ops.vq_backward, (grad, scalar, scalar.clone(), *saved))
    torch.library.opcheck(ops.vq_backward, (None, scalar, None, *saved))
    torch.library.opcheck(ops.vq_backward, (grad, None, None, *saved))


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_traces_vq(impl):
    gen = torch.Generator().manual_seed(14)
    z3 = torch.randn(2, 3, 5, 16, generator=gen).requires_grad_()
    codebook = torch.randn(9, 16, generator=gen).requires_grad_()
    weight = torch.randn(2, 3, 5, 16, generator=gen)

    def loss(x, c):
        out = vq(x, c, 0.25, impl=impl)
        return (out.z_q * weight).sum() + out.codebook_loss + out.commitment_loss + out.indices.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(z3, codebook), loss(z3, codebook))
    got = torch.autograd.grad(compiled(z3, codebook), (z3, codebook))
    want = torch.autograd.grad(loss(z3, codebook), (z3, codebook))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_cpu_auto_uses_the_reference(monkeypatch):
    def fail(*args):
        raise AssertionError("auto must not run Triton on CPU tensors")

    monkeypatch.setattr(_custom(), "vq_forward", fail)
    z, codebook = _inputs((3, 5, 3), torch.float32)
    assert torch.equal(vq(z, codebook).indices, vq_ref(z, codebook).indices)


# -------------------------------------------------------------------- bad input

Z, C = torch.zeros(3, 4), torch.randn(5, 4)
BAD_VQ = [
    ({"z": Z.long()}, TypeError, "z must be floating point"),
    ({"z": [[0.0] * 4]}, TypeError, "z must be a torch.Tensor"),
    ({"codebook": C.int()}, TypeError, "codebook must be floating point"),
    ({"z": torch.zeros(3, 5)}, ValueError, r"the codebook has D=4; z must be \[\.\.\., 4\]"),
    ({"z": torch.zeros(())}, ValueError, "the codebook has D=4"),
    ({"codebook": torch.randn(20)}, ValueError, r"codebook must be \[K, D\]"),
    ({"codebook": torch.zeros(0, 4)}, ValueError, "the codebook is empty"),
    ({"z": torch.zeros(0, 4)}, ValueError, "z has no vectors"),
    ({"codebook": torch.zeros(5, 4, device="meta")}, ValueError, "z is on cpu, the codebook on meta"),
    ({"z": torch.tensor([[0.0, float("nan"), 0.0, 0.0]])}, ValueError, "z contains NaN"),
    ({"beta": -0.1}, ValueError, "beta=-0.1"),
    ({"beta": float("inf")}, ValueError, "beta=inf"),
    ({"impl": "fast"}, ValueError, "impl='fast'"),
    ({"impl": "cpp"}, ImplUnavailableError, r"vq has no C\+\+ path"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kwargs,error,match", BAD_VQ)
def test_vq_bad_input(kwargs, error, match, impl):
    args = {"z": Z, "codebook": C, "impl": impl}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        vq(**args)


@needs_triton
def test_triton_rejects_float64():
    with pytest.raises(TypeError, match="use impl='ref' for float64"):
        vq(Z.double(), C.double(), impl="triton")


def test_reference_validates_too():
    with pytest.raises(ValueError, match="z contains NaN"):
        vq_ref(torch.full((2, 4), float("nan")), C)


def _ema_args(**change):
    args = {"codebook": C.clone(), "ema_count": torch.ones(5), "ema_sum": C.clone(), "z": Z,
            "indices": torch.zeros(3, dtype=torch.long)}
    args.update(change)
    return args


BAD_EMA = [
    ({"ema_count": torch.ones(4)}, ValueError, r"ema_count has shape \[4\]; it must be \[K=5\]"),
    ({"ema_count": torch.ones(5, dtype=torch.long)}, TypeError, "ema_count must be floating"),
    ({"ema_sum": torch.ones(5, 3)}, ValueError, r"ema_sum has shape \[5, 3\]"),
    ({"indices": torch.zeros(3)}, TypeError, "indices must be an int32/int64 tensor"),
    ({"indices": torch.zeros(2, dtype=torch.long)}, ValueError, "indices must be z's leading shape"),
    ({"indices": torch.tensor([0, 5, 1])}, ValueError, r"indices must lie in \[0, K=5\)"),
    ({"indices": torch.tensor([0, -1, 1])}, ValueError, r"indices must lie in \[0, K=5\)"),
    ({"decay": 1.0}, ValueError, "decay=1.0"),
    ({"eps": 0.0}, ValueError, "eps=0.0"),
    ({"z": torch.zeros(3, 2)}, ValueError, "the codebook has D=4"),
]


@pytest.mark.parametrize("change,error,match", BAD_EMA)
def test_ema_update_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        vq_ema_update_(**_ema_args(**change))


@pytest.mark.parametrize("change,error,match", [
    ({"threshold": -1.0}, ValueError, "threshold=-1.0"),
    ({"ema_count": torch.ones(2)}, ValueError, "ema_count has shape"),
    ({"ema_sum": torch.ones(2, 4)}, ValueError, "ema_sum has shape"),
    ({"codebook": torch.zeros(0, 4)}, ValueError, "the codebook is empty"),
    ({"z": torch.zeros(0, 4)}, ValueError, "z has no vectors"),
])
def test_restart_bad_input(change, error, match):
    args = {"codebook": C.clone(), "ema_count": torch.zeros(5), "z": Z, "threshold": 1.0, "ema_sum": None}
    args.update(change)
    with pytest.raises(error, match=match):
        restart_dead_codes_(**args)


# ---------------------------------------------------------------------- GPU only


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,codes,dim", [(4096, 512, 256), (2000, 1000, 64)])
def test_vq_cuda_real_shapes(rows, codes, dim, dtype):
    z, codebook = _inputs((rows, codes, dim), dtype, seed=15, device="cuda")
    fast = vq(z, codebook)  # auto: Triton on CUDA
    assert_nearest(fast.indices, vq_ref(z, codebook).indices, z, codebook)
    ref = quantize_ref(z, codebook, fast.indices, 0.25)
    assert torch.equal(fast.z_q, ref.z_q)
    torch.testing.assert_close(fast.codebook_loss, ref.codebook_loss, atol=1e-5, rtol=1e-4)
    atol, rtol = TOL[dtype]
    weight = torch.randn(rows, dim, device="cuda")
    got = torch.autograd.grad(weighted_loss(fast, weight), (z, codebook))
    want = torch.autograd.grad(weighted_loss(ref, weight), (z, codebook))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=max(atol, 1e-5), rtol=max(rtol, 1e-4))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_duplicate_codes_cuda(impl, dtype):
    check_duplicates_pick_the_lowest_index(impl, dtype, "cuda")
