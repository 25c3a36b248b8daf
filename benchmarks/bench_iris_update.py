"""One IRIS update of each component, fused ops (``impl="auto"``) against ``impl="ref"``.

Each row times :func:`worldmodels.training.step.train_step` on one component's
synthetic batch (loss, backward, its clipped AdamW group) and stores the speed-up over
the same agent built with every op on its reference path (the VQ lookup of the
tokenizer, the attention of the world model and of the imagination's KV cache), and
the time of an IRIS epoch of that component (200 updates).

* CUDA (skipped without a GPU): IRIS's Atari configuration (``configs/model/iris.yaml``,
  64x64 frames, 6 actions) with its batch sizes (tokenizer 256 frames, world model
  64 x 20 frames, actor-critic 64 sequences of burn-in 20 and a 20-step imagination),
  bf16 autocast.
* CPU: the ``iris_tiny`` widths on 32x32 frames with small batches. On the CPU
  ``auto`` picks the references too, so these rows check the harness, not speed.

    pytest benchmarks/bench_iris_update.py --benchmark-only
"""

from __future__ import annotations

import functools
from importlib import resources

import pytest
import torch
from omegaconf import OmegaConf

from worldmodels.algos.iris.agent import IrisAgent, OptimConfig
from worldmodels.algos.iris.experiment import agent_configs
from worldmodels.training.precision import Precision
from worldmodels.training.step import train_step

from conftest import environment_info, median_seconds

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COMPONENTS = ("tokenizer", "world_model", "actor_critic")
NUM_ACTIONS = 6
UPDATES_PER_EPOCH = 200
SETTINGS = {  # device: (experiment for the widths, frame size, batch sizes, sequence length)
    "cuda": ("iris_atari", 64, {"tokenizer": 256, "world_model": 64, "actor_critic": 64}, 20),
    "cpu": ("iris_tiny", 32, {"tokenizer": 8, "world_model": 4, "actor_critic": 4}, 8),
}


def model_config(experiment: str, impl: str):
    """``cfg.model`` of ``configs/model/iris.yaml`` under ``configs/exp/<experiment>.yaml``,
    every op at ``impl``."""
    configs = resources.files("worldmodels.configs")
    model = OmegaConf.load(configs / "model" / "iris.yaml")
    exp = OmegaConf.load(configs / "exp" / f"{experiment}.yaml")
    model = OmegaConf.merge(model, exp.get("model", {}))
    model.tokenizer.impl = model.world_model.impl = impl
    return model


def build_agent(device: str, impl: str) -> IrisAgent:
    experiment, size, _, _ = SETTINGS[device]
    cfg = OmegaConf.create({"model": model_config(experiment, impl)})
    torch.manual_seed(0)
    tok, wm, ac = agent_configs(cfg, (size, size, 3), NUM_ACTIONS)
    optim = {name: OptimConfig(**cfg.model.optim[name]) for name in COMPONENTS}
    return IrisAgent(tok, wm, ac, optim=optim).to(device)


def component_batch(agent: IrisAgent, device: str, name: str) -> dict[str, torch.Tensor]:
    """A synthetic batch of component ``name`` in the layout that
    :class:`~worldmodels.rl.component_data.ComponentData` gives."""
    _, size, batch_sizes, length = SETTINGS[device]
    frames = {"tokenizer": 1, "world_model": length, "actor_critic": agent.actor_critic.config.burn_in + 1}[name]
    batch = batch_sizes[name]
    gen = torch.Generator().manual_seed(0)
    data = {"observations": torch.randint(0, 256, (batch, frames, 3, size, size), generator=gen, dtype=torch.uint8),
            "mask_padding": torch.ones(batch, frames, dtype=torch.bool)}
    if name == "world_model":
        data.update(actions=torch.randint(NUM_ACTIONS, (batch, frames), generator=gen),
                    rewards=torch.randint(-1, 2, (batch, frames), generator=gen).float(),
                    ends=torch.zeros(batch, frames, dtype=torch.bool))
    return {key: value.to(device) for key, value in data.items()}


def update_fn(device: str, impl: str, name: str):
    agent = build_agent(device, impl)
    optimizer = torch.optim.AdamW(agent.param_groups())
    precision = Precision(device, torch.bfloat16 if device == "cuda" else None)
    scaler = precision.grad_scaler()
    batch = {name: component_batch(agent, device, name)}

    def update():
        train_step(agent, optimizer, [batch], precision=precision, scaler=scaler)

    return agent, update


@functools.cache
def ref_seconds(device: str, name: str, repeats: int) -> float:
    return median_seconds(update_fn(device, "ref", name)[1], device, repeats=repeats, warmup=1)


def _row(benchmark, device: str, name: str, repeats: int) -> None:
    agent, update = update_fn(device, "auto", name)
    benchmark.group = f"IRIS update {name} {device}"
    benchmark.extra_info.update(environment_info(device))
    benchmark.extra_info.update(component=name, params=sum(p.numel() for p in getattr(agent, name).parameters()),
                                batch=SETTINGS[device][2][name], experiment=SETTINGS[device][0])
    anchor = ref_seconds(device, name, repeats)
    update()
    benchmark.pedantic(update, rounds=repeats, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    benchmark.extra_info.update(ref_s=anchor, speedup_vs_ref=anchor / stats.median,
                                epoch_s=UPDATES_PER_EPOCH * stats.median, ref_epoch_s=UPDATES_PER_EPOCH * anchor)


@needs_cuda
@pytest.mark.parametrize("name", COMPONENTS)
def test_component_update_cuda(record_env, name):
    _row(record_env, "cuda", name, repeats=10)


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_update_cpu(record_env, name):
    _row(record_env, "cpu", name, repeats=3)
