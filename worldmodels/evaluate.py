"""The papers' evaluation protocol as a command: the final checkpoint of a run, played
in a separate test env for many episodes, the per-episode returns written to JSON.

Command line::

    python -m worldmodels.evaluate runs/<date>/<time>_iris_atari               # 100 episodes
    python -m worldmodels.evaluate runs/<run>/checkpoints/last.pt --episodes 32 --out eval.json
    python -m worldmodels.evaluate runs/<run> --random                         # a uniformly random policy

* checkpoint: a run directory means its ``checkpoints/last.pt``, the final agent (the
  papers report the agent at the end of training, not the best evaluation seen);
* env: the run's ``env`` with its ``eval_env`` settings and, for Atari, IRIS's and
  Δ-IRIS's test env: one no-op after a reset (``noop_max=1``), no sticky actions,
  episodes to game over (no life-loss ends), at most 108,000 frames (27,000 agent steps
  at frame skip 4); seeded ``--seed + 10000`` (not a training seed);
* policy: sampled at the family's test temperature (IRIS 0.5, Δ-IRIS 1.0; DreamerV3 its
  ``algo.eval_mode``, sampled by default; other families their ``algo.eval_temperature``
  or greedy), ``--temperature`` to change it
  (0: greedy); ``--random`` plays uniformly random actions on the same env and episodes;
* output (``--out``, default ``<run>/evaluation[_random].json``): ``returns`` and
  ``lengths`` per episode, ``return_mean``, ``return_std``, ``return_sem``, the settings,
  and for Atari games with published scores ``random_score``, ``human_score`` and
  ``human_normalised = (mean - random) / (human - random)``.

Training-time evaluation (``eval/return_mean`` in ``metrics.csv``, ``algo.eval_episodes``
episodes) is a cheap running estimate; the figure to report is this command's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from worldmodels.errors import WorldModelsError
from worldmodels.rl.evaluator import (  # noqa: F401  (re-exported: the command's own names)
    PROTOCOL_TEMPERATURE,
    checkpoint_path,
    policy_settings,
)

DEFAULT_EPISODES = 100
ATARI_TEST_ENV = {"noop_max": 1, "sticky_actions": 0.0, "terminal_on_life_loss": False}
ATARI_MAX_FRAMES = 108_000

# Published per-game scores of a human player and a random policy (the Atari 100k
# references of IRIS's results/data/HUMAN.json and RANDOM.json), for human-normalised scores.
HUMAN_SCORES = {
    "alien": 7127.7, "amidar": 1719.5, "assault": 742.0, "asterix": 8503.3, "bankheist": 753.1,
    "battlezone": 37187.5, "boxing": 12.1, "breakout": 30.5, "choppercommand": 7387.8, "crazyclimber": 35829.4,
    "demonattack": 1971.0, "freeway": 29.6, "frostbite": 4334.7, "gopher": 2412.5, "hero": 30826.4,
    "jamesbond": 302.8, "kangaroo": 3035.0, "krull": 2665.5, "kungfumaster": 22736.3, "mspacman": 6951.6,
    "pong": 14.6, "privateeye": 69571.3, "qbert": 13455.0, "roadrunner": 7845.0, "seaquest": 42054.7,
    "upndown": 11693.2,
}
RANDOM_SCORES = {
    "alien": 227.8, "amidar": 5.8, "assault": 222.4, "asterix": 210.0, "bankheist": 14.2, "battlezone": 2360.0,
    "boxing": 0.1, "breakout": 1.7, "choppercommand": 811.0, "crazyclimber": 10780.5, "demonattack": 152.1,
    "freeway": 0.0, "frostbite": 65.2, "gopher": 257.6, "hero": 1027.0, "jamesbond": 29.0, "kangaroo": 52.0,
    "krull": 1598.0, "kungfumaster": 258.5, "mspacman": 307.3, "pong": -20.7, "privateeye": 24.9, "qbert": 163.9,
    "roadrunner": 11.5, "seaquest": 68.4, "upndown": 533.4,
}


def game_key(task: str) -> str:
    """``"ALE/MsPacman-v5"``, ``"ms_pacman"`` or ``"MsPacman"`` -> ``"mspacman"``."""
    name = str(task).split("/")[-1]
    name = name[:-3] if name.endswith("-v5") else name
    return name.replace("_", "").replace("-", "").lower()


def human_normalised(task: str, mean: float) -> dict[str, float]:
    """``{random_score, human_score, human_normalised}`` for an Atari game with published
    scores; ``{}`` for any other."""
    key = game_key(task)
    if key not in HUMAN_SCORES:
        return {}
    human, random = HUMAN_SCORES[key], RANDOM_SCORES[key]
    return {"random_score": random, "human_score": human, "human_normalised": (mean - random) / (human - random)}


def protocol_env_config(cfg: Any) -> Any:
    """The test env's config: ``cfg.env`` with ``cfg.eval_env``, then for Atari the papers'
    test settings (:data:`ATARI_TEST_ENV`, 108,000 frames)."""
    from omegaconf import OmegaConf

    from worldmodels.rl.evaluator import eval_env_config

    env = eval_env_config(cfg)
    if str(env.suite) != "atari":
        return env
    repeat = int(env.get("action_repeat") or 4)
    return OmegaConf.merge(env, {**ATARI_TEST_ENV, "max_episode_steps": ATARI_MAX_FRAMES // repeat})


def evaluate(path: str | Path, episodes: int = DEFAULT_EPISODES, *, temperature: float | None = None,
             random: bool = False, num_envs: int = 16, seed: int | None = None) -> dict[str, Any]:
    """Play the protocol's ``episodes`` with the agent of the checkpoint at ``path`` (or a
    random policy on its env) and return the JSON-ready result (module docstring)."""
    from omegaconf import OmegaConf

    from worldmodels.algos.registry import algo_name, load_agent
    from worldmodels.envs.factory import make_env, spec_from_config
    from worldmodels.rl.evaluator import EVAL_SEED_OFFSET, EpisodeEvaluator
    from worldmodels.training.checkpoint import load_checkpoint

    file = checkpoint_path(path)
    state = load_checkpoint(file)
    cfg = OmegaConf.create(state.get("config") or {})
    algo = algo_name(state)
    agent = None if random else load_agent(state)
    mode, kwargs, temp = policy_settings(algo, cfg, temperature)
    env_cfg = protocol_env_config(cfg)
    seed = int(cfg.get("seed", 0)) if seed is None else int(seed)
    spec = spec_from_config(env_cfg, seed=seed + EVAL_SEED_OFFSET, num_envs=max(1, min(int(num_envs), episodes)))
    start = time.perf_counter()
    runner = EpisodeEvaluator(make_env(spec), episodes, mode=mode, seed=seed, **kwargs)
    try:
        result = runner.run(agent)
    finally:
        runner.close()
    returns, lengths = result.returns.astype(float), result.lengths.astype(int)
    mean, std = float(returns.mean()), float(returns.std())
    out: dict[str, Any] = {
        "checkpoint": str(file), "step": int(state.get("step", 0)), "algo": algo,
        "policy": "random" if random else f"{mode}" + (f" at temperature {temp}" if mode == "sample" else ""),
        "env": {key: (list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value)
                for key, value in OmegaConf.to_container(env_cfg, resolve=True).items()},
        "seed": seed + EVAL_SEED_OFFSET, "episodes": int(episodes), "temperature": None if random else temp,
        "returns": returns.tolist(), "lengths": lengths.tolist(),
        "return_mean": mean, "return_std": std, "return_sem": std / math.sqrt(len(returns)),
        "length_mean": float(lengths.mean()), "seconds": time.perf_counter() - start,
    }
    if str(env_cfg.suite) == "atari":
        out.update(human_normalised(str(env_cfg.task), mean))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worldmodels.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run directory (its checkpoints/last.pt) or a checkpoint file")
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="episodes to play (default 100)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (0: greedy; default: IRIS 0.5, Δ-IRIS 1.0)")
    parser.add_argument("--random", action="store_true", help="a uniformly random policy on the same env")
    parser.add_argument("--num-envs", type=int, default=16, help="envs stepped together (default 16)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: the run's; envs get +10000)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default <run>/evaluation.json, or evaluation_random.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate as the command line asks, write the JSON and print a summary line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.num_envs < 1:
        parser.error(f"--episodes ({args.episodes}) and --num-envs ({args.num_envs}) must be >= 1")
    try:
        result = evaluate(args.checkpoint, args.episodes, temperature=args.temperature, random=args.random,
                          num_envs=args.num_envs, seed=args.seed)
    except (ValueError, WorldModelsError) as error:
        parser.error(" ".join(str(error).split()))
    file = checkpoint_path(args.checkpoint)
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    out = args.out or run_dir / ("evaluation_random.json" if args.random else "evaluation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    extra = f", human-normalised {result['human_normalised']:.3f}" if "human_normalised" in result else ""
    print(f"{result['policy']} policy, step {result['step']}: return {result['return_mean']:.2f} "
          f"+- {result['return_sem']:.2f} (sem) over {result['episodes']} episodes{extra}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
