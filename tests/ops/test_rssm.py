"""RSSM ops: the fast paths against the reference, resets, carried state, the
imagine step, gradcheck of the reference, opcheck of the scan ops, bad input."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from worldmodels import _ext
from worldmodels.ops import rssm as R
from worldmodels.ops._dispatch import ImplUnavailableError
from worldmodels.ops._rssm_loop import has_fast_parts, observe_loop
from worldmodels.ops.sampling import CategoricalSample

# (batch, steps, S, K, groups, Hg, inputs=hidden, embed, action)
SHAPES = [
    (1, 1, 3, 5, 1, 4, 6, 5, 2),
    (3, 6, 3, 5, 2, 4, 7, 5, 0),
    (2, 5, 4, 3, 2, 3, 5, 4, 3),
]
# dtype -> (atol, rtol) of outputs and gradients against the reference
TOL = {torch.float64: (1e-6, 1e-6), torch.float32: (2e-4, 2e-4)}


def make_params(s, k, groups, hg, inputs, embed, action, dtype=torch.float32, seed=0) -> R.RSSMParams:
    gen = torch.Generator().manual_seed(seed)
    h, sk = groups * hg, s * k

    def rand(*shape, scale=0.5, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_()

    u = inputs
    return R.RSSMParams(
        rand(inputs, sk + action), rand(inputs), rand(inputs, shift=1), rand(inputs),
        rand(groups, hg + inputs, 3 * hg), rand(groups, 3 * hg), rand(groups, 3 * hg, shift=1), rand(groups, 3 * hg),
        rand(u, h), rand(u), rand(u, shift=1), rand(u), rand(sk, u), rand(sk),
        rand(u, h), rand(u, embed), rand(u), rand(u, shift=1), rand(u), rand(sk, u), rand(sk),
        rand(h, scale=0.3), s, k)


def make_inputs(batch, steps, s, k, embed, action, dtype=torch.float32, seed=1, resets=True):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, steps, embed, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    act = torch.randn(batch, steps, action, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    first = torch.rand(batch, steps, generator=gen) < (0.3 if resets else 0.0)
    noise = torch.rand(batch, steps, s, k, generator=gen)
    return emb, act, first, noise


def _random_state(batch, p: R.RSSMParams, dtype, seed=2):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, p.initial_deter.shape[0], generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    idx = torch.randint(p.classes, (batch, p.stoch), generator=gen)
    z = F.one_hot(idx, p.classes).to(dtype).requires_grad_()
    return h, z


def _loss_and_grads(out, inputs):
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in out)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _assert_matches(fast, ref, inputs, names, dtype):
    atol, rtol = TOL[dtype]
    assert torch.equal(fast.stoch.argmax(-1), ref.stoch.argmax(-1)), "samples differ"
    for field in R.RSSMObservation._fields:
        torch.testing.assert_close(getattr(fast, field), getattr(ref, field), atol=atol, rtol=rtol, msg=field)
    for name, g_fast, g_ref in zip(names, _loss_and_grads(fast, inputs), _loss_and_grads(ref, inputs)):
        assert (g_fast is None) == (g_ref is None), name
        if g_ref is not None:
            torch.testing.assert_close(g_fast, g_ref, atol=atol * 10, rtol=rtol * 10, msg=f"grad {name}")


def _run_pair(shape, dtype, fast_fn, with_state):
    batch, steps, s, k, groups, hg, inputs, embed, action = shape
    p = make_params(s, k, groups, hg, inputs, embed, action, dtype)
    emb, act, first, noise = make_inputs(batch, steps, s, k, embed, action, dtype)
    state = _random_state(batch, p, dtype) if with_state else None
    tensors = [emb, act, *p.tensors().values(), *(state or ())]
    names = ["embed", "action", *p.tensors(), "h0", "z0"]
    ref = R.rssm_observe_ref(emb, act, first, p, state=state, noise=noise)
    fast = fast_fn(emb, act, first, p, state, noise)
    _assert_matches(fast, ref, tensors, names, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_scan_matches_reference(shape, dtype, with_state):
    def scan(emb, act, first, p, state, noise):
        return R.rssm_observe(emb, act, first, p, state=state, noise=noise, impl="scan")

    _run_pair(shape, dtype, scan, with_state)


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_loop_path_matches_reference(shape):
    """The triton/cpp loop structure, run here with the reference GRU and sampler."""
    def loop(emb, act, first, p, state, noise):
        return observe_loop(emb, act, first, p, 0.01, state, noise, "ref")

    _run_pair(shape, torch.float64, loop, True)


@pytest.mark.parametrize("impl", ["triton", "cpp"])
def test_fast_part_paths(impl):
    device = torch.device("cpu")
    shape = SHAPES[1]
    if not has_fast_parts(impl, device):
        with pytest.raises(ImplUnavailableError, match="rssm"):
            _run_pair(shape, torch.float32, lambda e, a, f, p, s, n: R.rssm_observe(
                e, a, f, p, state=s, noise=n, impl=impl), False)
        pytest.skip(f"the GRU/sampler {impl} paths are not available here")
    try:
        _run_pair(shape, torch.float32, lambda e, a, f, p, s, n: R.rssm_observe(
            e, a, f, p, state=s, noise=n, impl=impl), True)
    except ModuleNotFoundError as error:  # a part whose fast path is announced but not installed
        pytest.skip(f"the GRU/sampler {impl} path is incomplete here: {error}")


def test_bf16_scan_close_to_reference():
    """bf16 params: the scan computes in fp32 inside, the reference in bf16; one step
    (later steps may sample differently where classes are nearly tied)."""
    batch, steps, s, k, groups, hg, inputs, embed, action = (4, 1, 4, 6, 2, 8, 16, 8, 3)
    p = make_params(s, k, groups, hg, inputs, embed, action, torch.bfloat16)
    emb, act, first, noise = make_inputs(batch, steps, s, k, embed, action, torch.bfloat16)
    ref = R.rssm_observe_ref(emb, act, first, p, noise=noise)
    fast = R.rssm_observe(emb, act, first, p, noise=noise, impl="scan")
    assert fast.deter.dtype == torch.bfloat16
    torch.testing.assert_close(fast.deter, ref.deter, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(fast.post_logits, ref.post_logits, atol=1e-1, rtol=5e-2)
    agree = (fast.stoch.argmax(-1) == ref.stoch.argmax(-1)).float().mean()
    assert agree >= 0.9
    grads = torch.autograd.grad(fast.deter.float().sum() + fast.post_logits.float().square().sum(), [emb, p.gru_weight])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("impl", ["ref", "scan"])
def test_reset_equals_separate_sequences(impl):
    shape = (2, 7, 3, 4, 2, 4, 6, 5, 2)
    batch, steps, s, k, groups, hg, inputs, embed, action = shape
    p = make_params(s, k, groups, hg, inputs, embed, action, torch.float64)
    emb, act, _, noise = make_inputs(batch, steps, s, k, embed, action, torch.float64)
    first = torch.zeros(batch, steps, dtype=torch.bool)
    first[:, 3] = True
    whole = R.rssm_observe(emb, act, first, p, noise=noise, impl=impl)
    head = R.rssm_observe(emb[:, :3], act[:, :3], first[:, :3], p, noise=noise[:, :3], impl=impl)
    tail = R.rssm_observe(emb[:, 3:], act[:, 3:], first[:, 3:], p, noise=noise[:, 3:], impl=impl,
                          state=(torch.randn(batch, groups * hg, dtype=torch.float64), torch.ones(batch, s, k)))
    for field in R.RSSMObservation._fields:
        joined = torch.cat([getattr(head, field), getattr(tail, field)], dim=1)
        torch.testing.assert_close(getattr(whole, field), joined, msg=field)


@pytest.mark.parametrize("impl", ["ref", "scan"])
def test_carried_state_continues(impl):
    shape = (3, 6, 3, 4, 1, 5, 6, 5, 2)
    batch, steps, s, k, groups, hg, inputs, embed, action = shape
    p = make_params(s, k, groups, hg, inputs, embed, action, torch.float64)
    emb, act, first, noise = make_inputs(batch, steps, s, k, embed, action, torch.float64)
    whole = R.rssm_observe(emb, act, first, p, noise=noise, impl=impl)
    head = R.rssm_observe(emb[:, :2], act[:, :2], first[:, :2], p, noise=noise[:, :2], impl=impl)
    state = (head.deter[:, -1], head.stoch[:, -1])
    tail = R.rssm_observe(emb[:, 2:], act[:, 2:], first[:, 2:], p, noise=noise[:, 2:], state=state, impl=impl)
    for field in R.RSSMObservation._fields:
        torch.testing.assert_close(getattr(whole, field)[:, 2:], getattr(tail, field), msg=field)


@pytest.mark.parametrize("impl", ["ref", "scan"])
def test_observe_prior_equals_imagine_step(impl):
    shape = (3, 4, 3, 5, 2, 4, 6, 5, 2)
    batch, steps, s, k, groups, hg, inputs, embed, action = shape
    p = make_params(s, k, groups, hg, inputs, embed, action, torch.float64)
    emb, act, _, noise = make_inputs(batch, steps, s, k, embed, action, torch.float64)
    first = torch.zeros(batch, steps, dtype=torch.bool)
    obs = R.rssm_observe(emb, act, first, p, noise=noise, impl=impl)
    for t in range(1, steps):
        step = R.rssm_imagine_step(obs.deter[:, t - 1], obs.stoch[:, t - 1], act[:, t], p, noise=noise[:, t], impl=impl)
        torch.testing.assert_close(step.deter, obs.deter[:, t])
        torch.testing.assert_close(step.prior_logits, obs.prior_logits[:, t])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imagine_step_fast_matches_reference(dtype):
    batch, s, k, groups, hg, inputs, embed, action = 3, 3, 5, 2, 4, 6, 5, 2
    p = make_params(s, k, groups, hg, inputs, embed, action, dtype)
    h, z = _random_state(batch, p, dtype)
    a = torch.randn(batch, action, dtype=dtype).requires_grad_()
    noise = torch.rand(batch, s, k)
    ref = R.rssm_imagine_step_ref(h, z, a, p, noise=noise)
    fast = R.rssm_imagine_step(h, z, a, p, noise=noise, impl="scan")
    atol, rtol = TOL[dtype]
    inputs = [h, z, a, *p.tensors().values()]
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, atol=atol, rtol=rtol)
    for g_f, g_r in zip(_loss_and_grads(fast, inputs), _loss_and_grads(ref, inputs)):
        if g_r is not None:
            torch.testing.assert_close(g_f, g_r, atol=atol * 10, rtol=rtol * 10)


def test_seed_is_deterministic_and_shared_by_impls():
    shape = (2, 4, 3, 4, 1, 4, 6, 5, 2)
    batch, steps, s, k, groups, hg, inputs, embed, action = shape
    p = make_params(s, k, groups, hg, inputs, embed, action)
    emb, act, first, _ = make_inputs(batch, steps, s, k, embed, action)
    a = R.rssm_observe(emb, act, first, p, seed=3, impl="scan")
    b = R.rssm_observe(emb, act, first, p, seed=3, impl="ref")
    assert torch.equal(a.stoch.argmax(-1), b.stoch.argmax(-1))
    c = R.rssm_observe(emb, act, first, p, seed=4, impl="scan")
    assert not torch.equal(a.stoch, c.stoch)


def _soft_sampler(logits, unimix=0.01, noise=None, generator=None):
    """The unimix probabilities as the "sample": differentiable, and its gradient is the
    one the straight-through estimator uses (gradcheck cannot see through a hard sample)."""
    probs = (1 - unimix) * torch.softmax(logits, -1) + unimix / logits.shape[-1]
    return CategoricalSample(probs, probs)


def test_reference_gradcheck_float64(monkeypatch):
    monkeypatch.setattr(R, "st_categorical_ref", _soft_sampler)
    batch, steps, s, k, groups, hg, inputs, embed, action = 2, 3, 2, 3, 2, 2, 3, 3, 2
    p = make_params(s, k, groups, hg, inputs, embed, action, torch.float64)
    emb, act, _, noise = make_inputs(batch, steps, s, k, embed, action, torch.float64)
    first = torch.tensor([[False, True, False], [False, False, False]])
    names = list(p.tensors())

    def fn(emb, act, *tensors):
        params = p._replace(**dict(zip(names, tensors)))
        return tuple(R.rssm_observe_ref(emb, act, first, params, noise=noise))

    assert torch.autograd.gradcheck(fn, (emb, act, *p.tensors().values()), atol=1e-5, fast_mode=True)


def test_opcheck_scan_ops():
    from worldmodels.ops._rssm_scan_bwd import scan_forward

    batch, steps, s, k, groups, hg, inputs, embed, action = 2, 3, 2, 3, 2, 2, 3, 3, 0
    p = make_params(s, k, groups, hg, inputs, embed, action, torch.float64)
    gen = torch.Generator().manual_seed(0)
    first = torch.tensor([[True, False], [False, False], [False, True]])
    args = (torch.randn(steps, batch, inputs, generator=gen, dtype=torch.float64).requires_grad_(),
            torch.randn(steps, batch, inputs, generator=gen, dtype=torch.float64).requires_grad_(),
            first, torch.rand(steps, batch, s, k, generator=gen),
            torch.randn(batch, groups * hg, dtype=torch.float64).requires_grad_(),
            torch.zeros(batch, s * k, dtype=torch.float64).requires_grad_(),
            p.initial_deter, p.in_weight, p.in_norm_weight, p.in_norm_bias, p.gru_weight, p.gru_bias,
            p.gru_norm_weight, p.gru_norm_bias, p.post_weight, p.post_norm_weight, p.post_norm_bias,
            p.post_out_weight, p.post_out_bias, s, 0.01, 1e-3)
    torch.library.opcheck(scan_forward, args)


def test_bad_input_errors():
    shape = (2, 3, 3, 4, 2, 4, 6, 5, 2)
    batch, steps, s, k, groups, hg, inputs, embed, action = shape
    p = make_params(s, k, groups, hg, inputs, embed, action)
    emb, act, first, noise = make_inputs(batch, steps, s, k, embed, action)
    obs = R.rssm_observe
    with pytest.raises(ValueError, match="embed must have rank 3"):
        obs(emb[0], act, first, p)
    with pytest.raises(ValueError, match="must match embed's B, T"):
        obs(emb, act[:, :2], first, p)
    with pytest.raises(ValueError, match=r"is_first must have shape \[B, T\]"):
        obs(emb, act, first[:1], p)
    with pytest.raises(ValueError, match="only 0/1"):
        obs(emb, act, first.long() * 2, p)
    obs(emb, act, first.long(), p)  # 0/1 integers are fine
    with pytest.raises(ValueError, match="T >= 1"):
        obs(emb[:, :0], act[:, :0], first[:, :0], p)
    with pytest.raises(TypeError, match="action must be floating"):
        obs(emb, act.long(), first, p)
    with pytest.raises(ValueError, match="either seed or noise"):
        obs(emb, act, first, p, seed=1, noise=noise)
    with pytest.raises(ValueError, match="noise must be uniform"):
        obs(emb, act, first, p, noise=noise[:, :1])
    with pytest.raises(ValueError, match=r"params.prior_weight must have shape \(6, 8\) \[U, H\]"):
        obs(emb, act, first, p._replace(prior_weight=torch.zeros(6, 9)))
    with pytest.raises(ValueError, match="expects A=2"):
        obs(emb, act[..., :1], first, p)
    with pytest.raises(ValueError, match=r"state deter must have shape"):
        obs(emb, act, first, p, state=(torch.zeros(batch, 3), torch.zeros(batch, s, k)))
    with pytest.raises(ValueError, match="impl='fast' is not one of"):
        obs(emb, act, first, p, impl="fast")
    with pytest.raises(ValueError, match=r"action must have shape \[B, A\]"):
        R.rssm_imagine_step(torch.zeros(batch, 8), torch.zeros(batch, s, k), torch.zeros(batch, 5), p)


def test_imaginer_cpu_fallback_matches_steps():
    batch, s, k, groups, hg, inputs, embed, action, horizon = 3, 3, 4, 2, 4, 6, 5, 2, 4
    p = make_params(s, k, groups, hg, inputs, embed, action)
    h, z = _random_state(batch, p, torch.float32)
    actions = torch.randn(batch, horizon, action)
    imaginer = R.RSSMImaginer(lambda: p, unimix=0.01)
    torch.manual_seed(5)
    out = imaginer(h.detach(), z.detach(), actions=actions)
    torch.manual_seed(5)
    noise = torch.rand(horizon, batch, s, k)
    deter, stoch = h.detach(), z.detach()
    for t in range(horizon):
        deter, stoch, prior = R.rssm_imagine_step_ref(deter, stoch, actions[:, t], p, noise=noise[t])
        torch.testing.assert_close(out.deter[:, t + 1], deter)
        torch.testing.assert_close(out.prior_logits[:, t], prior)
    assert not out.deter.requires_grad
    policy_out = imaginer(h.detach(), z.detach(), lambda d, st: torch.tanh(d[:, :action]), horizon=horizon)
    assert policy_out.action.shape == (batch, horizon, action)
    with pytest.raises(ValueError, match="CUDA"):
        R.RSSMImaginer(lambda: p, use_graph=True)(h, z, actions=actions)
    with pytest.raises(ValueError, match="exactly one of policy or actions"):
        imaginer(h, z, horizon=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_imaginer_cuda_graph_matches_eager():
    batch, s, k, groups, hg, inputs, embed, action, horizon = 64, 4, 8, 2, 16, 32, 16, 3, 5
    p = R.RSSMParams(*[t.detach().cuda() if isinstance(t, torch.Tensor) else t for t in make_params(
        s, k, groups, hg, inputs, embed, action)])
    h = torch.randn(batch, groups * hg, device="cuda")
    z = F.one_hot(torch.randint(k, (batch, s), device="cuda"), k).float()
    actions = torch.randn(batch, horizon, action, device="cuda")
    graphed = R.RSSMImaginer(lambda: p, use_graph=True, impl="ref")
    eager = R.RSSMImaginer(lambda: p, use_graph=False, impl="ref")
    for _ in range(2):  # capture, then replay
        torch.manual_seed(0)
        out_g = graphed(h, z, actions=actions)
    torch.manual_seed(0)
    out_e = eager(h, z, actions=actions)
    torch.testing.assert_close(out_g.deter[:, 1], out_e.deter[:, 1], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
def test_imaginer_gathers_from_one_hot_starts_with_the_same_states(monkeypatch):
    batch, s, k, groups, hg, inputs, embed, action, horizon = 6, 4, 8, 2, 16, 32, 16, 3, 4
    p = make_params(s, k, groups, hg, inputs, embed, action)
    h = torch.randn(batch, groups * hg)
    z = F.one_hot(torch.randint(k, (batch, s)), k).float()
    seen = []

    def policy(deter, stoch, index=None):
        seen.append(index)
        return torch.tanh(deter[:, :action])

    policy.takes_index = True
    imaginer = R.RSSMImaginer(lambda: p)
    torch.manual_seed(5)
    out = imaginer(h, z, policy, horizon=horizon)
    assert out.index is not None and torch.equal(out.index, out.stoch.argmax(-1))
    assert all(torch.equal(i, out.index[:, t]) for t, i in enumerate(seen))
    assert imaginer(h, z * 0.5, policy, horizon=horizon).index is None  # not one-hot: the dense products
    monkeypatch.setattr(sys.modules["worldmodels.ops.onehot_linear"], "gathers", lambda x: False)
    torch.manual_seed(5)
    dense = imaginer(h, z, policy, horizon=horizon)
    assert dense.index is None
    torch.testing.assert_close(out.deter, dense.deter, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.action, dense.action, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.stoch, dense.stoch)


def test_imaginer_under_autocast_casts_the_prior_matrices_once_with_the_same_states(monkeypatch):
    batch, s, k, groups, hg, inputs, embed, action, horizon = 6, 4, 8, 2, 16, 32, 16, 3, 4
    p = make_params(s, k, groups, hg, inputs, embed, action)
    cast = p.with_matrices_in(torch.bfloat16)
    for name, value in cast.tensors().items():
        want = torch.bfloat16 if name in R.PRIOR_MATRICES else torch.float32
        assert value.dtype == want, name
        torch.testing.assert_close(value.float(), getattr(p, name), rtol=2**-8, atol=0)
    h = torch.randn(batch, groups * hg)
    z = F.one_hot(torch.randint(k, (batch, s)), k).float()
    imaginer = R.RSSMImaginer(lambda: p)
    policy = lambda deter, stoch: torch.tanh(deter[:, :action].float())  # noqa: E731
    outs = []
    for once in (True, False):
        if not once:
            monkeypatch.setattr(R.RSSMParams, "with_matrices_in", lambda self, dtype: self)
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(imaginer(h, z, policy, horizon=horizon))
    once, each = outs
    assert once.prior_logits.dtype == torch.bfloat16 and once.index is None   # no gathers under autocast
    for got, want in zip(once[:4], each[:4]):
        assert torch.equal(got, want)


@pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
@pytest.mark.parametrize("impl", ["auto", "scan", "cpp"])
def test_every_cpu_path_runs_under_bf16_autocast_near_the_reference(impl):
    # precision=bf16 on the CPU with any model.rssm_impl: the C++ cells run in fp32, the
    # PyTorch products in bf16. Later steps follow samples that bf16's rounding may flip,
    # so the first step (no sample yet) is compared with the reference's
    batch, steps, s, k, groups, hg, inputs, embed, action = 4, 6, 4, 8, 2, 16, 32, 16, 3
    p = make_params(s, k, groups, hg, inputs, embed, action)
    emb, act, first, noise = make_inputs(batch, steps, s, k, embed, action, torch.float32)
    h = torch.randn(batch, groups * hg)
    z = F.one_hot(torch.randint(k, (batch, s)), k).float()
    policy = lambda deter, stoch: torch.tanh(deter[:, :action].float())  # noqa: E731
    outs = {}
    for path in (impl, "ref"):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[path] = (R.rssm_observe(emb, act, first, p, noise=noise, impl=path),
                          R.RSSMImaginer(lambda: p, impl=path)(h, z, policy, horizon=3))
    (post, imag), (post_ref, imag_ref) = outs[impl], outs["ref"]
    for got in (post.deter, post.post_logits, imag.deter, imag.prior_logits):
        assert bool(torch.isfinite(got).all())
    for stoch in (post.stoch, imag.stoch[:, 1:]):
        assert bool(((stoch == 0) | (stoch == 1)).all()) and bool((stoch.sum(-1) == 1).all())
    torch.testing.assert_close(post.deter[:, 0].float(), post_ref.deter[:, 0].float(), rtol=0.02, atol=0.02)
    torch.testing.assert_close(post.post_logits[:, 0].float(), post_ref.post_logits[:, 0].float(), rtol=0.05,
                               atol=0.05)
    torch.testing.assert_close(imag.deter[:, 1].float(), imag_ref.deter[:, 1].float(), rtol=0.02, atol=0.02)
