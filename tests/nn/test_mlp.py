"""DreamerV3 MLP: structure, shapes over leading dims, init, zero-initialised output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worldmodels.nn.mlp import MLP, init_fan_avg_


def test_structure_and_shapes_over_leading_dims():
    mlp = MLP(7, 3, units=16, layers=2)
    kinds = [type(m) for m in mlp.hidden]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.SiLU] * 2
    assert all(m.bias is None for m in mlp.hidden if isinstance(m, nn.Linear))
    assert all(m.eps == 1e-3 for m in mlp.hidden if isinstance(m, nn.LayerNorm))
    x = torch.randn(4, 5, 7)
    assert mlp(x).shape == (4, 5, 3)
    assert mlp(x[0, 0]).shape == (3,)
    torch.testing.assert_close(mlp(x)[2, 1], mlp(x[2:3, 1:2])[0, 0])  # rows are independent
    trunk = MLP(7, None, units=16, layers=1)
    assert trunk.out_dim == 16 and trunk(x).shape == (4, 5, 16)


def test_forward_matches_hand_composition():
    torch.manual_seed(0)
    mlp = MLP(4, 2, units=5, layers=1)
    x = torch.randn(3, 4)
    lin, out = mlp.hidden[0], mlp.out
    h = x @ lin.weight.T
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-3)
    expected = torch.nn.functional.silu(h) @ out.weight.T + out.bias
    torch.testing.assert_close(mlp(x), expected)


def test_without_norm_hidden_layers_have_bias_and_act_choice():
    mlp = MLP(4, 2, units=5, layers=2, norm=False, act="relu")
    assert [type(m) for m in mlp.hidden] == [nn.Linear, nn.ReLU] * 2
    assert all(m.bias is not None for m in mlp.hidden if isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(4, 2, units=5, layers=1, act="swish")


def test_zero_init_output_gives_zero_and_still_learns():
    mlp = MLP(6, 255, units=8, layers=2, zero_init_output=True)
    x = torch.randn(2, 3, 6)
    out = mlp(x)
    assert torch.equal(out, torch.zeros(2, 3, 255))
    (mlp(x) - 1.0).pow(2).sum().backward()
    assert mlp.out.weight.grad.abs().sum() > 0  # the output layer gets a gradient
    assert not torch.equal(MLP(6, 4, units=8, layers=2)(x), torch.zeros(2, 3, 4))


def test_fan_avg_init_statistics():
    torch.manual_seed(0)
    layer = nn.Linear(300, 500)
    init_fan_avg_(layer)
    assert torch.all(layer.bias == 0)
    std = (2.0 / 800) ** 0.5
    assert abs(layer.weight.std().item() - std) / std < 0.03
    assert layer.weight.abs().max() <= 2 * std / 0.8796256610342398 + 1e-6  # truncated at 2 sigma


def test_rejects_bad_sizes_and_inputs():
    with pytest.raises(ValueError, match="layers >= 0"):
        MLP(4, 2, units=5, layers=-1)
    with pytest.raises(ValueError, match="out_dim=None needs layers >= 1"):
        MLP(4, None, units=5, layers=0)
    with pytest.raises(ValueError, match=r"MLP expects inputs \[..., 4\], got shape \(2, 3\)"):
        MLP(4, 2, units=5, layers=1)(torch.zeros(2, 3))
