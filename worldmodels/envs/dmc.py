"""DeepMind Control Suite tasks on dm_control, for pixels: one task behind the gymnasium
API that :class:`~worldmodels.envs.backends.GymnasiumVectorEnv` loops over.

envpool runs DMC faster but gives no frames; this backend renders the MuJoCo camera
off screen (``MUJOCO_GL=egl`` by default: Mesa's software EGL on a machine without a
GPU, the GPU's EGL on one; ``osmesa`` where EGL is missing). The camera is DreamerV3's:
camera 2 for the quadruped tasks, 0 for the rest. Episodes never terminate; they are
truncated at the task's limit (1000 physics steps for most tasks).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # before dm_control is imported: it picks its GL backend once


def _load_triton_first() -> None:
    """Mesa's software renderer and Triton each load their own LLVM; importing Triton
    after Mesa has rendered crashes the process (a segfault, measured), the other order
    works. So Triton, where it is installed, comes first."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


_load_triton_first()

QUADRUPED_CAMERA = 2
GL_HINT = ("MuJoCo renders off screen through EGL (MUJOCO_GL=egl, the default here) or OSMesa "
           "(MUJOCO_GL=osmesa): on Debian/Ubuntu apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri")


def camera_for(domain: str) -> int:
    """DreamerV3's camera for a domain: 2 for quadruped, 0 otherwise."""
    return QUADRUPED_CAMERA if domain == "quadruped" else 0


def split_task(task: str) -> tuple[str, str]:
    """``"walker_walk"`` -> ``("walker", "walk")``; ``"ball_in_cup_catch"`` -> ``("ball_in_cup", "catch")``:
    the domain is the longest prefix the suite knows."""
    from dm_control import suite

    domains = {domain for domain, _ in suite.ALL_TASKS}
    parts = task.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        domain, name = "_".join(parts[:cut]), "_".join(parts[cut:])
        if domain in domains and (domain, name) in suite.ALL_TASKS:
            return domain, name
    known = ", ".join(sorted(f"{d}_{t}" for d, t in suite.ALL_TASKS)[:8])
    raise ValueError(f"unknown dmc task {task!r}; dm_control has e.g. {known}, ...")


class DMCTask:
    """One dm_control task with gymnasium's ``reset(seed) -> (obs, info)``, the 5-tuple
    ``step`` and ``render() -> uint8 [H, W, 3]`` from the task's camera.

    Observations are the task's proprioceptive dict (float32 arrays); actions are
    float vectors in the task's bounds (``[-1, 1]`` for every suite task). ``max_steps``
    (physics steps) truncates episodes before the task's own limit.
    """

    def __init__(self, task: str, size: tuple[int, int] = (64, 64), seed: int = 0, max_steps: int | None = None):
        import gymnasium
        from dm_control import suite

        self.domain, self.task = split_task(task)
        self._random = np.random.RandomState(seed)
        self._env = suite.load(self.domain, self.task, task_kwargs={"random": self._random})
        self._size, self._camera = tuple(size), camera_for(self.domain)
        self._max_steps, self._steps = max_steps, 0
        spec = self._env.action_spec()
        self.action_space = gymnasium.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32))
        self.observation_space = gymnasium.spaces.Dict(OrderedDict(
            (key, gymnasium.spaces.Box(-np.inf, np.inf, tuple(value.shape) or (1,), np.float32))
            for key, value in self._env.observation_spec().items()))

    @staticmethod
    def _obs(time_step: Any) -> OrderedDict:
        return OrderedDict((k, np.asarray(v, np.float32).reshape(-1)) for k, v in time_step.observation.items())

    def reset(self, seed: int | None = None) -> tuple[OrderedDict, dict]:
        if seed is not None:
            self._random.seed(seed)
        self._steps = 0
        return self._obs(self._env.reset()), {}

    def step(self, action: Any) -> tuple[OrderedDict, float, bool, bool, dict]:
        time_step = self._env.step(np.asarray(action, np.float64))
        self._steps += 1
        truncated = time_step.last() or (self._max_steps is not None and self._steps >= self._max_steps)
        return self._obs(time_step), float(time_step.reward or 0.0), False, bool(truncated), {}

    def render(self) -> np.ndarray:
        try:
            return self._env.physics.render(*self._size, camera_id=self._camera)
        except Exception as error:  # the GL backends fail with many error types
            raise RuntimeError(f"rendering {self.domain}_{self.task} failed ({error!r}). {GL_HINT}") from error

    def close(self) -> None:
        self._env.close()
