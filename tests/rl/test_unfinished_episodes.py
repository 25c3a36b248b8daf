"""DreamerV3, IRIS and Δ-IRIS train from episodes that have not ended: their first
batches come before any episode finished."""

from __future__ import annotations

import numpy as np
import torch
from conftest import CountingEnv

from worldmodels.algos.dreamerv3.collect import OnlineData
from worldmodels.envs.spaces import ActionSpace
from worldmodels.rl.component_data import FRAME_KEYS, ComponentData, ComponentWindow
from worldmodels.rl.selectors import Balanced, CountPriority


class FrameEnv(CountingEnv):
    """CountingEnv with an ``image`` observation whose pixels hold the step ``t``."""

    def __init__(self, lengths=(10_000, 10_000)):
        super().__init__(lengths, actions=3)
        self.obs_space = {"image": ((8, 8, 3), np.dtype(np.uint8)),
                          **{k: v for k, v in self.obs_space.items() if k != "vector"}}
        self.act_space = ActionSpace(True, 3, 0, 2)

    def _obs(self, action, reward, first):
        out = super()._obs(action, reward, first)
        t = out.pop("vector")[:, 0].astype(np.uint8)
        out["image"] = np.broadcast_to(t[:, None, None, None], (self.num_envs, 8, 8, 3)).copy()
        return out


def test_dreamer_batches_come_from_the_running_episode():
    data = OnlineData(CountingEnv(lengths=(10_000,)), batch_size=4, batch_length=16, train_ratio=64.0,
                      prefill=50, capacity=1_000, seed=0)
    for _ in range(5):
        batch = data.next_batch()
    assert data.episodes == 0 and data.replay.episode_lengths(finished_only=True) == {}
    t = batch["vector"][..., 0]
    assert torch.equal(t[:, 1:] - t[:, :-1], torch.ones(4, 15))     # consecutive steps of one open episode
    assert batch["is_first"][:, 0].all() and not batch["is_last"].any()


def test_iris_and_delta_iris_windows_come_from_running_episodes():
    def windows(selector):
        shapes = {"tokenizer": (4, 3, "start", ("observations", "actions", "mask_padding")),
                  "world_model": (2, 5, "start", FRAME_KEYS),
                  "actor_critic": (3, 3, "end", ("observations", "mask_padding"))}
        return {name: ComponentWindow(*shape, 0, selector()) for name, shape in shapes.items()}

    for selector in (Balanced, lambda: CountPriority(5.0)):
        data = ComponentData(FrameEnv(), windows(selector), actor="actor_critic", collect_every=1, collect_steps=4,
                             max_env_steps=10_000, capacity=1_000, seed=0, initial_steps=20)
        batch = data.next_batch()
        assert data.collector.episodes == 0
        wm = batch["world_model"]
        frames, mask = wm["observations"][:, :, 0, 0, 0].long(), wm["mask_padding"]
        for row in range(2):                     # real frames are consecutive; padding only after the newest
            real = frames[row][mask[row]]
            assert len(real) >= 1 and torch.equal(real, torch.arange(int(real[0]), int(real[0]) + len(real)))
            assert mask[row].int().diff().le(0).all()
        assert not wm["ends"].any() and (wm["rewards"][mask] >= 1).all()   # the reward after each action
        assert batch["actor_critic"]["mask_padding"][:, -1].all()
