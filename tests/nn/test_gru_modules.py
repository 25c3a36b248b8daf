"""The GRU modules: nn.GRUCell drop-in, sequence modules equal loops over cells."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worldmodels import _ext
from worldmodels.nn.gru import GRU, BlockGRU, BlockGRUCell, BlockGRUConfig, GRUCell, GRUConfig

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
IMPLS = ["ref", pytest.param("cpp", marks=needs_cpp)]


def _loop(cell, x, h):
    states = []
    for t in range(x.shape[1]):
        h = cell(x[:, t], h)
        states.append(h)
    return torch.stack(states, 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_gru_cell_matches_torch_after_load_state_dict(impl):
    torch.manual_seed(0)
    theirs = nn.GRUCell(7, 20)
    ours = GRUCell(7, 20, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x, h = torch.randn(3, 7), torch.randn(3, 20)
    torch.testing.assert_close(ours(x, h), theirs(x, h), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x[0], h[0]), theirs(x[0], h[0]), atol=1e-5, rtol=1e-5)


def test_gru_cell_parameters_match_torch_shapes_and_init_bounds():
    ours, theirs = GRUCell(5, 12, bias=False), nn.GRUCell(5, 12, bias=False)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.weight_hh.abs().max() <= 1 / 12**0.5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer_norm", [False, True])
def test_gru_module_equals_loop_over_cells(impl, layer_norm):
    torch.manual_seed(1)
    cell = GRUCell.from_config(GRUConfig(6, 20, layer_norm=layer_norm, impl="ref"))
    if layer_norm:
        with torch.no_grad():
            cell.ln_weight.uniform_(0.5, 1.5)
            cell.ln_bias.uniform_(-0.1, 0.1)
    scan = GRU(6, 20, layer_norm=layer_norm, impl=impl)
    scan.load_state_dict(cell.state_dict())
    x, h0 = torch.randn(3, 5, 6), torch.randn(3, 20)
    torch.testing.assert_close(scan(x, h0), _loop(cell, x, h0), atol=1e-5, rtol=1e-5)
    assert scan(x).shape == (3, 5, 20)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups", [1, 4])
def test_block_gru_module_equals_loop_over_cells(impl, groups):
    torch.manual_seed(2)
    config = BlockGRUConfig(input_size=6, hidden_size=20, groups=groups, impl="ref")
    cell = BlockGRUCell.from_config(config)
    assert cell.bias is None and cell.ln_weight.shape == (groups, 3 * 20 // groups)
    scan = BlockGRU(6, 20, groups, impl=impl)
    scan.load_state_dict(cell.state_dict())
    x, h0 = torch.randn(3, 4, 6), torch.randn(3, 20)
    expected = _loop(cell, x, h0)
    states = scan(x, h0)
    torch.testing.assert_close(states, expected, atol=1e-5, rtol=1e-5)
    states.sum().backward()
    assert scan.weight.grad is not None and scan.ln_bias.grad is not None


def test_block_gru_rejects_bad_groups_and_ranks():
    with pytest.raises(ValueError, match="multiple of groups"):
        BlockGRUCell(4, 10, groups=3)
    with pytest.raises(ValueError, match=r"\[B, T, I\]"):
        BlockGRU(4, 8, 2)(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\[B, T, I\]"):
        GRU(4, 8)(torch.randn(2, 4))
