"""Does the dream rank policies as the real environment does?

A controller trained in the dream is only as good as M's ranking of behaviours: CMA-ES
climbs whatever the dream rewards. This check plays the same fixed policies, in env
action space, in M's dream (from the first frames of the recorded episodes, at the
run's temperature and done rule) and in the real environment, and reports both scores
side by side with their ranks::

    python -m worldmodels.algos.world_models.policy_check --run runs/world_models/<run>

Policies: the random collection policy (each env keeps its action and redraws it with
probability 0.2 a step, :func:`~.vm_stages.collect_round`'s), doing nothing, and each
action dimension held at its extremes (Doom: always left, always right; CarRacing:
full gas straight, left, right). Writes ``policy_check.csv`` and ``policy_check.json``
to the run directory; needs the controller stage's inputs (``vae.pt``, ``latents.npz``,
``mdnrnn.pt``) and names the stage that makes any that is missing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...errors import WorldModelsError
from ...utils.atomic import atomic_write
from .c_stages import EVAL_SEED, dream_starts, eval_chunks
from .config import PipelineConfig, from_json
from .dream import still_alive
from .envs import WorldModelsEnv, make_batch, resolve_env
from .mdnrnn import MDNRNN, sample_mixture
from .rundir import check_inputs, save_json, saved_settings
from .vm_stages import ACTION_CHANGE_PROB, load_mdnrnn, random_actions

CHECK_SEED = 30_000   # real episodes use seeds cfg.seed + CHECK_SEED + i


@dataclass(frozen=True)
class FixedPolicy:
    """A policy that ignores observations: ``draw(rng, count) -> [count, A]`` env actions;
    each step every env redraws its action with probability ``change_prob``."""

    name: str
    draw: Callable[[np.random.Generator, int], np.ndarray]
    change_prob: float = 0.0

    def first(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.asarray(self.draw(rng, count), np.float32)

    def next(self, rng: np.random.Generator, previous: np.ndarray) -> np.ndarray:
        if self.change_prob <= 0.0:
            return previous
        change = rng.random(len(previous)) < self.change_prob
        return np.where(change[:, None], self.first(rng, len(previous)), previous)


def _constant(values) -> Callable[[np.random.Generator, int], np.ndarray]:
    row = np.asarray(values, np.float32)
    return lambda rng, count: np.broadcast_to(row, (count, len(row))).copy()


def fixed_policies(env: WorldModelsEnv) -> list[FixedPolicy]:
    """The collection policy, doing nothing, and each action dimension at its extremes."""
    policies = [FixedPolicy("random (collection)", lambda rng, n: random_actions(env, rng, n), ACTION_CHANGE_PROB)]
    if env.name == "carracing":   # steering, gas in [0, 1], brake
        return policies + [FixedPolicy("nothing", _constant([0, 0, 0])),
                           FixedPolicy("gas, straight", _constant([0, 1, 0])),
                           FixedPolicy("gas, left", _constant([-1, 1, 0])),
                           FixedPolicy("gas, right", _constant([1, 1, 0]))]
    names = {"doom": ("left", "right")}.get(env.name)
    policies.append(FixedPolicy("nothing", _constant(np.zeros(env.action_dim))))
    for dim in range(env.action_dim):
        for sign, word in ((-1.0, "low"), (1.0, "high")):
            values = np.zeros(env.action_dim)
            values[dim] = sign
            label = names[0 if sign < 0 else 1] if names else f"action {dim} {word} ({sign:+.0f})"
            policies.append(FixedPolicy(label, _constant(values)))
    return policies


@torch.no_grad()
def dream_policy_returns(model: MDNRNN, starts: torch.Tensor, policy: FixedPolicy, rollouts: int, horizon: int,
                         temperature: float, alive_reward: float | None, done_rule: str, seed: int) -> np.ndarray:
    """Returns ``[rollouts]`` of ``policy`` in M's dream from ``rollouts`` start latents
    drawn from ``starts [N, Z]``: the reward head's (or ``alive_reward`` per step alive),
    ended where M's done head says (``done_rule``, as the controller stage's dream)."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    z = starts[torch.randint(len(starts), (rollouts,), generator=generator)]
    state = model.initial_state(rollouts)
    alive, total = torch.ones(rollouts), torch.zeros(rollouts)
    action = policy.first(rng, rollouts)
    for step in range(horizon):
        action = action if step == 0 else policy.next(rng, action)
        state = model.step(z, torch.from_numpy(action), state)
        out = model.heads(state[0])
        z = sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], temperature,
                           torch.rand(z.shape, generator=generator), torch.randn(z.shape, generator=generator))
        reward = torch.full((rollouts,), alive_reward) if alive_reward is not None else out.get("reward")
        if reward is not None:
            total += reward * alive
        if "done_logit" in out:
            alive = alive * still_alive(out["done_logit"], torch.rand(rollouts, generator=generator), done_rule)
        if not alive.any():
            break
    return total.numpy()


def real_policy_returns(cfg: PipelineConfig, env: WorldModelsEnv, policy: FixedPolicy) -> np.ndarray:
    """Returns ``[cfg.eval_episodes]`` of ``policy`` in the real env (seeds
    ``cfg.seed + CHECK_SEED + i``), at most ``cfg.controller_steps`` steps each."""
    rng = np.random.default_rng([cfg.seed, CHECK_SEED])
    returns = []
    for seed, count in eval_chunks(cfg, CHECK_SEED):
        batch = make_batch(env, count, seed, cfg.controller_steps)
        batch.reset()
        total, alive = np.zeros(count), np.ones(count, bool)
        action = policy.first(rng, count)
        for step in range(cfg.controller_steps):
            action = action if step == 0 else policy.next(rng, action)
            _, reward, done = batch.step(action)
            total += np.where(alive, reward, 0.0)
            alive &= ~np.asarray(done, bool)
            if not alive.any():
                break
        batch.close()
        returns.append(total)
    return np.concatenate(returns)


def ranks(values: np.ndarray) -> np.ndarray:
    """1 for the largest value (ties share the lower rank)."""
    order = (-np.asarray(values)).argsort(kind="stable")
    out = np.empty(len(values), np.int64)
    out[order] = np.arange(1, len(values) + 1)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors (1: the same order, -1: reversed)."""
    ra, rb = ranks(a).astype(float), ranks(b).astype(float)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


def check_dream(cfg: PipelineConfig, run: Path, rollouts: int, temperature: float | None = None,
                progress: bool = True) -> list[dict]:
    """Every :func:`fixed_policies` entry's dream and real scores; writes
    ``policy_check.csv`` and ``policy_check.json`` to ``run``; returns the rows."""
    check_inputs(run, "controller", cfg.env, ())
    env = resolve_env(cfg.env)
    model = load_mdnrnn(run, torch.device("cpu")).eval()
    starts = dream_starts(run)
    tau = cfg.temperature if temperature is None else temperature
    rows = []
    for policy in tqdm(fixed_policies(env), desc="policies", disable=not progress):
        dream = dream_policy_returns(model, starts, policy, rollouts, cfg.controller_steps, tau, env.alive_reward,
                                     cfg.dream_done, cfg.seed + CHECK_SEED)
        real = real_policy_returns(cfg, env, policy)
        rows.append({"policy": policy.name, "dream_mean": float(dream.mean()), "dream_std": float(dream.std()),
                     "real_mean": float(real.mean()), "real_std": float(real.std()),
                     "dream_rollouts": rollouts, "real_episodes": len(real)})
    for key in ("dream", "real"):
        for row, rank in zip(rows, ranks(np.array([r[f"{key}_mean"] for r in rows]))):
            row[f"{key}_rank"] = int(rank)
    summary = {"env": cfg.env, "temperature": tau, "done_rule": cfg.dream_done, "horizon": cfg.controller_steps,
               "rank_correlation": spearman(np.array([r["dream_mean"] for r in rows]),
                                            np.array([r["real_mean"] for r in rows])),
               "policies": rows}
    save_json(run / "policy_check.json", summary)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run / "policy_check.csv", lambda f: f.write(text.getvalue().encode()))
    return rows


def format_table(rows: list[dict], correlation: float) -> str:
    lines = [f"{'policy':<22} {'dream':>16} {'real':>16}  ranks (dream, real)"]
    for r in rows:
        lines.append(f"{r['policy']:<22} {r['dream_mean']:>8.1f} ± {r['dream_std']:<5.1f} "
                     f"{r['real_mean']:>8.1f} ± {r['real_std']:<5.1f}  {r['dream_rank']}, {r['real_rank']}")
    lines.append(f"rank correlation (Spearman) dream vs real: {correlation:+.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worldmodels.algos.world_models.policy_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a World Models run directory")
    parser.add_argument("--rollouts", type=int, default=256, help="dream rollouts per policy")
    parser.add_argument("--episodes", type=int, default=None, help="real episodes per policy (default: eval_episodes)")
    parser.add_argument("--temperature", type=float, default=None, help="the dream's tau (default: the run's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        values = saved_settings(args.run)
        if args.episodes is not None:
            values["eval_episodes"] = args.episodes
        if args.rollouts < 1:
            raise WorldModelsError(f"--rollouts {args.rollouts}: needs at least 1.")
        cfg = from_json(values)
        rows = check_dream(cfg, args.run, args.rollouts, args.temperature, progress=not args.no_progress)
    except WorldModelsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = json.loads((args.run / "policy_check.json").read_text())
    print(format_table(rows, summary["rank_correlation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
