"""3D-maze dataset: generator CLI round trip, loader format, resize, resume, every error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodels.data import generate_maze
from worldmodels.data.episodes import load_episode as load_episode_file
from worldmodels.data.maze import (
    MazeDataError,
    MazeDataNotFoundError,
    MazeDataset,
    MazeProvider,
    episode_files,
    load_episode,
    make_eval_set,
)
from worldmodels.envs import maze as mz

REPO = Path(__file__).resolve().parents[2]
LENGTH = 12


def _generate(out: Path, *extra: str) -> None:
    generate_maze.main(["--out", str(out), "--train", "3", "--test", "2", "--length",
                        str(LENGTH), "--size", "16", "--maze-cells", "9", "--no-progress", *extra])


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("maze") / "3d_maze"
    _generate(root)
    return root


def _copy_split(root: Path, tmp_path: Path) -> Path:
    """A private copy of the train split in the original VTA layout (``video``, ``actions``,
    ``turn``, ``junction``): the tests that break files use it, and the loader converts it."""
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    for path in sorted((root / "train").glob("*.npz")):
        episode = load_episode_file(path)
        np.savez_compressed(out / "train" / path.name, video=episode["image"],
                            actions=episode["action"].argmax(-1).astype(np.int64), turn=episode["turn"],
                            junction=episode["junction"])
    return out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- generator


def test_generator_writes_the_vta_format(dataset_root):
    train = sorted((dataset_root / "train").glob("*.npz"))
    test = sorted((dataset_root / "test").glob("*.npz"))
    assert [p.name for p in train] == [f"episode_{k:06d}.npz" for k in range(3)] and len(test) == 2
    assert not list(dataset_root.rglob(".*.tmp"))  # no temporary left behind
    data = load_episode_file(train[1])   # the package's one episode loader and format
    actions = data["action"].argmax(-1)
    assert data["image"].shape == (LENGTH, 16, 16, 3) and data["image"].dtype == np.uint8
    assert data["action"].shape == (LENGTH, 3) and data["action"].dtype == np.float32
    assert data["turn"].dtype == data["junction"].dtype == np.bool_ and data["is_first"][0]
    np.testing.assert_array_equal(data["turn"], actions != 0)
    expected = mz.generate_episodes(1, LENGTH, size=16, maze_cells=9, seed=[0, 0],
                                    first_episode=1)
    np.testing.assert_array_equal(data["image"], expected.video[0].permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(actions, expected.actions[0].numpy())
    np.testing.assert_array_equal(data["junction"], expected.junction[0].numpy())
    meta = json.loads((dataset_root / "meta.json").read_text())
    assert meta["size"] == 16 and meta["seed"] == 0 and meta["counts"] == {"train": 3, "test": 2}
    assert meta["actions"] == ["forward", "turn_left", "turn_right"]


def test_generator_refuses_to_mix_datasets_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    _generate(out)
    with pytest.raises(SystemExit):
        _generate(out)
    assert "--overwrite" in capsys.readouterr().err
    generate_maze.main(["--out", str(out), "--train", "1", "--test", "1", "--length", "3",
                        "--size", "8", "--maze-cells", "5", "--overwrite", "--no-progress"])
    assert len(list((out / "train").glob("*.npz"))) == 1  # stale episodes removed


def test_generator_command_line_with_progress_bar(tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, "-m", "worldmodels.data.generate_maze", "--out", str(out), "--train", "2",
         "--test", "1", "--length", "5", "--size", "8", "--seed", "3", "--shared-maze"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "maze episodes" in done.stderr and "wrote 2 train and 1 test" in done.stdout
    mazes = [np.load(p)["maze"][0] for p in sorted(out.rglob("*.npz"))]
    assert all(np.array_equal(m, mazes[0]) for m in mazes)  # --shared-maze
    bad = subprocess.run([sys.executable, "-m", "worldmodels.data.generate_maze", "--out",
                          str(tmp_path / "x"), "--size", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "size" in bad.stderr and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- loader


def test_batches_have_the_vta_format(dataset_root):
    provider = MazeProvider(dataset_root, 4, 8, seed=0)
    batch = provider.next_batch()
    assert set(batch) == {"frames", "actions", "turn", "junction"}
    assert batch["frames"].shape == (4, 8, 3, 32, 32) and batch["frames"].dtype == torch.float32
    assert 0.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
    assert batch["actions"].shape == (4, 8, 3) and batch["actions"].dtype == torch.float32
    assert torch.equal(batch["actions"].sum(-1), torch.ones(4, 8))  # one-hot
    assert torch.equal(batch["turn"], batch["actions"].argmax(-1) != 0)
    assert batch["turn"].dtype == batch["junction"].dtype == torch.bool


def test_resize_from_64_uses_area_averaging(tmp_path):
    root = tmp_path / "big"
    generate_maze.main(["--out", str(root), "--train", "1", "--test", "0", "--length", "4",
                        "--size", "64", "--no-progress"])
    path = next((root / "train").glob("*.npz"))
    video = load_episode_file(path)["image"].astype(np.float64)
    expected = np.rint(video.reshape(4, 32, 2, 32, 2, 3).mean(axis=(2, 4)))
    frames = MazeDataset(root, "train", 4, size=32)[0]["frames"]
    got = (frames * 255).round().permute(0, 2, 3, 1).numpy()
    assert frames.shape == (4, 3, 32, 32)
    assert np.abs(got - expected).max() <= 1
    assert load_episode(path, size=24).video.shape == (4, 3, 24, 24)  # non-integer factor


def test_batches_are_deterministic_and_resume_exactly(dataset_root):
    a = MazeProvider(dataset_root, 4, 8, seed=0)
    b = MazeProvider(dataset_root, 4, 8, seed=0)
    assert _equal(a.batch(5), b.batch(5)) and not _equal(a.batch(5), a.batch(6))
    assert not _equal(a.batch(5), MazeProvider(dataset_root, 4, 8, seed=1).batch(5))
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(2)]
    b.load_state_dict(state)
    assert all(_equal(x, b.next_batch()) for x in expected)
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict({"step": -1})


def test_windows_cover_the_episode_and_eval_set_is_fixed(dataset_root):
    dataset = MazeDataset(dataset_root, "train", LENGTH, size=16)
    assert len(dataset) == 3 and dataset.has_junction and dataset.num_starts().tolist() == [1, 1, 1]
    episode = load_episode(dataset_root / "train" / "episode_000002.npz", size=16)
    window = dataset[2]
    assert torch.equal(window["frames"], episode.video.float() / 255)
    assert torch.equal(window["junction"], episode.junction)
    evaluation = make_eval_set(dataset_root, 5, 6)  # 2 test episodes x 2 windows of 6 frames
    assert evaluation["frames"].shape == (4, 6, 3, 32, 32)
    assert _equal(evaluation, make_eval_set(dataset_root, 5, 6))
    first = make_eval_set(dataset_root, 2, 6)
    test = MazeDataset(dataset_root, "test", 6)
    assert _equal(first, test.windows([0, 1], [0, 0]))
    assert torch.equal(evaluation["frames"][2:], test.windows([0, 1], [6, 6])["frames"])


def test_original_vta_files_with_video_and_one_hot_actions_load(tmp_path):
    root = tmp_path / "vta"
    (root / "train").mkdir(parents=True)
    actions = np.eye(3, dtype=np.float32)[[0, 1, 0, 2, 0]]
    np.savez_compressed(root / "train" / "0.npz", video=np.zeros((5, 32, 32, 3), np.uint8),
                        actions=actions)
    dataset = MazeDataset(root, "train", 5)
    assert not dataset.has_junction
    assert dataset[0]["turn"].tolist() == [False, True, False, True, False]


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("layout", ["no_root", "no_split", "empty_split"])
def test_missing_data_prints_the_generator_command(tmp_path, layout):
    root = tmp_path / "maze"
    if layout != "no_root":
        (root / "test").mkdir(parents=True)
    if layout == "empty_split":
        (root / "train").mkdir()
    with pytest.raises(MazeDataNotFoundError,
                       match=r"python -m worldmodels\.data\.generate_maze --out .*maze"):
        MazeDataset(root, "train", 4)


def test_a_missing_root_is_generated_and_an_existing_one_left_alone(tmp_path):
    from worldmodels.data.generate_maze import ensure_dataset

    root = tmp_path / "maze"
    assert ensure_dataset(root)
    assert len(episode_files(root, "train")) == 200 and len(episode_files(root, "test")) == 20
    partial = tmp_path / "partial"
    (partial / "train").mkdir(parents=True)
    assert not ensure_dataset(partial)                        # a folder that exists is not touched
    with pytest.raises(MazeDataNotFoundError, match="holds no"):
        MazeDataset(partial, "train", 4)


def _rewrite(path: Path, **changes) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez_compressed(path, **arrays)


def _break(path: Path, how: str) -> None:
    video = np.load(path)["video"]
    if how == "corrupt":
        path.write_bytes(b"not a zip file at all" * 10)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "pickled":
        np.savez(path, video=np.array([object()], dtype=object), actions=np.zeros(3, np.int64))
    elif how == "float_video":
        _rewrite(path, video=video.astype(np.float32))
    elif how == "channels_first":
        _rewrite(path, video=np.ascontiguousarray(video.transpose(0, 3, 1, 2)))
    elif how == "short_actions":
        _rewrite(path, actions=np.zeros(3, np.int64))
    elif how == "float_actions":
        _rewrite(path, actions=np.zeros(LENGTH, np.float32))
    elif how == "bad_action":
        _rewrite(path, actions=np.full(LENGTH, 5, np.int64))
    elif how == "bad_flags":
        _rewrite(path, junction=np.zeros((LENGTH, 2), bool))
    else:
        _rewrite(path, **{how.removeprefix("no_"): None})


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("corrupt", "corrupt or truncated"),
        ("truncated", "corrupt or truncated"),
        ("pickled", "cannot read"),
        ("no_video", "missing key 'image' \\(or 'video'"),
        ("no_actions", "missing key 'actions'"),
        ("float_video", "key 'video' must be uint8"),
        ("channels_first", r"key 'video' must be \[T, H, W, 3\]"),
        ("short_actions", "key 'actions' has 3 steps"),
        ("float_actions", "key 'actions' must be integers"),
        ("bad_action", "key 'actions' must be in 0..2"),
        ("bad_flags", "key 'junction' must be bool"),
    ],
)
def test_bad_files_are_named_with_their_key(dataset_root, tmp_path, how, match):
    root = _copy_split(dataset_root, tmp_path)
    bad = root / "train" / "episode_000001.npz"
    _break(bad, how)
    with pytest.raises(MazeDataError, match=match) as error:
        MazeDataset(root, "train", 4)
    assert "episode_000001.npz" in str(error.value)
    skipping = MazeDataset(root, "train", 4, on_error="skip")
    assert len(skipping) == 2 and skipping.skipped[0][0] == bad


def test_episode_shorter_than_seq_len_is_named(dataset_root):
    with pytest.raises(MazeDataError, match=r"episode_000000\.npz: key 'image' has 12 frames.*seq_len=13"):
        MazeDataset(dataset_root, "train", LENGTH + 1)
