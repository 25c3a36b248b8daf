"""Frame shards: round trip by memory map, stacks that never cross an episode end, the
split by episode, the checks that name file and key, and the Procgen generator."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from worldmodels.data import generate_frames
from worldmodels.data.frames import (
    MANIFEST, FrameDataError, FrameShards, check_stack_fits, gather_windows, new_manifest, shard_path, split_episodes,
    window_starts, write_json_atomic, write_shard,
)

SHAPE = (3, 12, 12)


def write_dataset(root, episode_lengths_per_shard, num_actions=5):
    """Shards of episodes whose frames hold (episode id, frame index) in pixels [0, 0, 0]
    and [1, 0, 0]; returns the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = new_manifest("synthetic", {}, "test", SHAPE, num_actions)
    episode = 0
    for index, lengths in enumerate(episode_lengths_per_shard):
        frames, actions, done = [], [], []
        for length in lengths:
            block = np.zeros((length, *SHAPE), np.uint8)
            block[:, 0, 0, 0], block[:, 1, 0, 0] = episode, np.arange(length)
            frames.append(block)
            actions.append(np.arange(length) % num_actions)
            done.append(np.arange(length) == length - 1)
            episode += 1
        manifest["shards"].append(write_shard(root, index, np.concatenate(frames), np.concatenate(actions),
                                              np.concatenate(done)))
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


def test_shards_round_trip_by_memory_map(tmp_path):
    write_dataset(tmp_path, [[5, 7], [9]])
    shards = FrameShards(tmp_path)
    assert all(isinstance(f, np.memmap) for f in shards.frames + shards.actions + shards.done)
    assert [len(f) for f in shards.frames] == [12, 9] and shards.steps == 21
    assert [(e.shard, e.start, e.end) for e in shards.episodes] == [(0, 0, 5), (0, 5, 12), (1, 0, 9)]
    assert shards.frames[0][5:12, 0, 0, 0].tolist() == [1] * 7 and shards.frames[1][:, 1, 0, 0].tolist() == list(range(9))
    assert shards.actions[0].dtype == np.int64 and shards.done[1].dtype == np.bool_


@pytest.mark.parametrize("stack,horizon", [(1, 1), (4, 1), (4, 3), (6, 1)])
def test_stacks_never_cross_an_episode_end(tmp_path, stack, horizon):
    lengths = [[3, 8, 1, 6], [10, 4]]
    write_dataset(tmp_path, lengths)
    shards = FrameShards(tmp_path)
    windows = window_starts(shards.episodes, stack, horizon)
    expected = sum(max(0, n - stack - horizon + 1) for shard in lengths for n in shard)
    assert len(windows) == expected
    frames, actions = gather_windows(shards, windows, stack, horizon)
    assert frames.shape == (expected, stack + horizon, *SHAPE) and actions.shape == (expected, horizon)
    for (shard, t), window in zip(windows, frames):
        assert not shards.done[shard][t - stack + 1: t + horizon].any()
        assert len(set(window[:, 0, 0, 0].tolist())) == 1                      # one episode
        assert np.all(np.diff(window[:, 1, 0, 0].astype(int)) == 1)             # consecutive frames
    # the action of each predicted step is the one recorded at the frame before it
    assert np.array_equal(actions[:, 0], (frames[:, stack - 1, 1, 0, 0] % 5).astype(np.int64))


def test_split_is_by_episode_and_seeded(tmp_path):
    write_dataset(tmp_path, [[5] * 10, [6] * 10])
    episodes = FrameShards(tmp_path).episodes
    train, val = split_episodes(episodes, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15 and not set(train) & set(val) and set(train) | set(val) == set(episodes)
    assert split_episodes(episodes, 0.25, seed=3) == (train, val)
    assert split_episodes(episodes, 0.25, seed=4)[1] != val
    with pytest.raises(FrameDataError, match="needs at least 2"):
        split_episodes(episodes[:1], 0.5, 0)


def test_a_stack_longer_than_every_episode_is_refused_naming_the_key(tmp_path):
    write_dataset(tmp_path, [[3, 4]])
    shards = FrameShards(tmp_path)
    with pytest.raises(FrameDataError) as error:
        check_stack_fits(shards.episodes, 4, 1, "training", tmp_path)
    message = str(error.value)
    assert "manifest.json: no training episode holds 4 + 1 frames (the longest has 4); lower data.stack" in message
    assert "\n" not in message


def test_a_missing_dataset_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(FrameDataError, match=r"python -m worldmodels\.data\.generate_frames --game coinrun"):
        FrameShards(tmp_path / "nowhere")


def corrupt(tmp_path, damage):
    write_dataset(tmp_path, [[4, 5], [6]])
    damage(tmp_path)
    with pytest.raises(FrameDataError) as error:
        FrameShards(tmp_path)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_manifest_and_shard_mismatches_name_the_file_and_key(tmp_path):
    def wrong_shape(root):
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["frame_shape"] = [3, 16, 16]
        write_json_atomic(root / MANIFEST, manifest)
    message = corrupt(tmp_path / "a", wrong_shape)
    assert "shard_00000_frames.npy: shape (9, 3, 12, 12) does not match the manifest (key 'frame_shape'" in message

    def wrong_steps(root):
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["shards"][1]["steps"] = 7
        write_json_atomic(root / MANIFEST, manifest)
    assert "shard_00001_frames.npy: shape (6, 3, 12, 12) does not match the manifest (key 'shards[1].steps'" \
        in corrupt(tmp_path / "b", wrong_steps)

    def wrong_dtype(root):
        np.save(shard_path(root, 1, "actions"), np.zeros(6, np.float32))
    assert "shard_00001_actions.npy: dtype float32 but the manifest (key 'dtypes.actions') says int64" \
        in corrupt(tmp_path / "c", wrong_dtype)

    def missing(root):
        shard_path(root, 1, "done").unlink()
    assert "shard_00001_done.npy: missing; the manifest lists its shard (key 'shards')" in corrupt(tmp_path / "d", missing)

    def pickled(root):
        np.save(shard_path(root, 0, "done"), np.array([object()] * 9), allow_pickle=True)
    assert "shard_00000_done.npy: unreadable as .npy for key 'done'" in corrupt(tmp_path / "e", pickled)

    def truncated(root):
        np.save(shard_path(root, 1, "done"), np.zeros(6, bool))
    assert "shard_00001_done.npy: the last frame does not end an episode" in corrupt(tmp_path / "f", truncated)

    def bad_action(root):
        np.save(shard_path(root, 1, "actions"), np.full(6, 9, np.int64))
    assert "shard_00001_actions.npy: actions outside [0, 5) (key 'num_actions')" in corrupt(tmp_path / "g", bad_action)

    def no_key(root):
        manifest = json.loads((root / MANIFEST).read_text())
        del manifest["num_actions"]
        write_json_atomic(root / MANIFEST, manifest)
    assert "manifest.json: key 'num_actions' is missing" in corrupt(tmp_path / "h", no_key)


def generate(out, *extra):
    return subprocess.run([sys.executable, "-m", "worldmodels.data.generate_frames", "--game", "coinrun", "--out",
                           str(out), "--num-envs", "2", "--shard-steps", "300", "--no-progress", *extra],
                          capture_output=True, text=True, timeout=300)


def test_the_procgen_generator_writes_refuses_to_overwrite_and_resumes(tmp_path):
    out = tmp_path / "coinrun"
    first = generate(out, "--steps", "600")
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["game"] == "coinrun" and manifest["frame_shape"] == [3, 64, 64] and manifest["num_actions"] == 15
    assert manifest["complete"] and manifest["steps"] >= 600 and manifest["seeds"][0]["seed"] == 0
    shards = FrameShards(out)
    assert shards.steps == manifest["steps"] and len(shards.episodes) == manifest["episodes"] >= 2
    assert int(np.asarray(shards.frames[0]).std()) > 0

    again = generate(out, "--steps", "600")
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0
    assert "already holds a frame dataset" in again.stderr and "--resume" in again.stderr

    more = generate(out, "--steps", "1200", "--resume")
    assert more.returncode == 0, more.stderr
    resumed = json.loads((out / MANIFEST).read_text())
    assert resumed["steps"] >= 1200 and resumed["shards"][: len(manifest["shards"])] == manifest["shards"]
    assert len(resumed["seeds"]) == 2 and resumed["seeds"][1]["seed"] != 0
    assert FrameShards(out).steps == resumed["steps"]


def test_a_missing_qt5_runtime_is_reported_in_one_line_with_the_apt_step(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_qt(name, *args, **kwargs):
        if name == "envpool":
            raise ImportError("libQt5Gui.so.5: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_qt)
    with pytest.raises(generate_frames.ProcgenUnavailableError) as error:
        generate_frames.make_procgen("coinrun", "easy", 1, 0, {})
    assert "sudo apt-get install libqt5gui5" in str(error.value) and "\n" not in str(error.value)


def test_gray_frames_use_the_luma_weights_and_resizing_keeps_flat_regions():
    frames = np.zeros((2, 3, 64, 64), np.uint8)
    frames[0, 0] = 255                      # pure red
    frames[1, :, :, 32:] = 255              # left half black, right half white
    out = generate_frames.transform_frames(frames, 84, gray=True)
    assert out.shape == (2, 1, 84, 84) and out.dtype == np.uint8
    assert np.all(out[0] == round(0.299 * 255))
    row = out[1, 0, 40].astype(int)
    assert row[:35].max() == 0 and row[-35:].min() == 255 and np.all(np.diff(row) >= 0)
    assert generate_frames.transform_frames(frames, 64, gray=False) is frames          # native: untouched
    rgb = generate_frames.transform_frames(frames, 32, gray=False)
    assert rgb.shape == (2, 3, 32, 32) and np.all(rgb[0, 0] == 255) and np.all(rgb[0, 1:] == 0)


def test_the_generator_stores_84x84_gray_frames_and_records_them(tmp_path):
    out = tmp_path / "gray"
    result = generate(out, "--steps", "400", "--size", "84", "--gray")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["frame_shape"] == [1, 84, 84]
    assert manifest["transform"]["size"] == 84 and manifest["transform"]["gray"] is True
    shards = FrameShards(out)
    assert shards.frames[0].shape[1:] == (1, 84, 84) and np.asarray(shards.frames[0]).std() > 0
    again = generate(out, "--steps", "800", "--resume")
    assert again.returncode == 1 and "key 'transform'" in again.stderr and again.stderr.strip().count("\n") == 0
    manifest["frame_shape"] = [3, 84, 84]
    write_json_atomic(out / MANIFEST, manifest)
    with pytest.raises(FrameDataError, match=r"key 'frame_shape' is \[3, 84, 84\] but key 'transform' says size 84, "
                                             r"gray True"):
        FrameShards(out)
