"""Catch: the rules (fall, move, catch, episode length), the frame, the factory path."""

import gymnasium
import numpy as np
import pytest

from worldmodels.envs.catch import BALL_COLOR, ENV_ID, PADDLE_COLOR, Catch
from worldmodels.envs.factory import EnvSpec, make_env


def play(env: Catch, policy, seed: int = 0) -> tuple[float, int]:
    env.reset(seed=seed)
    total, steps, done = 0.0, 0, False
    while not done:
        _, reward, done, truncated, _ = env.step(policy(env))
        assert not truncated
        total, steps = total + reward, steps + 1
    return total, steps


def follow_the_ball(env: Catch) -> int:
    return int(np.sign(env._ball[1] - env._paddle)) + 1


def test_following_the_ball_catches_every_ball_and_an_episode_is_balls_times_falls():
    env = Catch(rows=8, cols=8, balls=10)
    assert play(env, follow_the_ball) == (10.0, 10 * 7)


def test_staying_put_catches_only_the_balls_that_start_above_the_paddle():
    env = Catch(rows=5, cols=4, balls=200)
    env.reset(seed=3)
    paddle, caught, columns = env._paddle, 0.0, []
    done = False
    while not done:
        if env._ball[0] == 0:
            columns.append(int(env._ball[1]))
        _, reward, done, _, _ = env.step(1)
        caught += reward
    assert caught == sum(column == paddle for column in columns) and len(columns) == 200
    assert 30 < caught < 70  # about a quarter of 200 balls on 4 columns


def test_random_policy_scores_about_one_in_eight_on_the_default_grid():
    env, rng = Catch(), np.random.default_rng(0)
    returns = [play(env, lambda _: int(rng.integers(3)), seed)[0] for seed in range(200)]
    assert 0.9 < np.mean(returns) < 1.6


def test_frame_draws_ball_and_paddle_cells():
    env = Catch(rows=6, cols=5, cell=3, render_mode="rgb_array")
    env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (18, 15, 3) and frame.dtype == np.uint8
    row, col = env._ball
    assert (frame[row * 3:(row + 1) * 3, col * 3:(col + 1) * 3] == BALL_COLOR).all()
    assert (frame[15:18, env._paddle * 3:(env._paddle + 1) * 3] == PADDLE_COLOR).all()
    assert (frame > 0).any(-1).sum() == 2 * 9  # two cells lit, nothing else


def test_the_paddle_stops_at_the_walls():
    env = Catch(rows=8, cols=3)
    env.reset(seed=0)
    for _ in range(4):
        env.step(0)
    assert env._paddle == 0


@pytest.mark.parametrize("kwargs,message", [({"rows": 1}, "rows must be an integer >= 2"),
                                            ({"balls": 0}, "balls must be an integer >= 1"),
                                            ({"render_mode": "human"}, "render_mode must be None")])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Catch(**kwargs)


def test_bad_action_and_step_after_the_end_are_refused():
    env = Catch(rows=2, balls=1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be 0"):
        env.step(3)
    env.step(1)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(1)


def test_the_factory_gives_pixel_frames_seeded_per_env():
    spec = EnvSpec("gym", ENV_ID, num_envs=2, seed=5, size=(32, 32), render_image=True)
    with make_env(spec) as env, make_env(spec) as again:
        first, second = env.reset(), again.reset()
        assert first["image"].shape == (2, 32, 32, 3)
        np.testing.assert_array_equal(first["image"], second["image"])
        for _ in range(20):
            step = env.step(np.ones(2, np.int64))
        assert step["image"].max() == 255
    assert ENV_ID in gymnasium.registry
