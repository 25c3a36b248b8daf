"""One DreamerV3 training update (world model + actor-critic) at the 12M preset (and the 2023 small size).

Each row times :func:`worldmodels.training.step.train_step` on a synthetic Atari-like
replay batch (64x64 RGB uint8 frames, 6 discrete actions): loss, backward, the three
clipped Adam groups. The agent is built once per ``rssm_impl`` with the same seed, so
``auto`` (the fused RSSM scan / Triton paths) and ``ref`` run the same weights on the
same batch in one process; the ``auto`` row stores its speed-up over ``ref`` and
updates/s in ``extra_info``.

    pytest benchmarks/bench_dreamer_update.py --benchmark-only

CPU rows use a small batch (B=4, T=16) and the paper's (B=16, T=64) in fp32, and the
2023 small size in bf16 autocast too where the CPU has native bf16 units (AMX or
AVX512-BF16; ``precision=bf16``, the authors' compute dtype); CUDA rows use the paper's
batch and bf16 autocast.
"""

from __future__ import annotations

import time
from importlib import resources

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from worldmodels.algos.dreamerv3.agent import DreamerAgent
from worldmodels.algos.dreamerv3.config import DreamerConfig
from worldmodels.envs.factory import ActionSpace
from worldmodels.training.precision import Precision, cpu_bf16_units
from worldmodels.training.step import train_step

from conftest import environment_info

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
OBS_SPACE = {"image": ((64, 64, 3), np.uint8)}
ACT_SPACE = ActionSpace(True, 6, 0, 5)
CPU_SHAPES = [(4, 16), (16, 64)]   # (batch, length); (16, 64) is the paper's
CUDA_SHAPE = (16, 64)
_SECONDS: dict = {}


def preset(size: str = "dreamer2024_12m", **overrides) -> DreamerConfig:
    """The :class:`DreamerConfig` of ``configs/model/dreamerv3.yaml`` under ``configs/size/<size>.yaml``."""
    configs = resources.files("worldmodels.configs")
    model = OmegaConf.load(configs / "model" / "dreamerv3.yaml")
    sized = OmegaConf.merge(model, OmegaConf.load(configs / "size" / f"{size}.yaml").model)
    fields = {k: v for k, v in OmegaConf.to_container(sized, resolve=True).items() if k != "name"}
    return DreamerConfig(**{**fields, "cnn_keys": "image", "mlp_keys": "$^", **overrides})


def replay_batch(batch: int, length: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A replay batch ``{key: [B, T, ...]}`` with an episode start in the middle of each row."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.zeros(batch, length, dtype=torch.bool)
    first[:, 0] = first[:, length // 2] = True
    action = torch.nn.functional.one_hot(torch.randint(6, (batch, length), generator=gen), 6).float()
    data = {
        "image": torch.randint(0, 256, (batch, length, 64, 64, 3), generator=gen, dtype=torch.uint8),
        "action": action,
        "reward": torch.randn(batch, length, generator=gen),
        "discount": torch.ones(batch, length),
        "is_first": first,
        "is_last": torch.zeros(batch, length, dtype=torch.bool),
        "is_terminal": torch.zeros(batch, length, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in data.items()}


def _update_fn(device: str, impl: str, shape: tuple[int, int], size: str = "dreamer2024_12m",
               autocast: str = "auto"):
    """``(agent, update)``; ``autocast``: "auto" (bf16 on CUDA, fp32 on the CPU), "fp32" or "bf16"."""
    torch.manual_seed(0)
    agent = DreamerAgent(preset(size, rssm_impl=impl), OBS_SPACE, ACT_SPACE).to(device)
    optimizer = torch.optim.Adam(agent.param_groups())
    bf16 = autocast == "bf16" or (autocast == "auto" and device == "cuda")
    precision = Precision(device, torch.bfloat16 if bf16 else None)
    scaler = precision.grad_scaler()
    batch = replay_batch(*shape, device)

    def update():
        train_step(agent, optimizer, [batch], precision=precision, scaler=scaler)
        if device == "cuda":
            torch.cuda.synchronize()

    return agent, update


def _time(update, repeats: int) -> float:
    update()
    start = time.perf_counter()
    for _ in range(repeats):
        update()
    return (time.perf_counter() - start) / repeats


def _row(benchmark, device: str, impl: str, shape: tuple[int, int], repeats: int, size: str = "dreamer2024_12m",
         autocast: str = "auto"):
    agent, update = _update_fn(device, impl, shape, size, autocast)
    batch, length = shape
    params = sum(p.numel() for p in agent.parameters())
    benchmark.extra_info.update(environment_info(device))
    benchmark.extra_info.update(dict(size=size, params=params, batch=batch, length=length, rssm_impl=impl,
                                     precision=autocast))
    if impl != "ref":
        _SECONDS[device, shape, size, autocast] = _time(_update_fn(device, "ref", shape, size, autocast)[1], repeats)
    update()
    benchmark.pedantic(update, rounds=repeats, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    benchmark.extra_info["updates_per_s"] = round(1.0 / stats.mean, 3)
    benchmark.extra_info["replayed_steps_per_s"] = round(batch * length / stats.mean, 1)
    if impl != "ref":
        benchmark.extra_info["ref_s"] = round(_SECONDS[device, shape, size, autocast], 4)
        benchmark.extra_info["speedup_vs_ref"] = round(_SECONDS[device, shape, size, autocast] / stats.mean, 2)


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: f"B{s[0]}xT{s[1]}")
@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_update_cpu(benchmark, impl, shape):
    _row(benchmark, "cpu", impl, shape, repeats=5)


@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_update_cpu_small2023(benchmark, impl):
    """The 2023 paper's ``small`` size (19.1M parameters, the size of NM512/dreamerv3-torch's defaults) at the
    paper's batch: the row ``bench_dreamer_port.py`` sets beside the port."""
    _row(benchmark, "cpu", impl, (16, 64), repeats=3, size="dreamer2023_small")


@pytest.mark.skipif(cpu_bf16_units() is None, reason="needs a CPU with AMX or AVX512-BF16 (else bf16 is emulated)")
@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_update_cpu_small2023_bf16(benchmark, impl):
    """The row above in bf16 autocast (``precision=bf16``)."""
    _row(benchmark, "cpu", impl, (16, 64), repeats=3, size="dreamer2023_small", autocast="bf16")


@needs_cuda
@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_update_cuda(benchmark, impl):
    _row(benchmark, "cuda", impl, CUDA_SHAPE, repeats=10)
