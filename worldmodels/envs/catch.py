"""Catch from pixels: a small task a CPU can learn in minutes, for the tiny IRIS runs.

A ball falls one row per step from a random column of the top row of a ``rows x cols``
grid; a one-cell paddle on the bottom row moves left, stays or moves right (actions 0, 1,
2). When the ball reaches the bottom row it is caught (reward 1) if the paddle is under
it, missed (reward 0) otherwise, and the next ball starts at the top. An episode is
``balls`` balls (``balls * (rows - 1)`` steps). The frame (``render()``) draws each cell
as ``cell x cell`` pixels: the ball white, the paddle orange, the rest black; the vector
observation is ``(ball row, ball column, paddle column)`` scaled to [0, 1].

A random policy catches about one ball in eight on the default 8x8 grid (the paddle
random-walks 7 steps: 1.2 of 10 balls); a policy that follows the ball catches every one. The grid is
Catch as bsuite has it (Osband et al. 2020), with several balls per episode so that
returns spread from 0 to ``balls``.

Registered with gymnasium as ``worldmodels/Catch-v0``:

    env = gymnasium.make("worldmodels/Catch-v0", render_mode="rgb_array")
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "worldmodels/Catch-v0"
BALL_COLOR = (255, 255, 255)
PADDLE_COLOR = (255, 128, 0)


class Catch(gymnasium.Env):
    """Catch on a ``rows x cols`` grid, ``balls`` balls per episode (module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, rows: int = 8, cols: int = 8, balls: int = 10, cell: int = 4,
                 render_mode: str | None = None):
        for name, value, low in (("rows", rows, 2), ("cols", cols, 2), ("balls", balls, 1), ("cell", cell, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"Catch: {name} must be an integer >= {low}, got {value!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Catch: render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.rows, self.cols, self.balls, self.cell = int(rows), int(cols), int(balls), int(cell)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self._ball = np.zeros(2, np.int64)   # row, column
        self._paddle = 0
        self._left = 0                       # balls still to fall, this one included

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._paddle = int(self.np_random.integers(self.cols))
        self._left = self.balls
        self._drop_ball()
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._left == 0:
            raise RuntimeError("Catch: the episode is over; call reset()")
        if not self.action_space.contains(int(action)):
            raise ValueError(f"Catch: action must be 0 (left), 1 (stay) or 2 (right), got {action!r}")
        self._paddle = int(np.clip(self._paddle + int(action) - 1, 0, self.cols - 1))
        self._ball[0] += 1
        reward, terminated = 0.0, False
        if self._ball[0] == self.rows - 1:
            reward = float(self._ball[1] == self._paddle)
            self._left -= 1
            terminated = self._left == 0
            if not terminated:
                self._drop_ball()
        return self._observation(), reward, terminated, False, {}

    def render(self) -> np.ndarray:
        """The frame: uint8 ``[rows * cell, cols * cell, 3]``."""
        grid = np.zeros((self.rows, self.cols, 3), np.uint8)
        grid[self.rows - 1, self._paddle] = PADDLE_COLOR
        if self._left:
            grid[self._ball[0], self._ball[1]] = BALL_COLOR
        return np.repeat(np.repeat(grid, self.cell, axis=0), self.cell, axis=1)

    def _drop_ball(self) -> None:
        self._ball[:] = (0, int(self.np_random.integers(self.cols)))

    def _observation(self) -> np.ndarray:
        scale = np.array([self.rows - 1, self.cols - 1, self.cols - 1], np.float32)
        return np.array([*self._ball, self._paddle], np.float32) / scale


def register() -> None:
    """Make ``worldmodels/Catch-v0`` known to ``gymnasium.make`` (once)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(ENV_ID, entry_point=Catch)
