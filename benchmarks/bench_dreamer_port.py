"""One DreamerV3 update beside NM512/dreamerv3-torch's, at equal size, in one process.

NM512/dreamerv3-torch (https://github.com/NM512/dreamerv3-torch) is the PyTorch port of
DreamerV3 most users start from. It is not on the package index: clone it and point
``DREAMERV3_TORCH_DIR`` at the clone (it needs ``ruamel.yaml``, already installed with
this package's dependencies)::

    git clone https://github.com/NM512/dreamerv3-torch /tmp/dreamerv3-torch
    DREAMERV3_TORCH_DIR=/tmp/dreamerv3-torch pytest benchmarks/bench_dreamer_port.py --benchmark-only

The file is skipped without it.

**The port's update** is what its ``Dreamer._train`` runs once per training step:
``WorldModel._train(data)`` (world-model loss, backward, its Adam step) then
``ImagBehavior._train(post, reward)`` (imagination, actor and critic losses, their
backward and Adam steps, the slow-critic update), built as its command line builds
them for ``--configs atari100k`` (its ``configs.yaml``: ``defaults`` updated by
``atari100k``; one-hot actor, REINFORCE) with ``device=cpu``, ``compile=False``,
``precision=32`` and 6 actions. **Ours** is
:func:`bench_dreamer_update._update_fn` (``train_step`` of :class:`DreamerAgent`,
``rssm_impl="auto"``) at ``configs/size/dreamer2023_small.yaml``.

**Equal size** (checked by :func:`_check_sizes`): recurrent state 512 (one GRU, no
blocks), hidden 512, 32 latents x 32 classes, CNN depth 32 (4 stride-2 4x4
convolutions on 64x64 RGB, channel LayerNorm, SiLU), MLPs of 512 units with 2 layers
in the reward and continue heads, the actor and the critic, two-hot heads of 255 bins,
imagination of 15 steps from every one of the ``B * T`` posterior states, a slow
critic. Parameters updated: ours 19,107,463 counted with the slow critic (which no
optimiser updates), the port 17,922,952 without it; the difference is that critic.

**The batch** holds the values of :func:`bench_dreamer_update.replay_batch` (uint8
frames, one-hot actions, rewards, an episode start in the middle of each row) in the
port's layout (numpy, batch first, ``discount`` and ``is_terminal``).

**Rows:** ``malloc`` sets how glibc handles freed memory for the whole process, so
both updates always run under the same setting: ``glibc`` is glibc's default (large
blocks mmapped and unmapped on free, with its adaptive threshold; it must run first in
its process, as no ``mallopt`` call restores that adaptivity), ``retained`` is
:func:`worldmodels.utils.host_memory.retain_freed_memory`, which this package's
training loop applies to CPU runs. Each round runs the port's update then ours
(interleaved, so drifts of the machine's speed hit both), after ``WARMUP`` untimed
rounds: with freed memory retained the heap reaches its working size within a few
updates, after which an update page-faults little or nothing, as in a training run's
thousands of updates. The row stores the mean seconds of each, the mean minor page
faults per timed update of each (``port_faults``, ``worldmodels_faults``: on a virtual
machine a fault can cost tens of microseconds, so they explain most differences between
runs) and ``speedup_worldmodels_vs_port``, the median over rounds of the port's seconds
divided by ours.

**Precision:** the port runs fp32 on the CPU (its ``precision=16`` is CUDA autocast
only). Ours runs fp32 in the ``glibc`` and ``retained`` rows, and bf16 autocast
(``precision=bf16``, the authors' compute dtype) in ``retained-bf16``, a row that runs
where the CPU has native bf16 units (AMX or AVX512-BF16).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_dreamer_update import _update_fn, preset, replay_batch
from conftest import environment_info
from worldmodels.training.precision import cpu_bf16_units
from worldmodels.utils.host_memory import release_freed_memory, retain_freed_memory

PORT_DIR = os.environ.get("DREAMERV3_TORCH_DIR")
if not PORT_DIR or not (Path(PORT_DIR) / "models.py").is_file():
    pytest.skip("set DREAMERV3_TORCH_DIR to a clone of NM512/dreamerv3-torch to compare against it",
                allow_module_level=True)
ruamel_yaml = pytest.importorskip("ruamel.yaml")

SIZE = "dreamer2023_small"
SHAPE = (16, 64)     # (batch, length): both references' training batch
ACTIONS = 6
ROUNDS = 5
WARMUP = 3
# (malloc, our precision), in this order: glibc's adaptive default cannot be restored once changed
ROWS = [pytest.param("glibc", "fp32", id="glibc"), pytest.param("retained", "fp32", id="retained"),
        pytest.param("retained", "bf16", id="retained-bf16", marks=pytest.mark.skipif(
            cpu_bf16_units() is None, reason="needs a CPU with AMX or AVX512-BF16 (else bf16 is emulated)"))]
_MALLOC_CHANGED: list[bool] = []


def port_config(port_dir: Path) -> types.SimpleNamespace:
    """The port's configuration for ``--configs atari100k`` on the CPU."""
    configs = ruamel_yaml.YAML(typ="safe", pure=True).load((port_dir / "configs.yaml").read_text())
    merged = dict(configs["defaults"])
    for key, value in configs["atari100k"].items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    merged.update(device="cpu", compile=False, precision=32, num_actions=ACTIONS)
    return types.SimpleNamespace(**merged)


def _check_sizes(config: types.SimpleNamespace) -> None:
    """The port's configuration has our preset's sizes."""
    ours = preset(SIZE)
    theirs = dict(deter=config.dyn_deter, hidden=config.dyn_hidden, stoch=config.dyn_stoch,
                  classes=config.dyn_discrete, cnn_depth=config.encoder["cnn_depth"], head_units=config.units,
                  actor_layers=config.actor["layers"], critic_layers=config.critic["layers"],
                  head_layers=config.reward_head["layers"], horizon=config.imag_horizon, minres=config.encoder["minres"])
    mismatched = {k: (v, getattr(ours, k)) for k, v in theirs.items() if v != getattr(ours, k)}
    assert not mismatched, f"the port's configuration vs our preset (theirs, ours): {mismatched}"
    assert ours.blocks == 1 and config.dyn_rec_depth == 1


def port_batch(batch: int, length: int) -> dict[str, np.ndarray]:
    """The values of :func:`replay_batch` in the port's layout."""
    ours = replay_batch(batch, length, "cpu")
    return {"image": ours["image"].numpy(), "action": ours["action"].numpy(), "reward": ours["reward"].numpy(),
            "discount": ours["discount"].numpy(), "is_first": ours["is_first"].numpy(),
            "is_terminal": ours["is_terminal"].numpy()}


def port_update_fn(port_dir: Path, shape: tuple[int, int]):
    """``(params, update, commit)``: the port's world model and behaviour, and one update."""
    sys.path.insert(0, str(port_dir))
    try:
        import models  # the port's modules, by its own import style
    finally:
        sys.path.remove(str(port_dir))
    config = port_config(port_dir)
    _check_sizes(config)
    torch.manual_seed(0)
    obs_space = types.SimpleNamespace(spaces={"image": types.SimpleNamespace(shape=(64, 64, 3))})
    world_model = models.WorldModel(obs_space, None, 0, config)
    behavior = models.ImagBehavior(config, world_model)
    params = sum(p.numel() for m in (world_model, behavior.actor, behavior.value) for p in m.parameters())
    data = port_batch(*shape)

    def update():
        post, _, _ = world_model._train(data)
        behavior._train(post, lambda f, s, a: world_model.heads["reward"](world_model.dynamics.get_feat(s)).mode())

    commit = subprocess.run(["git", "-C", str(port_dir), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return params, update, commit


def _minor_faults() -> int:
    """This process's minor page faults so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.parametrize("malloc, precision", ROWS)
def test_update_cpu_vs_port(benchmark, malloc, precision):
    if malloc == "glibc" and _MALLOC_CHANGED:
        pytest.skip("glibc's default (adaptive mmap threshold) cannot be restored after mallopt: run this row first")
    if malloc == "retained":
        _MALLOC_CHANGED.append(retain_freed_memory())
    try:
        port_params, port_update, commit = port_update_fn(Path(PORT_DIR), SHAPE)
        agent, ours = _update_fn("cpu", "auto", SHAPE, SIZE, autocast=precision)
        for _ in range(WARMUP):
            port_update(), ours()
        port_seconds: list[float] = []
        port_faults: list[int] = []
        our_faults: list[int] = []

        def timed_port_update():
            faults, start = _minor_faults(), time.perf_counter()
            port_update()
            port_seconds.append(time.perf_counter() - start)
            port_faults.append(_minor_faults() - faults)

        def counted_ours():
            faults = _minor_faults()
            ours()
            our_faults.append(_minor_faults() - faults)

        benchmark.pedantic(counted_ours, setup=timed_port_update, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    finally:
        if malloc == "retained":
            release_freed_memory()
    batch, length = SHAPE
    benchmark.extra_info.update(environment_info("cpu"))
    benchmark.extra_info.update(dict(size=SIZE, batch=batch, length=length, malloc=malloc, precision=precision,
                                     port_precision="fp32", port_commit=commit,
                                     params_port=port_params,
                                     params_worldmodels=sum(p.numel() for p in agent.parameters())))
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is None or not port_seconds:
        return
    ours_seconds = list(stats.data)
    benchmark.extra_info["port_s"] = round(statistics.mean(port_seconds), 3)
    benchmark.extra_info["worldmodels_s"] = round(statistics.mean(ours_seconds), 3)
    benchmark.extra_info["port_rounds_s"] = [round(t, 3) for t in port_seconds]
    benchmark.extra_info["worldmodels_rounds_s"] = [round(t, 3) for t in ours_seconds]
    benchmark.extra_info["port_faults"] = round(statistics.mean(port_faults))
    benchmark.extra_info["worldmodels_faults"] = round(statistics.mean(our_faults))
    benchmark.extra_info["speedup_worldmodels_vs_port"] = round(
        statistics.median(p / o for p, o in zip(port_seconds, ours_seconds)), 2)
