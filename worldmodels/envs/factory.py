"""One vectorised environment interface for DreamerV3/IRIS, whatever the backend.

:class:`EnvSpec` names a task (suite ``classic | gym | atari | dmc | crafter``);
:func:`make_env` builds a :class:`VectorEnv` of ``num_envs`` copies on envpool when it
is installed and has the task (classic control, Atari, DMC), otherwise on gymnasium
(a Python loop over ``gymnasium.make`` envs; Atari through ale-py, Crafter through
the ``crafter`` package). DMC needs envpool (``pip install worldmodels[envs]``) and
gives proprioceptive ``vector`` observations (its observation dict flattened in key
order); dm_control/shimmy are not used.

Every call returns a dict of arrays with leading dim ``N``: observations (``image``
uint8 ``[N, H, W, C]`` and/or ``vector`` float32 ``[N, D]``), ``reward`` float32
``[N]`` and bool ``[N]`` flags ``is_first``, ``is_last`` (episode over: terminated or
truncated) and ``is_terminal`` (terminated only). Autoreset is DreamerV3's: the call
after an env's ``is_last`` ignores that env's action and returns its reset
observation (``is_first`` True, reward 0). ``max_episode_steps`` counts agent steps
(calls to ``step``); ``action_repeat`` sums rewards over repeats and stops at an
episode's end.

Example::

    with make_env(EnvSpec("classic", "cartpole", num_envs=4)) as env:
        obs = env.reset()                               # obs["vector"]: [4, 4] float32
        obs = env.step(random_actions(env.act_space, 4, np.random.default_rng(0)))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self

SUITES = ("classic", "gym", "atari", "dmc", "crafter")
BACKENDS = ("auto", "envpool", "gymnasium")
DEFAULT_ACTION_REPEAT = {"atari": 4, "dmc": 2}
CLASSIC_TASKS = {
    "cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "acrobot": "Acrobot-v1",
    "mountaincar": "MountainCar-v0", "mountaincarcontinuous": "MountainCarContinuous-v0",
}
CRAFTER_TASKS = ("reward", "noreward")
ENVS_HINT = "pip install worldmodels[envs]"
FLAGS = ("is_first", "is_last", "is_terminal")
ObsSpace = dict[str, tuple[tuple[int, ...], np.dtype]]


def _camel(name: str) -> str:
    """``"space_invaders"`` -> ``"SpaceInvaders"``; CamelCase names are kept."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def resolve_task(suite: str, task: str) -> tuple[str | None, str | None]:
    """``(gymnasium_id, envpool_id)`` of a task (None where that backend lacks it).

    Raises ValueError for a task name the suite cannot have.
    """
    if suite == "classic":
        gym_id = CLASSIC_TASKS.get(task.lower(), task if task in CLASSIC_TASKS.values() else None)
        if gym_id is None:
            raise ValueError(f"unknown classic task {task!r}; known: {', '.join(CLASSIC_TASKS)} "
                             "(suite 'gym' takes any gymnasium id)")
        return gym_id, gym_id
    if suite == "atari":
        match = re.fullmatch(r"(?:ALE/)?([A-Za-z0-9_]+)(?:-v5)?", task)
        if match is None:
            raise ValueError(f"bad atari task {task!r}; use a game like 'pong', 'space_invaders' or 'ALE/Pong-v5'")
        game = _camel(match.group(1))
        return f"ALE/{game}-v5", f"{game}-v5"
    if suite == "dmc":
        if re.fullmatch(r"[a-z]+(_[a-z]+)+", task) is None:
            raise ValueError(f"bad dmc task {task!r}; use domain_task, e.g. 'walker_walk' or 'ball_in_cup_catch'")
        return None, f"{_camel(task)}-v1"
    if suite == "crafter":
        if task not in CRAFTER_TASKS:
            raise ValueError(f"unknown crafter task {task!r}; known: {', '.join(CRAFTER_TASKS)}")
        return None, None
    return task, None


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class EnvSpec:
    """What to build: ``suite`` and ``task`` plus batch size, seed and preprocessing.

    ``size`` is ``(H, W)`` of image observations; ``action_repeat`` defaults per suite
    (atari 4, dmc 2, others 1); ``sticky_actions`` and ``noop_max`` are Atari's;
    ``render_image`` (classic/gym only) adds ``image`` from ``env.render()``.
    """

    suite: str
    task: str
    num_envs: int = 1
    seed: int = 0
    size: tuple[int, int] = (64, 64)
    action_repeat: int | None = None
    sticky_actions: float = 0.25
    max_episode_steps: int | None = None
    backend: str = "auto"
    render_image: bool = False
    noop_max: int = 0

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; known suites: {', '.join(SUITES)}")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty string, got {self.task!r}")
        _check_int("num_envs", self.num_envs, 1)
        _check_int("seed", self.seed, 0)
        if len(tuple(self.size)) != 2:
            raise ValueError(f"size must be (height, width), got {self.size!r}")
        self.size = tuple(self.size)
        for side in self.size:
            _check_int("size", side, 1)
        if self.action_repeat is None:
            self.action_repeat = DEFAULT_ACTION_REPEAT.get(self.suite, 1)
        _check_int("action_repeat", self.action_repeat, 1)
        if not 0.0 <= self.sticky_actions <= 1.0:
            raise ValueError(f"sticky_actions must be in [0, 1], got {self.sticky_actions!r}")
        if self.max_episode_steps is not None:
            _check_int("max_episode_steps", self.max_episode_steps, 1)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; known backends: {', '.join(BACKENDS)}")
        if self.render_image and self.suite not in ("classic", "gym"):
            raise ValueError(f"render_image is only for suites 'classic' and 'gym', not {self.suite!r}")
        _check_int("noop_max", self.noop_max, 0)
        resolve_task(self.suite, self.task)


@dataclass(frozen=True)
class ActionSpace:
    """Per-env actions: ``size`` choices (discrete, ints in ``[0, size)``) or a ``size``-dim
    float vector in ``[low, high]`` (continuous; ``low``/``high`` float32 ``(size,)``)."""

    discrete: bool
    size: int
    low: Any = None
    high: Any = None


def _action_space(space: Any) -> ActionSpace:
    """An :class:`ActionSpace` from a gym/gymnasium ``Discrete`` or ``Box`` (duck-typed)."""
    if hasattr(space, "n"):
        return ActionSpace(True, int(space.n), 0, int(space.n) - 1)
    low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape).reshape(-1)
    return ActionSpace(False, int(low.size), low.copy(), high.copy())


def prepare_actions(space: ActionSpace, action: Any, num_envs: int) -> np.ndarray:
    """Validate a batch: discrete ``[N]`` ints or one-hot ``[N, n]`` -> int64 ``[N]``;
    continuous ``[N, A]`` -> float32 ``[N, A]`` clipped to the bounds."""
    action = np.asarray(action)
    if space.discrete:
        if action.shape == (num_envs, space.size):
            action = action.argmax(-1)
        if action.shape != (num_envs,):
            raise ValueError(f"discrete actions must have shape [{num_envs}] or one-hot "
                             f"[{num_envs}, {space.size}], got {list(action.shape)}")
        action = action.astype(np.int64)
        if ((action < 0) | (action >= space.size)).any():
            raise ValueError(f"discrete actions must be in [0, {space.size}), got {action.tolist()}")
        return action
    if action.shape == (num_envs,) and space.size == 1:
        action = action[:, None]
    if action.shape != (num_envs, space.size):
        raise ValueError(f"continuous actions must have shape [{num_envs}, {space.size}], got {list(action.shape)}")
    return np.clip(action.astype(np.float32), space.low, space.high)


def random_actions(space: ActionSpace, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random actions: int64 ``[N]`` (discrete) or float32 ``[N, A]`` within the
    bounds (infinite bounds replaced by -1/1)."""
    if space.discrete:
        return rng.integers(0, space.size, num_envs)
    low = np.where(np.isfinite(space.low), space.low, -1.0)
    high = np.where(np.isfinite(space.high), space.high, 1.0)
    return rng.uniform(low, high, (num_envs, space.size)).astype(np.float32)


def _obs_layout(space: Any) -> ObsSpace:
    """``image`` for a uint8 ``(H, W, C)`` space, else ``vector`` (dict spaces concatenated)."""
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, Mapping):
        return {"vector": ((sum(int(np.prod(s.shape)) for s in spaces.values()),), np.dtype(np.float32))}
    if len(space.shape) == 3 and np.dtype(space.dtype) == np.uint8:
        return {"image": (tuple(int(d) for d in space.shape), np.dtype(np.uint8))}
    return {"vector": ((int(np.prod(space.shape)),), np.dtype(np.float32))}


def _flat(obs: Any, batch: tuple[int, ...] = ()) -> np.ndarray:
    """Observation(s) as float32 ``[*batch, D]``; dicts concatenated in sorted key order."""
    if hasattr(obs, "_asdict"):
        obs = obs._asdict()
    if isinstance(obs, Mapping):
        return np.concatenate([_flat(obs[key], batch) for key in sorted(obs)], axis=-1)
    return np.asarray(obs, np.float32).reshape(*batch, -1)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H0, W0, C]`` (or ``[H0, W0]``) -> ``[H, W, C]`` (PIL bilinear, else nearest)."""
    image = np.asarray(image, np.uint8)
    image = image[..., None] if image.ndim == 2 else image
    if image.shape[:2] == tuple(size):
        return image
    try:
        from PIL import Image
    except ImportError:
        rows = np.arange(size[0]) * image.shape[0] // size[0]
        cols = np.arange(size[1]) * image.shape[1] // size[1]
        return image[rows][:, cols]
    channels = [np.asarray(Image.fromarray(image[..., c]).resize(size[::-1], Image.BILINEAR))
                for c in range(image.shape[-1])]
    return np.stack(channels, -1)


class VectorEnv:
    """``num_envs`` environments behind one batched, autoresetting interface.

    Attributes: ``num_envs``; ``obs_space`` (key -> per-env ``(shape, dtype)``, including
    ``reward`` float32 ``()`` and the bool ``()`` flags); ``act_space`` (:class:`ActionSpace`).
    """

    num_envs: int
    obs_space: ObsSpace
    act_space: ActionSpace

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env: observations, reward 0, ``is_first`` True, other flags False."""
        raise NotImplementedError

    def step(self, action: Any) -> dict[str, np.ndarray]:
        """One agent step of every env (see the module docstring for autoreset)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the environments."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _set_spaces(self, layout: ObsSpace, action_space: Any) -> None:
        flags = {key: ((), np.dtype(np.bool_)) for key in FLAGS}
        self.obs_space = {**layout, "reward": ((), np.dtype(np.float32)), **flags}
        self.act_space = _action_space(action_space)


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
        layout = _obs_layout(self._envs[0].observation_space)
        if image_size is not None:
            layout["image"] = ((*image_size, 3), np.dtype(np.uint8))
        self._set_spaces(layout, self._envs[0].action_space)
        self._done: np.ndarray | None = None
        self._seeded = False

    def _row(self, i: int, obs: Any, reward: float, first: bool, last: bool, terminal: bool) -> dict:
        if "image" in self.obs_space and self._image_size is None:
            row = {"image": np.asarray(obs, np.uint8)}
        else:
            row = {"vector": _flat(obs)}
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

    def close(self) -> None:
        for env in self._envs:
            env.close()


class EnvpoolVectorEnv(VectorEnv):
    """An envpool batch (``env_type="gymnasium"``), flags mapped to the DreamerV3 convention.

    envpool itself resets an env on the call after its episode ended (action ignored,
    reward 0); that call is reported with ``is_first``. Atari repeats actions natively
    (``frame_skip``) and its CHW frames become HWC. Other suites repeat in Python: all envs
    step together, stopping at the first sub-step where any episode ends, and a call
    that resets an env steps once.
    """

    def __init__(self, spec: EnvSpec, task_id: str, envpool: Any):
        kwargs: dict[str, Any] = {"env_type": "gymnasium", "num_envs": spec.num_envs, "seed": spec.seed}
        self._atari = spec.suite == "atari"
        self._repeat = 1 if self._atari else spec.action_repeat
        if self._atari:
            kwargs.update(img_height=spec.size[0], img_width=spec.size[1], gray_scale=False, stack_num=1,
                          frame_skip=spec.action_repeat, repeat_action_probability=spec.sticky_actions,
                          noop_max=spec.noop_max, episodic_life=False, reward_clip=False)
        if spec.max_episode_steps is not None:
            kwargs["max_episode_steps"] = spec.max_episode_steps * self._repeat
        self._env = envpool.make(task_id, **kwargs)
        self.num_envs = spec.num_envs
        space = self._env.observation_space
        if self._atari:
            channels, height, width = (int(d) for d in space.shape)
            layout: ObsSpace = {"image": ((height, width, channels), np.dtype(np.uint8))}
        else:
            layout = _obs_layout(space)
        self._set_spaces(layout, self._env.action_space)
        self._done: np.ndarray | None = None

    def _output(self, obs: Any, reward: np.ndarray, first: np.ndarray, last: np.ndarray,
                terminal: np.ndarray) -> dict[str, np.ndarray]:
        if self._atari:
            out = {"image": np.ascontiguousarray(np.asarray(obs, np.uint8).transpose(0, 2, 3, 1))}
        else:
            out = {"vector": _flat(obs, (self.num_envs,))}
        flags = {"is_first": first, "is_last": last, "is_terminal": terminal}
        return {**out, "reward": reward.astype(np.float32), **{k: np.asarray(v, bool) for k, v in flags.items()}}

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
        reward = np.zeros(self.num_envs, np.float32)
        last, terminal = np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        for _ in range(1 if first.any() else self._repeat):
            obs, rew, terminated, truncated, _ = self._env.step(actions)
            reward += np.asarray(rew, np.float32)
            terminal |= np.asarray(terminated, bool)
            last |= terminal | np.asarray(truncated, bool)
            if last.any():
                break
        self._done = last.copy()
        return self._output(obs, reward, first, last, terminal)

    def close(self) -> None:
        getattr(self._env, "close", lambda: None)()


class _Crafter:
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


class MissingEnvPackageError(ImportError):
    """An optional package an env needs is not installed; the message says what to install."""


def _import(name: str) -> Any:
    """The module, or None when it is not installed (a missing dependency of it still raises)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        return None


def _choose_backend(spec: EnvSpec, envpool_id: str | None) -> tuple[str, Any]:
    """``("envpool", module)`` or ``("gymnasium", None)`` for ``spec``."""
    if envpool_id is None or spec.render_image:
        if spec.backend == "envpool":
            why = "render_image" if spec.render_image else f"suite {spec.suite!r}"
            raise ValueError(f"backend 'envpool' does not support {why}; use backend 'auto' or 'gymnasium'")
        return "gymnasium", None
    if spec.backend == "gymnasium":
        return "gymnasium", None
    envpool = _import("envpool")
    if envpool is None:
        if spec.backend == "envpool" or spec.suite == "dmc":
            raise MissingEnvPackageError(f"{spec.suite} task {spec.task!r} needs envpool here: {ENVS_HINT}")
        if spec.suite == "atari":
            print(f"worldmodels: envpool not installed, running {envpool_id} on gymnasium + ale-py "
                  f"(slower; {ENVS_HINT})")
        return "gymnasium", None
    if envpool_id in envpool.list_all_envs():
        return "envpool", envpool
    if spec.backend == "envpool" or spec.suite == "dmc":
        raise ValueError(f"envpool has no task {envpool_id!r} (from {spec.suite} task {spec.task!r})")
    if spec.suite == "atari":
        print(f"worldmodels: envpool has no {envpool_id}, running it on gymnasium + ale-py")
    return "gymnasium", None


def _gymnasium_envs(spec: EnvSpec, gym_id: str) -> list:
    """``num_envs`` gymnasium envs; Atari through ale-py with AtariPreprocessing."""
    import gymnasium

    if spec.suite == "atari":
        ale_py = _import("ale_py")
        if ale_py is None or _import("cv2") is None:
            raise MissingEnvPackageError("atari without envpool needs ale-py and OpenCV: pip install ale-py opencv-python "
                              f"(or envpool: {ENVS_HINT})")
        gymnasium.register_envs(ale_py)
    if gym_id not in gymnasium.registry:
        raise ValueError(f"unknown gymnasium task {gym_id!r} (suite {spec.suite!r}, task {spec.task!r})")
    if spec.render_image and spec.suite == "classic" and _import("pygame") is None:
        raise MissingEnvPackageError(f"render_image on classic task {spec.task!r} needs pygame: pip install pygame "
                                     f"(or {ENVS_HINT})")
    repeat = spec.action_repeat
    kwargs: dict[str, Any] = {"render_mode": "rgb_array"} if spec.render_image else {}
    if spec.max_episode_steps is not None:  # raw steps: every agent step but the last is `repeat` of them
        kwargs["max_episode_steps"] = spec.max_episode_steps * repeat
    if spec.suite != "atari":
        return [gymnasium.make(gym_id, **kwargs) for _ in range(spec.num_envs)]
    envs = []
    for _ in range(spec.num_envs):
        env = gymnasium.make(gym_id, frameskip=1, repeat_action_probability=spec.sticky_actions, **kwargs)
        envs.append(gymnasium.wrappers.AtariPreprocessing(
            env, noop_max=spec.noop_max, frame_skip=repeat, screen_size=(spec.size[1], spec.size[0]),
            grayscale_obs=False, terminal_on_life_loss=False))
    return envs


def _crafter_envs(spec: EnvSpec) -> list:
    crafter = _import("crafter")
    if crafter is None:
        raise MissingEnvPackageError("suite 'crafter' needs the crafter package: pip install crafter")
    length = 10000 if spec.max_episode_steps is None else spec.max_episode_steps * spec.action_repeat
    return [_Crafter(crafter.Env(size=spec.size, length=length, reward=spec.task == "reward", seed=spec.seed + i))
            for i in range(spec.num_envs)]


def make_env(spec: EnvSpec) -> VectorEnv:
    """Build ``spec``'s :class:`VectorEnv` (see the module docstring for backends).

    Raises:
        ValueError: a task the backend does not have, or an unsupported combination.
        MissingEnvPackageError: a missing optional package, with the ``pip install`` command.
    """
    gym_id, envpool_id = resolve_task(spec.suite, spec.task)
    backend, envpool = _choose_backend(spec, envpool_id)
    if backend == "envpool":
        return EnvpoolVectorEnv(spec, envpool_id, envpool)
    if spec.suite == "crafter":
        return GymnasiumVectorEnv(_crafter_envs(spec), spec.seed)
    repeat = 1 if spec.suite == "atari" else spec.action_repeat  # AtariPreprocessing skips frames
    image_size = spec.size if spec.render_image else None
    return GymnasiumVectorEnv(_gymnasium_envs(spec, gym_id), spec.seed, repeat, image_size)
