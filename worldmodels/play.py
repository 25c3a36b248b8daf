"""Watch or play a trained IRIS or Δ-IRIS agent and its world model, or replay recorded episodes.

Command line::

    python -m worldmodels.play runs/<date>/<time>_iris_tiny --mode agent-env --episodes 3
    python -m worldmodels.play runs/<date>/<time>_iris_tiny --mode agent-wm --record dream.gif
    python -m worldmodels.play runs/<date>/<time>_iris_tiny/checkpoints/last.pt --mode human-wm
    python -m worldmodels.play --mode episode --episode data/pong_random [--record replay.mp4]

Modes:

- ``agent-env``: the agent acts in the real env (the run's ``env`` config, seeded
  ``seed + 10_000`` as evaluation is); the return of each episode is printed.
- ``agent-wm``: the agent acts inside the world model, started from a real first frame;
  the real env takes the same actions beside it and the frames show env | world model,
  with the predicted reward and end printed per step (at most ``--max-steps``, 100 by
  default).
- ``human-wm``: you play the world model: an action index per step (digits in the
  window; a line per step in the terminal), ``r`` restarts from a new real frame, ``q``
  quits. A pygame window opens when pygame imports and ``DISPLAY``/``WAYLAND_DISPLAY``
  is set; otherwise (and with ``--headless``) the frame is printed as coarse ANSI/ASCII art.
- ``episode``: recorded episodes (``.npz``/``.h5`` with an ``image`` key; a file or a
  folder; default the run's ``episodes/``) frame by frame with their rewards.

A run is a run directory (``checkpoints/best.pt``, else ``last.pt``) or a checkpoint
file; its ``resolved_config.yaml`` (or the config stored in the checkpoint) gives the
model and env, and IRIS and Δ-IRIS runs (``algo.name: iris`` or ``delta_iris``) are accepted. Checkpoints are
read with ``torch.load(weights_only=True)``. ``--record`` writes what is shown to a GIF
or MP4 (``--scale`` times larger, nearest neighbour). Bad input ends with exit code 2
and a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .algos import registry
from .data.episodes import EpisodeError
from .envs.factory import MissingEnvPackageError, VectorEnv, make_env, spec_from_config
from .errors import WorldModelsError
from .play_modes import Session, agent_env, agent_wm, episode_paths, human_wm, replay
from .play_view import (
    PlayError,
    PygameViewer,
    Recorder,
    Screen,
    StopPlay,
    TerminalViewer,
    Viewer,
    display_available,
)
from .rl.evaluator import EVAL_SEED_OFFSET
from .training.checkpoint import CheckpointError, load_checkpoint

PROG = "python -m worldmodels.play"
MODES = ("agent-env", "agent-wm", "human-wm", "episode")
CHECKPOINT_NAMES = ("best.pt", "last.pt")
PLAYABLE = tuple(name for name, entry in registry.FAMILIES.items() if entry.playable)  # the runs play can load


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m worldmodels.play`` argument parser."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="IRIS or Δ-IRIS run directory or checkpoint .pt")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="default: episode with --episode and no run, else agent-env")
    parser.add_argument("--episode", type=Path, default=None, help="episode file or folder (--mode episode)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes to play (default 1; episode: all)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="steps per episode (default: none; agent-wm 100)")
    parser.add_argument("--record", type=Path, default=None, help="write the shown frames to out.gif or out.mp4")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second of the window and recording")
    parser.add_argument("--temperature", type=float, default=None,
                        help="agent sampling temperature, <= 0 for argmax (default: the run's algo.eval_temperature)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the run's); the env gets seed + 10000")
    parser.add_argument("--headless", action="store_true", help="never open a window")
    parser.add_argument("--scale", type=int, default=4, help="enlargement of window and recording frames")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
    return parser


def check_args(args: argparse.Namespace) -> str:
    """The mode to run; raises :class:`PlayError` for a bad value or combination."""
    mode = args.mode or ("episode" if args.episode is not None and args.run is None else "agent-env")
    for name, low in (("episodes", 1), ("max_steps", 1), ("scale", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise PlayError(f"--{name.replace('_', '-')} must be >= {low}, got {value}.")
    if not args.fps > 0:
        raise PlayError(f"--fps must be > 0, got {args.fps}.")
    if mode == "episode":
        if args.episode is None and args.run is None:
            raise PlayError("--mode episode needs --episode <file or folder> (or a run, to replay its episodes/).")
        return mode
    if args.run is None:
        raise PlayError(f"--mode {mode} needs an IRIS or Δ-IRIS run directory or checkpoint .pt as first argument.")
    if args.episode is not None:
        raise PlayError(f"--episode is for --mode episode, not --mode {mode}.")
    if mode == "human-wm" and args.episodes is not None:
        raise PlayError("--episodes does not apply to --mode human-wm (play until q).")
    return mode


def resolve_checkpoint(target: Path) -> Path:
    """A run directory's ``checkpoints/best.pt`` (else ``last.pt``), or ``target`` itself."""
    if target.is_dir():
        for name in CHECKPOINT_NAMES:
            if (target / "checkpoints" / name).is_file():
                return target / "checkpoints" / name
        raise PlayError(f"run {target} has no checkpoints/best.pt or checkpoints/last.pt; is it a training run?")
    if not target.is_file():
        raise PlayError(f"{target} does not exist; pass an IRIS or Δ-IRIS run directory or a checkpoint .pt.")
    return target


def run_dir_of(target: Path) -> Path:
    """The run directory of a run directory or of ``<run>/checkpoints/<file>.pt``."""
    return target if target.is_dir() else target.resolve().parent.parent


def check_playable(cfg: DictConfig, source: Path) -> DictConfig:
    """``cfg`` when it is the config of a run :data:`PLAYABLE` knows; otherwise :class:`PlayError`."""
    name = OmegaConf.select(cfg, "algo.name")
    if name not in PLAYABLE:
        raise PlayError(f"{source} is from a run with algo.name={name!r}; play works with IRIS and Δ-IRIS runs "
                        f"(algo.name: {' or '.join(PLAYABLE)}) only.")
    return cfg


def run_config(checkpoint: Path, state: dict[str, Any] | None = None) -> DictConfig | None:
    """The run's ``resolved_config.yaml`` beside ``checkpoints/`` (else the config stored in
    ``state``; None when neither is there yet), checked to be one :data:`PLAYABLE` knows."""
    saved = run_dir_of(checkpoint) / "resolved_config.yaml"
    if saved.is_file():
        return check_playable(OmegaConf.load(saved), saved)
    if state is None:
        return None
    if not state.get("config"):
        raise PlayError(f"{checkpoint} has no resolved_config.yaml beside checkpoints/ and stores no config.")
    return check_playable(OmegaConf.create(state["config"]), checkpoint)


def open_env(cfg: DictConfig, seed: int) -> VectorEnv:
    """One env of the run's ``env`` config seeded ``seed``, with image observations and
    discrete actions."""
    try:
        env = make_env(spec_from_config(cfg.env, seed=seed, num_envs=1))
    except (ValueError, MissingEnvPackageError) as error:
        raise PlayError(f"cannot build the run's env ({cfg.env.suite}/{cfg.env.task}): {error}") from error
    if "image" not in env.obs_space or not env.act_space.discrete:
        env.close()
        raise PlayError(f"the run's env {cfg.env.suite}/{cfg.env.task} gives no image observations "
                        "or no discrete actions.")
    return env


def build_agent(cfg: DictConfig, state: dict[str, Any], env: VectorEnv, device: torch.device, source: Path):
    """The agent of the checkpoint ``state`` (:func:`worldmodels.algos.registry.load_agent`;
    a checkpoint that predates recorded env spaces takes ``env``'s), on ``device`` in
    eval mode; its frames and actions must be ``env``'s."""
    state = dict(state, config=OmegaConf.to_container(cfg, resolve=True))
    if not state.get("env_spaces"):
        from .envs.spaces import EnvSpaces

        state["env_spaces"] = EnvSpaces(dict(env.obs_space), env.act_space).to_state()
    try:
        agent = registry.load_agent(state)
    except (WorldModelsError, ValueError) as error:
        raise PlayError(f"{source}: {' '.join(str(error).split())}") from error
    want = tuple(agent.env_spaces.obs["image"][0]), agent.env_spaces.act.size
    if want != (tuple(env.obs_space["image"][0]), env.act_space.size):
        raise PlayError(f"{source}: the agent takes frames {want[0]} and {want[1]} actions, the env gives "
                        f"{tuple(env.obs_space['image'][0])} and {env.act_space.size}.")
    return agent.to(device).eval()


def action_meanings(env: VectorEnv, count: int) -> list[str]:
    """The env's action names (``get_action_meanings`` of a gymnasium env), else indices."""
    inner = getattr(env, "_envs", None)
    getter = getattr(inner[0].unwrapped, "get_action_meanings", None) if inner else None
    names = [str(name) for name in getter()] if getter is not None else []
    return names if len(names) == count else [str(i) for i in range(count)]


def load_session(args: argparse.Namespace) -> Session:
    """Load the run named by ``args.run`` and open its env (see :func:`main`)."""
    checkpoint = resolve_checkpoint(args.run)
    cfg = run_config(checkpoint)
    state = load_checkpoint(checkpoint)
    cfg = cfg if cfg is not None else run_config(checkpoint, state)
    seed = int(cfg.seed) if args.seed is None else args.seed
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else None
    try:
        device = device or torch.device(args.device)
    except RuntimeError as error:
        raise PlayError(f"--device {args.device!r}: {error}") from error
    env = open_env(cfg, seed + EVAL_SEED_OFFSET)
    try:
        agent = build_agent(cfg, state, env, device, checkpoint)
    except PlayError:
        env.close()
        raise
    temperature = args.temperature
    if temperature is None:
        temperature = float(OmegaConf.select(cfg, "algo.eval_temperature", default=1.0))
    return Session(agent, env, action_meanings(env, env.act_space.size), temperature,
                   args.episodes or 1, args.max_steps)


def make_screen(mode: str, args: argparse.Namespace, recorder: Recorder | None) -> Screen:
    """A window when one can open (not ``--headless``), else the terminal rendering for
    ``human-wm`` and nothing for the other modes; plus ``recorder``."""
    if not args.headless and display_available():
        viewer: Viewer = PygameViewer(args.fps, args.scale)
    elif mode == "human-wm":
        viewer = TerminalViewer()
    else:
        viewer = Viewer()
    return Screen(viewer, recorder)


def terminal_commands(input_fn: Callable[[str], str]) -> Callable[[str], str]:
    """Commands typed a line at a time; end of input quits."""
    def read(prompt: str) -> str:
        try:
            return input_fn(prompt)
        except EOFError:
            return "q"

    return read


def play(mode: str, args: argparse.Namespace, input_fn: Callable[[str], str]) -> str:
    """Run ``mode``; returns the summary line."""
    recorder = Recorder(args.record, args.fps, args.scale) if args.record is not None else None
    if mode == "episode":
        paths = episode_paths(args.episode if args.episode is not None else run_dir_of(args.run) / "episodes")
        screen = make_screen(mode, args, recorder)
        with _ClosingScreen(screen) as written:
            frames = replay(paths, screen, args.episodes, args.max_steps)
        return f"replayed {len(frames)} episodes, {sum(frames)} frames{written()}"
    session = load_session(args)
    try:
        screen = make_screen(mode, args, recorder)
        with _ClosingScreen(screen) as written:
            if mode == "human-wm":
                read = screen.viewer.read_command if screen.viewer.window else terminal_commands(input_fn)
                steps = human_wm(session, screen, read)
            else:
                returns = (agent_env if mode == "agent-env" else agent_wm)(session, screen)
        if mode == "human-wm":
            return f"played {steps} world-model steps{written()}"
        kind = "env" if mode == "agent-env" else "imagined"
        mean = sum(returns) / max(len(returns), 1)
        return f"{mode}: {len(returns)} episodes, {kind} return mean {mean:g}{written()}"
    finally:
        session.env.close()


class _ClosingScreen:
    """Closes a :class:`Screen` (writing its recording) when the block ends, also on
    :class:`StopPlay` (a closed window), which it swallows; ``written()`` then gives
    ``"; recorded N frames to PATH"`` or ``""``."""

    def __init__(self, screen: Screen):
        self.screen, self.path = screen, None

    def __enter__(self) -> Callable[[], str]:
        return self.written

    def __exit__(self, kind: object, error: object, traceback: object) -> bool:
        self.path = self.screen.close()
        return kind is StopPlay

    def written(self) -> str:
        recorder = self.screen.recorder
        if recorder is None or self.path is None:
            return ""
        return f"; recorded {len(recorder.frames)} frames to {self.path}"


def main(argv: Sequence[str] | None = None, input_fn: Callable[[str], str] = input) -> int:
    """Parse ``argv``, run the mode and print a summary line; returns the exit code (2 on
    bad input, with a one-line message on stderr). ``input_fn`` reads the terminal
    commands of ``human-wm``."""
    args = build_parser().parse_args(argv)
    try:
        mode = check_args(args)
        summary = play(mode, args, input_fn)
    except (PlayError, CheckpointError, EpisodeError) as error:
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
