"""onehot_linear: the C++ gather/scatter against the dense reference (values, gradients,
odd shapes, thread counts), the custom ops' registration, bad input, onehot_index, and
the networks that use it (MLP.forward_onehot).

Tolerances: the paths differ only in the order of additions: float32 agrees to ~1e-6
relative to the output's scale (atol 1e-5 for O(1) values), float64 to 1e-12.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worldmodels import _ext
from worldmodels.nn.mlp import MLP
from worldmodels.ops._dispatch import ImplUnavailableError
from worldmodels.ops.onehot_linear import gathers, onehot_index, onehot_linear, onehot_linear_ref

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}
# (lead, D, S, K, U): odd sizes, no dense part, one group, DreamerV3's 32 x 32 latents
SHAPES = [((7,), 5, 3, 4, 9), ((2, 3), 0, 2, 5, 3), ((4,), 6, 1, 7, 1), ((33,), 64, 32, 32, 130)]


def _inputs(lead, dims, groups, classes, units, dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, dims, generator=gen, dtype=dtype, requires_grad=True)
    index = torch.randint(classes, (*lead, groups), generator=gen)
    weight = torch.randn(units, dims + groups * classes, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(units, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    return x, index, weight, b


def _run(impl, x, index, weight, bias):
    dims = x.shape[-1]
    if impl == "ref":
        return onehot_linear_ref(x, index, weight[:, :dims], weight[:, dims:], bias)
    return onehot_linear(x, index, weight[:, :dims], weight[:, dims:], bias, impl=impl)


def test_reference_is_the_dense_product_of_the_concatenated_features():
    x, index, weight, bias = _inputs((5,), 3, 2, 4, 6, torch.float64)
    features = torch.cat([x, F.one_hot(index, 4).flatten(-2).double()], -1)
    torch.testing.assert_close(onehot_linear_ref(x, index, weight[:, :3], weight[:, 3:], bias),
                               features @ weight.t() + bias, rtol=0, atol=1e-12)


@needs_cpp
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,dims,groups,classes,units", SHAPES)
def test_cpp_matches_reference_values_and_gradients(lead, dims, groups, classes, units, dtype, bias):
    x, index, weight, b = _inputs(lead, dims, groups, classes, units, dtype, bias)
    grad = torch.randn(*lead, units, dtype=dtype, generator=torch.Generator().manual_seed(1))
    outs, grads = {}, {}
    for impl in ("ref", "cpp"):
        params = [t for t in (x, weight, b) if t is not None]
        outs[impl] = _run(impl, x, index, weight, b)
        grads[impl] = torch.autograd.grad(outs[impl], params, grad)
    torch.testing.assert_close(outs["cpp"], outs["ref"], **TOL[dtype])
    for got, want in zip(grads["cpp"], grads["ref"]):
        torch.testing.assert_close(got, want, **TOL[dtype])


@needs_cpp
def test_auto_takes_the_cpp_path_on_the_cpu():
    x, index, weight, bias = _inputs((3,), 2, 2, 3, 4, torch.float32)
    assert gathers(x)
    out = onehot_linear(x, index, weight[:, :2], weight[:, 2:], bias)
    assert "_OneHotLinearBackward" in " ".join(_graph_nodes(out.grad_fn))
    dense = onehot_linear(x.to(torch.bfloat16), index, weight[:, :2].bfloat16(), weight[:, 2:].bfloat16())
    assert not gathers(x.to(torch.bfloat16))
    assert "_OneHotLinearBackward" not in " ".join(_graph_nodes(dense.grad_fn))


@needs_cpp
def test_auto_takes_the_dense_bf16_product_under_cpu_autocast():
    x, index, weight, bias = _inputs((3,), 2, 2, 3, 4, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gathers(x)
        out = onehot_linear(x, index, weight[:, :2], weight[:, 2:], bias)
        want = onehot_linear_ref(x, index, weight[:, :2], weight[:, 2:], bias)
    assert out.dtype == torch.bfloat16
    assert "_OneHotLinearBackward" not in " ".join(_graph_nodes(out.grad_fn))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert gathers(x)


def _graph_nodes(node, seen=None) -> list[str]:
    """The names of the autograd nodes reachable from ``node``."""
    seen = set() if seen is None else seen
    if node is None or node in seen:
        return []
    seen.add(node)
    names = [type(node).__name__ + str(getattr(node, "name", lambda: "")())]
    for child, _ in node.next_functions:
        names += _graph_nodes(child, seen)
    return names


def test_reference_gradcheck_float64():
    x, index, weight, bias = _inputs((4,), 3, 2, 3, 5, torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: onehot_linear_ref(x, index, w[:, :3], w[:, 3:], b),
                                    (x, weight, bias))


@needs_cpp
def test_cpp_gradcheck_float64():
    x, index, weight, bias = _inputs((4,), 3, 2, 3, 5, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, w, b: onehot_linear(x, index, w[:, :3], w[:, 3:], b, impl="cpp"), (x, weight, bias))


@needs_cpp
def test_the_kernels_give_the_same_bits_for_any_thread_count():
    # each output element is summed in a fixed order, whichever thread computes it
    from worldmodels.ops import _onehot_custom as custom

    gen = torch.Generator().manual_seed(0)
    table, grad = torch.randn(32 * 32, 96, generator=gen), torch.randn(3000, 96, generator=gen)
    index = torch.randint(32, (3000, 32), generator=gen)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((custom.onehot_gather_sum(table, index, 32), custom.onehot_scatter_sum(grad, index, 32)))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(got, want) for got, want in zip(other, results[0]))


@needs_cpp
def test_repeated_classes_accumulate_in_the_weight_gradient():
    # every row picks class 1 of group 0: its column's gradient is the sum over rows
    x = torch.zeros(6, 0)
    index = torch.ones(6, 1, dtype=torch.long)
    weight = torch.zeros(2, 3, requires_grad=True)
    grad = torch.arange(12.0).reshape(6, 2)
    onehot_linear(x, index, weight[:, :0], weight, impl="cpp").backward(grad)
    expected = torch.zeros(2, 3)
    expected[:, 1] = grad.sum(0)
    assert torch.equal(weight.grad, expected)


@needs_cpp
def test_custom_ops_pass_opcheck():
    from worldmodels.ops import _onehot_custom as custom

    table = torch.randn(6, 4, dtype=torch.float64)  # gradients are _OneHotLinear's, tested above
    index = torch.tensor([[0, 2], [1, 0], [2, 1]])
    torch.library.opcheck(custom.onehot_gather_sum, (table, index, 3))
    torch.library.opcheck(custom.onehot_scatter_sum, (torch.randn(3, 4, dtype=torch.float64), index, 3))


@needs_cpp
@pytest.mark.parametrize("bad", [-1, 4])
def test_cpp_rejects_an_index_outside_the_classes(bad):
    x, index, weight, _ = _inputs((3,), 2, 2, 4, 5, torch.float32)
    index[1, 1] = bad
    with pytest.raises(ValueError, match=rf"index\[1, 1\] = {bad} is outside \[0, classes=4\)"):
        _run("cpp", x, index, weight, None)


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_cpp)])
def test_bad_shapes_and_dtypes_say_what_is_wrong(impl):
    x, index, weight, bias = _inputs((3,), 2, 2, 4, 5, torch.float32)
    call = onehot_linear_ref if impl == "ref" else lambda *a: onehot_linear(*a, impl=impl)
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        call(x, index.float(), weight[:, :2], weight[:, 2:], bias)
    with pytest.raises(ValueError, match="the same leading dims"):
        call(x[:2], index, weight[:, :2], weight[:, 2:], bias)
    with pytest.raises(ValueError, match=r"weight_x must be \[U, D=2\]"):
        call(x, index, weight[:, :3], weight[:, 3:], bias)
    with pytest.raises(ValueError, match=r"weight_z must be \[U=5, S\*K\] with S=2 groups"):
        call(x, index, weight[:, :2], weight[:, 2:-1], bias)
    with pytest.raises(ValueError, match=r"bias must be \[U=5\]"):
        call(x, index, weight[:, :2], weight[:, 2:], bias[:4])


def test_no_triton_path():
    x, index, weight, _ = _inputs((3,), 2, 2, 4, 5, torch.float32)
    with pytest.raises(ImplUnavailableError, match="no Triton path"):
        onehot_linear(x, index, weight[:, :2], weight[:, 2:], impl="triton")


def test_onehot_index_accepts_only_exact_one_hot_groups():
    index = torch.tensor([[0, 3], [2, 1]])
    z = F.one_hot(index, 4).float()
    assert torch.equal(onehot_index(z), index)
    assert onehot_index(z * (1 - 1e-7)) is None      # nearly one-hot
    assert onehot_index(torch.zeros(2, 2, 4)) is None  # no class (a zero initial state)
    two = z.clone()
    two[0, 0, 1] = 1.0
    assert onehot_index(two) is None


@pytest.mark.parametrize("layers,out_dim", [(2, 7), (1, None), (0, 3)])
@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_cpp)])
def test_mlp_forward_onehot_equals_forward_on_the_features(layers, out_dim, impl, monkeypatch):
    torch.manual_seed(0)
    mlp = MLP(5 + 3 * 4, out_dim, 16, layers).double()
    for p in mlp.parameters():  # non-zero everywhere (LayerNorm starts at 1/0)
        torch.nn.init.normal_(p)
    x, index = torch.randn(2, 6, 5, dtype=torch.float64), torch.randint(4, (2, 6, 3))
    features = torch.cat([x, F.one_hot(index, 4).flatten(-2).double()], -1)
    import worldmodels.nn.mlp as mlp_module

    monkeypatch.setattr(mlp_module, "onehot_linear", lambda *a, **k: onehot_linear(*a, **k, impl=impl))
    got, want = mlp.forward_onehot(x, index), mlp(features)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(y.sum(), list(mlp.parameters())) for y in (got, want)]
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_cpp)])
def test_straight_through_latents_get_the_dense_products_gradient(impl):
    # z = one_hot + p - sg(p): one-hot in value, with a gradient that flows to p
    x, index, weight, bias = _inputs((2, 5), 4, 3, 6, 7, torch.float64)
    logits = torch.randn(2, 5, 3, 6, dtype=torch.float64, requires_grad=True)
    probs = logits.softmax(-1)
    z = F.one_hot(index, 6).double() + (probs - probs.detach())
    grad = torch.randn(2, 5, 7, dtype=torch.float64)
    dense = F.linear(torch.cat([x, z.flatten(-2)], -1), weight, bias)
    out = onehot_linear(x, index, weight[:, :4], weight[:, 4:], bias, z=z, impl=impl)
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
    params = [x, weight, bias, logits]
    got_grads = torch.autograd.grad(out, params, grad, retain_graph=True)  # the two share softmax's graph
    for got, want in zip(got_grads, torch.autograd.grad(dense, params, grad)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"z must be \[\.\.\., S, K\]"):
        onehot_linear(x, index, weight[:, :4], weight[:, 4:], bias, z=z[..., :5], impl=impl)


@needs_cpp
def test_non_finite_values_where_the_paths_agree_and_where_they_differ():
    x, index, weight, _ = _inputs((3,), 2, 2, 4, 5, torch.float32)
    x, weight = x.detach(), weight.detach()
    unselected = next(k for k in range(4) if not (index[:, 0] == k).any())
    weight[1, 2 + unselected] = float("inf")     # a column of group 0 that no row selects
    assert torch.isnan(_run("ref", x, index, weight, None)[:, 1]).all()   # 0 * inf
    assert torch.isfinite(_run("cpp", x, index, weight, None)).all()     # never read
    x[0, 0] = float("nan")
    for impl in ("ref", "cpp"):
        assert torch.isnan(_run(impl, x, index, weight, None)[0]).all()
