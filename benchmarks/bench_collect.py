"""Env steps per second of the shared collector against raw envpool, in one process.

For each task and env count, rounds alternate between stepping the same envpool batch
directly (``envpool.make(...).step`` with pre-drawn random actions: the ceiling) and
through :class:`worldmodels.rl.collector.Collector` over the package's
:class:`~worldmodels.envs.factory.VectorEnv` (random policy; the same with the
replay's inserts as a hook; and with a small torch policy on the CPU). The ratio
collector / raw is the collector's overhead; the target is >= 0.8 with the random policy.

    python benchmarks/bench_collect.py                   # the table in markdown
    pytest benchmarks/bench_collect.py --benchmark-only  # pytest-benchmark rows
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from worldmodels.envs.factory import EnvSpec, make_env, resolve_task
from worldmodels.rl.collector import Collector
from worldmodels.rl.replay import Replay

envpool = pytest.importorskip("envpool") if "pytest" in sys.modules else __import__("envpool")

TASKS = {"cartpole": ("classic", "cartpole"), "pong": ("atari", "pong")}


class SmallAgent(nn.Module):
    """A two-layer MLP (vectors) or a two-conv CNN (64x64 frames): a CPU policy of the
    size a small agent acts with."""

    def __init__(self, obs_space: dict, actions: int):
        super().__init__()
        if "image" in obs_space:
            self.key = "image"
            self.body = nn.Sequential(nn.Conv2d(3, 16, 8, 4), nn.ReLU(), nn.Conv2d(16, 32, 4, 2), nn.ReLU(),
                                      nn.Flatten(), nn.LazyLinear(64), nn.ReLU())
        else:
            self.key = "vector"
            self.body = nn.Sequential(nn.Linear(obs_space["vector"][0][0], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.LazyLinear(actions)

    def init_policy_state(self, num_envs: int) -> None:
        return None

    @torch.no_grad()
    def policy(self, obs: dict, state: None, mode: str = "greedy", **kwargs):
        x = torch.as_tensor(obs[self.key])
        x = x.permute(0, 3, 1, 2).float() / 255 if self.key == "image" else x.float()
        return self.head(self.body(x)).argmax(-1).numpy(), None


def raw_rate(task: str, num_envs: int, seconds: float) -> float:
    """Env steps/s of envpool stepped directly with random actions."""
    suite, name = TASKS[task]
    env_id = resolve_task(suite, name)[1]
    kwargs = {"img_height": 64, "img_width": 64, "gray_scale": False, "stack_num": 1, "noop_max": 1} \
        if suite == "atari" else {}
    env = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, seed=0, **kwargs)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, (256, num_envs)).astype(np.int32)
    env.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for row in actions[:32]:
            env.step(row)
        steps += 32 * num_envs
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def collector_rate(task: str, num_envs: int, seconds: float, mode: str) -> float:
    """Env steps/s of the collector: ``random``, ``replay`` (random + inserts) or ``agent``."""
    suite, name = TASKS[task]
    env = make_env(EnvSpec(suite, name, num_envs=num_envs, seed=0, size=(64, 64), noop_max=1))
    collector = Collector(env, seed=0)
    agent = None
    if mode == "replay":
        collector.on_step.append(Replay(100_000).add)
    if mode == "agent":
        agent = SmallAgent(env.obs_space, env.act_space.size).eval()
        collector.collect(num_envs, agent)   # materialise the lazy layers
    collector.collect(num_envs, agent)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += collector.collect(32 * num_envs, agent)
    rate = steps / (time.perf_counter() - start)
    collector.close()
    return rate


def measure(task: str, num_envs: int, seconds: float = 1.0, rounds: int = 3) -> dict[str, float]:
    """Best of ``rounds`` alternating rounds of each variant (steps/s) and the ratios."""
    best = {"raw": 0.0, "random": 0.0, "replay": 0.0, "agent": 0.0}
    for _ in range(rounds):
        best["raw"] = max(best["raw"], raw_rate(task, num_envs, seconds))
        for mode in ("random", "replay", "agent"):
            best[mode] = max(best[mode], collector_rate(task, num_envs, seconds, mode))
    return {**best, **{f"{mode}_ratio": best[mode] / best["raw"] for mode in ("random", "replay", "agent")}}


def table(rows: list[tuple[str, int, dict]]) -> str:
    lines = ["| task | envs | raw envpool | collector (random) | ratio | + replay inserts | ratio | "
             "small agent (CPU) | ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for task, n, r in rows:
        lines.append(f"| {task} | {n} | {r['raw']:,.0f} | {r['random']:,.0f} | {r['random_ratio']:.2f} | "
                     f"{r['replay']:,.0f} | {r['replay_ratio']:.2f} | {r['agent']:,.0f} | {r['agent_ratio']:.2f} |")
    return "\n".join(lines)


@pytest.mark.parametrize("task,num_envs", [("cartpole", 1), ("cartpole", 16), ("pong", 4)])
def test_collector_against_raw_envpool(benchmark, task, num_envs):
    from conftest import environment_info

    benchmark.extra_info.update(environment_info())
    result = benchmark.pedantic(measure, args=(task, num_envs, 0.5, 1), rounds=1, iterations=1)
    benchmark.extra_info.update({"task": task, "num_envs": num_envs, **result})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [(task, n, measure(task, n, args.seconds, args.rounds)) for task in args.tasks for n in args.envs]
    print(table(rows))


if __name__ == "__main__":
    main()
