"""robosuite Lift as an env suite: robomimic's observation keys and shapes, the success
flag, the scripted recorder's round trip through the robomimic reader, the same
transform in the dataset and the env, and a 2-update BC run evaluated in robosuite.

One robosuite env is shared by the module (making one takes seconds); the BC run makes
its own evaluation env as a user's run does."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from worldmodels.algos.dreamerv3 import bc, offline
from worldmodels.data.obs_transform import ObsTransform
from worldmodels.data.offline import OfflineDataset
from worldmodels.data.record_robosuite import PROPRIO, LiftDemonstrator, record_demos, split_masks
from worldmodels.data.robomimic import RobomimicFile, write_robomimic
from worldmodels.envs.factory import EnvSpec, MissingEnvPackageError, backend_name, make_env
from worldmodels.training.config_check import check_config
from worldmodels.training.loop import fit

SIZE = (32, 32)
CAMERAS = ("agentview", "robot0_eye_in_hand")
IMAGES = ["agentview_image", "robot0_eye_in_hand_image"]
LIMIT = 70           # agent steps per episode: the demonstrator lifts the cube in about 45
TINY_MODEL = ["model.deter=16", "model.hidden=16", "model.blocks=2", "model.stoch=4", "model.classes=4",
              "model.mlp_units=16", "model.mlp_layers=1", "model.head_units=16", "model.head_layers=1",
              "model.cnn_depth=4", "model.reward_bins=31"]
ENV = ["env.size=[32,32]", f"env.max_episode_steps={LIMIT}"]


def test_robosuite_is_part_of_the_dev_install():
    """The dev install brings robosuite and a MuJoCo it runs on (pyproject's pins), so these
    tests run in CI rather than skip."""
    import mujoco
    import robosuite

    assert robosuite.__version__.startswith("1.5")
    assert tuple(int(p) for p in mujoco.__version__.split(".")[:2]) == (3, 3)


@pytest.fixture(scope="module")
def env():
    with make_env(EnvSpec("robosuite", "Lift", num_envs=1, seed=0, size=SIZE, cameras=CAMERAS,
                          proprio=PROPRIO, max_episode_steps=LIMIT)) as env:
        yield env


@pytest.fixture(scope="module")
def recorded(env, tmp_path_factory):
    """Two scripted demos (seen step by step as the env gave them) written as a robomimic file."""
    seen = []
    original = env.step

    def spy(action):
        seen.append(original(action))
        return seen[-1]

    env.step = spy
    env.reseed()      # the first demo starts from seed 0's placement, whatever ran before
    try:
        demos, attempts, successes = record_demos(env, LiftDemonstrator(1, noise=0.0), 2, progress=False)
    finally:
        del env.step
    path = write_robomimic(tmp_path_factory.mktemp("lift") / "lift.hdf5", demos, env_name="Lift",
                           masks=split_masks(len(demos), 0.5))
    return path, demos, attempts, successes, seen


def test_observations_are_named_and_shaped_as_robomimic_s(env):
    obs = env.reset()
    assert obs["agentview_image"].shape == (1, *SIZE, 3) and obs["agentview_image"].dtype == np.uint8
    assert obs["robot0_eye_in_hand_image"].shape == (1, *SIZE, 3)
    shapes = {key: obs[key].shape[1:] for key in PROPRIO}
    assert shapes == {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,), "object": (10,)}
    assert all(obs[key].dtype == np.float32 for key in PROPRIO)
    assert obs["log_success"].shape == (1,) and obs["log_success"][0] == 0.0
    assert env.act_space.size == 7 and not env.act_space.discrete          # OSC_POSE + gripper
    np.testing.assert_array_equal(env.act_space.low, -1)
    np.testing.assert_array_equal(env.act_space.high, 1)
    assert obs["agentview_image"].std() > 5                                # a picture, not a blank
    # the cube sits on the table, and the gripper above it
    assert 0.8 < obs["object"][0, 2] < 0.85 and obs["robot0_eef_pos"][0, 2] > obs["object"][0, 2]


def test_the_demonstrator_lifts_the_cube_and_the_episode_ends_at_success(recorded):
    _, demos, attempts, successes, _ = recorded
    assert successes == attempts == 2      # the noise-free demonstrator succeeds in both episodes
    for demo in demos:
        assert demo["log_success"][-1] == 1.0 and not demo["log_success"][:-1].any()
        assert demo["is_terminal"][-1] and not demo["is_terminal"][:-1].any()
        assert demo["reward"][-1] == 1.0 and not demo["reward"][:-1].any()    # the sparse reward
        assert len(demo["reward"]) < LIMIT
        assert demo["object"][-1, 2] > 0.8 + 0.04 > demo["object"][0, 2]   # lifted 4 cm over the table top


def test_a_random_policy_does_not_succeed_and_is_truncated(env):
    env.reseed()
    obs, rng, steps = env.reset(), np.random.default_rng(0), 0
    while not obs["is_last"][0]:
        obs, steps = env.step(rng.uniform(-1, 1, (1, 7)).astype(np.float32)), steps + 1
    assert steps == LIMIT and not obs["is_terminal"][0] and obs["log_success"][0] == 0.0


def test_the_recording_reads_back_through_the_robomimic_reader(recorded):
    path, demos, *_ = recorded
    reader = RobomimicFile(path, "all")
    assert reader.demos == ["demo_0", "demo_1"] and reader.env_name == "Lift"
    assert sorted(reader.obs_keys) == sorted([*IMAGES, *PROPRIO])
    assert RobomimicFile(path, "train").demos == ["demo_0"] and RobomimicFile(path, "valid").demos == ["demo_1"]
    for demo, read in zip(demos, reader):
        for key in [*IMAGES, *PROPRIO, "reward", "is_terminal", "is_first"]:
            np.testing.assert_array_equal(read[key], demo[key], err_msg=key)
        np.testing.assert_array_equal(read["action"][:-1], demo["action"][:-1])


def test_the_transform_is_the_same_in_the_dataset_and_in_the_env(recorded):
    """The first demo's steps from the file, through the offline dataset's transform, equal
    what the env showed at those steps through the transform BC puts in front of a policy."""
    path, demos, _, _, seen = recorded
    transform = ObsTransform(cameras=tuple(IMAGES), flips={IMAGES[0]: "vertical", IMAGES[1]: "vertical"}, crop=28)
    dataset = OfflineDataset(RobomimicFile(path, "train"), 1, keys=["image", "robot0_eef_pos"], crop=28,
                             cameras=transform.cameras, camera_flips=transform.flips)
    (steps,) = list(dataset.episodes())
    env_steps = seen[:len(demos[0]["reward"]) - 1]   # the env's observations after each action of demo 0
    from_env = np.concatenate([transform.observation(s, ["image"], "env")["image"] for s in env_steps])
    assert steps["image"].shape[-3:] == (28, 28, 6)
    np.testing.assert_array_equal(steps["image"][0, 1:], from_env)
    upright = demos[0]["agentview_image"][1, ::-1][2:30, 2:30]
    np.testing.assert_array_equal(steps["image"][0, 1, ..., :3], upright)


def make_config(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("worldmodels.configs", version_base=None):
        return compose("config", list(overrides))


def test_bc_trains_on_the_recording_and_reports_its_success_rate_in_robosuite(recorded, tmp_path):
    path = recorded[0]
    common = [f"data.path={path}", "data.split=all", *ENV, "device=cpu", "train.progress=false",
              "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2", "train.max_steps=2"]
    wm_cfg = make_config("+exp=dreamer_offline_lift", *common, *TINY_MODEL, "data.crop=28", "data.eval_split=valid",
                         "train.batch_size=2", "algo.batch_length=4", "algo.openloop_sequences=1")
    check_config(wm_cfg)
    fit(wm_cfg, offline.FACTORIES, tmp_path / "wm")
    checkpoint = tmp_path / "wm" / "checkpoints" / "last.pt"
    bc_cfg = make_config("+exp=dreamer_bc_lift", f"checkpoint={checkpoint}", *common, "algo.eval_episodes=1",
                         "train.batch_size=8", "bc.units=8", "bc.layers=1")
    check_config(bc_cfg)
    fit(bc_cfg, bc.FACTORIES, tmp_path / "bc")
    with open(tmp_path / "bc" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("eval/success_rate")]
    assert rows, "no evaluation row with eval/success_rate"
    assert float(rows[-1]["eval/success_rate"]) in (0.0, 1.0)        # one episode
    assert float(rows[-1]["eval/random_success_rate"]) == 0.0
    assert math.isfinite(float(rows[-1]["eval/return_mean"]))


def test_robosuite_options_belong_to_the_robosuite_suite(monkeypatch):
    with pytest.raises(ValueError, match="cameras is a robosuite option; suite 'dmc' does not take it"):
        EnvSpec("dmc", "walker_walk", cameras=("robot0_eye_in_hand",))
    with pytest.raises(ValueError, match="bad robosuite task 'lift'"):
        EnvSpec("robosuite", "lift")
    assert backend_name(EnvSpec("robosuite", "Lift")) == "robosuite"
    monkeypatch.setitem(sys.modules, "robosuite", None)
    with pytest.raises(MissingEnvPackageError, match=r"needs robosuite and MuJoCo: pip install worldmodels\[robot\]"):
        make_env(EnvSpec("robosuite", "Lift"))


def test_the_recorder_refuses_to_overwrite(tmp_path):
    out = tmp_path / "lift.hdf5"
    out.write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "worldmodels.data.record_robosuite", "--episodes", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "exists; choose another file" in run.stderr
    assert out.read_bytes() == b""
