"""robosuite manipulation tasks (Lift, Stack, ...) behind the gymnasium API, with
observations named as robomimic's datasets name them.

robosuite (ARISE Initiative) simulates robot arms on MuJoCo; robomimic's datasets are
recorded from it. One :class:`RobosuiteTask` is one robosuite env (``robosuite.make``)
with:

- observations keyed as in robomimic's HDF5 files: ``<camera>_image`` uint8
  ``(H, W, 3)`` for each camera (``agentview_image``, ``robot0_eye_in_hand_image``;
  rendered headless by MuJoCo, upside down as robosuite and robomimic store them, so
  ``data.camera_flips: {agentview_image: vertical}`` turns them upright in training
  and in the env alike), the proprioceptive keys (``robot0_eef_pos``,
  ``robot0_eef_quat``, ``robot0_gripper_qpos``, ...; float32) and ``object`` (the
  task's object state, robosuite's ``object-state``) when asked for, plus
  ``log_success`` (float32 0/1: the task's ``_check_success()``; a ``log_`` key,
  never a model input);
- the robot's default controller (robosuite's default composite controller for the
  robot: OSC_POSE on the Panda arm, 7-d actions in ``[-1, 1]``: end-effector position
  and rotation deltas, then the gripper, -1 open / +1 closed), or ``controller`` (a
  robosuite controller name or JSON file);
- the sparse reward (1 when the task succeeds) or robosuite's shaped one
  (``reward_shaping``), scaled to at most 1;
- episodes that terminate when the task succeeds (``info["success"]``), as robomimic's
  rollouts stop there, and are truncated after ``max_steps`` agent steps;
- without ``render_effects``, MuJoCo's shadows, reflections and skybox off: frames
  render 5x faster on Mesa's software EGL (45 ms per step for two 64x64 cameras here,
  against 230 ms), and differ from robomimic's datasets by those effects (turn them on to
  evaluate on a downloaded robomimic dataset's renders).

Object placements are drawn from NumPy's global generator (robosuite's placement
samplers use it), seeded at each seeded reset.

:class:`RobosuiteVectorEnv` loops over copies as
:class:`~worldmodels.envs.backends.GymnasiumVectorEnv` does, keeping the observation
dict as it is (other suites' dicts are flattened into ``vector``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends import GymnasiumVectorEnv
from .spaces import ObsSpace

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo is imported: robosuite picks its GL backend once

from .dmc import GL_HINT  # noqa: E402  (loads Triton before Mesa, see there)

DEFAULT_CAMERAS = ("agentview",)
DEFAULT_PROPRIO = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
OBJECT_KEY = "object"            # robomimic's name for robosuite's "object-state"
SUCCESS_KEY = "log_success"
DEFAULT_MAX_STEPS = 500


def image_key(camera: str) -> str:
    """robomimic's observation key of a camera: ``agentview`` -> ``agentview_image``."""
    return f"{camera}_image"


def _controller_config(controller: str | None, robot: str) -> dict | None:
    """robosuite's composite controller config: the robot's default (None) or ``controller``
    (a name such as ``BASIC``, or a JSON file)."""
    from robosuite.controllers import load_composite_controller_config

    if controller is None:
        return load_composite_controller_config(robot=robot)
    return load_composite_controller_config(controller=controller, robot=robot)


class RobosuiteTask:
    """One robosuite env with gymnasium's ``reset(seed) -> (obs, info)`` and 5-tuple
    ``step`` (module docstring); ``info["success"]`` on every step.

    Args:
        task: robosuite env name (``Lift``, ``Stack``, ``PickPlaceCan``, ...).
        robot: robosuite robot (``Panda``, ``Sawyer``, ...).
        cameras: robosuite camera names; each gives ``<camera>_image`` of ``size`` (H, W).
        proprio: observation keys besides the images (robosuite's names; ``object`` is
            the task's object state).
        seed: seeds the object placements at the first reset (and :meth:`reset` seeds).
        max_steps: agent steps before an episode is truncated.
        reward_shaping: robosuite's dense reward instead of the sparse success reward.
        controller: None for the robot's default controller, else a robosuite
            composite controller name or JSON file.
        render_effects: keep MuJoCo's shadows, reflections and skybox (slower).
    """

    def __init__(self, task: str, robot: str = "Panda", cameras: Sequence[str] = DEFAULT_CAMERAS,
                 size: tuple[int, int] = (84, 84), proprio: Sequence[str] = DEFAULT_PROPRIO, seed: int = 0,
                 max_steps: int | None = None, reward_shaping: bool = False, controller: str | None = None,
                 render_effects: bool = False):
        import gymnasium
        import robosuite

        if task not in robosuite.ALL_ENVIRONMENTS:
            raise ValueError(f"unknown robosuite task {task!r}; robosuite has {', '.join(sorted(robosuite.ALL_ENVIRONMENTS))}")
        self.task, self.cameras, self.proprio = task, tuple(cameras), tuple(proprio)
        self._max_steps, self._steps = int(max_steps or DEFAULT_MAX_STEPS), 0
        self._seed = int(seed)
        np.random.seed(self._seed)   # robosuite's placement samplers draw from NumPy's global generator
        height, width = (int(s) for s in size)
        self._env = robosuite.make(
            task, robots=robot, controller_configs=_controller_config(controller, robot),
            has_renderer=False, has_offscreen_renderer=bool(self.cameras), use_camera_obs=bool(self.cameras),
            use_object_obs=OBJECT_KEY in self.proprio, camera_names=list(self.cameras) or "agentview",
            camera_heights=height, camera_widths=width, reward_shaping=bool(reward_shaping), reward_scale=1.0,
            ignore_done=True, horizon=self._max_steps, hard_reset=False)
        if self.cameras and not render_effects:
            self._plain_rendering()
        low, high = self._env.action_spec
        self.action_space = gymnasium.spaces.Box(low.astype(np.float32), high.astype(np.float32))
        obs = self._obs(self._env.observation_spec())
        self.observation_space = gymnasium.spaces.Dict(OrderedDict(
            (key, gymnasium.spaces.Box(0, 255, value.shape, np.uint8) if value.dtype == np.uint8
             else gymnasium.spaces.Box(-np.inf, np.inf, value.shape, np.float32)) for key, value in obs.items()))

    def _plain_rendering(self) -> None:
        """Shadows, reflections and the skybox off in the offscreen renderer's scene."""
        import mujoco

        scene = self._env.sim._render_context_offscreen.scn
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            scene.flags[flag] = 0

    def _obs(self, raw: dict[str, Any]) -> OrderedDict:
        obs = OrderedDict()
        for camera in self.cameras:
            obs[image_key(camera)] = np.asarray(raw[image_key(camera)], np.uint8)
        for key in self.proprio:
            source = "object-state" if key == OBJECT_KEY else key
            if source not in raw:
                raise ValueError(f"robosuite task {self.task!r} gives no observation {source!r} "
                               f"(it gives {sorted(k for k in raw if not k.endswith('_image'))})")
            obs[key] = np.asarray(raw[source], np.float32).reshape(-1)
        obs[SUCCESS_KEY] = np.asarray([float(self.success())], np.float32)
        return obs

    def success(self) -> bool:
        """Whether the task is solved now (robosuite's ``_check_success()``)."""
        return bool(self._env._check_success())

    def reset(self, seed: int | None = None) -> tuple[OrderedDict, dict]:
        if seed is not None:
            np.random.seed(seed)
        self._steps = 0
        try:
            return self._obs(self._env.reset()), {"success": False}
        except Exception as error:
            if self.cameras and "render" in repr(error).lower():
                raise RuntimeError(f"rendering robosuite {self.task} failed ({error!r}). {GL_HINT}") from error
            raise

    def step(self, action: Any) -> tuple[OrderedDict, float, bool, bool, dict]:
        raw, reward, _, _ = self._env.step(np.asarray(action, np.float64).reshape(-1))
        self._steps += 1
        obs = self._obs(raw)
        success = bool(obs[SUCCESS_KEY][0])
        return obs, float(reward), success, self._steps >= self._max_steps and not success, {"success": success}

    def render(self) -> np.ndarray:
        """The first camera's frame of the current state (uint8 ``[H, W, 3]``, upside down as robosuite's)."""
        if not self.cameras:
            raise RuntimeError("this robosuite task has no camera to render")
        return self._obs(self._env._get_observations(force_update=True))[image_key(self.cameras[0])]

    @property
    def sim(self) -> Any:
        """The robosuite env itself (for scripted policies that read the simulator)."""
        return self._env

    def close(self) -> None:
        self._env.close()


class RobosuiteVectorEnv(GymnasiumVectorEnv):
    """:class:`GymnasiumVectorEnv` over :class:`RobosuiteTask` copies, observations kept
    under their own keys (``agentview_image``, ``robot0_eef_pos``, ``log_success``, ...;
    ``log_success`` as a float32 scalar per env)."""

    def __init__(self, tasks: list[RobosuiteTask], seed: int = 0):
        super().__init__(tasks, seed)
        space = tasks[0].observation_space.spaces
        layout: ObsSpace = {key: (tuple(box.shape), np.dtype(box.dtype)) for key, box in space.items()}
        layout[SUCCESS_KEY] = ((), np.dtype(np.float32))
        self._set_spaces(layout, tasks[0].action_space)

    def _row(self, i: int, obs: Any, reward: float, first: bool, last: bool, terminal: bool) -> dict:
        row = {key: value for key, value in obs.items() if key != SUCCESS_KEY}
        row[SUCCESS_KEY] = np.float32(obs[SUCCESS_KEY][0])
        flags = {"is_first": first, "is_last": last, "is_terminal": terminal}
        return {**row, "reward": np.float32(reward), **{k: np.bool_(v) for k, v in flags.items()}}

    @property
    def tasks(self) -> list[RobosuiteTask]:
        return self._envs
