"""Offline datasets: loading checks, crops, standardisation, training windows and evaluation batches."""

from __future__ import annotations

import re

import numpy as np
import pytest

from worldmodels.data.episodes import EpisodeError, episode_name, save_episode
from worldmodels.data.offline import OfflineDataset


def make_episode(length: int, episode_id: int, size: int = 8) -> dict[str, np.ndarray]:
    """Pixel ``(y, x)`` of channel 0 is ``10 * y + x`` (a crop shows its offset); channel 1 is ``episode_id``,
    channel 2 is ``t``; ``ids`` is ``(episode_id, t)``."""
    t = np.arange(length)
    yx = (10 * np.arange(size)[:, None] + np.arange(size)[None, :]).astype(np.uint8)
    image = np.empty((length, size, size, 3), np.uint8)
    image[..., 0] = yx
    image[..., 1] = episode_id
    image[..., 2] = t[:, None, None]
    return {
        "image": image,
        "ids": np.stack([np.full(length, episode_id), t], axis=1).astype(np.float32),
        "action": np.eye(2, dtype=np.float32)[t % 2],
        "reward": (t + 1.0).astype(np.float32),
        "is_first": t == 0,
        "is_terminal": np.zeros(length, bool),
    }


def write(directory, lengths, size=8) -> list:
    paths = []
    for i, n in enumerate(lengths):
        paths.append(save_episode(directory / episode_name(i, n), make_episode(n, i, size)))
    return paths


def all_ids(lengths) -> np.ndarray:
    return np.concatenate([make_episode(n, i)["ids"] for i, n in enumerate(lengths)])


def test_sample_windows_follow_the_stream(tmp_path):
    write(tmp_path, [5, 3, 9])
    data = OfflineDataset(tmp_path, batch_length=4, seed=1)
    assert (data.num_steps, data.num_episodes, len(data)) == (17, 3, 17)
    ids = all_ids([5, 3, 9])
    batch = data.sample(32)
    assert batch["image"].shape == (32, 4, 8, 8, 3) and batch["image"].dtype == np.uint8
    for row in range(32):
        start = int(np.flatnonzero((ids == batch["ids"][row, 0]).all(axis=1))[0])
        np.testing.assert_array_equal(batch["ids"][row], ids[start:start + 4])
        stream_first = ids[start:start + 4, 1] == 0
        np.testing.assert_array_equal(batch["is_first"][row], [True, *stream_first[1:]])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + " holds 17 steps, fewer than batch_length=20"):
        OfflineDataset(tmp_path, batch_length=20).sample(1)


@pytest.mark.parametrize(("crop", "offset"), [(4, 2), (5, 1), (8, 0)])
def test_center_crop(tmp_path, crop, offset):
    write(tmp_path, [6])
    batch = OfflineDataset(tmp_path, batch_length=3, crop=crop).sample(2)
    assert batch["image"].shape == (2, 3, crop, crop, 3)
    assert (batch["image"][:, :, 0, 0, 0] == 11 * offset).all()
    np.testing.assert_array_equal(batch["image"][0, 0, :, :, 0], make_episode(1, 0)["image"][0, offset:offset + crop,
                                                                                          offset:offset + crop, 0])


def test_random_crop_one_offset_per_sequence(tmp_path):
    write(tmp_path, [10, 10])
    data = OfflineDataset(tmp_path, batch_length=5, crop=5, crop_mode="random", seed=0)
    batch = data.sample(64)
    assert batch["image"].shape == (64, 5, 5, 5, 3)
    corner = batch["image"][:, :, 0, 0, 0]
    assert (corner == corner[:, :1]).all()  # the same offset for all frames of a sequence
    tops, lefts = corner[:, 0] // 10, corner[:, 0] % 10
    assert tops.max() <= 3 and lefts.max() <= 3
    assert len(set(zip(tops.tolist(), lefts.tolist()))) > 8  # offsets vary between sequences
    full = make_episode(1, 0)["image"][0]
    for row in range(64):
        top, left = int(tops[row]), int(lefts[row])
        np.testing.assert_array_equal(batch["image"][row, 2, :, :, 0], full[top:top + 5, left:left + 5, 0])


def test_crop_larger_than_frames_raises(tmp_path):
    paths = write(tmp_path, [4])
    with pytest.raises(EpisodeError, match=re.escape(str(paths[0])) + ": key 'image': frames are 8x8, smaller "
                                                                       "than crop=9"):
        OfflineDataset(tmp_path, batch_length=2, crop=9)


def test_per_image_standardisation(tmp_path):
    write(tmp_path, [6, 7])
    batch = OfflineDataset(tmp_path, batch_length=4, standardize="image", crop=6).sample(5)
    frames = batch["image"]
    assert frames.dtype == np.float32 and frames.shape == (5, 4, 6, 6, 3)
    np.testing.assert_allclose(frames.mean(axis=(2, 3, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(frames.std(axis=(2, 3, 4)), 1.0, atol=1e-4)


def test_dataset_standardisation(tmp_path):
    write(tmp_path, [6, 7, 3])
    data = OfflineDataset(tmp_path, batch_length=4, standardize="dataset")
    frames = np.concatenate([make_episode(n, i)["image"] for i, n in enumerate([6, 7, 3])]).astype(np.float64)
    np.testing.assert_allclose(data.image_mean["image"], frames.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(data.image_std["image"], frames.std(axis=(0, 1, 2)), rtol=1e-5)
    assert data.image_mean["image"].dtype == np.float32 and data.image_mean["image"].shape == (3,)
    standardised = np.concatenate([episode["image"][0] for episode in data.episodes()])
    assert standardised.dtype == np.float32
    np.testing.assert_allclose(standardised.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardised.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


@pytest.mark.parametrize("standardize", [None, "dataset"])
def test_padded_batches_cover_every_step_once(tmp_path, standardize):
    write(tmp_path, [5, 3, 9])
    data = OfflineDataset(tmp_path, batch_length=4, standardize=standardize)
    batches = list(data.padded_batches(4))
    # chunks: (ep0 t0-3), (ep0 t4), (ep1 t0-2), (ep2 t0-3), (ep2 t4-7), (ep2 t8) -> batches of 4 and 2
    assert [b["mask"].shape for b in batches] == [(4, 4), (2, 4)]
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == 17
    np.testing.assert_array_equal(mask.sum(axis=1), [4, 1, 3, 4, 4, 1])
    merged = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    real = mask.astype(bool)
    np.testing.assert_array_equal(merged["ids"][real], all_ids([5, 3, 9]))  # every step once, in order
    for key, array in merged.items():
        assert not array[~real].any(), key  # zero padding, also after standardisation
    assert merged["is_first"][:, 0].all() and not merged["is_first"][:, 1:].any()
    np.testing.assert_array_equal(merged["ids"][:, 0], [[0, 0], [0, 4], [1, 0], [2, 0], [2, 4], [2, 8]])


def test_episodes_in_order_full_length(tmp_path):
    lengths = [5, 3, 9]
    write(tmp_path, lengths)
    data = OfflineDataset(tmp_path, batch_length=4, crop=4)
    episodes = list(data.episodes())
    assert [e["ids"].shape for e in episodes] == [(1, n, 2) for n in lengths]
    for i, (episode, n) in enumerate(zip(episodes, lengths)):
        expected = make_episode(n, i)
        np.testing.assert_array_equal(episode["ids"][0], expected["ids"])
        np.testing.assert_array_equal(episode["image"][0], expected["image"][:, 2:6, 2:6])
        np.testing.assert_array_equal(episode["is_first"][0], expected["is_first"])


def test_corrupt_file_raises_or_is_skipped(tmp_path):
    paths = write(tmp_path, [5, 6, 7])
    paths[1].write_bytes(paths[1].read_bytes()[:40])
    with pytest.raises(EpisodeError, match=re.escape(str(paths[1]))):
        OfflineDataset(tmp_path, batch_length=4)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable episode file\(s\): " + re.escape(str(paths[1]))):
        data = OfflineDataset(tmp_path, batch_length=4, on_error="skip")
    assert data.paths == [paths[0], paths[2]] and [p for p, _ in data.skipped] == [paths[1]]
    assert data.num_steps == 12
    np.testing.assert_array_equal([e["ids"][0, 0, 0] for e in data.episodes()], [0, 2])


def test_episodes_must_agree(tmp_path):
    write(tmp_path, [5])
    odd = save_episode(tmp_path / episode_name(1, 4), make_episode(4, 1, size=6))
    with pytest.raises(EpisodeError, match=re.escape(str(odd)) + r": key 'image': step shape/dtype \(6, 6, 3\) uint8 "
                                                                 r"differs from \(8, 8, 3\) uint8 in .*000000-5\.npz"):
        OfflineDataset(tmp_path, batch_length=2)
    odd = save_episode(tmp_path / episode_name(1, 4), {**make_episode(4, 1), "extra": np.zeros(4, np.float32)})
    with pytest.raises(EpisodeError, match=re.escape(str(odd)) + ": key 'extra': key not present in"):
        OfflineDataset(tmp_path, batch_length=2)
    data = OfflineDataset(tmp_path, batch_length=2, keys=["image", "reward"])  # 'extra' is not requested
    assert sorted(data.sample(1)) == ["image", "is_first", "reward"]
    with pytest.raises(EpisodeError, match=r"000000-5\.npz: key 'extra': requested key missing"):
        OfflineDataset(tmp_path, batch_length=2, keys=["extra"])


def test_arguments_and_rng_state(tmp_path):
    write(tmp_path, [8])
    with pytest.raises(ValueError, match=r"crop_mode must be one of \('center', 'random'\), got 'edge'"):
        OfflineDataset(tmp_path, batch_length=2, crop_mode="edge")
    with pytest.raises(ValueError, match="standardize must be one of"):
        OfflineDataset(tmp_path, batch_length=2, standardize="batch")
    with pytest.raises(EpisodeError, match="episode directory does not exist"):
        OfflineDataset(tmp_path / "missing", batch_length=2)
    data = OfflineDataset(tmp_path, batch_length=3, crop=4, crop_mode="random", seed=5)
    state = data.state_dict()
    first = data.sample(6)
    data.load_state_dict(state)
    again = data.sample(6)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
