"""One CMA-ES generation of World Models trained in the dream: the whole population as
one batch against a loop over candidates, on the same MDN-RNN.

A generation is pycma's ``ask``, P x R dream rollouts of ``horizon`` steps, and ``tell``.
The batched path steps all P * R rollouts through the MDN-RNN together and acts with
the P controllers through one ``baddbmm``
(:func:`~worldmodels.algos.world_models.dream.dream_returns`); the anchor runs the
same dream one candidate at a time (R rollouts per call,
:func:`~worldmodels.algos.world_models.dream.dream_returns_loop`). Both use the same
seed, so their returns must agree (checked before timing).

* CPU: CarRacing's model (z 32, 256 LSTM units, 5 Gaussians), controller 867
  parameters, P=64, R=16 (the paper's population) and R=1, horizon 100 steps (the
  paper's is 1,000; both paths' time grows linearly with it). At R=16 the loop already
  steps 16 rollouts per call and both paths are bound by the LSTM's matmuls, so the
  batch gains little on a CPU; at R=1 the loop is bound by per-call overhead.
  Each row also stores the roofline of the batched path: the matrix-product FLOPs of a
  generation, this device's float32 GEMM rate measured on the LSTM's own product in the
  same process, the time those FLOPs take at that rate (``gemm_floor_s``: no batched
  dream can beat it) and so the largest speed-up over the loop any batched dream could
  show (``max_speedup_vs_loop`` = the loop's seconds / ``gemm_floor_s``).
* CUDA (skipped without a GPU): the same at horizon 1,000.

Each row stores the loop's median seconds and ``speedup_vs_loop``.

    pytest benchmarks/bench_dream.py --benchmark-only
"""

from __future__ import annotations

import time

import pytest
import torch

from worldmodels.algos.world_models.cmaes import PopulationSearch, fitness
from worldmodels.algos.world_models.controller import carracing_actions, parameter_count
from worldmodels.algos.world_models.dream import DreamSettings, dream_returns, dream_returns_loop
from worldmodels.algos.world_models.mdnrnn import MDNRNN, MDNRNNConfig

from conftest import finish_row, median_seconds

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LATENT, HIDDEN, MIXTURES, ACTIONS = 32, 256, 5, 3
POPULATION, ROLLOUTS = 64, 16
HORIZON = {"cpu": 100, "cuda": 1000}


def build(device: str) -> tuple[MDNRNN, torch.Tensor]:
    """CarRacing's MDN-RNN (random weights, eval mode) and 100 start latents."""
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(latent_dim=LATENT, action_dim=ACTIONS, hidden_size=HIDDEN,
                                num_mixtures=MIXTURES)).to(device).eval()
    return model, torch.randn(100, LATENT)


def generation_flops(model: MDNRNN, population: int, rollouts: int, horizon: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of the matrix products in one generation: per
    rollout step the LSTM's input and recurrent products, M's heads and the controller."""
    c = model.config
    per_row = (c.latent_dim + c.action_dim) * 4 * c.hidden_size + c.hidden_size * 4 * c.hidden_size
    per_row += c.hidden_size * (3 * c.latent_dim * c.num_mixtures + int(c.predict_reward) + int(c.predict_done))
    per_row += (c.latent_dim + c.hidden_size) * c.action_dim
    return 2.0 * per_row * population * rollouts * horizon


def gemm_rate(rows: int, inner: int, cols: int, device: str) -> float:
    """FLOP/s of a float32 ``[rows, inner] @ [inner, cols]`` here (median of 30)."""
    a = torch.randn(rows, inner, device=device)
    b = torch.randn(inner, cols, device=device)
    return 2.0 * rows * inner * cols / median_seconds(lambda: a @ b, device)


def generation(model, starts, settings, device, evaluate) -> float:
    """ask, evaluate every candidate in the dream, tell; returns the best fitness."""
    search = PopulationSearch(parameter_count(LATENT + HIDDEN, ACTIONS), POPULATION, 0.1, seed=0)
    solutions = search.ask()
    theta = torch.from_numpy(solutions).float().to(device)
    returns = evaluate(model, theta, starts, settings, 1, carracing_actions).cpu().numpy()
    fit = fitness(returns, solutions, 0.01)
    search.tell(solutions, fit)
    return float(fit.max())


def _row(benchmark, device: str, rollouts: int = ROLLOUTS) -> None:
    model, starts = build(device)
    settings = DreamSettings(rollouts=rollouts, horizon=HORIZON[device], temperature=1.0)
    theta = 0.1 * torch.randn(POPULATION, parameter_count(LATENT + HIDDEN, ACTIONS), device=device)
    check = DreamSettings(rollouts=rollouts, horizon=20, temperature=1.0)
    torch.testing.assert_close(dream_returns(model, theta, starts, check, 1, carracing_actions),
                               dream_returns_loop(model, theta, starts, check, 1, carracing_actions),
                               atol=1e-4, rtol=1e-4)
    start = time.perf_counter()
    PopulationSearch(parameter_count(LATENT + HIDDEN, ACTIONS), POPULATION, 0.1, seed=0).ask()
    benchmark.group = f"World Models dream generation {device} P={POPULATION} R={rollouts} T={settings.horizon}"
    benchmark.extra_info.update(population=POPULATION, rollouts=rollouts, horizon=settings.horizon,
                                latent=LATENT, hidden=HIDDEN, mixtures=MIXTURES,
                                cma_init_ask_s=time.perf_counter() - start)
    anchor = median_seconds(lambda: generation(model, starts, settings, device, dream_returns_loop), device,
                            repeats=1, warmup=0)
    benchmark.pedantic(lambda: generation(model, starts, settings, device, dream_returns), rounds=3, warmup_rounds=1)
    finish_row(benchmark, "loop", anchor)
    hidden = model.config.hidden_size
    flops = generation_flops(model, POPULATION, rollouts, settings.horizon)
    rate = gemm_rate(POPULATION * rollouts, hidden, 4 * hidden, device)
    benchmark.extra_info.update(gflop=flops / 1e9, gemm_gflops=rate / 1e9, gemm_floor_s=flops / rate,
                                max_speedup_vs_loop=anchor * rate / flops)


@needs_cuda
def test_dream_generation_cuda(record_env):
    record_env.extra_info["device"] = torch.cuda.get_device_name()
    _row(record_env, "cuda")


@pytest.mark.parametrize("rollouts", [ROLLOUTS, 1])
def test_dream_generation_cpu(record_env, rollouts):
    _row(record_env, "cpu", rollouts)
