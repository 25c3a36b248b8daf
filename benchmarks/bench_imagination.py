"""IRIS imagination with the KV cache against the same model without one.

An imagined step feeds the action and samples the next frame's ``K`` tokens one at a
time. :meth:`IrisWorldModel.step` appends each new token to per-layer KV caches
(``K + 1`` single-token forwards per step); the anchor, :func:`imagine_uncached`,
is the same world model run the way a cache-free implementation must: every new
token re-runs the transformer over the whole sequence so far. Both decode greedily
from the same first frame and actions, so they must produce the same tokens (checked
before timing).

* CUDA (skipped without a GPU): IRIS's Atari world model (10 layers, 4 heads, width
  256, ``K = 16``, 20-frame context), ``B = 64``, 19 imagined steps (the cache holds
  20 frames = 340 tokens), fp32 and bf16 autocast.
* CPU: a narrow model (2 layers, width 64, ``K = 16``), ``B = 8``, 7 steps.

Each row stores the anchor's median seconds and ``speedup_vs_uncached``.

    pytest benchmarks/bench_imagination.py --benchmark-only
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from worldmodels.algos.iris.world_model import IrisWorldModel, IrisWorldModelConfig

from conftest import finish_row, median_seconds, sync

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PAPER = dict(num_actions=6, vocab_size=512, tokens_per_obs=16, max_blocks=20, num_layers=10, num_heads=4,
             embed_dim=256)
NARROW = dict(num_actions=6, vocab_size=64, tokens_per_obs=16, max_blocks=8, num_layers=2, num_heads=2,
              embed_dim=64)
SHAPES = {"cuda": (PAPER, 64), "cpu": (NARROW, 8)}  # (world model, batch)


def build(device: str) -> tuple[IrisWorldModel, torch.Tensor, torch.Tensor]:
    """The world model (eval mode), first-frame tokens ``[B, K]`` and actions ``[B, steps]``."""
    config, batch = SHAPES[device]
    torch.manual_seed(0)
    model = IrisWorldModel(IrisWorldModelConfig(**config)).to(device).eval()
    steps = config["max_blocks"] - 1
    gen = torch.Generator().manual_seed(1)
    first = torch.randint(config["vocab_size"], (batch, config["tokens_per_obs"]), generator=gen)
    actions = torch.randint(config["num_actions"], (batch, steps), generator=gen)
    return model, first.to(device), actions.to(device)


@torch.no_grad()
def imagine_cached(model: IrisWorldModel, first: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Greedy imagination through :meth:`IrisWorldModel.step`: tokens ``[B, steps, K]``."""
    model.reset_imagination(first)
    return torch.stack([model.step(actions[:, t], greedy=True)[0] for t in range(actions.shape[1])], dim=1)


@torch.no_grad()
def imagine_uncached(model: IrisWorldModel, first: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The same rollout with no cache: each token re-reads the whole sequence."""
    sequence, frames = first, []
    for t in range(actions.shape[1]):
        sequence = torch.cat([sequence, actions[:, t : t + 1]], dim=1)
        frame = []
        for _ in range(model.config.tokens_per_obs):
            token = model(sequence).logits_obs[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
            frame.append(token)
        frames.append(torch.cat(frame, dim=1))
    return torch.stack(frames, dim=1)


def _precision(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


@functools.cache
def uncached_seconds(device: str, dtype: torch.dtype) -> float:
    model, first, actions = build(device)
    with _precision(device, dtype):
        return median_seconds(lambda: imagine_uncached(model, first, actions), device, repeats=5, warmup=1)


def _row(benchmark, device: str, dtype: torch.dtype) -> None:
    model, first, actions = build(device)
    config, batch = SHAPES[device]
    with _precision(device, dtype):
        cached, uncached = imagine_cached(model, first, actions), imagine_uncached(model, first, actions)
        agree = (cached == uncached).float().mean().item()
        if dtype == torch.float32:
            assert agree == 1.0, f"cached and uncached imagination disagree on {1 - agree:.1%} of the tokens"
        anchor = uncached_seconds(device, dtype)
        benchmark.group = f"IRIS imagination {device} B={batch} steps={actions.shape[1]} {dtype}"
        benchmark.extra_info.update(batch=batch, steps=int(actions.shape[1]), dtype=str(dtype),
                                    token_agreement=agree, **{k: v for k, v in config.items() if k != "num_actions"})

        def run():
            imagine_cached(model, first, actions)
            sync(device)

        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    finish_row(benchmark, "uncached", anchor)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_imagination_cuda(record_env, dtype):
    record_env.extra_info["device"] = torch.cuda.get_device_name()
    _row(record_env, "cuda", dtype)


def test_imagination_cpu(record_env):
    _row(record_env, "cpu", torch.float32)
