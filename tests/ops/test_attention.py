"""Frame-block-causal attention: the Triton kernels (in the interpreter on CPU)
against the reference, the mask's invariants, decoding against a cache, the custom
ops under opcheck and torch.compile, and bad input.

Tolerances against ``attention_ref`` (which computes in fp32 from the same inputs):
fp32 outputs and gradients agree to ~1e-6 (only the order of fp32 operations
differs): atol = rtol = 1e-5. With 16-bit inputs the kernels round the probabilities
``P`` and ``dS`` to the input dtype before the second products (as FlashAttention
does) and round the results, so they differ by a few ulps of the values: bf16 (8
mantissa bits) atol = rtol = 3e-2, fp16 (11 bits) atol = rtol = 4e-3.
"""

from __future__ import annotations

import pytest
import torch

from worldmodels.ops import _dispatch
from worldmodels.ops._dispatch import ImplUnavailableError
from worldmodels.ops.attention import (
    _sdpa,
    attention,
    attention_decode,
    attention_ref,
    block_causal_mask,
)

# Triton runs on CUDA tensors, or on CPU tensors in the interpreter (tests/conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not _dispatch.triton_runs_on(torch.device(DEVICE)), reason="triton (interpreter or CUDA) not available"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TRITON = pytest.param("triton", marks=needs_triton)
IMPLS = ["ref", TRITON]
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}

# (B, H, T, block): every B in {1, 3}, H in {1, 2}, T in {1, 5, 17, 34, 37}, block in
# {1, 3, 17}; T = 37 and 34 cross the interpreter's tile edges (16 and 32 rows).
CASES = [
    (1, 1, 1, 1), (3, 2, 5, 3), (1, 2, 17, 17), (3, 1, 34, 17), (1, 1, 37, 1),
    (3, 2, 37, 3), (1, 2, 34, 1), (3, 1, 17, 3), (1, 1, 5, 17), (1, 2, 37, 17),
]
HALF_CASES = [(3, 2, 37, 3), (1, 2, 34, 17), (3, 1, 17, 1)]
HEAD_DIM = 16


def qkv(batch, heads, steps, dtype=torch.float32, head_dim=HEAD_DIM, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, heads, steps, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(3)]
    return [t.requires_grad_(grad) for t in tensors]


def outputs_and_grads(fn, q, k, v, grad_out):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def assert_matches_reference(q, k, v, block, dtype, **kwargs):
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    fast = outputs_and_grads(lambda *x: attention(*x, block=block, impl="triton", **kwargs), q, k, v, grad_out)
    ref = outputs_and_grads(lambda *x: attention_ref(*x, block=block, **kwargs), q, k, v, grad_out)
    atol, rtol = TOL[dtype]
    for name, got, want in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert got.dtype == dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------- Triton vs reference


@needs_triton
@pytest.mark.parametrize("batch,heads,steps,block", CASES)
def test_triton_matches_reference_fp32(batch, heads, steps, block):
    assert_matches_reference(*qkv(batch, heads, steps), block, torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch,heads,steps,block", HALF_CASES)
def test_triton_matches_reference_half(batch, heads, steps, block, dtype):
    assert_matches_reference(*qkv(batch, heads, steps, dtype), block, dtype)


@needs_triton
@pytest.mark.parametrize("head_dim", [32, 64])
def test_triton_other_head_dims_and_scale(head_dim):
    q, k, v = qkv(1, 1, 19, head_dim=head_dim)
    assert_matches_reference(q, k, v, 3, torch.float32, scale=0.3)


@needs_triton
def test_triton_strided_inputs():
    """q, k, v as views of a [B, T, 3, H, Dh] projection (no copies needed) and an
    output gradient with stride 0 (from ``.sum()``)."""
    batch, steps, heads = 2, 21, 2
    qkv_proj = torch.randn(batch, steps, 3, heads, HEAD_DIM, device=DEVICE, requires_grad=True)
    q, k, v = (qkv_proj[:, :, i].transpose(1, 2) for i in range(3))
    fast = attention(q, k, v, block=3, impl="triton")
    ref = attention_ref(q, k, v, block=3)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    grad_fast = torch.autograd.grad(fast.sum(), qkv_proj)[0]
    grad_ref = torch.autograd.grad(ref.sum(), qkv_proj)[0]
    torch.testing.assert_close(grad_fast, grad_ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------- the mask


def test_block_causal_mask_values():
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(block_causal_mask(4, 5, 3), expected)
    assert torch.equal(block_causal_mask(2, 5, 3, kv_offset=2), expected[2:])
    assert torch.equal(block_causal_mask(4, 4, 1), torch.ones(4, 4, dtype=torch.bool).tril())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("steps,block", [(37, 17), (34, 3), (20, 1)])
def test_future_frames_do_not_leak(impl, steps, block):
    """Changing the keys and values of the last frame leaves every earlier frame's
    output unchanged, exactly, and gives those frames no gradient into it."""
    q, k, v = qkv(2, 2, steps)
    start = (steps - 1) // block * block  # the last frame's first token
    out = attention(q, k, v, block=block, impl=impl)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, start:] = 100 * torch.randn_like(k2[:, :, start:])
    v2[:, :, start:] = -50.0
    changed = attention(q, k2, v2, block=block, impl=impl)
    assert torch.equal(out[:, :, :start], changed[:, :, :start])
    assert not torch.equal(out[:, :, start:], changed[:, :, start:])
    grad_k, grad_v = torch.autograd.grad(out[:, :, :start].sum(), (k, v))
    assert torch.count_nonzero(grad_k[:, :, start:]) == 0 and torch.count_nonzero(grad_v[:, :, start:]) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_tokens_within_a_frame_see_each_other(impl):
    """The first token of a frame depends on the frame's last token; the frame before
    does not."""
    block, steps = 17, 34
    q, k, v = qkv(1, 2, steps, grad=False)
    out = attention(q, k, v, block=block, impl=impl)
    v2 = v.clone()
    v2[:, :, 2 * block - 1] += 10.0
    changed = attention(q, k, v2, block=block, impl=impl)
    assert torch.equal(out[:, :, :block], changed[:, :, :block])
    assert (out[:, :, block] - changed[:, :, block]).abs().min() > 0


# ---------------------------------------------------------------------- decode

# (Tq_new, block, cache_len) with Tmax = 40: the first token, whole frames, and
# new tokens that straddle two frames.
DECODE_CASES = [(1, 17, 1), (1, 17, 18), (1, 17, 40), (1, 1, 23), (17, 17, 17), (17, 17, 34),
                (17, 17, 37), (17, 3, 40), (17, 1, 29)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("new,block,cache_len", DECODE_CASES)
def test_decode_equals_last_rows_of_full_attention(impl, new, block, cache_len):
    q, k, v = qkv(3, 2, cache_len, grad=False)
    full = attention_ref(q, k, v, block=block)
    k_cache, v_cache = torch.full((2, 3, 2, 40, HEAD_DIM), float("nan"), device=DEVICE)
    k_cache[:, :, :cache_len], v_cache[:, :, :cache_len] = k, v
    out = attention_decode(q[:, :, -new:], k_cache, v_cache, cache_len=cache_len, block=block, impl=impl)
    torch.testing.assert_close(out, full[:, :, -new:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_bf16_and_strided_query(impl):
    q, k, v = qkv(2, 2, 30, torch.bfloat16, grad=False)
    full = attention_ref(q, k, v, block=17)
    k_cache, v_cache = torch.zeros(2, 2, 2, 40, HEAD_DIM, dtype=torch.bfloat16, device=DEVICE)
    k_cache[:, :, :30], v_cache[:, :, :30] = k, v
    q_new = q[:, :, -13:].transpose(0, 1).contiguous().transpose(0, 1)
    out = attention_decode(q_new, k_cache, v_cache, cache_len=30, block=17, impl=impl)
    torch.testing.assert_close(out, full[:, :, -13:], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_kv_cache_decodes_frame_by_frame(impl):
    from worldmodels.nn.kv_cache import KVCache

    block, frames = 5, 4
    q, k, v = qkv(2, 2, block * frames, grad=False)
    full = attention_ref(q, k, v, block=block)
    cache = KVCache(2, 2, block * frames, HEAD_DIM, device=DEVICE)
    for f in range(frames):
        rows = slice(f * block, (f + 1) * block)
        cache.append(k[:, :, rows], v[:, :, rows])
        out = cache.attend(q[:, :, rows], block=block, impl=impl)
        torch.testing.assert_close(out, full[:, :, rows], atol=1e-5, rtol=1e-5)
    assert len(cache) == block * frames and torch.equal(cache.k, k) and torch.equal(cache.v, v)
    with pytest.raises(ValueError, match="overflow"):
        cache.append(k[:, :, :1], v[:, :, :1])
    cache.reset()
    assert len(cache) == 0 and cache.k.shape[2] == 0


@needs_triton
def test_decode_has_no_gradient():
    q, k, v = qkv(1, 1, 6)
    out = attention_decode(q[:, :, -2:], k, v, cache_len=6, block=2, impl="triton")
    with pytest.raises(RuntimeError, match="no autograd formula"):
        out.sum().backward()


def test_kv_cache_per_layer_and_bad_input():
    from worldmodels.nn.kv_cache import KVCache

    caches = KVCache.per_layer(3, 2, 1, 8, 4, dtype=torch.bfloat16)
    assert len(caches) == 3 and caches[0].keys.data_ptr() != caches[1].keys.data_ptr()
    assert caches[0].keys.dtype == torch.bfloat16 and caches[0].capacity == 8
    with pytest.raises(ValueError, match="must be"):
        caches[0].append(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    with pytest.raises(ValueError, match="differ"):
        caches[0].append(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 2, 4))
    with pytest.raises(ValueError, match="max_len"):
        KVCache(2, 1, 0, 4)


# ------------------------------------------------------------ reference and SDPA


def test_reference_gradcheck():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda *x: attention_ref(*x, block=3), (q, k, v))
    assert torch.autograd.gradcheck(lambda *x: attention_ref(x[0][:, :, 4:], *x[1:], block=2, kv_offset=4),
                                    (q, k, v))


def test_reference_plain_causal_matches_sdpa():
    q, k, v = qkv(2, 2, 9, grad=False)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention_ref(q, k, v), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("block,offset,new", [(1, 0, 9), (3, 0, 9), (3, 4, 5), (17, 3, 6)])
def test_sdpa_path_matches_reference(block, offset, new):
    """The SDPA route that ``auto`` takes on CUDA (is_causal or an explicit mask)."""
    q, k, v = qkv(2, 2, offset + new, grad=False)
    q = q[:, :, offset:]
    torch.testing.assert_close(_sdpa(q, k, v, block, 0.25, offset),
                               attention_ref(q, k, v, block=block, scale=0.25, kv_offset=offset),
                               atol=1e-6, rtol=1e-5)


def test_auto_on_cpu_is_the_reference():
    q, k, v = (t.cpu() for t in qkv(1, 2, 11, grad=False))
    assert torch.equal(attention(q, k, v, block=3), attention_ref(q, k, v, block=3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_logits_stay_finite(impl, dtype):
    q, k, v = qkv(2, 2, 37, dtype)
    scaled_q = (q.detach() * 1e3).requires_grad_()
    out = attention(scaled_q, k, v, block=3, impl=impl)
    grads = torch.autograd.grad(out.float().square().sum(), (scaled_q, k, v))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    if dtype == torch.float32:  # near one-hot rows: still the reference's values
        torch.testing.assert_close(out, attention_ref(scaled_q, k, v, block=3), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------ custom ops and torch.compile


def _custom():
    from worldmodels.ops import _attention_custom

    return _attention_custom


@needs_triton
def test_opcheck_block_causal_attention():
    ops = _custom()
    q, k, v = qkv(2, 2, 7)
    torch.library.opcheck(ops.block_causal_attention, (q, k, v, 3, 0.25))
    out, lse = ops.block_causal_attention(*(t.detach() for t in (q, k, v)), 3, 0.25)
    grad_out = torch.randn_like(out)
    args = (grad_out, *(t.detach() for t in (q, k, v)), out, lse, 3, 0.25)
    torch.library.opcheck(ops.block_causal_attention_backward, args)


@needs_triton
def test_opcheck_block_causal_attention_decode():
    q, k, v = qkv(2, 2, 12, grad=False)
    torch.library.opcheck(_custom().block_causal_attention_decode, (q[:, :, -5:], k, v, 9, 3, 0.25))


@needs_triton
def test_lse_is_the_row_logsumexp():
    q, k, v = qkv(1, 2, 10, grad=False)
    _, lse = _custom().block_causal_attention(q, k, v, 3, 0.25)
    scores = (q @ k.transpose(-2, -1) * 0.25).masked_fill(~block_causal_mask(10, 10, 3, device=DEVICE), -torch.inf)
    torch.testing.assert_close(lse, scores.logsumexp(-1), atol=1e-5, rtol=1e-5)


@needs_triton
def test_torch_compile_traces_attention():
    q, k, v = qkv(1, 2, 11)
    weight = torch.randn(1, 2, 11, HEAD_DIM, device=DEVICE)

    def loss(*x):
        return (attention(*x, block=3, impl="triton") * weight).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), loss(q, k, v))
    for got, want in zip(torch.autograd.grad(compiled(q, k, v), (q, k, v)),
                         torch.autograd.grad(loss(q, k, v), (q, k, v))):
        torch.testing.assert_close(got, want)


# -------------------------------------------------------------------- bad input


def _t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.zeros(*shape, dtype=dtype, device=device)


Q = _t(2, 2, 5, 16)
BAD_TRAINING = [
    ({"q": _t(2, 5, 16)}, ValueError, r"rank 4"),
    ({"k": _t(2, 2, 5, 16, 1)}, ValueError, r"rank 4"),
    ({"k": _t(3, 2, 5, 16), "v": _t(3, 2, 5, 16)}, ValueError, "agree in B, H and Dh"),
    ({"k": _t(2, 1, 5, 16), "v": _t(2, 1, 5, 16)}, ValueError, "agree in B, H and Dh"),
    ({"k": _t(2, 2, 5, 8), "v": _t(2, 2, 5, 8)}, ValueError, "agree in B, H and Dh"),
    ({"v": _t(2, 2, 4, 16)}, ValueError, "k and v must have one shape"),
    ({"k": _t(2, 2, 6, 16), "v": _t(2, 2, 6, 16)}, ValueError, "Tq == Tk"),
    ({"q": _t(2, 2, 5, 16, dtype=torch.long)}, TypeError, "floating point"),
    ({"v": _t(2, 2, 5, 16, dtype=torch.float16)}, TypeError, "share a dtype"),
    ({"k": _t(2, 2, 5, 16, device="meta")}, ValueError, "one device"),
    ({"q": [1.0]}, TypeError, "torch.Tensor"),
    ({"q": _t(0, 2, 5, 16), "k": _t(0, 2, 5, 16), "v": _t(0, 2, 5, 16)}, ValueError, "empty input"),
    ({"block": 0}, ValueError, "block=0 must be >= 1"),
    ({"block": 2.0}, TypeError, "block must be an int"),
    ({"scale": float("inf")}, ValueError, "scale"),
    ({"impl": "cpp"}, ImplUnavailableError, r"no C\+\+ path"),
    ({"impl": "fast"}, ValueError, "impl='fast'"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_TRAINING)
def test_attention_bad_input(kwargs, error, match):
    args = {"q": Q, "k": Q, "v": Q, "block": 3}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        attention(**args)


@needs_triton
@pytest.mark.parametrize("kwargs,error,match", [
    ({"q": _t(1, 1, 5, 24), "k": _t(1, 1, 5, 24), "v": _t(1, 1, 5, 24)}, ValueError, "head dims"),
    ({"q": _t(1, 1, 5, 16, dtype=torch.float64), "k": _t(1, 1, 5, 16, dtype=torch.float64),
          "v": _t(1, 1, 5, 16, dtype=torch.float64)}, TypeError, "float16, bfloat16 and float32"),
])
def test_triton_rejects_what_it_cannot_run(kwargs, error, match):
    with pytest.raises(error, match=match):
        attention(**kwargs, block=1, impl="triton")
    with pytest.raises(error, match=match):
        attention_decode(kwargs["q"], kwargs["k"], kwargs["v"], cache_len=5, block=1, impl="triton")


def test_reference_handles_any_head_dim_and_fp64():
    q = torch.randn(1, 1, 5, 24, dtype=torch.float64)
    assert attention(q, q, q, block=2, impl="ref").dtype == torch.float64


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_interpreting", lambda: False)
    with pytest.raises(ImplUnavailableError, match="needs CUDA tensors"):
        attention(Q.cpu(), Q.cpu(), Q.cpu(), impl="triton")


CACHE = _t(2, 2, 10, 16)
BAD_DECODE = [
    ({"cache_len": 11}, ValueError, "exceeds the cache's capacity Tmax=10"),
    ({"cache_len": 4}, ValueError, "cache_len=4 < Tq_new=5"),
    ({"cache_len": 0}, ValueError, "cache_len=0 must be >= 1"),
    ({"cache_len": 5.0}, TypeError, "cache_len must be an int"),
    ({"block": 0}, ValueError, "block=0 must be >= 1"),
    ({"q": _t(2, 2, 5, 8)}, ValueError, "agree in B, H and Dh"),
    ({"v_cache": _t(2, 2, 9, 16)}, ValueError, "k_cache and v_cache must have one shape"),
    ({"v_cache": _t(2, 2, 10, 16, device="meta")}, ValueError, "q, k_cache, v_cache must be on one device"),
    ({"q": _t(2, 2, 5)}, ValueError, "rank 4"),
    ({"k_cache": _t(2, 2, 10, 16, dtype=torch.bfloat16)}, TypeError, "share a dtype"),
    ({"q": _t(2, 2, 5, 16, dtype=torch.int32)}, TypeError, "floating point"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kwargs,error,match", BAD_DECODE)
def test_decode_bad_input(kwargs, error, match, impl):
    args = {"q": Q, "k_cache": CACHE, "v_cache": CACHE, "cache_len": 7, "block": 3, "impl": impl}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        attention_decode(**args)


@pytest.mark.parametrize("kwargs,match", [
    ({"kv_offset": -1}, "kv_offset=-1 must be >= 0"),
    ({"kv_offset": 3}, "only Tk=5 keys"),
    ({"block": -2}, "block=-2"),
])
def test_reference_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_ref(Q, Q, Q, **kwargs)


# ---------------------------------------------------------------------- GPU only


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("steps,block", [(340, 17), (1360, 17), (257, 1)])
def test_cuda_iris_shapes(steps, block, dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(4, 4, steps, 64, device="cuda", generator=gen).to(dtype).requires_grad_()
               for _ in range(3))
    grad_out = torch.randn(q.shape, device="cuda", generator=gen).to(dtype)
    fast = outputs_and_grads(lambda *x: attention(*x, block=block, impl="triton"), q, k, v, grad_out)
    ref = outputs_and_grads(lambda *x: attention_ref(*x, block=block), q, k, v, grad_out)
    atol, rtol = TOL[dtype] if dtype != torch.float32 else (1e-4, 1e-4)
    for got, want in zip(fast, ref):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    auto = attention(q, k, v, block=block)  # SDPA for block 1, Triton otherwise
    torch.testing.assert_close(auto, ref[0], atol=atol, rtol=rtol)


@needs_cuda
@pytest.mark.parametrize("new,cache_len", [(1, 1), (17, 340), (17, 1360), (1, 1000)])
def test_cuda_decode(new, cache_len):
    gen = torch.Generator(device="cuda").manual_seed(0)
    k_cache, v_cache = torch.randn(2, 8, 4, 1360, 64, device="cuda", generator=gen).bfloat16()
    q = torch.randn(8, 4, new, 64, device="cuda", generator=gen).bfloat16()
    out = attention_decode(q, k_cache, v_cache, cache_len=cache_len, block=17)
    ref = attention_decode(q, k_cache, v_cache, cache_len=cache_len, block=17, impl="ref")
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)
