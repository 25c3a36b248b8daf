"""Record episodes of a policy (uniformly random, or a trained agent of any family with
an agent, found through the family registry) for offline training.

Command line::

    python -m worldmodels.record --suite classic --task cartpole --episodes 20 \\
        --out data/cartpole_random [--num-envs 4] [--seed 0] [--max-steps N] [--render-image]
    python -m worldmodels.record --suite classic --task cartpole --episodes 20 \\
        --out data/cartpole_agent --checkpoint runs/<date>/<time>_dreamer_cartpole/checkpoints/best.pt [--explore]

Each finished episode is written with :func:`worldmodels.data.episodes.save_episode`
as ``{index:06d}-{length}.npz`` in the output folder. A folder that already holds
episodes is refused unless ``--append`` is given; ``record.json`` in the folder lists
each recording (suite, task, env seeds, episode files), and an append whose env seeds
(``--seed`` .. ``--seed + --num-envs - 1``) were already recorded there is refused, so a
seed's episodes are never written twice. Appended files are numbered after those there.

An episode holds, for ``T`` steps: the observation keys (``image`` uint8
``(T, H, W, C)``, ``vector`` float32 ``(T, D)``), ``action`` float32 ``(T, A)``
(one-hot for discrete actions, the agent's ``[-1, 1]`` values for continuous ones;
``action[t]`` is taken after observing step ``t``; zeros at the last step), ``reward``
float32 ``(T,)`` (0 at ``t = 0``), ``discount`` float32 (``1 - is_terminal``) and the bool
flags ``is_first``, ``is_last`` and ``is_terminal``. Episodes still running when enough
have finished are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.data.episodes import EPISODE_SUFFIXES, EpisodeWriter, load_episode
from worldmodels.envs.factory import SUITES, EnvSpec, VectorEnv, make_env
from worldmodels.errors import WorldModelsError
from worldmodels.rl.actions import from_env_action
from worldmodels.rl.collector import Collector
from worldmodels.rl.protocols import Agent

MANIFEST = "record.json"
Policy = Callable[[dict[str, np.ndarray]], np.ndarray]


class PolicyAgent:
    """An :class:`~worldmodels.rl.protocols.Agent` from a function ``obs -> actions`` in the
    env's units (stateless)."""

    def __init__(self, policy: Policy, env: VectorEnv):
        self.policy_fn, self.space = policy, env.act_space

    def init_policy_state(self, num_envs: int) -> None:
        return None

    def policy(self, obs: dict[str, np.ndarray], state: None, mode: str = "greedy", **kwargs: Any):
        from worldmodels.envs.spaces import prepare_actions

        actions = prepare_actions(self.space, self.policy_fn(obs), len(obs["is_first"]))
        return from_env_action(self.space, actions), None


def record_episodes(env: VectorEnv, policy: Policy | Agent | None, num_episodes: int, out_dir: str | Path,
                    progress: bool = True, mode: str = "greedy", seed: int = 0) -> list[Path]:
    """Run ``policy`` in ``env`` until ``num_episodes`` episodes finish; save each one.

    ``policy`` is an agent (:class:`~worldmodels.rl.protocols.Agent`, acting in ``mode``),
    a function mapping a batch of observations to a batch of env actions, or None
    (uniformly random actions, seeded ``seed``). Returns the written paths in the order
    the episodes finished.
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes must be an integer >= 1, got {num_episodes!r}")
    from tqdm.auto import tqdm

    agent = PolicyAgent(policy, env) if callable(policy) and not isinstance(policy, Agent) else policy
    collector = Collector(env, seed=seed, replayable=False)
    writer = EpisodeWriter(out_dir, env.num_envs, limit=num_episodes)
    collector.on_step.append(writer)
    with tqdm(total=num_episodes, desc="episodes", unit="ep", disable=not progress) as bar:
        while not writer.done:
            collector.step(agent, mode)
            bar.update(len(writer.paths) - bar.n)
    return writer.paths


def summarize(paths: Sequence[str | Path]) -> str:
    """One line: episode count, total steps and mean/min/max return of saved episodes."""
    rewards = [load_episode(path)["reward"] for path in paths]
    returns = np.array([r.sum() for r in rewards], np.float64)
    return (f"{len(paths)} episodes, {sum(len(r) for r in rewards)} steps, return "
            f"mean {returns.mean():.2f} min {returns.min():.2f} max {returns.max():.2f}")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m worldmodels.record`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m worldmodels.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--task", required=True, help="e.g. cartpole, CartPole-v1, pong, walker_walk, reward")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to write")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="env seed (env i gets seed + i) and policy seed")
    parser.add_argument("--max-steps", type=int, default=None, help="episode time limit in agent steps")
    parser.add_argument("--render-image", action="store_true", help="also store rendered frames (classic/gym)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="act with the agent of this training checkpoint (DreamerV3, IRIS, Δ-IRIS) "
                             "instead of at random")
    parser.add_argument("--explore", action="store_true",
                        help="with --checkpoint: sample the agent's actions instead of taking their mode")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--append", action="store_true",
                        help="add to a folder that already holds episodes (with env seeds not recorded there)")
    return parser


def episode_files(out_dir: Path) -> list[Path]:
    """The episode files already in ``out_dir`` (none when it does not exist)."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.suffix in EPISODE_SUFFIXES and not p.name.startswith("."))


def read_manifest(out_dir: Path) -> list[dict]:
    """The recordings listed in ``out_dir/record.json`` (``[]`` without one)."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["recordings"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a record.json written by worldmodels.record ({error})") from None


def check_destination(out_dir: Path, append: bool, seed: int, num_envs: int) -> str | None:
    """Why recording into ``out_dir`` is refused, or None; prints a note when an append
    cannot be checked (episodes there without a record.json)."""
    existing = episode_files(out_dir)
    if not existing:
        return None
    if not append:
        return (f"--out {out_dir} already holds {len(existing)} episodes; pass --append to add to them "
                "(with a --seed not recorded there) or choose another folder")
    recordings = read_manifest(out_dir)
    if not recordings:
        print(f"note: {out_dir} holds {len(existing)} episodes without a {MANIFEST}; their seeds cannot be checked")
        return None
    wanted = set(range(seed, seed + num_envs))
    for earlier in recordings:
        used = set(range(int(earlier["seed"]), int(earlier["seed"]) + int(earlier["num_envs"])))
        if wanted & used:
            free = max(int(r["seed"]) + int(r["num_envs"]) for r in recordings)
            return (f"--seed {seed} --num-envs {num_envs} uses env seeds {seed}..{seed + num_envs - 1}, but "
                    f"{out_dir} already holds the episodes of env seeds {min(used)}..{max(used)}; "
                    f"pass --seed {free} or more")
    return None


def add_to_manifest(out_dir: Path, args: argparse.Namespace, paths: Sequence[Path]) -> Path:
    """Append this recording to ``out_dir/record.json`` (written atomically)."""
    recordings = read_manifest(out_dir)
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    recordings.append({"suite": args.suite, "task": args.task, "seed": args.seed, "num_envs": args.num_envs,
                       "max_steps": args.max_steps, "checkpoint": checkpoint, "explore": args.explore,
                       "episodes": [p.name for p in paths]})
    path = out_dir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"recordings": recordings}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def checkpoint_agent(checkpoint: Path, env: VectorEnv) -> Agent:
    """The agent of a training checkpoint (:func:`worldmodels.algos.registry.load_agent`),
    checked to read observations ``env`` gives with the same shapes."""
    from worldmodels.algos import registry
    from worldmodels.training.checkpoint import load_checkpoint

    agent = registry.load_agent(load_checkpoint(checkpoint))
    for key, (shape, _) in agent.env_spaces.obs.items():
        got = env.obs_space.get(key)
        if got is None or tuple(got[0]) != tuple(shape):
            raise ValueError(f"{checkpoint}: the agent reads {key!r} of shape {tuple(shape)}, the env gives "
                             f"{None if got is None else tuple(got[0])}; record with the env it was trained on.")
    return agent


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Record episodes as the command line asks; prints a summary line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    try:
        spec = EnvSpec(args.suite, args.task, num_envs=args.num_envs, seed=args.seed,
                       max_episode_steps=args.max_steps, render_image=args.render_image)
    except ValueError as error:
        parser.error(str(error))
    if args.explore and args.checkpoint is None:
        parser.error("--explore needs --checkpoint")
    try:
        refused = check_destination(args.out, args.append, args.seed, args.num_envs)
    except ValueError as error:
        refused = str(error)
    if refused:
        parser.error(refused)
    with make_env(spec) as env:
        agent = None
        if args.checkpoint is not None:
            try:
                agent = checkpoint_agent(args.checkpoint, env)
            except (ValueError, WorldModelsError) as error:
                parser.error(" ".join(str(error).split()))
            import torch

            torch.manual_seed(args.seed)
        paths = record_episodes(env, agent, args.episodes, args.out, progress=not args.no_progress,
                                mode="explore" if args.explore else "greedy", seed=args.seed)
    add_to_manifest(args.out, args, paths)
    print(f"recorded {summarize(paths)} to {args.out}")
    return paths


if __name__ == "__main__":
    main()
