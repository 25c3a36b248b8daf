"""One DreamerV3 training update of SheepRL beside ours, at the 12M preset, in one process.

Each ``test_update_cpu[sheeprl-BxT]`` row times one call of SheepRL's own update,
``sheeprl.algos.dreamer_v3_5.dreamer_v3_5.train`` (world-model loss, imagination,
actor-critic loss, one backward pass and its LaProp step), followed by its slow-critic
EMA (``update_target_critic``, which its training loop runs after every ``train``).
SheepRL (``pip install sheeprl==0.8.4``, not a dependency of this package) is
configured as its command line would be for ``exp=dreamer_v3_5 algo=dreamer_v3_5_12M``
(composed with Hydra from ``sheeprl.configs``, see ``SHEEPRL_OVERRIDES``), on a CPU
``lightning.Fabric`` in ``32-true`` precision with ``algo.compile.enabled=False``. Its
batch holds the same values as the one of :mod:`bench_dreamer_update` (64x64 RGB uint8
frames, 6 one-hot actions, rewards, an episode start in the middle of each row) in
SheepRL's replay layout: time first, images channels first, ``rewards`` /
``terminated`` / ``truncated`` / ``is_first`` as float ``[T, B, 1]``.

Beside it, in the same process and at the same shape, the row stores in ``extra_info``
the mean time of this package's update (``bench_dreamer_update._update_fn`` with
``rssm_impl="auto"``) as ``worldmodels_s``, ``speedup_worldmodels_vs_sheeprl`` (SheepRL
seconds / ours) and the parameter counts ``params_sheeprl`` and ``params_worldmodels``:
the weights each optimiser updates, i.e. world model + actor + critic, without the slow
(target) critics and without buffers such as the return statistics.

    pytest benchmarks/bench_dreamer_sheeprl.py --benchmark-only

The file is skipped where ``sheeprl`` cannot be imported.

Same in both updates: the preset's sizes (recurrent state 2048 in 8 GRU blocks, width
256, 32 latents x 16 classes, CNN multiplier 16, MLPs of 256 units with 3 layers in
the actor and critic and 1 in the reward and continue heads), fp32 eager on the CPU,
the batch, imagination of 15 steps from every one of the ``B * T`` detached posterior
states, gamma = 1 - 1/333 and lambda = 0.95, REINFORCE for the discrete actions with an
entropy bonus of 3e-4 and a 1% unimix, returns normalised by an EMA (0.99) of their
5-95 percentile range (at least 1), two-hot (255 bins) reward and critic heads, the
critic bootstrapping from itself and regularised towards a slow copy (EMA 0.02 after
every update), free nats 1, the reward loss training the latent states.

Set to match ours (``SHEEPRL_OVERRIDES``; SheepRL's preset defaults differ):
``algo.replay_context=0`` (sequences start from a zero state; ours from its learned
initial state; the preset would start them from latent states kept in the replay
buffer, one context step before each sequence), ``algo.critic.replay_loss=False`` (no
critic loss on the replayed states, which ours does not have; the preset adds it with a
scale of 0.3, a critic and a slow-critic pass over the ``B * T`` replayed states whose
gradient also reaches the world model) and ``algo.world_model.continue_discount=False``
(the continue head predicts ``1 - terminated`` and the returns are discounted by gamma,
as ours; this changes targets only, not the work).

Still different (the two follow different versions of DreamerV3: SheepRL's
``dreamer_v3_5`` the Nature paper of 2025, ours the 2023 preprint):

- CNNs: SheepRL 5x5 stride-1 convolutions, each followed by a 2x2 max pooling and an
  RMSNorm, channels 16 x (2, 3, 4, 4); ours 4x4 stride-2 convolutions with LayerNorm,
  channels 16 x (1, 2, 4, 8). SheepRL's first convolutions run at full resolution, so
  its encoder and decoder cost more arithmetic; its decoder projects the recurrent state
  with block-diagonal weights (8 blocks) and upsamples by nearest neighbour + conv, ours
  uses one linear layer and transposed convolutions.
- RSSM: SheepRL projects h, z and a separately (256 each) before the block GRU and its
  prior has 2 hidden layers; ours projects [z, a] jointly and its prior has 1. SheepRL
  unrolls the posterior scan in Python, one module call per step; ours (``auto``) runs
  the fused C++ scan on the CPU.
- Optimiser: SheepRL one LaProp (lr 4e-5, adaptive gradient clipping 0.3, linear lr
  warmup over 1000 steps) over the sum of all losses; ours one Adam with three groups
  (world model 1e-4, actor and critic 3e-5), each group's gradient norm clipped on its
  own (1000 / 100 / 100).
- Loss details that change values, not work: KL dynamics scale 1.0 (SheepRL) vs 0.5,
  images reconstructed in [0, 1] vs [-0.5, 0.5], the first imagined continue predicted
  by the continue head (SheepRL) vs ``1 - is_terminal`` of the start state.
"""

from __future__ import annotations

import contextlib
import time

import pytest

sheeprl = pytest.importorskip("sheeprl", reason="needs SheepRL (pip install sheeprl==0.8.4) to compare against")

import gymnasium as gym  # noqa: E402
import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from lightning.fabric import Fabric  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sheeprl.algos.dreamer_v3_5.agent import build_agent  # noqa: E402
from sheeprl.algos.dreamer_v3_5.dreamer_v3_5 import train, update_target_critic  # noqa: E402
from sheeprl.algos.dreamer_v3_5.utils import Moments  # noqa: E402
from sheeprl.utils.utils import dotdict  # noqa: E402

from bench_dreamer_update import CPU_SHAPES, _update_fn, preset, replay_batch  # noqa: E402
from conftest import environment_info  # noqa: E402

ACTIONS = 6
ROUNDS = 3
SHEEPRL_OVERRIDES = (
    "exp=dreamer_v3_5",
    "algo=dreamer_v3_5_12M",
    "algo.compile.enabled=False",
    "fabric.accelerator=cpu",
    "fabric.devices=1",
    "fabric.precision=32-true",
    "metric.log_level=0",
    # Closer to our update (see the module docstring)
    "algo.replay_context=0",
    "algo.critic.replay_loss=False",
    "algo.world_model.continue_discount=False",
)


def sheeprl_config(batch: int, length: int) -> dotdict:
    """SheepRL's resolved configuration, as its command line builds it from ``SHEEPRL_OVERRIDES``."""
    overrides = [*SHEEPRL_OVERRIDES, f"algo.per_rank_batch_size={batch}", f"algo.per_rank_sequence_length={length}"]
    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def _check_sizes(cfg: dotdict) -> None:
    """SheepRL's preset has our preset's sizes."""
    ours, algo = preset(), cfg.algo
    wm = algo.world_model
    theirs = dict(deter=wm.recurrent_model.recurrent_state_size, blocks=wm.recurrent_model.blocks,
                  hidden=wm.recurrent_model.hidden_size, stoch=wm.stochastic_size, classes=wm.discrete_size,
                  cnn_depth=algo.cnn_channels_multiplier, head_units=algo.dense_units,
                  actor_layers=algo.actor.mlp_layers, critic_layers=algo.critic.mlp_layers,
                  head_layers=wm.reward_model.mlp_layers, horizon=algo.horizon)
    mismatched = {k: (v, getattr(ours, k)) for k, v in theirs.items() if v != getattr(ours, k)}
    assert not mismatched, f"SheepRL vs our preset (theirs, ours): {mismatched}"


def sheeprl_batch(batch: int, length: int) -> dict[str, torch.Tensor]:
    """The values of :func:`bench_dreamer_update.replay_batch` in the layout of SheepRL's replay samples."""
    ours = replay_batch(batch, length, "cpu")

    def steps(x: torch.Tensor) -> torch.Tensor:  # [B, T] -> float [T, B, 1]
        return x.transpose(0, 1).float().unsqueeze(-1).contiguous()

    return {
        "rgb": ours["image"].permute(1, 0, 4, 2, 3).contiguous(),  # [T, B, C, H, W]
        "actions": ours["action"].transpose(0, 1).contiguous(),
        "rewards": steps(ours["reward"]),
        "terminated": steps(ours["is_terminal"]),
        "truncated": steps(ours["is_last"] & ~ours["is_terminal"]),
        "is_first": steps(ours["is_first"]),
    }


@contextlib.contextmanager
def _validate_args(value: bool):
    """``torch.distributions`` argument checks as SheepRL's command line sets them (restored after)."""
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(value)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


def sheeprl_update_fn(shape: tuple[int, int]):
    """SheepRL's agent, optimiser and return moments as its ``main`` builds them, and one update on a fixed batch.
    Returns ``(params, update)``: the number of weights the optimiser updates and the update."""
    batch, length = shape
    cfg = sheeprl_config(batch, length)
    _check_sizes(cfg)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    torch.manual_seed(0)
    obs_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)})
    world_model, actor, critic, target_critic, _ = build_agent(fabric, (ACTIONS,), False, cfg, obs_space)
    optimizer = hydra.utils.instantiate(
        cfg.algo.optimizer, params=[*world_model.parameters(), *actor.parameters(), *critic.parameters()],
        _convert_="all")
    optimizer = fabric.setup_optimizers(optimizer)
    m = cfg.algo.actor.moments
    moments = Moments(m.decay, m.max, m.percentile.low, m.percentile.high)
    data = sheeprl_batch(batch, length)
    params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])

    def update():
        with _validate_args(cfg.distribution.validate_args):
            train(fabric, cfg, world_model, actor, critic, target_critic, optimizer, moments, data, None, (ACTIONS,))
        update_target_critic(critic, target_critic, cfg.algo.critic.tau)

    return params, update


def worldmodels_seconds(shape: tuple[int, int], repeats: int) -> tuple[int, float | None]:
    """``(params, mean seconds)`` of our update (``rssm_impl="auto"``) after one warm-up call; with
    ``repeats=0`` (``--benchmark-disable``) it runs once and returns no time."""
    agent, update = _update_fn("cpu", "auto", shape)
    params = sum(p.numel() for group in agent.param_groups() for p in group["params"])
    update()
    if repeats == 0:
        return params, None
    start = time.perf_counter()
    for _ in range(repeats):
        update()
    return params, (time.perf_counter() - start) / repeats


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: f"sheeprl-B{s[0]}xT{s[1]}")
def test_update_cpu(benchmark, shape):
    batch, length = shape
    params_ours, ours_s = worldmodels_seconds(shape, 0 if benchmark.disabled else ROUNDS)
    params_sheeprl, update = sheeprl_update_fn(shape)
    benchmark.extra_info.update(environment_info("cpu"))
    benchmark.extra_info.update(dict(size="dreamer2024_12m", batch=batch, length=length, sheeprl=sheeprl.__version__,
                                     sheeprl_overrides=list(SHEEPRL_OVERRIDES), params_sheeprl=params_sheeprl,
                                     params_worldmodels=params_ours))
    benchmark.pedantic(update, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is None or ours_s is None:
        return
    benchmark.extra_info["updates_per_s"] = round(1.0 / stats.mean, 3)
    benchmark.extra_info["worldmodels_s"] = round(ours_s, 4)
    benchmark.extra_info["speedup_worldmodels_vs_sheeprl"] = round(stats.mean / ours_s, 2)
