"""The episode format: validation, atomic save/load, listing, naming and the vectorised builder."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

from worldmodels.data.episodes import (
    REQUIRED_KEYS,
    EpisodeBuilder,
    EpisodeError,
    EpisodeWriter,
    episode_name,
    list_episodes,
    load_episode,
    save_episode,
    validate_episode,
)


def make_episode(length: int = 5, seed: int = 0, full: bool = True) -> dict[str, np.ndarray]:
    """A synthetic episode: 8x8x3 uint8 images, a 4-d vector, 2-d one-hot actions."""
    rng = np.random.default_rng(seed)
    episode = {
        "image": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
        "vector": rng.standard_normal((length, 4)).astype(np.float32),
        "action": np.eye(2, dtype=np.float32)[rng.integers(0, 2, length)],
        "reward": np.concatenate([[0.0], rng.standard_normal(length - 1)]).astype(np.float32),
        "is_first": np.arange(length) == 0,
        "is_terminal": np.arange(length) == length - 1,
    }
    if full:
        episode["is_last"] = np.arange(length) == length - 1
        episode["discount"] = 1.0 - episode["is_terminal"].astype(np.float32)
    return episode


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert value.dtype == b[key].dtype, key
        np.testing.assert_array_equal(value, b[key], err_msg=key)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_is_exact_with_dtypes(tmp_path, compress):
    episode = make_episode(7)
    path = save_episode(tmp_path / "ep.npz", episode, compress=compress)
    loaded = load_episode(path)
    assert_same(loaded, episode)
    assert loaded["image"].dtype == np.uint8 and loaded["is_first"].dtype == np.bool_


def test_missing_derived_keys_are_filled():
    episode = make_episode(3, full=False)
    out = validate_episode(episode, "mem")
    np.testing.assert_array_equal(out["discount"], np.array([1.0, 1.0, 0.0], np.float32))
    assert out["discount"].dtype == np.float32
    np.testing.assert_array_equal(out["is_last"], [False, False, True])


def test_flags_from_integers_and_floats_to_float32():
    episode = make_episode(3, full=False)
    episode["is_first"] = np.array([1, 0, 0], np.int64)
    episode["is_terminal"] = np.array([0, 0, 1], np.uint8)
    episode["reward"] = np.array([0.0, 0.5, 1.25], np.float64)
    out = validate_episode(episode, "mem")
    assert out["is_first"].dtype == np.bool_ and out["is_terminal"].dtype == np.bool_
    np.testing.assert_array_equal(out["is_terminal"], [False, False, True])
    assert out["reward"].dtype == np.float32
    np.testing.assert_array_equal(out["reward"], [0.0, 0.5, 1.25])
    assert out["reward"] is not episode["reward"]


def test_validate_returns_a_copy():
    episode = make_episode(3)
    out = validate_episode(episode, "mem")
    out["image"][0] = 0
    out["is_first"][0] = False
    assert episode["is_first"][0] and not np.shares_memory(out["image"], episode["image"])


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = save_episode(tmp_path / "sub" / "ep", make_episode(4))
    assert path == tmp_path / "sub" / "ep.npz"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ep.npz"]


def test_failed_save_removes_its_temp_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_episode(tmp_path / "ep.npz", make_episode(4))
    assert list(tmp_path.iterdir()) == []


def check_save_error(tmp_path, episode, key, match):
    path = tmp_path / "bad.npz"
    with pytest.raises(EpisodeError, match=re.escape(str(path)) + f".*{key}.*{match}") as info:
        save_episode(path, episode)
    assert info.value.source == str(path) and info.value.key == key.strip("'")
    assert not path.exists()


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key(tmp_path, key):
    episode = make_episode(4)
    del episode[key]
    check_save_error(tmp_path, episode, f"'{key}'", "required key missing")


def test_mismatched_lengths(tmp_path):
    episode = make_episode(4)
    episode["vector"] = episode["vector"][:3]
    check_save_error(tmp_path, episode, "'vector'", "has 3 steps but 'reward' has 4")


def test_wrong_image_dtype(tmp_path):
    episode = make_episode(4)
    episode["image"] = episode["image"].astype(np.float32)
    check_save_error(tmp_path, episode, "'image'", "images must be uint8")


def test_empty_episode(tmp_path):
    episode = {key: value[:0] for key, value in make_episode(4).items()}
    check_save_error(tmp_path, episode, "'reward'", r"episode is empty \(T = 0")
    with pytest.raises(EpisodeError, match=r"^nothing: episode is empty \(no arrays\)$"):
        validate_episode({}, "nothing")


def test_nan_and_inf_are_refused(tmp_path):
    episode = make_episode(4)
    episode["reward"][2] = np.nan
    check_save_error(tmp_path, episode, "'reward'", "contains NaN or inf")
    episode = make_episode(4)
    episode["vector"][1, 0] = np.inf
    check_save_error(tmp_path, episode, "'vector'", "contains NaN or inf")


@pytest.mark.parametrize(("key", "value", "match"), [
    ("action", np.zeros(4, np.float32), r"must have shape \(T, A\)"),
    ("action", np.zeros((4, 2), np.int64), "must be floating point"),
    ("reward", np.zeros(4, np.int32), "must be floating point"),
    ("is_terminal", np.array([0, 2, 0, 1]), "flags must be bool or 0/1 integers"),
    ("is_terminal", np.zeros(4, np.float32), "flags must be bool or 0/1 integers"),
    ("is_first", np.zeros(4, bool), r"is_first\[0\] must be True"),
    ("text", np.array(["a", "b", "c", "d"]), "is not numeric"),
])
def test_dtype_and_rank_rules(tmp_path, key, value, match):
    episode = make_episode(4)
    episode[key] = value
    check_save_error(tmp_path, episode, f"'{key}'", match)


def test_object_array_is_refused_on_load(tmp_path):
    path = tmp_path / "pickled.npz"
    episode = make_episode(3)
    episode["info"] = np.array([{"a": 1}, None, 3], dtype=object)
    np.savez(path, **episode)
    with pytest.raises(EpisodeError, match=re.escape(str(path)) + ".*'info'.*object array refused"):
        load_episode(path)


def test_truncated_file_names_the_file(tmp_path):
    path = save_episode(tmp_path / "ep.npz", make_episode(20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EpisodeError, match=re.escape(str(path)) + ".*corrupt or truncated"):
        load_episode(path)


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not an archive at all")
    with pytest.raises(EpisodeError, match=re.escape(str(path)) + ": not a readable .npz episode"):
        load_episode(path)
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(EpisodeError, match="holds a single array, not an .npz archive"):
        load_episode(single)
    with pytest.raises(EpisodeError, match=re.escape(str(tmp_path / "none.npz")) + ": no such episode file"):
        load_episode(tmp_path / "none.npz")


def test_validation_failure_on_load_names_the_file(tmp_path):
    path = tmp_path / "raw.npz"
    episode = make_episode(3)
    episode["action"] = episode["action"][:2]
    np.savez(path, **episode)
    with pytest.raises(EpisodeError, match=re.escape(str(path)) + ": key 'action': has 2 steps but 'reward' has 3$"):
        load_episode(path)


def test_h5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        save_episode(tmp_path / "ep.h5", make_episode(3))
    with pytest.raises(ImportError, match="pip install h5py"):
        save_episode(tmp_path / "ep", make_episode(3), fmt="h5")
    (tmp_path / "ep.h5").write_bytes(b"x")
    with pytest.raises(ImportError, match="pip install h5py"):
        load_episode(tmp_path / "ep.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["ep.h5"]


def test_h5_round_trip(tmp_path):
    pytest.importorskip("h5py")
    episode = make_episode(6)
    path = save_episode(tmp_path / "ep.hdf5", episode)
    assert_same(load_episode(path), episode)


def test_list_episodes_sorted_and_filtered(tmp_path):
    for index in (10, 2, 7):
        save_episode(tmp_path / episode_name(index, 3), make_episode(3))
    (tmp_path / ".000099-3.npz.abc.tmp").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_episodes(tmp_path)] == ["000002-3.npz", "000007-3.npz", "000010-3.npz"]


def test_list_episodes_missing_or_empty_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(EpisodeError, match=re.escape(str(missing)) + ": episode directory does not exist.*"
                                           r"python -m worldmodels\.record"):
        list_episodes(missing)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(EpisodeError, match=re.escape(str(tmp_path)) + ": no episode files.*"
                                           r"python -m worldmodels\.record"):
        list_episodes(tmp_path)


def test_episode_name():
    assert episode_name(42, 250) == "000042-250.npz"
    names = [episode_name(i, n) for i, n in ((100, 5), (3, 1000), (12, 20))]
    assert sorted(names) == [episode_name(3, 1000), episode_name(12, 20), episode_name(100, 5)]
    with pytest.raises(ValueError, match="index must be an integer >= 0, got -1"):
        episode_name(-1, 5)
    with pytest.raises(ValueError, match="length must be an integer >= 1, got 0"):
        episode_name(0, 0)


def fake_step(t: int, ends: list[bool], starts: list[bool]) -> dict[str, np.ndarray]:
    """One vectorised step of 2 envs; ``obs`` encodes (env, t) as env * 100 + t."""
    return {
        "obs": np.array([[t], [100 + t]], np.float32),
        "action": np.array([[t, 0.0], [0.0, t]], np.float32),
        "reward": np.array([0.0 if s else 1.0 for s in starts], np.float32),
        "is_first": np.array(starts),
        "is_last": np.array(ends),
        "is_terminal": np.array(ends),
    }


def test_builder_splits_envs_ending_at_different_times():
    builder = EpisodeBuilder(2)
    # env 0: episodes over t = 0..2 and t = 3..5; env 1: one episode over t = 0..4.
    ends = {2: [True, False], 4: [False, True], 5: [True, False]}
    starts = {0: [True, True], 3: [True, False]}
    finished = {}
    for t in range(6):
        out = builder.add(fake_step(t, ends.get(t, [False, False]), starts.get(t, [False, False])))
        finished[t] = out
    assert {t: [i for i, _ in out] for t, out in finished.items()} == {0: [], 1: [], 2: [0], 3: [], 4: [1], 5: [0]}
    first, second, other = finished[2][0][1], finished[5][0][1], finished[4][0][1]
    np.testing.assert_array_equal(first["obs"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(second["obs"][:, 0], [3, 4, 5])
    np.testing.assert_array_equal(other["obs"][:, 0], [100, 101, 102, 103, 104])
    np.testing.assert_array_equal(other["action"][:, 1], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(second["is_first"], [True, False, False])
    np.testing.assert_array_equal(other["discount"], [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(first["reward"], [0, 1, 1])
    assert builder.pending_lengths == [0, 1]


def test_builder_copies_steps_and_checks_shapes():
    builder = EpisodeBuilder(2)
    step = fake_step(0, [False, False], [True, True])
    builder.add(step)
    step["obs"][:] = -1  # an env reusing its buffers must not change stored steps
    (_, episode), = builder.add(fake_step(1, [True, False], [False, False]))
    np.testing.assert_array_equal(episode["obs"][:, 0], [0, 1])
    with pytest.raises(KeyError, match="needs an 'is_last' array"):
        builder.add({"obs": np.zeros((2, 1))})
    with pytest.raises(ValueError, match=r"step\['obs'\] must have leading dim num_envs=2, got \(3, 1\)"):
        builder.add({**fake_step(2, [False, False], [False, False]), "obs": np.zeros((3, 1))})
    with pytest.raises(ValueError, match="num_envs must be a positive integer, got 0"):
        EpisodeBuilder(0)


def test_a_resumed_writer_continues_an_episode_and_deletes_files_written_after_the_checkpoint(tmp_path):
    writer = EpisodeWriter(tmp_path, 2)
    for t, (ends, starts) in enumerate([([False, False], [True, True]), ([True, False], [False, False]),
                                        ([False, False], [True, False])]):
        writer(fake_step(t, ends, starts))
    state = writer.state_dict()                                  # env 0 wrote one episode; the checkpoint
    writer(fake_step(3, [True, True], [False, False]))           # written after it, by a run then killed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000-2.npz", "000001-2.npz", "000002-4.npz"]

    resumed = EpisodeWriter(tmp_path, 2)
    resumed.load_state_dict(state)
    assert [p.name for p in tmp_path.iterdir()] == ["000000-2.npz"]
    resumed.builder.restore(0, {k: v[:1] for k, v in fake_step(2, [False, False], [True, False]).items()})
    resumed.builder.skip_to_next_episode(1)                      # its first steps are not known
    resumed(fake_step(3, [True, True], [False, False]))
    resumed(fake_step(4, [False, False], [True, True]))
    resumed(fake_step(5, [False, True], [False, False]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000-2.npz", "000001-2.npz", "000002-2.npz"]
    np.testing.assert_array_equal(load_episode(tmp_path / "000001-2.npz")["obs"][:, 0], [2, 3])
    np.testing.assert_array_equal(load_episode(tmp_path / "000002-2.npz")["obs"][:, 0], [104, 105])
