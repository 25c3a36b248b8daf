"""The shared replay: streaming inserts, the three alignments, eviction, selectors, and
exact save/restore."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels.rl.replay import Replay
from worldmodels.rl.selectors import Balanced, CountPriority, OnlineQueue, Recency, Uniform


def step(values, first, last, width=3):
    """One vectorised step: ``obs`` uint8 [N, width] = value, reward = value."""
    values = np.asarray(values)
    return {"obs": np.repeat(values[:, None], width, 1).astype(np.uint8), "reward": values.astype(np.float32),
            "is_first": np.asarray(first, bool), "is_last": np.asarray(last, bool),
            "is_terminal": np.asarray(last, bool)}


def fill(replay, lengths, start=0, finish_last=True):
    """One env inserting episodes of ``lengths`` steps, values counting from ``start``."""
    value = start
    for index, length in enumerate(lengths):
        for t in range(length):
            last = t == length - 1 and (finish_last or index < len(lengths) - 1)
            replay.add(step([value], [t == 0], [last]))
            value += 1
    return value


def test_an_unfinished_episode_is_sampled_before_it_ends():
    replay = Replay(100, seed=0)
    fill(replay, [7], finish_last=False)
    assert replay.episode_lengths() == {0: 7} and replay.episode_lengths(finished_only=True) == {}
    batch = replay.sample(32, 5, align="start")
    assert batch["obs"].dtype == np.uint8 and batch["obs"].shape == (32, 5, 3)
    for row in range(32):
        real = batch["reward"][row][batch["mask"][row]]
        assert len(real) >= 1 and np.array_equal(real, np.arange(real[0], real[0] + len(real)))
        assert real[-1] <= 6 and batch["is_first"][row, 0]
    replay.add(step([7], [False], [False]))   # the episode grows; the new step is sampled too
    seen = np.unique(replay.sample(256, 1, align="start")["reward"])
    assert 7 in seen


def test_start_windows_pad_after_the_stored_end_and_end_windows_before_the_start():
    replay = Replay(100, seed=1)
    fill(replay, [3])
    start = replay.sample(64, 5, align="start")
    assert (start["mask"].sum(1) == 3 - start["reward"][:, 0]).all()   # padding after the end
    end = replay.sample(64, 5, align="end")
    for row in range(64):
        mask = end["mask"][row]
        assert mask[-1] and not mask[0]                                 # padding before the start
        assert end["obs"][row][~mask].sum() == 0
        assert end["is_first"][row, np.argmax(mask)]


def test_stream_windows_cross_into_the_next_episode_of_the_same_env():
    replay = Replay(100, seed=2)
    fill(replay, [2, 2, 2, 2, 2])
    batch = replay.sample(64, 5, align="stream")
    assert batch["mask"].all()
    for row in range(64):
        assert np.array_equal(np.diff(batch["reward"][row]), np.ones(4))
        assert batch["is_first"][row, 0]
        starts = np.flatnonzero(batch["is_first"][row, 1:]) + 1
        assert all(batch["reward"][row, s] % 2 == 0 for s in starts)     # a restart at each new episode


def test_steps_of_several_envs_form_separate_streams():
    replay = Replay(100, seed=3)
    for t in range(6):
        replay.add(step([t, 100 + t], [t == 0, t == 0], [False, t == 5]))
    assert replay.num_episodes == 2
    batch = replay.sample(64, 4, align="stream")
    for row in batch["reward"]:
        assert np.array_equal(np.diff(row), np.ones(3)) and (row < 100).all() or (row >= 100).all()


def test_capacity_bounds_memory_and_the_oldest_steps_go_first():
    replay = Replay(10, seed=4)
    fill(replay, [6, 6, 6])
    assert replay.num_steps == 10 and len(replay._arrays["obs"]) <= 10
    lengths = replay.episode_lengths()
    assert sum(lengths.values()) == 10 and 0 not in lengths              # the first episode is gone
    values = replay.sample(200, 1, align="start")["reward"]
    assert values.min() >= 8 and values.max() == 17


def test_margin_keeps_the_last_steps_from_anchoring_a_window():
    replay = Replay(100, seed=5)
    fill(replay, [4], finish_last=False)
    anchors = replay.sample(300, 2, align="start", margin=1)["reward"][:, 0]
    assert set(anchors.tolist()) == {0.0, 1.0, 2.0}


@pytest.mark.parametrize("disk", [False, True])
def test_save_and_load_restore_exactly_what_is_sampled(tmp_path, disk):
    directory = tmp_path / "maps" if disk else None
    original = Replay(12, seed=6, directory=directory, selectors={"p": CountPriority(1.0), "u": Uniform()})
    fill(original, [5, 4, 6], finish_last=False)
    original.sample(8, 3, selector="p", align="start")
    copy = Replay(12, seed=99, selectors={"p": CountPriority(1.0), "u": Uniform()})
    original.save(tmp_path / "replay.npz")
    copy.load(tmp_path / "replay.npz")
    copy.load_state_dict(original.state_dict())
    for replay in (original, copy):
        replay.add(step([50], [False], [False]))           # the open episode goes on in both
    for selector, align in (("p", "start"), ("u", "stream"), ("p", "end")):
        a = original.sample(16, 3, selector=selector, align=align)
        b = copy.sample(16, 3, selector=selector, align=align)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_load_refuses_another_capacity(tmp_path):
    replay = Replay(8)
    fill(replay, [3])
    replay.save(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="capacity 8"):
        Replay(9).load(tmp_path / "r.npz")


def test_sampling_before_a_window_fits_says_so():
    replay = Replay(10)
    fill(replay, [2])
    assert not replay.can_sample(5)
    with pytest.raises(ValueError, match="no window of 5 steps"):
        replay.sample(1, 5)
    with pytest.raises(ValueError, match="unknown selector 'x'"):
        replay.sample(1, 1, selector="x")


def test_inconsistent_steps_are_refused():
    replay = Replay(10)
    replay.add(step([1], [True], [False]))
    bad = step([2], [False], [False])
    bad["obs"] = bad["obs"].astype(np.float32)
    with pytest.raises(ValueError, match="shape/dtype"):
        replay.add(bad)


def test_selector_weights_match_their_formulas():
    from worldmodels.rl.selectors import Candidates

    candidates = Candidates(np.array([3, 5, 8]), np.array([10, 1, 4]))
    np.testing.assert_allclose(Uniform().weights(candidates), [10, 1, 4])
    np.testing.assert_allclose(Balanced().weights(candidates), [1, 1, 1])
    np.testing.assert_allclose(Recency(2.0).weights(candidates), [1 / 9, 1 / 4, 1])
    priority = CountPriority(alpha=2.0)
    priority.update(np.array([3, 3, 8]))
    np.testing.assert_allclose(priority.weights(candidates), [(1 / 3) ** 2, 1.0, (1 / 2) ** 2])
    assert np.allclose(CountPriority(alpha=0.0).weights(candidates), 1.0)


def test_count_priority_spreads_samples_over_episodes():
    def spread(selector):
        replay = Replay(1000, seed=7, selectors={"s": selector})
        fill(replay, [100, 2, 2, 2])
        counts = np.zeros(4)
        for _ in range(200):
            rows = replay.sample(1, 1, selector="s", align="start")["reward"][:, 0]
            counts += np.histogram(rows, bins=[0, 100, 102, 104, 106])[0]
        return counts

    uniform, priority = spread(Uniform()), spread(CountPriority(5.0))
    assert uniform[0] > 150                       # steps of the long episode dominate
    assert priority.min() >= 40                   # each episode drawn about as often


def test_online_queue_serves_each_fresh_window_once_first():
    queue = OnlineQueue(length=3)
    replay = Replay(100, seed=8, selectors={"q": queue})
    fill(replay, [9], finish_last=False)
    first = replay.sample(3, 3, selector="q", align="stream")["reward"][:, 0]
    assert first.tolist() == [0.0, 3.0, 6.0] and not queue.queue
    assert replay.sample(4, 3, selector="q", align="stream")["mask"].all()   # then the fallback


def test_an_online_replay_on_disk_keeps_its_arrays_in_memory_maps(tmp_path):
    from conftest import CountingEnv
    from worldmodels.algos.dreamerv3.collect import OnlineData

    data = OnlineData(CountingEnv(), batch_size=2, batch_length=4, train_ratio=8.0, prefill=20, capacity=64, seed=0,
                      on_disk=True)
    data.bind_model(None, tmp_path)
    batch = data.next_batch()
    assert isinstance(data.replay._arrays["vector"], np.memmap)
    assert (tmp_path / "replay_store" / "vector.npy").is_file() and batch["vector"].shape == (2, 4, 3)
    data.close()


def test_snapshots_keep_the_one_the_last_checkpoint_names_and_a_resume_drops_later_ones(tmp_path):
    replay = Replay(100, seed=0)
    fill(replay, [4])
    kept = replay.snapshot(tmp_path, 5)                          # last.pt at update 5
    for tag in (6, 7, 8):                                        # best.pt at later evaluations
        fill(replay, [2], start=10 * tag)
        replay.snapshot(tmp_path, tag, protect=kept)
    names = sorted(p.name for p in tmp_path.glob("replay_*.npz"))
    assert names == ["replay_000000005.npz", "replay_000000007.npz", "replay_000000008.npz"]
    Replay.drop_snapshots_after(tmp_path, 5)                     # a killed run resumed from update 5
    assert sorted(p.name for p in tmp_path.glob("replay_*.npz")) == ["replay_000000005.npz"]
    restored = Replay(100, seed=0)
    restored.load(tmp_path / kept)
    assert restored.num_steps == 4


def test_open_episode_gives_an_unfinished_episode_from_its_first_step():
    replay = Replay(6, seed=0)
    fill(replay, [2, 3], finish_last=False)
    np.testing.assert_array_equal(replay.open_episode(0)["reward"], [2, 3, 4])
    assert replay.open_episode(1) is None                        # no such env
    replay.add(step([5], [False], [True]))
    assert replay.open_episode(0) is None                        # it ended
    fill(replay, [7], start=10, finish_last=False)               # outgrows the capacity of 6 steps
    assert replay.open_episode(0) is None                        # its first step was overwritten
