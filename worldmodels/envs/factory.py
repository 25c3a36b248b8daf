"""One vectorised environment interface for DreamerV3/IRIS, whatever the backend.

:class:`EnvSpec` names a task (suite ``classic | gym | atari | dmc | crafter | robosuite | procgen``);
:func:`make_env` builds a :class:`VectorEnv` of ``num_envs`` copies on envpool when it
is installed and has the task (classic control, Atari, DMC), otherwise on gymnasium
(a Python loop over ``gymnasium.make`` envs; Atari through ale-py, Crafter through
the ``crafter`` package). DMC gives proprioceptive ``vector`` observations (its
observation dict flattened in key order) on envpool, and on dm_control
(:mod:`worldmodels.envs.dmc`) when envpool is missing or when ``render_image`` asks for
camera frames (``image``, rendered headless by MuJoCo: DMC from pixels). robosuite's
manipulation tasks (:mod:`worldmodels.envs.robosuite`) keep their observation dict under
robomimic's names (``agentview_image``, ``robot0_eef_pos``, ..., ``log_success``).
Procgen's 16 games (:mod:`worldmodels.envs.procgen`) run on envpool only: ``image``
``[64, 64, 3]`` and 15 discrete actions.

Every call returns a dict of arrays with leading dim ``N``: observations (``image``
uint8 ``[N, H, W, C]`` and/or ``vector`` float32 ``[N, D]``), ``reward`` float32
``[N]`` and bool ``[N]`` flags ``is_first``, ``is_last`` (episode over: terminated or
truncated) and ``is_terminal`` (terminated only). Autoreset is DreamerV3's: the call
after an env's ``is_last`` ignores that env's action and returns its reset
observation (``is_first`` True, reward 0). ``max_episode_steps`` counts agent steps
(calls to ``step``); ``action_repeat`` sums rewards over repeats and stops at an
episode's end.

The backends live in :mod:`worldmodels.envs.backends`, the shared interface
(:class:`VectorEnv`, :class:`ActionSpace`, action checks) in :mod:`worldmodels.envs.spaces`;
this module picks a backend for a spec and re-exports the interface.

Example::

    with make_env(EnvSpec("classic", "cartpole", num_envs=4)) as env:
        obs = env.reset()                               # obs["vector"]: [4, 4] float32
        obs = env.step(random_actions(env.act_space, 4, np.random.default_rng(0)))
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import WorldModelsError
from .catch import register as register_catch
from .backends import CrafterAdapter, EnvpoolVectorEnv, FireReset, GymnasiumVectorEnv
from .procgen import GAMES as PROCGEN_GAMES
from .procgen import PROCGEN_DEFAULTS, check_spec as check_procgen_spec, procgen_env
from .spaces import (  # noqa: F401  (re-exported: the factory is where users import them from)
    FLAGS,
    ActionSpace,
    EnvSpaces,
    ObsSpace,
    VectorEnv,
    prepare_actions,
    random_actions,
    resize_image,
)

SUITES = ("classic", "gym", "atari", "dmc", "crafter", "robosuite", "procgen")
BACKENDS = ("auto", "envpool", "gymnasium")
DEFAULT_ACTION_REPEAT = {"atari": 4, "dmc": 2}
CLASSIC_TASKS = {
    "cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "acrobot": "Acrobot-v1",
    "mountaincar": "MountainCar-v0", "mountaincarcontinuous": "MountainCarContinuous-v0",
}
CRAFTER_TASKS = ("reward", "noreward")
ENVS_HINT = "pip install worldmodels[envs]"
ROBOSUITE_DEFAULTS = {"robot": "Panda", "cameras": ("agentview",),
                      "proprio": ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"),
                      "controller": None, "reward_shaping": False,
                      "render_effects": False}   # as worldmodels.envs.robosuite


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
    if suite == "robosuite":
        if re.fullmatch(r"[A-Z][A-Za-z0-9]*", task) is None:
            raise ValueError(f"bad robosuite task {task!r}; use a robosuite env name, e.g. 'Lift' or 'Stack'")
        return None, None
    if suite == "procgen":
        if task not in PROCGEN_GAMES:
            raise ValueError(f"unknown procgen task {task!r}; the games are {', '.join(PROCGEN_GAMES)}")
        return None, None
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
    (atari 4, dmc 2, others 1); ``render_image`` (classic, gym, dmc) adds ``image`` from
    ``env.render()`` (dmc: the MuJoCo camera, on dm_control).

    Atari only: ``sticky_actions`` (probability of repeating the previous action;
    Machado et al.'s full-Atari protocol uses 0.25, Atari100k 0), ``noop_max`` (up to
    that many no-ops after a reset), ``terminal_on_life_loss`` (a lost life ends the
    episode as terminated; on envpool the game then goes on from the next life, on
    gymnasium + ale-py it restarts), ``use_fire_reset`` (press FIRE after a reset, for
    games that wait for it), ``full_action_space`` (all 18 actions instead of the game's
    minimal set).

    robosuite only (:mod:`worldmodels.envs.robosuite`): ``robot``, ``cameras`` (robosuite
    camera names, each an ``<camera>_image`` observation of ``size``), ``proprio`` (the
    other observation keys), ``controller`` (None: the robot's default) and
    ``reward_shaping`` (robosuite's dense reward instead of the sparse success reward),
    ``render_effects`` (MuJoCo's shadows, reflections and skybox; off: 5x faster frames).

    Procgen only (:mod:`worldmodels.envs.procgen`): ``distribution_mode`` (``easy`` |
    ``hard``) and Procgen's options ``num_levels`` (0: unlimited), ``start_level``,
    ``use_sequential_levels``, ``center_agent``, ``use_backgrounds``,
    ``use_monochrome_assets``, ``restrict_themes``, ``use_generated_assets``,
    ``paint_vel_info``, ``use_easy_jump``; ``size`` stays Procgen's 64x64 and episodes
    end at the game's own limit (``max_episode_steps`` null).
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
    terminal_on_life_loss: bool = False
    use_fire_reset: bool = False
    full_action_space: bool = False
    robot: str = ROBOSUITE_DEFAULTS["robot"]
    cameras: tuple[str, ...] = ROBOSUITE_DEFAULTS["cameras"]
    proprio: tuple[str, ...] = ROBOSUITE_DEFAULTS["proprio"]
    controller: str | None = ROBOSUITE_DEFAULTS["controller"]
    reward_shaping: bool = ROBOSUITE_DEFAULTS["reward_shaping"]
    render_effects: bool = ROBOSUITE_DEFAULTS["render_effects"]
    distribution_mode: str = PROCGEN_DEFAULTS["distribution_mode"]
    num_levels: int = PROCGEN_DEFAULTS["num_levels"]
    start_level: int = PROCGEN_DEFAULTS["start_level"]
    use_sequential_levels: bool = PROCGEN_DEFAULTS["use_sequential_levels"]
    center_agent: bool = PROCGEN_DEFAULTS["center_agent"]
    use_backgrounds: bool = PROCGEN_DEFAULTS["use_backgrounds"]
    use_monochrome_assets: bool = PROCGEN_DEFAULTS["use_monochrome_assets"]
    restrict_themes: bool = PROCGEN_DEFAULTS["restrict_themes"]
    use_generated_assets: bool = PROCGEN_DEFAULTS["use_generated_assets"]
    paint_vel_info: bool = PROCGEN_DEFAULTS["paint_vel_info"]
    use_easy_jump: bool = PROCGEN_DEFAULTS["use_easy_jump"]

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
        if self.render_image and self.suite not in ("classic", "gym", "dmc"):
            raise ValueError(f"render_image is only for suites 'classic', 'gym' and 'dmc', not {self.suite!r}")
        _check_int("noop_max", self.noop_max, 0)
        atari_only = ("terminal_on_life_loss", "use_fire_reset", "full_action_space")
        for name in atari_only:
            if getattr(self, name) and self.suite != "atari":
                raise ValueError(f"{name} is an Atari option; suite {self.suite!r} has no lives or FIRE button")
        self._check_robosuite_options()
        resolve_task(self.suite, self.task)
        check_procgen_spec(self)

    def _check_robosuite_options(self) -> None:
        self.cameras, self.proprio = tuple(str(c) for c in self.cameras), tuple(str(k) for k in self.proprio)
        if self.suite != "robosuite":
            for name, default in ROBOSUITE_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ValueError(f"{name} is a robosuite option; suite {self.suite!r} does not take it")
            return
        if len(set(self.cameras)) != len(self.cameras) or len(set(self.proprio)) != len(self.proprio):
            raise ValueError(f"cameras and proprio must not repeat a name, got {list(self.cameras)}, "
                             f"{list(self.proprio)}")
        if not self.cameras and not self.proprio:
            raise ValueError("a robosuite env needs cameras or proprio keys to observe")


class MissingEnvPackageError(WorldModelsError, ImportError):
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


def _choose_backend(spec: EnvSpec, envpool_id: str | None) -> tuple[str, Any, str | None]:
    """``("envpool", module, None)`` or ``("gymnasium", None, note)`` for ``spec``; the note
    says why an Atari task falls back to gymnasium (None otherwise)."""
    if spec.suite == "dmc" and (spec.render_image or spec.backend == "gymnasium"):
        if spec.backend == "envpool":
            raise ValueError("backend 'envpool' renders no DMC frames; use backend 'auto' or 'gymnasium' (dm_control)")
        return "gymnasium", None, None
    if envpool_id is None or spec.render_image:
        if spec.backend == "envpool":
            why = "render_image" if spec.render_image else f"suite {spec.suite!r}"
            raise ValueError(f"backend 'envpool' does not support {why}; use backend 'auto' or 'gymnasium'")
        return "gymnasium", None, None
    if spec.backend == "gymnasium":
        return "gymnasium", None, None
    envpool = _import("envpool")
    atari = spec.suite == "atari"
    if envpool is None:
        if spec.suite == "dmc" and spec.backend != "envpool":
            return "gymnasium", None, None   # dm_control; _check_packages names it when it is missing
        if spec.backend == "envpool":
            raise MissingEnvPackageError(f"{spec.suite} task {spec.task!r} needs envpool here: {ENVS_HINT}")
        note = f"envpool not installed, running {envpool_id} on gymnasium + ale-py (slower; {ENVS_HINT})"
        return "gymnasium", None, note if atari else None
    if envpool_id in envpool.list_all_envs():
        return "envpool", envpool, None
    if spec.suite == "dmc" and _installed("dm_control"):
        return "gymnasium", None, None
    if spec.backend == "envpool" or spec.suite == "dmc":
        raise ValueError(f"envpool has no task {envpool_id!r} (from {spec.suite} task {spec.task!r})")
    return "gymnasium", None, f"envpool has no {envpool_id}, running it on gymnasium + ale-py" if atari else None


def _installed(name: str) -> bool:
    """Whether module ``name`` is imported or can be (without importing it, so nothing
    it prints on import, such as pygame's banner, shows up)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _check_packages(spec: EnvSpec) -> None:
    """Raise :class:`MissingEnvPackageError` when a package the non-envpool backend of ``spec`` needs is missing."""
    if spec.suite == "crafter" and not _installed("crafter"):
        raise MissingEnvPackageError("suite 'crafter' needs the crafter package: pip install crafter")
    if spec.suite == "atari" and not (_installed("ale_py") and _installed("cv2")):
        raise MissingEnvPackageError("atari without envpool needs ale-py and OpenCV: pip install ale-py opencv-python "
                                     f"(or envpool: {ENVS_HINT})")
    if spec.suite == "dmc" and not _installed("dm_control"):
        what = "from pixels needs dm_control" if spec.render_image else "needs envpool or dm_control here"
        raise MissingEnvPackageError(f"dmc task {spec.task!r} {what}: {ENVS_HINT}")
    if spec.suite == "robosuite" and not (_installed("robosuite") and _installed("mujoco")):
        raise MissingEnvPackageError(f"robosuite task {spec.task!r} needs robosuite and MuJoCo: "
                                     "pip install worldmodels[robot]")
    if spec.render_image and spec.suite == "classic" and not _installed("pygame"):
        raise MissingEnvPackageError(f"render_image on classic task {spec.task!r} needs pygame: pip install pygame "
                                     f"(or {ENVS_HINT})")


def backend_name(spec: EnvSpec) -> str:
    """What :func:`make_env` runs ``spec`` on, without building it: ``envpool``,
    ``gymnasium``, ``gymnasium+ale-py`` (Atari) or ``crafter``. Raises as :func:`make_env`
    would for a missing package or a task the backend lacks."""
    _, envpool_id = resolve_task(spec.suite, spec.task)
    if spec.suite == "procgen":
        if not _installed("envpool"):
            raise MissingEnvPackageError(f"procgen task {spec.task!r} needs envpool: {ENVS_HINT}")
        return "envpool"
    backend, _, _ = _choose_backend(spec, envpool_id)
    if backend == "envpool":
        return "envpool"
    _check_packages(spec)
    return {"crafter": "crafter", "atari": "gymnasium+ale-py", "dmc": "dm_control",
            "robosuite": "robosuite"}.get(spec.suite, "gymnasium")


def _offscreen_rendering() -> None:
    """Without a display no window can open: let pygame's SDL use its dummy video driver
    (unless the user chose one), so it does not print an XDG_RUNTIME_DIR error while
    classic-control tasks render frames off screen."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def _gymnasium_envs(spec: EnvSpec, gym_id: str) -> list:
    """``num_envs`` gymnasium envs; Atari through ale-py with AtariPreprocessing."""
    import gymnasium

    _check_packages(spec)
    register_catch()
    if spec.suite == "atari":
        gymnasium.register_envs(_import("ale_py"))
    if gym_id not in gymnasium.registry:
        raise ValueError(f"unknown gymnasium task {gym_id!r} (suite {spec.suite!r}, task {spec.task!r})")
    if spec.render_image:
        _offscreen_rendering()
    repeat = spec.action_repeat
    kwargs: dict[str, Any] = {"render_mode": "rgb_array"} if spec.render_image else {}
    if spec.max_episode_steps is not None:  # raw steps: every agent step but the last is `repeat` of them
        kwargs["max_episode_steps"] = spec.max_episode_steps * repeat
    if spec.suite != "atari":
        return [gymnasium.make(gym_id, **kwargs) for _ in range(spec.num_envs)]
    envs = []
    for _ in range(spec.num_envs):
        env = gymnasium.make(gym_id, frameskip=1, repeat_action_probability=spec.sticky_actions,
                             full_action_space=spec.full_action_space, **kwargs)
        env = gymnasium.wrappers.AtariPreprocessing(
            env, noop_max=spec.noop_max, frame_skip=repeat, screen_size=(spec.size[1], spec.size[0]),
            grayscale_obs=False, terminal_on_life_loss=spec.terminal_on_life_loss)
        envs.append(FireReset(env) if spec.use_fire_reset else env)
    return envs


def _crafter_envs(spec: EnvSpec) -> list:
    _check_packages(spec)
    crafter = _import("crafter")
    length = 10000 if spec.max_episode_steps is None else spec.max_episode_steps * spec.action_repeat
    return [CrafterAdapter(crafter.Env(size=spec.size, length=length, reward=spec.task == "reward", seed=spec.seed + i))
            for i in range(spec.num_envs)]


def _dmc_tasks(spec: EnvSpec) -> list:
    from .dmc import DMCTask

    _check_packages(spec)
    limit = None if spec.max_episode_steps is None else spec.max_episode_steps * spec.action_repeat
    return [DMCTask(spec.task, spec.size, spec.seed + i, limit) for i in range(spec.num_envs)]


def _robosuite_env(spec: EnvSpec) -> VectorEnv:
    _check_packages(spec)
    from .robosuite import RobosuiteTask, RobosuiteVectorEnv

    limit = None if spec.max_episode_steps is None else spec.max_episode_steps * spec.action_repeat
    tasks = []
    try:
        for i in range(spec.num_envs):
            tasks.append(RobosuiteTask(spec.task, spec.robot, spec.cameras, spec.size, spec.proprio, spec.seed + i,
                                       limit, spec.reward_shaping, spec.controller, spec.render_effects))
    except BaseException:
        for task in tasks:
            task.close()
        raise
    return RobosuiteVectorEnv(tasks, spec.seed)


def make_env(spec: EnvSpec) -> VectorEnv:
    """Build ``spec``'s :class:`VectorEnv` (see the module docstring for backends).

    Raises:
        ValueError: a task the backend does not have, or an unsupported combination.
        MissingEnvPackageError: a missing optional package, with the ``pip install`` command
            (Procgen: :class:`~worldmodels.envs.procgen.ProcgenUnavailableError`).
    """
    gym_id, envpool_id = resolve_task(spec.suite, spec.task)
    if spec.suite == "procgen":
        return procgen_env(spec)
    backend, envpool, note = _choose_backend(spec, envpool_id)
    if note:
        print(f"worldmodels: {note}")
    if backend == "envpool":
        return EnvpoolVectorEnv(spec, envpool_id, envpool)
    if spec.suite == "robosuite":
        return _robosuite_env(spec)
    if spec.suite == "crafter":
        env = GymnasiumVectorEnv(_crafter_envs(spec), spec.seed)
        env.deterministic = False   # objects in sets, iterated in address order: one seed, two worlds after ~90 steps
        return env
    repeat = 1 if spec.suite == "atari" else spec.action_repeat  # AtariPreprocessing skips frames
    image_size = spec.size if spec.render_image else None
    if spec.suite == "dmc":
        return GymnasiumVectorEnv(_dmc_tasks(spec), spec.seed, repeat, image_size)
    return GymnasiumVectorEnv(_gymnasium_envs(spec, gym_id), spec.seed, repeat, image_size)


def spec_from_config(env: Any, *, seed: int, num_envs: int | None = None) -> EnvSpec:
    """The :class:`EnvSpec` of an ``env`` config node (``configs/env/gym.yaml``) with
    ``seed`` (and ``num_envs`` instead of the node's); keys the node lacks keep the
    spec's defaults."""
    fields = {f.name for f in dataclasses.fields(EnvSpec)} - {"seed", "num_envs"}
    given = {key: env[key] for key in fields if key in env and env[key] is not None}
    if "size" in given:
        given["size"] = tuple(int(s) for s in given["size"])
    for key in ("cameras", "proprio"):
        if key in given:
            given[key] = tuple(str(k) for k in given[key])
    return EnvSpec(num_envs=int(num_envs or env.get("num_envs", 1)), seed=int(seed), **given)


_SPACES: dict[tuple, EnvSpaces] = {}


def infer_spaces(spec: EnvSpec) -> EnvSpaces:
    """The :class:`EnvSpaces` of ``spec``'s env, read once per process from a one-env copy
    (a model is built from these; checkpoints record them, so loading an agent later
    needs no env package)."""
    key = tuple(sorted((k, str(v)) for k, v in dataclasses.asdict(spec).items() if k not in ("seed", "num_envs")))
    if key not in _SPACES:
        with make_env(dataclasses.replace(spec, num_envs=1)) as env:
            _SPACES[key] = EnvSpaces(dict(env.obs_space), env.act_space)
    return _SPACES[key]
