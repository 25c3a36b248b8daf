"""A deterministic vector env for the runtime's tests."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels.envs.spaces import ActionSpace, VectorEnv


class CountingEnv(VectorEnv):
    """Env ``i``'s episodes last ``lengths[i]`` steps; the observation ``vector`` is
    ``[t, last action, i]``, the reward at arrival is ``1 + action`` (DreamerV3 autoreset)."""

    def __init__(self, lengths=(3, 5), actions=2):
        self.lengths = np.asarray(lengths)
        self.num_envs = len(self.lengths)
        self.obs_space = {"vector": ((3,), np.dtype(np.float32)), "reward": ((), np.dtype(np.float32)),
                          "is_first": ((), np.dtype(bool)), "is_last": ((), np.dtype(bool)),
                          "is_terminal": ((), np.dtype(bool))}
        self.act_space = ActionSpace(True, actions, 0, actions - 1)
        self.t = np.zeros(self.num_envs, np.int64)
        self.closed = False
        self.steps = 0

    def _obs(self, action, reward, first):
        last = self.t >= self.lengths
        vector = np.stack([self.t, action, np.arange(self.num_envs)], 1).astype(np.float32)
        return {"vector": vector, "reward": reward.astype(np.float32), "is_first": first,
                "is_last": last, "is_terminal": last.copy()}

    def reset(self):
        self.t[:] = 0
        zeros = np.zeros(self.num_envs)
        return self._obs(zeros, zeros, np.ones(self.num_envs, bool))

    def step(self, action):
        self.steps += 1
        action = np.asarray(action)
        first = self.t >= self.lengths
        self.t = np.where(first, 0, self.t + 1)
        reward = np.where(first, 0.0, 1.0 + action)
        return self._obs(np.where(first, 0, action), reward, first)

    def close(self):
        self.closed = True


@pytest.fixture
def counting_env():
    return CountingEnv()
