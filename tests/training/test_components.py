"""Per-component checkpoints and warm starts from saved weights."""

import pytest
import torch
from torch import nn

from worldmodels.training.checkpoint import CheckpointError, save_checkpoint
from worldmodels.training.components import load_initial_weights, read_weights, save_components


class TwoParts(nn.Module):
    def __init__(self, width=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(2, width)
        self.head = nn.Linear(width, 1)

    def components(self):
        return {"encoder": self.encoder, "head": self.head}


class Plain(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = nn.Linear(2, 2)


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_each_component_is_saved_with_snapshots_on_request(tmp_path):
    model = TwoParts()
    paths = save_components(tmp_path, model, step=5, config={"seed": 0})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == ["encoder/last.pt", "head/last.pt"]
    save_components(tmp_path, model, step=10, config={}, snapshot=True)
    assert (tmp_path / "head" / "step_0000010.pt").is_file() and not (tmp_path / "head" / "step_0000005.pt").exists()
    assert read_weights(tmp_path / "encoder" / "last.pt").keys() == {"encoder"}
    assert save_components(tmp_path / "plain", Plain(), step=1, config={}) == []


def test_a_subset_loads_from_a_full_checkpoint_or_a_run_directory(tmp_path):
    trained, fresh = TwoParts(seed=1), TwoParts(seed=2)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", {"model": trained.state_dict()})
    head_before = {k: v.clone() for k, v in fresh.head.state_dict().items()}
    assert load_initial_weights(fresh, tmp_path / "run", ["encoder"]) == ["encoder"]
    assert same(fresh.encoder, trained.encoder)
    assert all(torch.equal(v, head_before[k]) for k, v in fresh.head.state_dict().items())
    other = TwoParts(seed=3)
    assert load_initial_weights(other, tmp_path / "run" / "checkpoints" / "last.pt") == ["encoder", "head"]
    assert same(other, trained)


def test_a_component_file_loads_that_component(tmp_path):
    trained, fresh = TwoParts(seed=1), TwoParts(seed=2)
    save_components(tmp_path, trained, step=3, config={})
    assert load_initial_weights(fresh, tmp_path / "head" / "last.pt") == ["head"]
    assert same(fresh.head, trained.head) and not same(fresh.encoder, trained.encoder)
    with pytest.raises(CheckpointError, match=r"holds \['head'\] of the components .*asked for \['encoder'\]"):
        load_initial_weights(fresh, tmp_path / "head" / "last.pt", ["encoder"])


def test_bad_requests_name_the_file_and_the_part(tmp_path):
    save_checkpoint(tmp_path / "wide.pt", {"model": TwoParts(width=5).state_dict()})
    with pytest.raises(CheckpointError, match=r"component 'encoder' of checkpoint .*wide.pt does not fit"):
        load_initial_weights(TwoParts(), tmp_path / "wide.pt", ["encoder"])
    with pytest.raises(CheckpointError, match=r"init.components has \['decoder'\]; .* are \['encoder', 'head'\]"):
        load_initial_weights(TwoParts(), tmp_path / "wide.pt", ["decoder"])
    with pytest.raises(CheckpointError, match="this model has no components"):
        load_initial_weights(Plain(), tmp_path / "wide.pt", ["encoder"])
    with pytest.raises(CheckpointError, match="without checkpoints/last.pt"):
        load_initial_weights(TwoParts(), tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_initial_weights(TwoParts(), tmp_path / "nothing.pt")


def test_a_model_without_components_loads_whole(tmp_path):
    trained, fresh = Plain(seed=1), Plain(seed=2)
    save_checkpoint(tmp_path / "last.pt", {"model": trained.state_dict()})
    assert load_initial_weights(fresh, tmp_path / "last.pt") == ["model"]
    assert same(fresh, trained)
