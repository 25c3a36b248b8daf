"""robomimic HDF5 files (worldmodels.data.robomimic) and the shared observation transform."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from worldmodels.data.episodes import EpisodeError
from worldmodels.data.obs_transform import ObsTransform, crop_frames, stack_cameras
from worldmodels.data.offline import OfflineDataset
from worldmodels.data.robomimic import RobomimicFile, write_robomimic

CAMERAS = ["agentview_image", "robot0_eye_in_hand_image"]


def make_episode(length, seed, size=8):
    """Two cameras, a vector, continuous actions, a reward and a terminal at the end."""
    rng = np.random.default_rng(seed)
    episode = {camera: rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8) for camera in CAMERAS}
    episode["robot0_eef_pos"] = rng.normal(size=(length, 3)).astype(np.float32)
    episode["action"] = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
    episode["action"][-1] = 0.0
    episode["reward"] = np.r_[0.0, rng.normal(size=length - 1)].astype(np.float32)
    episode["is_first"] = np.arange(length) == 0
    episode["is_terminal"] = np.arange(length) == length - 1
    return episode


@pytest.fixture
def demos(tmp_path):
    episodes = [make_episode(length, seed) for seed, length in enumerate((5, 6, 7))]
    path = write_robomimic(tmp_path / "demos.hdf5", episodes, env_name="Lift", masks={"train": [0, 2], "valid": [1]})
    return path, episodes


def test_round_trip_restores_every_step(demos):
    path, episodes = demos
    data = RobomimicFile(path)
    assert data.env_name == "Lift" and data.demos == ["demo_0", "demo_1", "demo_2"]
    assert data.obs_keys == sorted([*CAMERAS, "robot0_eef_pos"])
    for got, want in zip(data, episodes):
        for key in [*CAMERAS, "robot0_eef_pos", "reward", "is_first", "is_terminal"]:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_array_equal(got["action"], want["action"])  # the final row is zeros on both sides
        assert got["is_last"].tolist() == [False] * (len(want["reward"]) - 1) + [True]
        assert got["discount"][-1] == 0.0 and got[CAMERAS[0]].dtype == np.uint8


def test_layout_is_robomimic_s(demos):
    path, episodes = demos
    with h5py.File(path, "r") as f:
        demo = f["data/demo_1"]
        assert demo.attrs["num_samples"] == 5 and demo["actions"].shape == (5, 2)
        assert demo["obs/agentview_image"].shape == (5, 8, 8, 3)
        np.testing.assert_array_equal(demo["next_obs/robot0_eef_pos"][()], episodes[1]["robot0_eef_pos"][1:])
        np.testing.assert_allclose(demo["rewards"][()], episodes[1]["reward"][1:], rtol=1e-6)
        assert demo["dones"][()].tolist() == [0, 0, 0, 0, 1]
        assert list(f["mask/valid"][()]) == [b"demo_1"] and f["data"].attrs["total"] == 4 + 5 + 6


def test_splits_select_the_masked_demos_in_order(demos, tmp_path):
    path, episodes = demos
    train, valid = RobomimicFile(path, "train"), RobomimicFile(path, "valid")
    assert train.demos == ["demo_0", "demo_2"] and valid.demos == ["demo_1"] and len(train) == 2
    np.testing.assert_array_equal(next(iter(valid))["robot0_eef_pos"], episodes[1]["robot0_eef_pos"])
    many = write_robomimic(tmp_path / "many.hdf5", [make_episode(2, seed) for seed in range(12)])
    assert RobomimicFile(many).demos == [f"demo_{i}" for i in range(12)]  # by index: demo_10 after demo_9


def test_obs_keys_selects_what_is_read(demos):
    episode = RobomimicFile(demos[0], obs_keys=["robot0_eef_pos"]).read("demo_0")
    assert not any(camera in episode for camera in CAMERAS) and "robot0_eef_pos" in episode


def test_demos_are_read_one_at_a_time(demos):
    path, _ = demos
    data = RobomimicFile(path)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/actions"]  # a broken second demo: found only when the iteration reaches it
    episodes = iter(data)
    assert len(next(episodes)["reward"]) == 5
    with pytest.raises(EpisodeError, match=r"demos.hdf5: key 'data/demo_1/actions': missing"):
        next(episodes)


def test_without_next_obs_the_last_transition_is_dropped_with_a_warning(tmp_path):
    episode = make_episode(5, 0)
    path = write_robomimic(tmp_path / "no_next.hdf5", [episode], next_obs=False)
    with pytest.warns(UserWarning, match="no next_obs"):
        got = RobomimicFile(path).read("demo_0")
    assert len(got["reward"]) == 4
    np.testing.assert_array_equal(got["reward"], episode["reward"][:4])
    np.testing.assert_array_equal(got["action"], episode["action"][:4])
    assert not got["is_terminal"].any()


@pytest.mark.parametrize("edit, split, obs_keys, message", [
    (lambda f: f.__delitem__("mask"), "train", None, r"key 'mask/train': no mask group"),
    (None, "test", None, r"key 'mask/test': no such split mask \(masks: \['train', 'valid'\]\)"),
    (lambda f: f.__delitem__("data/demo_2"), "train", None,
     r"key 'data/demo_2': demo group missing \(listed in mask/train"),
    (None, "all", ["wrist"], r"key 'data/demo_0/obs/wrist': missing"),
    (lambda f: f["data/demo_0"].attrs.__setitem__("num_samples", 9), "all", None,
     r"demo_0/actions': has 4 rows but num_samples is 9"),
])
def test_errors_name_the_file_and_the_key(demos, edit, split, obs_keys, message):
    path, _ = demos
    if edit is not None:
        with h5py.File(path, "a") as f:
            edit(f)
    with pytest.raises(EpisodeError, match=message) as info:
        list(RobomimicFile(path, split, obs_keys))
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(EpisodeError, match=r"nope.hdf5: no such robomimic HDF5 file"):
        RobomimicFile(tmp_path / "nope.hdf5")


# --- cameras and the observation transform ---------------------------------------------------------------------


def test_cameras_stack_in_the_given_order_with_their_flips():
    a = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    b = a + 100
    stacked = stack_cameras({"a": a, "b": b, "v": np.ones((2, 1))}, ["b", "a"], {"a": "vertical"})
    assert sorted(stacked) == ["image", "v"] and stacked["image"].shape == (2, 3, 4, 6)
    np.testing.assert_array_equal(stacked["image"][..., :3], b)
    np.testing.assert_array_equal(stacked["image"][..., 3:], a[:, ::-1])  # rows upside down
    both = stack_cameras({"a": a}, ["a"], {"a": "both"})["image"]
    np.testing.assert_array_equal(both, a[:, ::-1, ::-1])


def test_cameras_of_different_shapes_or_missing_raise_one_line():
    a, small = np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 6, 8, 3), np.uint8)
    with pytest.raises(EpisodeError, match=r"x.hdf5: key 'b': shape \(1, 6, 8, 3\) differs from \(1, 8, 8, 3\) of 'a'"):
        stack_cameras({"a": a, "b": small}, ["a", "b"], source="x.hdf5")
    with pytest.raises(EpisodeError, match=r"key 'b': camera missing"):
        stack_cameras({"a": a}, ["a", "b"])
    with pytest.raises(ValueError, match=r"camera_flips names 'c'"):
        ObsTransform(cameras=("a",), flips={"c": "vertical"})


def test_transform_state_round_trip_and_space():
    transform = ObsTransform(cameras=tuple(CAMERAS), flips={CAMERAS[0]: "vertical"}, crop=6)
    restored = ObsTransform.from_state(transform.state_dict())
    assert restored == transform
    space = {CAMERAS[0]: ((8, 8, 3), np.uint8), CAMERAS[1]: ((8, 8, 3), np.uint8), "pos": ((3,), np.float32)}
    assert transform.space(space) == {"pos": ((3,), np.float32), "image": ((6, 6, 6), np.dtype(np.uint8))}


def test_the_dataset_and_the_env_path_apply_the_same_transform(demos):
    """The frames a model trains on equal what an env observation becomes through the
    transform the dataset records (cameras stacked, flipped, center-cropped)."""
    path, episodes = demos
    flips = {CAMERAS[0]: "vertical"}
    dataset = OfflineDataset(RobomimicFile(path, "valid"), 2, crop=6, cameras=CAMERAS, camera_flips=flips)
    served = next(dataset.episodes())["image"][0]  # [T, 6, 6, 6]
    env_path = ObsTransform.from_state(dataset.transform.state_dict())
    raw = episodes[1]  # demo_1, the valid split
    for t in range(len(served)):
        env_obs = {camera: raw[camera][t:t + 1] for camera in CAMERAS}  # an env batch of one
        np.testing.assert_array_equal(env_path.observation(env_obs, ["image"])["image"][0], served[t])
    manual = np.concatenate([raw[CAMERAS[0]][:, ::-1], raw[CAMERAS[1]]], -1)[:, 1:7, 1:7]
    np.testing.assert_array_equal(served, manual)
    np.testing.assert_array_equal(crop_frames(manual, 6), manual)


def test_dataset_standardisation_statistics_travel_with_the_transform(demos):
    path, _ = demos
    dataset = OfflineDataset(RobomimicFile(path), 2, standardize="dataset", cameras=CAMERAS)
    restored = ObsTransform.from_state(dataset.transform.state_dict())
    served = next(dataset.episodes())["image"][0]
    raw = dict(RobomimicFile(path).read("demo_0"))
    env = restored.observation({c: raw[c] for c in CAMERAS}, ["image"])["image"]
    np.testing.assert_allclose(env, served, rtol=1e-6, atol=1e-6)
    assert abs(float(np.concatenate([e["image"][0] for e in dataset.episodes()]).mean())) < 1e-4
