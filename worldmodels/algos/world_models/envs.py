"""The environments of the World Models pipeline, as batches of envs that step together.

``carracing``: CarRacing-v3 on envpool (gymnasium + box2d as the fallback), 96x96 frames
cropped to the road (rows 0-83, dropping the dashboard, as the authors' code does) and
resized to 64x64. ``lunarlander``: LunarLanderContinuous-v3 on envpool from pixels (its
400x600 rgb_array render resized to 64x64; gymnasium's needs box2d, which this package
does not install, so envpool is required). ``doom``: VizDoom take-cover on envpool
(``TakeCover-v1``: 64x64 frames, 4 frames per agent step, the combined actions
no-op / right / left); the controller's one tanh output is thresholded at +-1/3 into
left / stay / right as the authors' code does, and the score is the frames survived
(4 per agent step; envpool's own reward for this task is 0). ``tiny``: a small synthetic task (a dot steered towards the centre of
a 16x16 frame, reward minus the distance) that the tests and smoke runs use; it needs no
env package.

Every batch gives ``reset() -> frames`` and ``step(actions) -> (frames, reward, done)``
with frames uint8 ``[N, S, S, 3]``, reward float32 ``[N]``, done bool ``[N]``. After an
episode ends its env restarts on its own; callers keep an alive mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import WorldModelsError
from ...utils.fork_safety import stop_openblas_threads
from ...utils.watchdog import Watchdog
from .controller import ControllerSpec


class EnvIdError(WorldModelsError, ValueError):
    """An env name this pipeline does not run; the message names the one to use."""


@dataclass(frozen=True)
class WorldModelsEnv:
    """What the pipeline needs to know of an env."""

    name: str
    env_id: str
    image_size: int
    action_dim: int
    action_map: str
    controller: ControllerSpec = ControllerSpec()
    alive_reward: float | None = None   # the dream's reward per step alive (Doom: frames survived); None: M's head


DOOM_FRAME_SKIP = 4
ENVS = {
    "carracing": WorldModelsEnv("carracing", "CarRacing-v3", 64, 3, "carracing"),
    "lunarlander": WorldModelsEnv("lunarlander", "LunarLanderContinuous-v3", 64, 2, "identity"),
    "doom": WorldModelsEnv("doom", "TakeCover-v1", 64, 1, "identity", ControllerSpec("zhc", bias=False),
                           alive_reward=float(DOOM_FRAME_SKIP)),
    "tiny": WorldModelsEnv("tiny", "tiny", 16, 2, "identity"),
}
ALIASES = {"CarRacing-v3": "carracing", "LunarLanderContinuous-v3": "lunarlander", "TakeCover-v1": "doom"}
RETIRED = {
    "DoomTakeCover-v0": "DoomTakeCover-v0 (gym-doom) is retired; the current id is envpool's TakeCover-v1 (--env doom).",
    "CarRacing-v2": "CarRacing-v2 is retired in gymnasium 1.0; the current id is CarRacing-v3 (--env carracing).",
    "CarRacing-v1": "CarRacing-v1 is retired in gymnasium 1.0; the current id is CarRacing-v3 (--env carracing).",
    "LunarLander-v2": "LunarLander-v2 is retired in gymnasium 1.0; the current id is LunarLander-v3 "
                      "(not yet an env of this pipeline: --env carracing or --env tiny).",
    "PongNoFrameskip-v5": "PongNoFrameskip-v5 never existed in gymnasium; the current id is ALE/Pong-v5 "
                          "(not yet an env of this pipeline: --env carracing or --env tiny).",
}


def resolve_env(name: str) -> WorldModelsEnv:
    """The env called ``name`` (a short name or its current id); a retired id or an
    unknown name raises :class:`EnvIdError` with one line naming what to use."""
    if name in RETIRED:
        raise EnvIdError(RETIRED[name])
    key = ALIASES.get(name, name)
    if key not in ENVS:
        raise EnvIdError(f"env {name!r} is not one of {', '.join(ENVS)}.")
    return ENVS[key]


def preprocess_carracing(frames: np.ndarray) -> np.ndarray:
    """``[N, 96, 96, 3]`` uint8 -> ``[N, 64, 64, 3]`` uint8: rows 0-83, bilinear resize."""
    images = torch.from_numpy(np.ascontiguousarray(frames[:, :84])).permute(0, 3, 1, 2).float()
    resized = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class CarRacingBatch:
    """``num_envs`` CarRacing-v3 envs on envpool, or gymnasium's when envpool is missing."""

    def __init__(self, num_envs: int, seed: int, max_steps: int):
        self.num_envs = num_envs
        try:
            import envpool
        except ModuleNotFoundError:
            envpool = None
        if envpool is not None:
            self._env = envpool.make("CarRacing-v3", env_type="gymnasium", num_envs=num_envs, seed=seed,
                                     max_episode_steps=max_steps)
        else:
            import gymnasium

            self._env = gymnasium.vector.SyncVectorEnv(
                [lambda: gymnasium.make("CarRacing-v3", max_episode_steps=max_steps) for _ in range(num_envs)])
        self._seed = seed
        self._envpool = envpool is not None

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset() if self._envpool else self._env.reset(seed=self._seed)
        return preprocess_carracing(np.asarray(obs))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated, _ = self._env.step(np.asarray(actions, np.float32))
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        return preprocess_carracing(np.asarray(obs)), np.asarray(reward, np.float32), done

    def close(self) -> None:
        self._env.close()


def preprocess_render(frames: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 renders -> ``[N, 64, 64, 3]`` uint8 (bilinear, antialiased)."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    resized = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class LunarLanderBatch:
    """``num_envs`` LunarLanderContinuous-v3 envs on envpool, seen through their
    rgb_array renders (envpool draws them without box2d or pygame)."""

    def __init__(self, num_envs: int, seed: int, max_steps: int):
        try:
            import envpool
        except ModuleNotFoundError:
            raise EnvIdError("--env lunarlander needs envpool (pip install envpool; Linux): gymnasium's "
                             "LunarLander needs box2d, which is not installed.") from None
        self.num_envs = num_envs
        self._env = envpool.make("LunarLanderContinuous-v3", env_type="gymnasium", num_envs=num_envs, seed=seed,
                                 max_episode_steps=max_steps, render_mode="rgb_array")
        self._ids = np.arange(num_envs)

    def _frames(self) -> np.ndarray:
        return preprocess_render(np.asarray(self._env.render(env_ids=self._ids)))

    def reset(self) -> np.ndarray:
        self._env.reset()
        return self._frames()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, reward, terminated, truncated, _ = self._env.step(np.asarray(actions, np.float32))
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        return self._frames(), np.asarray(reward, np.float32), done

    def close(self) -> None:
        self._env.close()


class TinyBatch:
    """A dot at a random spot of a 16x16 frame, moved by actions in [-1, 1]^2 (up to
    1.5 px a step); reward is minus its distance to the centre over 8; episodes last
    ``max_steps`` steps."""

    SIZE = 16

    def __init__(self, num_envs: int, seed: int, max_steps: int):
        self.num_envs, self.max_steps = num_envs, max_steps
        self._rng = np.random.default_rng(seed)
        self._pos = np.zeros((num_envs, 2))
        self._t = np.zeros(num_envs, np.int64)

    def _frames(self) -> np.ndarray:
        frames = np.zeros((self.num_envs, self.SIZE, self.SIZE, 3), np.uint8)
        cells = np.clip(np.round(self._pos), 0, self.SIZE - 1).astype(np.int64)
        frames[np.arange(self.num_envs), cells[:, 0], cells[:, 1]] = (255, 200, 80)
        return frames

    def _restart(self, which: np.ndarray) -> None:
        self._pos[which] = self._rng.uniform(0, self.SIZE - 1, (int(which.sum()), 2))
        self._t[which] = 0

    def reset(self) -> np.ndarray:
        self._restart(np.ones(self.num_envs, bool))
        return self._frames()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._pos = np.clip(self._pos + 1.5 * np.clip(actions, -1, 1), 0, self.SIZE - 1)
        self._t += 1
        centre = (self.SIZE - 1) / 2
        reward = (-np.linalg.norm(self._pos - centre, axis=1) / 8).astype(np.float32)
        done = self._t >= self.max_steps
        frames = self._frames()
        self._restart(done)
        return frames, reward, done

    def close(self) -> None:
        pass


DOOM_STAY, DOOM_RIGHT, DOOM_LEFT = 0, 1, 2   # envpool's combined actions of take_cover.cfg (MOVE_LEFT, MOVE_RIGHT)
DOOM_THRESHOLD = 1.0 / 3.0                  # the authors' 0.3333
DOOM_STEP_TIMEOUT_S = 600.0   # making the envs takes seconds, a step milliseconds; a dead game process, forever
DOOM_STALLED = (f"worldmodels: VizDoom (envpool TakeCover-v1) did not answer for {DOOM_STEP_TIMEOUT_S:.0f} s "
                "(one of its game processes has died or never started); stopping. Finished stages are kept: "
                "rerun the same command with --resume <run directory> --stage <the stage that stopped, "
                "and those after it>.")


def doom_discrete_actions(actions: np.ndarray) -> np.ndarray:
    """Controller outputs ``[N, 1]`` (or ``[N]``) in [-1, 1] -> envpool actions ``[N]`` int:
    below -1/3 left, above +1/3 right, else stay (the authors' ``doomreal.py``)."""
    values = np.asarray(actions, np.float32).reshape(len(actions), -1)[:, 0]
    discrete = np.full(len(values), DOOM_STAY, np.int32)
    discrete[values < -DOOM_THRESHOLD] = DOOM_LEFT
    discrete[values > DOOM_THRESHOLD] = DOOM_RIGHT
    return discrete


class DoomBatch:
    """``num_envs`` VizDoom take-cover envs on envpool (``TakeCover-v1``), 64x64 frames,
    ``DOOM_FRAME_SKIP`` frames per step; ``max_steps`` agent steps at most (525: the
    authors' 2,100 frames). Reward: the frames survived in the step."""

    def __init__(self, num_envs: int, seed: int, max_steps: int):
        try:
            import envpool
        except ModuleNotFoundError:
            raise EnvIdError("--env doom needs envpool (pip install envpool; Linux), which has VizDoom's "
                             "TakeCover-v1.") from None
        self.num_envs = num_envs
        self._watchdog = Watchdog(DOOM_STEP_TIMEOUT_S, DOOM_STALLED)
        stop_openblas_threads()   # the game processes are forked from several threads at once
        with self._watchdog:
            self._env = envpool.make("TakeCover-v1", env_type="gymnasium", num_envs=num_envs, seed=seed,
                                     img_height=64, img_width=64, stack_num=1, frame_skip=DOOM_FRAME_SKIP,
                                     use_combined_action=True, max_episode_steps=max_steps)

    @staticmethod
    def _frames(obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(obs).transpose(0, 2, 3, 1))   # [N, 3, 64, 64] -> [N, 64, 64, 3]

    def reset(self) -> np.ndarray:
        with self._watchdog:
            obs, _ = self._env.reset()
        return self._frames(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._watchdog:
            obs, _, terminated, truncated, _ = self._env.step(doom_discrete_actions(actions))
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        return self._frames(obs), np.full(self.num_envs, DOOM_FRAME_SKIP, np.float32), done

    def close(self) -> None:
        self._env.close()
        self._watchdog.close()


def make_batch(env: WorldModelsEnv, num_envs: int, seed: int, max_steps: int):
    """``num_envs`` copies of ``env`` stepping together."""
    maker = {"carracing": CarRacingBatch, "lunarlander": LunarLanderBatch, "doom": DoomBatch, "tiny": TinyBatch}[env.name]
    return maker(num_envs, seed, max_steps)


class TwinBatch:
    """Two batches of ``num_envs / 2`` envs made with the same seed, stepped as one:
    env ``i`` and env ``i + num_envs / 2`` start on the same track (the antithetic seeds
    of the authors' code: both members of a mirrored pair meet the same episodes).
    Both halves are reset and stepped together, so they stay in step across episodes."""

    def __init__(self, env: WorldModelsEnv, num_envs: int, seed: int, max_steps: int):
        if num_envs % 2:
            raise ValueError(f"a twin batch needs an even number of envs, not {num_envs}.")
        self.num_envs, self._half = num_envs, num_envs // 2
        self._twins = [make_batch(env, self._half, seed, max_steps) for _ in range(2)]

    def reset(self) -> np.ndarray:
        return np.concatenate([batch.reset() for batch in self._twins])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        halves = [batch.step(part) for batch, part in zip(self._twins, np.split(np.asarray(actions), 2))]
        return tuple(np.concatenate(parts) for parts in zip(*halves))

    def close(self) -> None:
        for batch in self._twins:
            batch.close()
