"""The two backends behind :func:`worldmodels.envs.factory.make_env`: a Python loop over
gymnasium-API envs (gymnasium, ale-py, Crafter through :class:`CrafterAdapter`) and an
envpool batch, both mapped to :class:`~worldmodels.envs.spaces.VectorEnv`'s conventions."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from .spaces import ObsSpace, VectorEnv, flat_observation, obs_layout, prepare_actions, resize_image

if TYPE_CHECKING:
    from .factory import EnvSpec


class GymnasiumVectorEnv(VectorEnv):
    """A Python loop over gymnasium-API envs (``reset(seed=) -> (obs, info)``, 5-tuple ``step``).

    Env ``i`` is seeded ``seed + i`` at the first reset. ``action_repeat`` steps an env up
    to that many times per call (rewards summed, stopping at the episode's end);
    ``image_size`` ``(H, W)`` adds ``image`` from ``env.render()`` resized.
    """

    def __init__(self, envs: list, seed: int = 0, action_repeat: int = 1,
                 image_size: tuple[int, int] | None = None):
        self._envs, self._seed, self._repeat, self._image_size = list(envs), seed, action_repeat, image_size
        self.num_envs = len(self._envs)
        layout = obs_layout(self._envs[0].observation_space)
        if image_size is not None:
            layout["image"] = ((*image_size, 3), np.dtype(np.uint8))
        self._set_spaces(layout, self._envs[0].action_space)
        self._done: np.ndarray | None = None
        self._seeded = False

    def _row(self, i: int, obs: Any, reward: float, first: bool, last: bool, terminal: bool) -> dict:
        if "image" in self.obs_space and self._image_size is None:
            row = {"image": np.asarray(obs, np.uint8)}
        else:
            row = {"vector": flat_observation(obs)}
        if self._image_size is not None:
            row["image"] = resize_image(self._envs[i].render(), self._image_size)
        flags = {"is_first": first, "is_last": last, "is_terminal": terminal}
        return {**row, "reward": np.float32(reward), **{k: np.bool_(v) for k, v in flags.items()}}

    def _reset_one(self, i: int) -> dict:
        obs, _ = self._envs[i].reset(seed=None if self._seeded else self._seed + i)
        return self._row(i, obs, 0.0, True, False, False)

    def _step_one(self, i: int, action: Any) -> dict:
        total, terminated, truncated = 0.0, False, False
        for _ in range(self._repeat):
            obs, reward, terminated, truncated, _ = self._envs[i].step(action)
            total += float(reward)
            if terminated or truncated:
                break
        self._done[i] = bool(terminated or truncated)
        return self._row(i, obs, total, False, self._done[i], bool(terminated))

    def reset(self) -> dict[str, np.ndarray]:
        rows = [self._reset_one(i) for i in range(self.num_envs)]
        self._seeded, self._done = True, np.zeros(self.num_envs, bool)
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def step(self, action: Any) -> dict[str, np.ndarray]:
        if self._done is None:
            raise RuntimeError("call reset() before step()")
        actions = prepare_actions(self.act_space, action, self.num_envs)
        shape = getattr(self._envs[0].action_space, "shape", None)
        rows = []
        for i in range(self.num_envs):
            if self._done[i]:
                self._done[i] = False
                rows.append(self._reset_one(i))
            else:
                act = int(actions[i]) if self.act_space.discrete else actions[i].reshape(shape)
                rows.append(self._step_one(i, act))
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def reseed(self) -> bool:
        self._seeded = False
        return True

    def close(self) -> None:
        for env in self._envs:
            env.close()


class EnvpoolVectorEnv(VectorEnv):
    """An envpool batch (``env_type="gymnasium"``), flags mapped to the DreamerV3 convention.

    envpool itself resets an env on the call after its episode ended (action ignored,
    reward 0); that call is reported with ``is_first``. Atari repeats actions natively
    (``frame_skip``) and its CHW frames become HWC; envpool crashes (segfault) with
    ``noop_max=0``, so it gets at least 1 (one no-op after each reset). Other suites repeat in Python: all envs
    step together, stopping at the first sub-step where any episode ends, and a call
    that resets an env steps once. ``env``: an envpool batch already built for ``spec``
    (Procgen's, :func:`worldmodels.envs.procgen.procgen_env`) instead of ``envpool.make``.
    """

    def __init__(self, spec: EnvSpec, task_id: str, envpool: Any, env: Any = None):
        kwargs: dict[str, Any] = {"env_type": "gymnasium", "num_envs": spec.num_envs, "seed": spec.seed}
        self._atari = spec.suite == "atari"
        self._repeat = 1 if self._atari else spec.action_repeat
        if self._atari:
            kwargs.update(img_height=spec.size[0], img_width=spec.size[1], gray_scale=False, stack_num=1,
                          frame_skip=spec.action_repeat, repeat_action_probability=spec.sticky_actions,
                          noop_max=max(spec.noop_max, 1), episodic_life=spec.terminal_on_life_loss, reward_clip=False,
                          use_fire_reset=spec.use_fire_reset, full_action_space=spec.full_action_space)
        if spec.max_episode_steps is not None:
            kwargs["max_episode_steps"] = spec.max_episode_steps * self._repeat
        with warnings.catch_warnings():   # envpool's float64 Box bounds, cast by gymnasium
            warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
            self._env = envpool.make(task_id, **kwargs) if env is None else env
            space, action_space = self._env.observation_space, self._env.action_space
        self.num_envs = spec.num_envs
        if self._atari:
            channels, height, width = (int(d) for d in space.shape)
            layout: ObsSpace = {"image": ((height, width, channels), np.dtype(np.uint8))}
        else:
            layout = obs_layout(space)
        self._set_spaces(layout, action_space)
        self._done: np.ndarray | None = None

    def _output(self, obs: Any, reward: np.ndarray, first: np.ndarray, last: np.ndarray,
                terminal: np.ndarray) -> dict[str, np.ndarray]:
        if self._atari:
            out = {"image": np.ascontiguousarray(np.asarray(obs, np.uint8).transpose(0, 2, 3, 1))}
        elif "image" in self.obs_space:   # HWC frames (Procgen with channel_first off)
            out = {"image": np.asarray(obs, np.uint8)}
        else:
            out = {"vector": flat_observation(obs, (self.num_envs,))}
        out["reward"] = reward
        out["is_first"], out["is_last"], out["is_terminal"] = first, last, terminal
        return out

    def reset(self) -> dict[str, np.ndarray]:
        obs, _ = self._env.reset()
        self._done = np.zeros(self.num_envs, bool)
        zeros = np.zeros(self.num_envs, bool)
        return self._output(obs, np.zeros(self.num_envs, np.float32), ~zeros, zeros, zeros)

    def step(self, action: Any) -> dict[str, np.ndarray]:
        if self._done is None:
            raise RuntimeError("call reset() before step()")
        actions = prepare_actions(self.act_space, action, self.num_envs)
        actions = actions.astype(np.int32) if self.act_space.discrete else actions
        first = self._done
        if self._repeat == 1:
            obs, reward, terminal, truncated, _ = self._env.step(actions)
            reward, terminal = np.asarray(reward, np.float32), np.asarray(terminal, bool)
            last = terminal | np.asarray(truncated, bool)
        else:
            obs, reward, last, terminal = self._repeat_step(actions, bool(np.count_nonzero(first)))
        self._done = last
        return self._output(obs, reward, first, last, terminal)

    def _repeat_step(self, actions: np.ndarray, resetting: bool) -> tuple:
        reward = np.zeros(self.num_envs, np.float32)
        last, terminal = np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        for _ in range(1 if resetting else self._repeat):
            obs, rew, terminated, truncated, _ = self._env.step(actions)
            reward += np.asarray(rew, np.float32)
            terminal |= np.asarray(terminated, bool)
            last |= terminal | np.asarray(truncated, bool)
            if last.any():
                break
        return obs, reward, last, terminal

    def close(self) -> None:
        getattr(self._env, "close", lambda: None)()


class FireReset:
    """Presses FIRE (action 1) after each reset of a gymnasium Atari env whose game waits
    for it (a no-op for games without FIRE); the rest passes through."""

    def __init__(self, env: Any):
        self.env = env
        self.observation_space, self.action_space = env.observation_space, env.action_space
        meanings = env.unwrapped.get_action_meanings()
        self._fire = len(meanings) > 1 and meanings[1] == "FIRE"

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed)
        if self._fire:
            obs, _, terminated, truncated, info = self.env.step(1)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()


class CrafterAdapter:
    """``crafter.Env`` (old gym API) behind the gymnasium API: terminated when the player
    died (``info["discount"] == 0``), truncated at the length limit."""

    def __init__(self, env: Any):
        self._env = env
        self.observation_space, self.action_space = env.observation_space, env.action_space

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        return self._env.reset(), {}  # seeded at construction

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, done, info = self._env.step(action)
        died = bool(done) and info.get("discount", 1.0) == 0
        return obs, reward, died, bool(done) and not died, info

    def close(self) -> None:
        getattr(self._env, "close", lambda: None)()
