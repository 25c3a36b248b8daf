import pickle

import pytest
import torch

from worldmodels.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_keeps_tensors_and_values(tmp_path):
    state = {"step": 7, "model": {"w": torch.arange(6.0).view(2, 3)}, "best": 0.5}
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["best"] == 0.5
    torch.testing.assert_close(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_overwrite_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.randn(100, 100)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt.*could not be read.*truncated"):
        load_checkpoint(path)


def test_foreign_checkpoint_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a worldmodels checkpoint"):
        load_checkpoint(path)


class Payload:
    pass


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "worldmodels-checkpoint", "version": 1, "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_and_missing_file(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")
