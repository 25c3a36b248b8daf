"""RSSM observe (forward + backward) and imagination: fast paths vs their anchors.

Rows time the public ``rssm_observe`` with ``impl`` = fast path, the eager reference
and ``torch.compile`` of the reference, on the same inputs in one process; each fast
row stores its speed-up over the anchors in ``extra_info``. CUDA rows skip without CUDA.

    pytest benchmarks/bench_rssm.py --benchmark-only
"""

from __future__ import annotations

import time

import pytest
import torch

from worldmodels.nn.rssm import RSSM, RSSMConfig
from worldmodels.ops.rssm import (RSSMObservation, core_step_ref, embed_projection, initial_state, post_head,
                                  prior_head, reset_state, rssm_observe)
from worldmodels.ops.sampling import st_categorical_ref

from conftest import environment_info

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CPU_SIZES = [(512, 1), (1024, 4)]           # (deter, blocks); B=16, T=64, 32x32
GPU_SIZES = [(512, 1), (4096, 8)]
BATCH, STEPS, EMBED, ACTION = 16, 64, 1024, 6
_SECONDS: dict = {}


def _setup(deter: int, blocks: int, device: str):
    torch.manual_seed(0)
    config = RSSMConfig(deter=deter, blocks=blocks, stoch=32, classes=32, hidden=512, embed_dim=EMBED,
                        action_dim=ACTION)
    model = RSSM(config).to(device)
    embed = torch.randn(BATCH, STEPS, EMBED, device=device, requires_grad=True)
    action = torch.randn(BATCH, STEPS, ACTION, device=device)
    first = torch.zeros(BATCH, STEPS, dtype=torch.bool, device=device)
    first[:, 0] = True
    noise = torch.rand(BATCH, STEPS, 32, 32, device=device)
    return model, embed, action, first, noise


def _compiled_observe():
    """The reference with its per-step body under ``torch.compile`` (compiling the whole
    64-step unrolled loop takes over ten minutes on a 2-core CPU)."""
    step = torch.compile(_reference_step, dynamic=False)

    def run(embed, action, first, params, noise):
        deter, stoch = initial_state(params, embed.shape[0])
        embed_proj = embed_projection(embed, params)
        seq = []
        for t in range(embed.shape[1]):
            deter, stoch, prior, post = step(deter, stoch, action[:, t], first[:, t], embed_proj[:, t], noise[:, t],
                                             params)
            seq.append((deter, stoch, prior, post))
        return RSSMObservation(*(torch.stack(x, 1) for x in zip(*seq)))

    return run


def _reference_step(deter, stoch, action, first, embed_proj, noise, params):
    deter, stoch, action = reset_state(deter, stoch, action, first, params)
    deter = core_step_ref(deter, stoch, action, params)
    post = post_head(deter, embed_proj, params)
    stoch = st_categorical_ref(post, 0.01, noise).sample
    return deter, stoch, prior_head(deter, params), post


def _step_fn(model, embed, action, first, noise, impl: str):
    if impl == "compile":
        observe = _compiled_observe()
    else:
        observe = lambda *a, **k: rssm_observe(*a, impl=impl, **k)  # noqa: E731

    def step():
        model.zero_grad(set_to_none=True)
        out = observe(embed, action, first, model.params(), noise=noise)
        loss = out.deter.square().mean() + model.kl_loss(out.post_logits, out.prior_logits).loss.mean()
        loss.backward()
        if embed.is_cuda:
            torch.cuda.synchronize()

    return step


def _time(step, repeats: int) -> float:
    step()  # warm-up (and compilation)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _row(benchmark, device: str, deter: int, blocks: int, impl: str, anchors: tuple[str, ...], repeats: int):
    inputs = _setup(deter, blocks, device)
    benchmark.extra_info.update(environment_info(device))
    benchmark.extra_info.update(dict(batch=BATCH, steps=STEPS, deter=deter, blocks=blocks, stoch="32x32", impl=impl))
    for anchor in anchors:
        key = (device, deter, blocks, anchor)
        if key not in _SECONDS:
            _SECONDS[key] = _time(_step_fn(*inputs, anchor), repeats)
    step = _step_fn(*inputs, impl)
    step()
    benchmark.pedantic(step, rounds=repeats, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    mine = stats.mean
    for anchor in anchors:
        benchmark.extra_info[f"speedup_vs_{anchor}"] = round(_SECONDS[device, deter, blocks, anchor] / mine, 2)
        benchmark.extra_info[f"{anchor}_s"] = round(_SECONDS[device, deter, blocks, anchor], 4)


@pytest.mark.parametrize("deter, blocks", CPU_SIZES)
@pytest.mark.parametrize("impl", ["scan", "ref"])
def test_observe_fwd_bwd_cpu(benchmark, deter, blocks, impl):
    anchors = ("ref", "compile") if impl == "scan" else ()
    _row(benchmark, "cpu", deter, blocks, impl, anchors, repeats=2)


@needs_cuda
@pytest.mark.parametrize("deter, blocks", GPU_SIZES)
@pytest.mark.parametrize("impl", ["auto", "scan"])
def test_observe_fwd_bwd_cuda(benchmark, deter, blocks, impl):
    _row(benchmark, "cuda", deter, blocks, impl, ("ref", "compile"), repeats=10)


@needs_cuda
@pytest.mark.parametrize("use_graph", [False, True])
def test_imagine_horizon_cuda(benchmark, use_graph):
    """Imagination of 15 steps at B=1024 (deter 512, 32x32), random-action policy."""
    model = RSSM(RSSMConfig(deter=512, blocks=1, stoch=32, classes=32, hidden=512, embed_dim=EMBED,
                            action_dim=ACTION)).cuda()
    deter = torch.randn(1024, 512, device="cuda")
    stoch = torch.nn.functional.one_hot(torch.randint(32, (1024, 32), device="cuda"), 32).float()
    imaginer = model.imaginer(use_graph=use_graph)
    policy = lambda h, z: torch.tanh(torch.randn(h.shape[0], ACTION, device=h.device))  # noqa: E731

    def run():
        imaginer(deter, stoch, policy, horizon=15)
        torch.cuda.synchronize()

    run(), run()
    benchmark.extra_info.update(environment_info("cuda"))
    benchmark.extra_info.update(dict(batch=1024, horizon=15, use_graph=use_graph))
    benchmark.pedantic(run, rounds=20, iterations=1)
    _SECONDS["imagine", use_graph] = benchmark.stats.stats.mean
    if ("imagine", False) in _SECONDS and use_graph:
        benchmark.extra_info["speedup_vs_eager"] = round(_SECONDS["imagine", False] / benchmark.stats.stats.mean, 2)
        benchmark.extra_info["step_latency_us"] = round(benchmark.stats.stats.mean / 15 * 1e6, 1)
