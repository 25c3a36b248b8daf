"""The four modes of ``python -m worldmodels.play`` (see :mod:`worldmodels.play`).

Each mode takes a :class:`~worldmodels.play_view.Screen` for its frames and a ``log``
function for its text (``print`` on the command line). :class:`Dream` runs an IRIS or
Δ-IRIS world model as an environment: it starts from a real frame, steps with actions
(the next frame's tokens sampled at temperature 1, reward and end from the heads) and,
like IRIS, restarts its context from the current frame when the KV cache is full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.episodes import EpisodeError, is_image_key, list_episodes, load_episode
from .envs.factory import VectorEnv
from .play_view import PlayError, Screen, side_by_side
from .rl.collector import Collector
from .rl.imagination_agent import ImaginationAgent, frames_first

Log = Callable[[str], None]
ReadCommand = Callable[[str], str]


@dataclass
class Session:
    """What the model modes share: the agent (eval mode), one real env, the action
    names, the agent's sampling ``temperature`` (<= 0: greedy), ``episodes`` and
    ``max_steps`` (None: no limit)."""

    agent: ImaginationAgent
    env: VectorEnv
    meanings: list[str]
    temperature: float = 1.0
    episodes: int = 1
    max_steps: int | None = None

    @property
    def device(self) -> torch.device:
        return self.agent.actor_critic.actor.weight.device

    def action_name(self, action: int) -> str:
        return f"{action} ({self.meanings[action]})" if self.meanings[action] != str(action) else str(action)


def to_image(frame: torch.Tensor) -> np.ndarray:
    """A decoded frame ``[1, C, H, W]`` in [0, 1] -> uint8 ``[H, W, C]``."""
    return (frame[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class Actor:
    """The agent's actor on frames in [0, 1] (the world model's decoded frames), with its
    own LSTM state; ``temperature <= 0`` takes the argmax."""

    def __init__(self, agent: ImaginationAgent, temperature: float):
        self.ac, self.temperature = agent.actor_critic, float(temperature)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        self.state = None

    @torch.no_grad()
    def act(self, frame: torch.Tensor) -> int:
        """One action for ``frame [1, C, H, W]``."""
        self.ac.hx, self.ac.cx = self.state if self.state is not None else (None, None)
        logits, _ = self.ac.act(frame)
        self.state = (self.ac.hx, self.ac.cx)
        self.ac.hx = self.ac.cx = None
        if self.temperature <= 0:
            return int(logits.argmax(-1))
        return int(torch.distributions.Categorical(logits=logits.float() / self.temperature).sample())


class Dream:
    """The agent's imagined environment (:meth:`ImaginationAgent.dream`) as a one-env
    environment that restarts from its current frame when the KV cache is full (see the
    module docstring)."""

    def __init__(self, agent: ImaginationAgent):
        self.dream = agent.dream()
        self.capacity = agent.world_model.config.max_blocks - 1
        self.device = agent.actor_critic.actor.weight.device
        self.frame: torch.Tensor | None = None
        self.left = 0

    @torch.no_grad()
    def reset(self, image: np.ndarray) -> torch.Tensor:
        """Start from a real uint8 ``[H, W, C]`` frame; returns the frame the world model
        starts from ``[1, C, H, W]`` in [0, 1] (IRIS: the reconstruction; Δ-IRIS: the frame)."""
        return self._restart(frames_first(torch.as_tensor(np.asarray(image), device=self.device)).unsqueeze(0))

    def _restart(self, frame: torch.Tensor) -> torch.Tensor:
        no_action = torch.zeros(1, 1, dtype=torch.int64, device=self.device)
        _, self.frame = self.dream.start({"observations": frame[:, None], "actions": no_action})
        self.left = self.capacity
        return self.frame

    @torch.no_grad()
    def step(self, action: int) -> tuple[torch.Tensor, float, bool]:
        """``(next frame [1, C, H, W], predicted reward, predicted end)``."""
        if self.frame is None:
            raise RuntimeError("Dream.step before Dream.reset")
        if self.left == 0:
            self._restart(self.frame)
        frame, reward, done = self.dream.step(torch.tensor([action], dtype=torch.int64, device=self.device))
        self.frame, self.left = frame, self.left - 1
        return frame, float(reward[0]), bool(done[0])


def _limit_reached(session: Session, steps: int) -> bool:
    return session.max_steps is not None and steps >= session.max_steps


def agent_env(session: Session, screen: Screen, log: Log = print) -> list[float]:
    """The agent plays ``session.episodes`` episodes in the real env (the shared
    :class:`~worldmodels.rl.collector.Collector` steps it); returns their returns."""
    collector, returns = Collector(session.env, replayable=False), []
    mode = "greedy" if session.temperature <= 0 else "sample"
    kwargs = {} if mode == "greedy" else {"temperature": session.temperature}
    for episode in range(1, session.episodes + 1):
        collector.reset()
        total, steps, obs = 0.0, 0, None
        while not _limit_reached(session, steps) and (obs is None or not obs["is_last"][0]):
            acted = collector.step(session.agent, mode, **kwargs)
            if steps == 0:
                screen.show(acted["image"][0], f"env episode {episode} step 0")
            obs = collector.last_obs
            total, steps = total + float(obs["reward"][0]), steps + 1
            screen.show(obs["image"][0], f"env episode {episode} step {steps} action "
                                         f"{session.action_name(int(acted['action'][0].argmax()))} return {total:g}")
        ended = "ended" if obs is not None and obs["is_last"][0] else "stopped at --max-steps"
        log(f"episode {episode}: return {total:g} in {steps} steps ({ended})")
        returns.append(total)
    return returns


def agent_wm(session: Session, screen: Screen, log: Log = print) -> list[float]:
    """The agent plays inside the world model from a real first frame, while the real env
    takes the same actions beside it (frames: env | world model); returns the imagined
    returns. Episodes end at a predicted end or ``max_steps`` (default 100)."""
    dream, actor, returns = Dream(session.agent), Actor(session.agent, session.temperature), []
    limit = session.max_steps if session.max_steps is not None else 100
    for episode in range(1, session.episodes + 1):
        obs = session.env.reset()
        real, frame = obs["image"][0], dream.reset(obs["image"][0])
        actor.reset()
        totals, steps, real_steps, done = [0.0, 0.0], 0, 0, False
        screen.show(side_by_side([real, to_image(frame)]), f"env | world model, episode {episode} step 0")
        while steps < limit and not done:
            action = actor.act(frame)
            if not obs["is_last"][0]:
                obs = session.env.step(np.array([action]))
                real, totals[1], real_steps = obs["image"][0], totals[1] + float(obs["reward"][0]), real_steps + 1
            frame, reward, done = dream.step(action)
            totals[0], steps = totals[0] + reward, steps + 1
            text = f"step {steps} action {session.action_name(action)}: predicted reward {reward:+g} done {done}"
            log(f"  {text}")
            screen.show(side_by_side([real, to_image(frame)]), f"env | world model, episode {episode} {text}")
        ended = "predicted end" if done else "stopped at --max-steps"
        env_end = "ended" if obs["is_last"][0] else "running"
        log(f"episode {episode}: imagined return {totals[0]:g} in {steps} steps ({ended}); "
            f"env return {totals[1]:g} in {real_steps} steps ({env_end})")
        returns.append(totals[0])
    return returns


def action_help(meanings: list[str]) -> str:
    """``"0 NOOP, 1 FIRE, ..."`` (indices alone when the env names no actions)."""
    return ", ".join(name if name == str(i) else f"{i} {name}" for i, name in enumerate(meanings))


def parse_command(text: str, num_actions: int) -> str | int | None:
    """A typed command: ``"q"`` (also ``quit``, ``exit``), ``"r"`` (``reset``), an action
    index (int), or None when it is none of these."""
    text = text.strip().lower()
    if text in ("q", "quit", "exit"):
        return "q"
    if text in ("r", "reset"):
        return "r"
    if text.isdigit() and int(text) < num_actions:
        return int(text)
    return None


def human_wm(session: Session, screen: Screen, read_command: ReadCommand, log: Log = print) -> int:
    """A person plays the world model: each command from ``read_command(prompt)`` is an
    action index, ``r`` (new real first frame) or ``q``; returns the steps played."""
    dream, count = Dream(session.agent), len(session.meanings)
    prompt = f"action [{action_help(session.meanings)}], r reset, q quit> "
    log(f"actions: {action_help(session.meanings)}; r resets from a new real frame, q quits")
    frame, steps, total, played = dream.reset(session.env.reset()["image"][0]), 0, 0.0, 0
    screen.show(to_image(frame), "world model step 0")
    while True:
        command = parse_command(read_command(prompt), count)
        if command == "q":
            return played
        if command is None:
            log(f"unknown command; type an action 0-{count - 1}, r or q")
            continue
        if command == "r":
            frame, steps, total = dream.reset(session.env.reset()["image"][0]), 0, 0.0
            screen.show(to_image(frame), "world model step 0 (reset)")
            continue
        frame, reward, done = dream.step(command)
        steps, total, played = steps + 1, total + reward, played + 1
        text = (f"step {steps} action {session.action_name(command)}: predicted reward {reward:+g} "
                f"done {done}, return {total:g}")
        log(text + (" (the world model ends the episode; r resets)" if done else ""))
        screen.show(to_image(frame), f"world model {text}")
        if _limit_reached(session, steps):
            log("--max-steps reached: reset from a new real frame")
            frame, steps, total = dream.reset(session.env.reset()["image"][0]), 0, 0.0
            screen.show(to_image(frame), "world model step 0 (--max-steps reset)")


def episode_paths(target: str | Path) -> list[Path]:
    """The episode files of ``target``: one file, or every episode in a folder."""
    target = Path(target)
    if target.is_dir():
        return list_episodes(target)
    if not target.is_file():
        raise PlayError(f"episode {target} does not exist; pass an episode file (.npz) or a folder of them.")
    return [target]


def image_of(episode: dict[str, np.ndarray], source: Path) -> np.ndarray:
    """The frames ``[T, H, W, C]`` of an episode (``image``, else its first image key)."""
    keys = ["image"] if "image" in episode else [k for k, v in episode.items() if is_image_key(k, v)]
    if not keys or np.ndim(episode[keys[0]]) not in (3, 4):
        raise EpisodeError(source, None, f"holds no image frames (keys {sorted(episode)}); it cannot be replayed.")
    return episode[keys[0]]


def replay(paths: list[Path], screen: Screen, episodes: int | None = None, max_steps: int | None = None,
           log: Log = print) -> list[int]:
    """Show recorded episodes frame by frame, logging each step's action and reward;
    returns the number of frames shown per episode."""
    shown = []
    for path in paths[:episodes]:
        episode = load_episode(path)
        frames = image_of(episode, path)[:None if max_steps is None else max_steps + 1]
        actions = episode["action"].argmax(-1) if episode["action"].ndim == 2 else episode["action"]
        log(f"{path}: {len(episode['reward'])} steps")
        for t, frame in enumerate(frames):
            reward = float(episode["reward"][t])
            text = f"t={t} reward {reward:+g}" + (f" action {actions[t]}" if t < len(frames) - 1 else "")
            log(f"  {text}")
            screen.show(frame, f"{path.name} {text}")
        log(f"{path.name}: return {float(episode['reward'][:len(frames)].sum()):g} over {len(frames)} frames")
        shown.append(len(frames))
    return shown


__all__ = ["Actor", "Dream", "Session", "action_help", "agent_env", "agent_wm", "episode_paths", "human_wm",
           "image_of", "parse_command", "replay", "to_image"]
