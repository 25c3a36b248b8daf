"""Record scripted robosuite demonstrations as one robomimic HDF5 file.

    python -m worldmodels.data.record_robosuite --task Lift --episodes 20 --out data/lift.hdf5

A scripted demonstrator (:class:`LiftDemonstrator`: move above the cube, descend,
close the gripper, lift) acts in :mod:`worldmodels.envs.robosuite`'s env through the
package's collector; each finished episode is kept when it succeeded (all of them
with ``--keep-failures``) until ``--episodes`` are kept, and the file is written with
:func:`worldmodels.data.robomimic.write_robomimic` in robomimic's layout: demos
``data/demo_<i>`` with the observations under robomimic's names (``agentview_image``,
``robot0_eye_in_hand_image``, ``robot0_eef_pos``, ``robot0_eef_quat``,
``robot0_gripper_qpos``, ``object``), ``actions`` (the controller's ``[-1, 1]``
inputs), ``rewards`` (1 at the success step), ``dones``, and the masks ``mask/train``
and ``mask/valid`` (the last ``--valid`` fraction of the demos). The demonstrator's
own success rate (kept / attempted) is printed and stored in ``data.attrs``. An
existing file is never overwritten.

The demonstrator reads the cube's position from the ``object`` observation (privileged
state a policy trained on the cameras does not get) and adds Gaussian noise
(``--noise``) to its position commands, so that the demos visit states off its exact
path, which a cloned policy drifts into.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WorldModelsError
from .episodes import EpisodeBuilder
from .robomimic import write_robomimic

TASKS = ("Lift",)
CAMERAS = ("agentview", "robot0_eye_in_hand")
PROPRIO = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
POSITION_SCALE = 0.05   # metres per step of a +-1 position command (robosuite's OSC_POSE output_max)
OPEN, CLOSED = -1.0, 1.0


class LiftDemonstrator:
    """A scripted Lift policy for ``num_envs`` envs: phases ``above`` (to 8 cm over the
    cube, gripper open), ``descend`` (to the cube), ``close`` (``close_steps`` steps),
    ``lift`` (15 cm up, gripper closed). Position commands are proportional to the
    distance (``(target - eef) / POSITION_SCALE``, clipped to ``[-1, 1]``) plus
    ``noise``-std Gaussian noise; rotation commands are zero. A phase also ends after
    ``patience`` steps, so a stuck demo moves on (and most likely fails)."""

    PHASES = ("above", "descend", "close", "lift")

    def __init__(self, num_envs: int, noise: float = 0.05, seed: int = 0, close_steps: int = 8,
                 patience: int = 60):
        self.noise, self.close_steps, self.patience = float(noise), int(close_steps), int(patience)
        self._rng = np.random.default_rng(seed)
        self.phase = np.zeros(num_envs, np.int64)
        self.steps_in_phase = np.zeros(num_envs, np.int64)
        self.lift_from = np.zeros((num_envs, 3))

    def _target(self, i: int, cube: np.ndarray, eef: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """``(target position, gripper, phase done)`` of env ``i``."""
        name = self.PHASES[self.phase[i]]
        if name == "above":
            target = cube + [0.0, 0.0, 0.08]
            return target, OPEN, bool(np.linalg.norm(target - eef) < 0.01)
        if name == "descend":
            target = cube + [0.0, 0.0, -0.005]
            return target, OPEN, bool(np.linalg.norm(target - eef) < 0.01)
        if name == "close":
            self.lift_from[i] = eef
            return cube, CLOSED, bool(self.steps_in_phase[i] >= self.close_steps)
        return self.lift_from[i] + [0.0, 0.0, 0.15], CLOSED, False

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actions ``[N, 7]`` for a batch of env observations (``object``'s first 3 values
        are the cube's position, as robosuite's Lift gives them)."""
        actions = np.zeros((len(obs["is_first"]), 7), np.float32)
        for i in range(len(actions)):
            if obs["is_first"][i]:
                self.phase[i], self.steps_in_phase[i] = 0, 0
            cube, eef = np.asarray(obs["object"][i][:3], np.float64), np.asarray(obs["robot0_eef_pos"][i], np.float64)
            target, gripper, done = self._target(i, cube, eef)
            if done or (self.steps_in_phase[i] >= self.patience and self.PHASES[self.phase[i]] != "lift"):
                self.phase[i], self.steps_in_phase[i] = min(self.phase[i] + 1, len(self.PHASES) - 1), 0
            else:
                self.steps_in_phase[i] += 1
            move = (target - eef) / POSITION_SCALE + self._rng.normal(0.0, self.noise, 3)
            actions[i, :3] = np.clip(move, -1.0, 1.0)
            actions[i, 6] = gripper
        return actions


def record_demos(env: Any, policy: Any, episodes: int, *, keep_failures: bool = False, max_attempts: int | None = None,
                 progress: bool = True, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], int, int]:
    """Run ``policy`` (``obs -> actions``) in the vector ``env`` until ``episodes`` episodes
    are kept (successful ones, or any with ``keep_failures``); returns ``(episodes,
    attempts, successes)``: the kept episodes, how many finished, how many of those
    succeeded. Stops after ``max_attempts`` finished episodes (default ``4 * episodes
    + 10``) with what it has."""
    from tqdm.auto import tqdm

    from ..record import PolicyAgent
    from ..rl.collector import Collector

    limit = 4 * episodes + 10 if max_attempts is None else int(max_attempts)
    collector = Collector(env, seed=seed, replayable=False)
    builder, kept, attempts, successes = EpisodeBuilder(env.num_envs), [], 0, 0
    agent = PolicyAgent(policy, env)
    with tqdm(total=episodes, desc="demos", unit="demo", disable=not progress) as bar:
        while len(kept) < episodes and attempts < limit:
            for _, episode in builder.add(collector.step(agent, "greedy")):
                success = bool(episode["log_success"].any())
                attempts, successes = attempts + 1, successes + success
                if keep_failures or success:
                    kept.append(episode)
                bar.update(min(len(kept), episodes) - bar.n)
                bar.set_postfix(success=f"{successes}/{attempts}")
    return kept[:episodes], attempts, successes


def split_masks(count: int, valid: float) -> dict[str, list[int]]:
    """``{"train": [...], "valid": [...]}``: the last ``round(valid * count)`` demos held
    out (at least one when ``valid > 0`` and ``count > 1``)."""
    held = int(round(valid * count))
    if valid > 0 and count > 1:
        held = min(max(held, 1), count - 1)
    return {"train": list(range(count - held)), "valid": list(range(count - held, count))}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m worldmodels.data.record_robosuite`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m worldmodels.data.record_robosuite",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="Lift", choices=TASKS)
    parser.add_argument("--episodes", type=int, required=True, help="demos to write")
    parser.add_argument("--out", type=Path, required=True, help="the .hdf5 file to write (never overwritten)")
    parser.add_argument("--robot", default="Panda")
    parser.add_argument("--cameras", nargs="*", default=list(CAMERAS), help="robosuite cameras to store")
    parser.add_argument("--size", type=int, nargs=2, default=(84, 84), metavar=("H", "W"), help="camera frames")
    parser.add_argument("--max-steps", type=int, default=100, help="episode limit in agent steps")
    parser.add_argument("--seed", type=int, default=0, help="env seed (env i gets seed + i) and noise seed")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.05, help="std of the noise on position commands")
    parser.add_argument("--valid", type=float, default=0.1, help="fraction of demos in mask/valid")
    parser.add_argument("--keep-failures", action="store_true", help="keep unsuccessful demos too")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Record and write the demos as the command line asks; prints a summary line."""
    from ..envs.factory import EnvSpec, make_env

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose another file or delete it (it is never overwritten)")
    if not 0 <= args.valid < 1:
        parser.error(f"--valid must be in [0, 1), got {args.valid}")
    try:
        spec = EnvSpec("robosuite", args.task, num_envs=args.num_envs, seed=args.seed, size=tuple(args.size),
                       max_episode_steps=args.max_steps, robot=args.robot, cameras=tuple(args.cameras),
                       proprio=PROPRIO)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    try:
        with make_env(spec) as env:
            policy = LiftDemonstrator(env.num_envs, args.noise, args.seed)
            demos, attempts, successes = record_demos(env, policy, args.episodes, keep_failures=args.keep_failures,
                                           progress=not args.no_progress, seed=args.seed)
    except WorldModelsError as error:
        parser.error(" ".join(str(error).split()))
    if not demos:
        raise SystemExit(f"the demonstrator succeeded in none of {attempts} episodes; nothing written")
    write_robomimic(args.out, demos, env_name=args.task, masks=split_masks(len(demos), args.valid), compress=True)
    _record_attributes(args.out, {"demonstrator": "LiftDemonstrator", "attempts": attempts, "successes": successes,
                                  "noise": args.noise, "robot": args.robot, "seed": args.seed,
                                  "max_steps": args.max_steps})
    seconds = time.perf_counter() - start
    steps = sum(len(d["reward"]) - 1 for d in demos)
    print(f"demonstrator success {successes / attempts:.0%} ({successes}/{attempts} episodes); wrote "
          f"{len(demos)} demos, {steps} transitions to {args.out} in {seconds:.0f} s")
    return args.out


def _record_attributes(path: Path, values: dict[str, Any]) -> None:
    """Store how the demos were made in ``data.attrs["recorder"]`` (JSON)."""
    from .episodes import _h5py

    with _h5py("writing robomimic").File(path, "a") as f:
        f["data"].attrs["recorder"] = json.dumps(values)


if __name__ == "__main__":
    main()
