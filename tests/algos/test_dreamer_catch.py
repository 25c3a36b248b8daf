"""``+exp=dreamer_catch``: DreamerV3 from Catch's pixels alone, with the latents and
world-model learning rate its config comment justifies, and an encoder that sees the ball."""

from __future__ import annotations

import numpy as np
import torch

from worldmodels.envs.catch import Catch
from worldmodels.train import factories_for


def _frames_with_the_ball_everywhere(paddle: int = 3) -> torch.Tensor:
    """Catch frames ``[56, 1, 32, 32, 3]`` that differ only in the ball's cell (rows 0-6)."""
    env = Catch()
    env.reset(seed=0)
    env._paddle = paddle
    frames = []
    for row in range(env.rows - 1):
        for col in range(env.cols):
            env._ball[:] = (row, col)
            frames.append(env.render())
    return torch.from_numpy(np.stack(frames))[:, None]


def test_dreamer_catch_reads_only_pixels_with_32_latents_and_its_own_model_lr(config_from):
    catch = factories_for("dreamerv3").model(config_from(["+exp=dreamer_catch", "device=cpu"]))
    wm = catch.world_model
    assert wm.encoder.cnn_keys == ["image"] and wm.encoder.mlp_keys == []
    assert (wm.rssm.config.stoch, wm.rssm.config.classes) == (32, 16)
    assert {g["name"]: g["lr"] for g in catch.param_groups()}["model"] == 1e-3
    # dreamer_catch composes dreamer_cartpole; its changes stay its own.
    cartpole = config_from(["+exp=dreamer_cartpole", "device=cpu"]).model
    assert (cartpole.stoch, cartpole.classes, cartpole.model_lr) == (8, 8, 3e-4)


def test_the_catch_encoder_output_moves_with_the_ball_alone(config_from):
    torch.manual_seed(0)
    agent = factories_for("dreamerv3").model(config_from(["+exp=dreamer_catch", "device=cpu"]))
    frames = _frames_with_the_ball_everywhere()
    with torch.no_grad():
        embed = agent.world_model.encoder({"image": frames})[:, 0]
    distances = torch.cdist(embed, embed)
    off_diagonal = distances[~torch.eye(len(embed), dtype=torch.bool)]
    # Every pair of ball cells gives a different embedding, by a fair fraction of its size.
    assert off_diagonal.min() > 0.05 * embed.norm(dim=1).mean()
