"""Environment factory: spaces, flags, DreamerV3 autoreset, time limits, action repeat,
seeding, action formats, spec errors, missing optional packages, fake envpool/crafter."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import gymnasium
import numpy as np
import pytest

from worldmodels.envs import factory as fc
from worldmodels.envs.factory import EnvSpec, MissingEnvPackageError, make_env, random_actions, resolve_task

PIXEL_ID = "WMFactoryPixel-v0"


class PixelEnv(gymnasium.Env):
    """A 4-step episode (terminates) whose render is a constant frame of value 20 * t."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.render_mode, self.t, self.closed = render_mode, 0, False

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, action], np.float32), 1.0, self.t >= 4, False, {}

    def render(self):
        return np.full((10, 12, 3), 20 * self.t, np.uint8)

    def close(self):
        self.closed = True


if PIXEL_ID not in gymnasium.registry:
    gymnasium.register(PIXEL_ID, entry_point=PixelEnv)


def _cartpole(**kwargs) -> fc.VectorEnv:
    return make_env(EnvSpec("classic", "cartpole", backend="gymnasium", **kwargs))


def _pendulum(**kwargs) -> fc.VectorEnv:  # gymnasium even where envpool is installed
    return make_env(EnvSpec("classic", "pendulum", backend="gymnasium", **kwargs))


def _run_to_end(env: fc.VectorEnv, action: int = 0, limit: int = 600) -> dict:
    """Step with a fixed action until env 0's episode ends; returns that last step."""
    for _ in range(limit):
        out = env.step(np.full(env.num_envs, action))
        if out["is_last"][0]:
            return out
    raise AssertionError("episode did not end")


def test_cartpole_spaces():
    with _cartpole(num_envs=3) as env:
        assert env.num_envs == 3
        f32, boolean = np.dtype(np.float32), np.dtype(bool)
        assert env.obs_space == {"vector": ((4,), f32), "reward": ((), f32), "is_first": ((), boolean),
                                 "is_last": ((), boolean), "is_terminal": ((), boolean)}
        assert env.act_space == fc.ActionSpace(True, 2, 0, 1)


def test_reset_flags_and_seeding():
    with _cartpole(num_envs=2, seed=7) as env:
        out = env.reset()
    assert {key: (value.shape, value.dtype) for key, value in out.items()} == {
        key: ((2, *shape), dtype) for key, (shape, dtype) in env.obs_space.items()}
    assert out["is_first"].all() and not out["is_last"].any() and not out["is_terminal"].any()
    np.testing.assert_array_equal(out["reward"], [0.0, 0.0])
    for i in range(2):  # env i is seeded seed + i
        expected, _ = gymnasium.make("CartPole-v1").reset(seed=7 + i)
        np.testing.assert_array_equal(out["vector"][i], expected)


def test_step_shapes_and_dtypes():
    with _cartpole(num_envs=3) as env:
        env.reset()
        out = env.step(np.array([0, 1, 0]))
    assert out["vector"].shape == (3, 4) and out["vector"].dtype == np.float32
    assert out["reward"].dtype == np.float32 and out["reward"].shape == (3,)
    np.testing.assert_array_equal(out["reward"], [1.0, 1.0, 1.0])
    for key in fc.FLAGS:
        assert out[key].dtype == bool and out[key].shape == (3,)
    assert not out["is_first"].any()


def test_step_before_reset():
    with _cartpole() as env, pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(np.array([0]))


def test_autoreset_returns_first_and_ignores_action():
    outs = []
    for action in (0, 1):  # two identical runs; they differ only in the action after the end
        with _cartpole(seed=3) as env:
            initial = env.reset()["vector"]
            last = _run_to_end(env)
            assert last["is_terminal"][0] and last["reward"][0] == 1.0
            outs.append((env.step(np.array([action])), env.step(np.array([0]))))
    (first_a, after_a), (first_b, after_b) = outs
    for first in (first_a, first_b):
        assert first["is_first"][0] and not first["is_last"][0] and not first["is_terminal"][0]
        assert first["reward"][0] == 0.0
    np.testing.assert_array_equal(first_a["vector"], first_b["vector"])
    assert not np.array_equal(first_a["vector"], initial)  # a new episode, not a reseeded one
    np.testing.assert_array_equal(after_a["vector"], after_b["vector"])  # action 0 vs 1 was ignored
    assert not after_a["is_first"][0]


def test_time_limit_truncates_without_terminal():
    with _cartpole(max_episode_steps=5) as env:
        env.reset()
        outs = [env.step(np.array([t % 2])) for t in range(6)]
    assert [bool(o["is_last"][0]) for o in outs] == [False] * 4 + [True, False]
    assert not any(o["is_terminal"][0] for o in outs)
    assert outs[5]["is_first"][0] and outs[5]["reward"][0] == 0.0
    with _pendulum(max_episode_steps=3, action_repeat=2) as env:  # agent steps
        env.reset()
        assert [bool(env.step(np.zeros((1, 1)))["is_last"][0]) for _ in range(4)] == [False, False, True, False]


def test_action_repeat_sums_rewards():
    actions = np.array([[1.5], [-2.0], [0.3], [2.0]], np.float32)
    with _pendulum(seed=4, action_repeat=3) as env:
        env.reset()
        outs = [env.step(a[None]) for a in actions]
    manual = gymnasium.make("Pendulum-v1")
    manual.reset(seed=4)
    for action, out in zip(actions, outs):
        total = 0.0
        for _ in range(3):
            obs, reward, *_ = manual.step(action)
            total += reward
        np.testing.assert_allclose(out["reward"][0], total, rtol=1e-5)
        np.testing.assert_allclose(out["vector"][0], obs, rtol=1e-6)


def test_action_repeat_stops_at_episode_end():
    manual = gymnasium.make("CartPole-v1")
    manual.reset(seed=0)
    length = 1
    while not manual.step(0)[2]:
        length += 1
    with _cartpole(action_repeat=4) as env:
        env.reset()
        rewards = []
        while True:
            out = env.step(np.array([0]))
            rewards.append(out["reward"][0])
            if out["is_last"][0]:
                break
    assert len(rewards) == -(-length // 4) and sum(rewards) == length
    assert rewards[-1] == length - 4 * (len(rewards) - 1)
    with make_env(EnvSpec("gym", PIXEL_ID, action_repeat=3)) as env:  # rewards 1 even past the end
        env.reset()
        outs = [env.step(np.array([1])) for _ in range(2)]
    assert [o["reward"][0] for o in outs] == [3.0, 1.0] and outs[1]["vector"][0, 0] == 4
    assert [o["is_terminal"][0] for o in outs] == [False, True]


def _rollout(seed: int, steps: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    with _cartpole(num_envs=2, seed=seed) as env:
        frames = [env.reset()["vector"]]
        frames += [env.step(random_actions(env.act_space, 2, rng))["vector"] for _ in range(steps)]
    return np.stack(frames)


def test_same_seed_same_rollout():
    np.testing.assert_array_equal(_rollout(5), _rollout(5))
    assert not np.array_equal(_rollout(5)[0], _rollout(6)[0])


def test_one_hot_actions_match_indices():
    indices = np.array([1, 0, 1])
    with _cartpole(num_envs=3) as a, _cartpole(num_envs=3) as b:
        a.reset(), b.reset()
        out_a = a.step(indices)
        out_b = b.step(np.eye(2, dtype=np.float32)[indices])
    np.testing.assert_array_equal(out_a["vector"], out_b["vector"])


def test_continuous_actions_are_clipped():
    with _pendulum() as a, _pendulum() as b:
        assert a.act_space.discrete is False and a.act_space.size == 1
        np.testing.assert_array_equal(a.act_space.high, [2.0])
        a.reset(), b.reset()
        np.testing.assert_array_equal(a.step(np.array([[10.0]]))["vector"], b.step(np.array([2.0]))["vector"])


def test_bad_actions():
    with _cartpole(num_envs=2) as env:
        env.reset()
        with pytest.raises(ValueError, match=r"discrete actions must have shape \[2\] or one-hot \[2, 2\], got \[3\]"):
            env.step(np.array([0, 1, 0]))
        with pytest.raises(ValueError, match=r"discrete actions must be in \[0, 2\), got \[0, 2\]"):
            env.step(np.array([0, 2]))
    with _pendulum() as env:
        env.reset()
        with pytest.raises(ValueError, match=r"continuous actions must have shape \[1, 1\], got \[1, 2\]"):
            env.step(np.zeros((1, 2)))


def test_random_actions():
    rng = np.random.default_rng(1)
    discrete = random_actions(fc.ActionSpace(True, 3, 0, 2), 500, rng)
    assert discrete.shape == (500,) and set(discrete.tolist()) == {0, 1, 2}
    space = fc.ActionSpace(False, 2, np.array([-1.0, 0.0], np.float32), np.array([1.0, np.inf], np.float32))
    cont = random_actions(space, 500, rng)
    assert cont.shape == (500, 2) and cont.dtype == np.float32
    assert cont[:, 0].min() >= -1 and cont[:, 0].max() <= 1 and cont[:, 1].min() >= 0 and cont[:, 1].max() <= 1
    again = random_actions(space, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(again, random_actions(space, 5, np.random.default_rng(3)))


def test_task_names():
    assert resolve_task("classic", "cartpole") == ("CartPole-v1", "CartPole-v1")
    assert resolve_task("classic", "MountainCar-v0") == ("MountainCar-v0", "MountainCar-v0")
    assert resolve_task("atari", "pong") == ("ALE/Pong-v5", "Pong-v5")
    assert resolve_task("atari", "space_invaders") == ("ALE/SpaceInvaders-v5", "SpaceInvaders-v5")
    assert resolve_task("atari", "ALE/Breakout-v5") == ("ALE/Breakout-v5", "Breakout-v5")
    assert resolve_task("dmc", "ball_in_cup_catch") == (None, "BallInCupCatch-v1")
    assert resolve_task("gym", "LunarLander-v3") == ("LunarLander-v3", None)
    assert [EnvSpec(s, t).action_repeat for s, t in
            [("atari", "pong"), ("dmc", "walker_walk"), ("classic", "cartpole"), ("crafter", "reward")]] == [4, 2, 1, 1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"suite": "mujoco"}, "unknown suite 'mujoco'; known suites: classic, gym, atari, dmc, crafter"),
    ({"num_envs": 0}, "num_envs must be an integer >= 1, got 0"),
    ({"backend": "ray"}, "unknown backend 'ray'; known backends: auto, envpool, gymnasium"),
    ({"task": "cartpol"}, "unknown classic task 'cartpol'; known: cartpole, pendulum"),
    ({"suite": "atari", "task": "Pong-v4!"}, "bad atari task 'Pong-v4!'"),
    ({"suite": "dmc", "task": "walker"}, "bad dmc task 'walker'; use domain_task"),
    ({"suite": "crafter", "task": "hard"}, "unknown crafter task 'hard'; known: reward, noreward"),
    ({"size": (64, 0)}, "size must be an integer >= 1, got 0"),
    ({"sticky_actions": 1.5}, r"sticky_actions must be in \[0, 1\], got 1.5"),
    ({"suite": "atari", "task": "pong", "render_image": True}, "render_image is only for suites 'classic', 'gym' and 'dmc', not 'atari'"),
])
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EnvSpec(**{"suite": "classic", "task": "cartpole", **kwargs})


def test_unknown_gymnasium_task():
    with pytest.raises(ValueError, match=r"unknown gymnasium task 'NoSuchEnv-v0' \(suite 'gym'"):
        make_env(EnvSpec("gym", "NoSuchEnv-v0"))


def test_render_image_resized_and_close():
    with make_env(EnvSpec("gym", PIXEL_ID, num_envs=2, size=(5, 6), render_image=True)) as env:
        assert env.obs_space["image"] == ((5, 6, 3), np.dtype(np.uint8))
        assert env.obs_space["vector"] == ((2,), np.dtype(np.float32))
        first = env.reset()
        out = env.step(np.array([2, 1]))
        inner = [e.unwrapped for e in env._envs]
    assert first["image"].shape == (2, 5, 6, 3) and first["image"].dtype == np.uint8 and (first["image"] == 0).all()
    assert (out["image"] == 20).all()
    np.testing.assert_array_equal(out["vector"], [[1, 2], [1, 1]])
    assert all(e.closed for e in inner)


def test_resize_image_nearest_without_pil(monkeypatch):
    image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    monkeypatch.setitem(sys.modules, "PIL", None)
    out = fc.resize_image(image, (2, 3))
    np.testing.assert_array_equal(out[..., 0], image[::2, ::2])


def test_missing_crafter(monkeypatch):
    monkeypatch.setitem(sys.modules, "crafter", None)
    with pytest.raises(MissingEnvPackageError, match="suite 'crafter' needs the crafter package: pip install crafter"):
        make_env(EnvSpec("crafter", "reward"))


def test_missing_pygame_for_rendered_classic_tasks(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(MissingEnvPackageError, match="render_image on classic task 'cartpole' needs pygame: pip install pygame"):
        make_env(EnvSpec("classic", "cartpole", backend="gymnasium", render_image=True))


def test_missing_ale_py(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "envpool", None)
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(MissingEnvPackageError, match="needs ale-py and OpenCV: pip install ale-py opencv-python"):
        make_env(EnvSpec("atari", "pong"))
    notice = "worldmodels: envpool not installed, running Pong-v5 on gymnasium + ale-py (slower; pip install "
    assert capsys.readouterr().out.splitlines() == [notice + "worldmodels[envs])"]


def test_missing_envpool(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)
    monkeypatch.setitem(sys.modules, "dm_control", None)
    with pytest.raises(MissingEnvPackageError,
                       match=r"dmc task 'walker_walk' needs envpool or dm_control here: pip install worldmodels\[envs\]"):
        make_env(EnvSpec("dmc", "walker_walk"))
    with pytest.raises(MissingEnvPackageError, match=r"classic task 'cartpole' needs envpool here: pip install worldmodels\[envs\]"):
        make_env(EnvSpec("classic", "cartpole", backend="envpool"))
    with pytest.raises(ValueError, match="backend 'envpool' does not support suite 'gym'"):
        make_env(EnvSpec("gym", "CartPole-v1", backend="envpool"))


class FakePool:
    """envpool's gymnasium API for 2 envs: env i's episode lasts base + i steps (base 2 for
    atari, 3 for dmc; env 0 terminates, env 1 truncates); the call after an end resets that
    env (action ignored, reward 0). The reward of a step is the env's step count t."""

    def __init__(self, task_id, kind, **kwargs):
        self.task_id, self.kwargs, self.actions = task_id, kwargs, []
        n = kwargs["num_envs"]
        box = gymnasium.spaces.Box
        if kind == "atari":
            self.observation_space, self.action_space = box(0, 255, (3, 6, 5), np.uint8), gymnasium.spaces.Discrete(4)
        elif kind == "dmc":
            self.observation_space = gymnasium.spaces.Dict({"velocity": box(-1, 1, (2,)), "orientations": box(-1, 1, (3,))})
            self.action_space = box(-1, 1, (2,))
        self.kind, self.t, self.pending = kind, np.zeros(n, int), np.zeros(n, bool)
        self.base = 2 if kind == "atari" else 3

    def _obs(self):
        n = len(self.t)
        if self.kind == "atari":
            return np.arange(3 * 6 * 5, dtype=np.uint8).reshape(1, 3, 6, 5) + self.t.astype(np.uint8)[:, None, None, None]
        return {"velocity": np.full((n, 2), 1.0) * self.t[:, None], "orientations": -np.ones((n, 3))}

    def reset(self):
        self.t[:], self.pending[:] = 0, False
        return self._obs(), {"env_id": np.arange(len(self.t))}

    def step(self, action):
        self.actions.append(np.array(action))
        reset = self.pending.copy()
        self.t = np.where(reset, 0, self.t + 1)
        ended = ~reset & (self.t >= self.base + np.arange(len(self.t)))
        terminated, truncated = ended & (np.arange(len(self.t)) == 0), ended & (np.arange(len(self.t)) > 0)
        self.pending = ended
        reward = np.where(reset, 0.0, self.t.astype(float))
        return self._obs(), reward, terminated, truncated, {"env_id": np.arange(len(self.t))}


@pytest.fixture
def fake_envpool(monkeypatch):
    made = []
    module = types.ModuleType("envpool")
    module.list_all_envs = lambda: ["Pong-v5", "WalkerWalk-v1"]

    def make(task_id, **kwargs):
        made.append(FakePool(task_id, "atari" if task_id.endswith("-v5") else "dmc", **kwargs))
        return made[-1]

    module.make = make
    monkeypatch.setitem(sys.modules, "envpool", module)
    return made


def test_fake_envpool_atari_flags(fake_envpool):
    with make_env(EnvSpec("atari", "pong", num_envs=2, seed=3, size=(6, 5), max_episode_steps=100)) as env:
        pool = fake_envpool[0]
        assert isinstance(env, fc.EnvpoolVectorEnv) and pool.task_id == "Pong-v5"
        assert pool.kwargs == {"env_type": "gymnasium", "num_envs": 2, "seed": 3, "img_height": 6, "img_width": 5,
                               "gray_scale": False, "stack_num": 1, "frame_skip": 4, "repeat_action_probability": 0.25,
                               "noop_max": 1, "episodic_life": False, "reward_clip": False, "use_fire_reset": False,
                               "full_action_space": False, "max_episode_steps": 100}
        assert env.obs_space["image"] == ((6, 5, 3), np.dtype(np.uint8)) and env.act_space.size == 4
        first = env.reset()
        outs = [env.step(np.eye(4)[[3, 1]]) for _ in range(4)]
    chw = np.arange(3 * 6 * 5, dtype=np.uint8).reshape(3, 6, 5)
    assert first["image"].shape == (2, 6, 5, 3) and first["is_first"].all()
    np.testing.assert_array_equal(first["image"], np.stack([chw.transpose(1, 2, 0)] * 2))
    assert outs[0]["image"][0, 2, 4, 1] == 1 * 30 + 2 * 5 + 4 + 1  # CHW value at (c=1, h=2, w=4), t=1
    np.testing.assert_array_equal(pool.actions[0], [3, 1])
    table = [(o["reward"].tolist(), o["is_first"].tolist(), o["is_last"].tolist(), o["is_terminal"].tolist())
             for o in outs]
    assert table == [
        ([1, 1], [False, False], [False, False], [False, False]),
        ([2, 2], [False, False], [True, False], [True, False]),   # env 0 terminates
        ([0, 3], [True, False], [False, True], [False, False]),   # env 0 resets; env 1 truncates
        ([1, 0], [False, True], [False, False], [False, False]),  # env 1 resets
    ]


def test_fake_envpool_dmc_vector_and_python_repeat(fake_envpool):
    with make_env(EnvSpec("dmc", "walker_walk", num_envs=2, max_episode_steps=10)) as env:
        pool = fake_envpool[0]
        assert pool.kwargs == {"env_type": "gymnasium", "num_envs": 2, "seed": 0, "max_episode_steps": 20}
        assert env.obs_space["vector"] == ((5,), np.dtype(np.float32)) and env.act_space.size == 2
        env.reset()
        outs = [env.step(np.full((2, 2), 3.0)) for _ in range(5)]
    np.testing.assert_array_equal(pool.actions[0], np.ones((2, 2)))  # clipped to the bounds
    np.testing.assert_array_equal(outs[0]["vector"], [[-1, -1, -1, 2, 2], [-1, -1, -1, 2, 2]])
    table = [(o["reward"].tolist(), o["is_first"].tolist(), o["is_last"].tolist(), o["is_terminal"].tolist())
             for o in outs]
    assert table == [
        ([3, 3], [False, False], [False, False], [False, False]),  # sub-steps t = 1, 2
        ([3, 3], [False, False], [True, False], [True, False]),    # env 0 ends at t = 3: stop after one
        ([0, 4], [True, False], [False, True], [False, False]),    # a reset call steps once
        ([1, 0], [False, True], [False, False], [False, False]),
        ([5, 3], [False, False], [True, False], [True, False]),    # both sub-steps again
    ]
    assert len(pool.actions) == 2 + 1 + 1 + 1 + 2


def test_auto_prefers_envpool_and_falls_back(fake_envpool):
    with make_env(EnvSpec("dmc", "walker_walk")) as env:
        assert isinstance(env, fc.EnvpoolVectorEnv)
    with make_env(EnvSpec("classic", "cartpole")) as env:  # the fake has no CartPole-v1
        assert isinstance(env, fc.GymnasiumVectorEnv)
    with pytest.MonkeyPatch.context() as patch:   # without dm_control to fall back on
        patch.setitem(sys.modules, "dm_control", None)
        with pytest.raises(ValueError, match="envpool has no task 'CheetahRun-v1'"):
            make_env(EnvSpec("dmc", "cheetah_run"))
    with pytest.raises(ValueError, match="backend 'envpool' does not support render_image"):
        make_env(EnvSpec("classic", "cartpole", backend="envpool", render_image=True))


class FakeCrafterEnv:
    """crafter.Env's old gym API: the player dies at step 3 unless length (2) comes first."""

    def __init__(self, size, length, reward, seed):
        self.size, self.length, self.reward, self.seed, self.t = size, length, reward, seed, 0
        self.observation_space = gymnasium.spaces.Box(0, 255, (*size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(17)

    def reset(self):
        self.t = 0
        return np.full((*self.size, 3), self.seed, np.uint8)

    def step(self, action):
        self.t += 1
        died = self.t >= 3
        done = died or self.t >= self.length
        return np.full((*self.size, 3), self.t, np.uint8), 1.0, done, {"discount": 0.0 if died else 1.0}


def test_fake_crafter(monkeypatch):
    monkeypatch.setitem(sys.modules, "crafter", types.SimpleNamespace(Env=FakeCrafterEnv))
    for steps, terminal in ((None, True), (2, False)):
        with make_env(EnvSpec("crafter", "reward", num_envs=2, seed=4, size=(8, 8), max_episode_steps=steps)) as env:
            assert env.obs_space["image"] == ((8, 8, 3), np.dtype(np.uint8)) and env.act_space.size == 17
            first = env.reset()
            outs = [env.step(np.array([5, 16])) for _ in range(3 if terminal else 2)]
        assert first["image"][:, 0, 0, 0].tolist() == [4, 5]  # seeded seed + i
        assert outs[-1]["is_last"].all() and outs[-1]["is_terminal"].all() == terminal
        assert not any(o["is_last"].any() for o in outs[:-1])


def test_missing_dependency_of_installed_package_is_not_masked(tmp_path, monkeypatch):
    (tmp_path / "wm_broken_pkg").mkdir()
    (tmp_path / "wm_broken_pkg" / "__init__.py").write_text("import wm_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert fc._import("wm_no_such_package") is None
    with pytest.raises(ModuleNotFoundError, match="wm_no_such_dependency"):
        fc._import("wm_broken_pkg")


def test_real_atari_through_ale_py(monkeypatch):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    monkeypatch.setitem(sys.modules, "envpool", None)
    with make_env(EnvSpec("atari", "pong", num_envs=2, max_episode_steps=3)) as env:
        assert env.obs_space["image"] == ((64, 64, 3), np.dtype(np.uint8)) and env.act_space.size == 6
        env.reset()
        outs = [env.step(np.array([0, 1])) for _ in range(4)]
    assert outs[0]["image"].shape == (2, 64, 64, 3) and outs[0]["image"].dtype == np.uint8
    assert [o["is_last"].tolist() for o in outs] == [[False, False], [False, False], [True, True], [False, False]]
    assert outs[3]["is_first"].all() and not outs[2]["is_terminal"].any()


def test_real_crafter():
    pytest.importorskip("crafter")
    with make_env(EnvSpec("crafter", "reward", max_episode_steps=1)) as env:  # a world takes ~1 s to make
        assert env.obs_space["image"] == ((64, 64, 3), np.dtype(np.uint8)) and env.act_space.size == 17
        first = env.reset()
        out = env.step(np.array([5]))
    assert first["image"].shape == (1, 64, 64, 3) and first["image"].dtype == np.uint8
    assert out["is_last"].tolist() == [True] and out["is_terminal"].tolist() == [False]
