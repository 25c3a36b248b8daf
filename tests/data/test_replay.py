"""The replay buffer: storage dtypes, eviction, window contents, is_first, determinism, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels.data.episodes import EpisodeError, load_episode
from worldmodels.data.replay import Replay


def make_episode(length: int, episode_id: int) -> dict[str, np.ndarray]:
    """An episode whose ``ids`` are ``(episode_id, t)`` and whose images are filled with ``episode_id * 20 + t``."""
    t = np.arange(length)
    return {
        "image": np.broadcast_to((episode_id * 20 + t).astype(np.uint8)[:, None, None, None], (length, 8, 8, 3)).copy(),
        "ids": np.stack([np.full(length, episode_id), t], axis=1).astype(np.float32),
        "action": np.eye(3, dtype=np.float32)[t % 3],
        "reward": (t * 0.5).astype(np.float32),
        "is_first": t == 0,
        "is_terminal": t == length - 1,
    }


def stream(episodes: list[dict]) -> dict[str, np.ndarray]:
    """The concatenation of ``episodes`` per key, built independently of the replay."""
    return {key: np.concatenate([e[key] for e in episodes]) for key in episodes[0]}


def filled(lengths, capacity=1000, batch_length=4, seed=0, directory=None) -> tuple[Replay, list[dict]]:
    replay = Replay(capacity, batch_length, seed, directory)
    episodes = [make_episode(n, i) for i, n in enumerate(lengths)]
    for episode in episodes:
        replay.add_episode(episode)
    return replay, episodes


def test_frames_stay_uint8():
    replay, _ = filled([5, 6])
    assert replay._episodes[0]["image"].dtype == np.uint8
    batch = replay.sample(3)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (3, 4, 8, 8, 3)
    assert batch["ids"].dtype == np.float32 and batch["is_first"].dtype == np.bool_
    assert batch["discount"].shape == (3, 4) and batch["action"].shape == (3, 4, 3)


def test_eviction_drops_oldest_whole_episodes():
    replay, _ = filled([4, 5], capacity=10)
    assert (replay.num_steps, replay.num_episodes, len(replay)) == (9, 2, 9)
    replay.add_episode(make_episode(3, 2))  # 12 steps > 10: episode 0 goes
    assert (replay.num_steps, replay.num_episodes) == (8, 2)
    assert [int(e["ids"][0, 0]) for e in replay._episodes] == [1, 2]
    replay.add_episode(make_episode(2, 3))  # 10 steps: nothing goes
    assert (replay.num_steps, replay.num_episodes) == (10, 3)


def test_newest_episode_is_never_evicted():
    replay, _ = filled([4, 5], capacity=10)
    replay.add_episode(make_episode(15, 7))
    assert (replay.num_steps, replay.num_episodes) == (15, 1)
    assert replay._episodes[0]["ids"][0, 0] == 7
    assert replay.sample(2)["ids"].shape == (2, 4, 2)


def test_windows_equal_the_concatenated_stream():
    replay, episodes = filled([3, 7, 2, 5], capacity=14, batch_length=4)
    kept = episodes[1:]  # 17 steps > 14: the first episode was evicted
    expected = stream([{**e, "is_last": e["is_terminal"], "discount": 1.0 - e["is_terminal"]} for e in kept])
    # ``ids`` of a stream index: find a window's start from its first row, then compare every key.
    index_of = {(int(e), int(t)): i for i, (e, t) in enumerate(expected["ids"])}
    batch = replay.sample(64)
    for b in range(64):
        start = index_of[tuple(int(v) for v in batch["ids"][b, 0])]
        for key, array in batch.items():
            want = expected[key][start:start + 4].copy()
            if key == "is_first":
                want[0] = True
            np.testing.assert_array_equal(array[b], want, err_msg=key)


def test_window_starts_cover_every_valid_position_uniformly():
    replay, episodes = filled([3, 4], batch_length=5)
    firsts = stream(episodes)["ids"]  # 7 steps -> starts 0, 1, 2
    batch = replay.sample(3000)
    starts = [int(np.flatnonzero((firsts == row).all(axis=1))[0]) for row in batch["ids"][:, 0]]
    counts = np.bincount(starts, minlength=3)
    assert len(counts) == 3 and counts.min() > 850  # each of the 3 starts ~1000 times


def test_is_first_marks_window_start_and_episode_boundaries():
    replay, _ = filled([3, 4], batch_length=7)  # the only window is the whole stream
    batch = replay.sample(2)
    np.testing.assert_array_equal(batch["is_first"], [[True, False, False, True, False, False, False]] * 2)
    np.testing.assert_array_equal(batch["ids"][0, :, 0], [0, 0, 0, 1, 1, 1, 1])
    replay, _ = filled([6], batch_length=3)
    batch = replay.sample(50)
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    assert set(batch["ids"][:, 0, 1].tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_same_seed_same_batches_and_rng_resume():
    a, _ = filled([5, 6, 7], seed=3)
    b, _ = filled([5, 6, 7], seed=3)
    c, _ = filled([5, 6, 7], seed=4)
    first = a.sample(8)
    np.testing.assert_array_equal(first["ids"], b.sample(8)["ids"])
    assert not np.array_equal(first["ids"], c.sample(8)["ids"])
    state = a.state_dict()
    expected = [a.sample(8)["ids"] for _ in range(3)]
    c.load_state_dict(state)  # another seed, restored RNG: the same batches
    np.testing.assert_array_equal(np.stack([c.sample(8)["ids"] for _ in range(3)]), np.stack(expected))
    a.load_state_dict(state)  # the saved state was not advanced by later sampling
    np.testing.assert_array_equal(a.sample(8)["ids"], expected[0])
    with pytest.raises(ValueError, match="state must be a dict with key 'rng'"):
        a.load_state_dict({})


def test_too_few_steps_raise():
    replay, _ = filled([3], batch_length=5)
    with pytest.raises(ValueError, match="the replay holds 3 steps, fewer than batch_length=5"):
        replay.sample(2)
    with pytest.raises(ValueError, match="the replay holds 0 steps, fewer than batch_length=5"):
        Replay(10, 5, 0).sample(1)


def test_bad_arguments_and_episodes():
    with pytest.raises(ValueError, match="capacity must be a positive integer, got 0"):
        Replay(0, 4, 0)
    replay, _ = filled([4])
    bad = make_episode(4, 1)
    del bad["reward"]
    with pytest.raises(EpisodeError, match="episode added to the replay: key 'reward': required key missing"):
        replay.add_episode(bad)
    bad = make_episode(4, 1)
    bad["image"] = bad["image"][:, :4]
    with pytest.raises(EpisodeError, match=r"key 'image': step shape/dtype \(4, 8, 3\) uint8 differs"):
        replay.add_episode(bad)
    bad = {**make_episode(4, 1), "extra": np.zeros(4, np.float32)}
    with pytest.raises(EpisodeError, match="key 'extra': key is in this episode only"):
        replay.add_episode(bad)
    assert replay.num_episodes == 1


def test_directory_saves_every_episode_and_reloads(tmp_path):
    replay, episodes = filled([4, 5, 3], capacity=9, directory=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000-4.npz", "000001-5.npz", "000002-3.npz"]
    np.testing.assert_array_equal(load_episode(tmp_path / "000001-5.npz")["ids"], episodes[1]["ids"])
    rebuilt = Replay.load_directory(tmp_path, capacity=9, batch_length=4, seed=0)
    assert (rebuilt.num_steps, rebuilt.num_episodes) == (replay.num_steps, replay.num_episodes) == (8, 2)
    np.testing.assert_array_equal(rebuilt.sample(16)["ids"], replay.sample(16)["ids"])
    everything = Replay.load_directory(tmp_path, capacity=100, batch_length=4, seed=0)
    assert everything.num_steps == 12
    everything.add_episode(make_episode(2, 3))
    assert (tmp_path / "000003-2.npz").is_file() and len(list(tmp_path.iterdir())) == 4


def test_load_directory_needs_episodes(tmp_path):
    with pytest.raises(EpisodeError, match="no episode files"):
        Replay.load_directory(tmp_path, capacity=10, batch_length=2, seed=0)
