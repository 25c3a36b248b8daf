"""Dict observations: key selection and order, the multi-encoder and multi-decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels.nn.distributions import MSE, SymlogMSE, symlog
from worldmodels.nn.multi_io import (
    Crop2d,
    MultiDecoder,
    MultiEncoder,
    MultiIOConfig,
    SamePad2d,
    cnn_grid,
    cnn_sizes,
    postprocess_image,
    preprocess_image,
    select_keys,
)

SPACE = {
    "image": ((16, 16, 3), np.uint8),
    "depth": ((16, 16, 1), np.uint8),
    "pos": ((3,), np.float32),
    "vel": ((2,), np.float32),
    "reward": ((), np.float32),
    "is_first": ((), bool),
    "action": ((4,), np.float32),
    "log_score": ((1,), np.float32),
}
SMALL = {"cnn_depth": 4, "mlp_units": 8, "mlp_layers": 1}


def _obs(space=SPACE, lead=(2, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = {}
    for key, (shape, dtype) in space.items():
        if dtype == np.uint8:
            obs[key] = torch.randint(0, 256, (*lead, *shape), generator=gen, dtype=torch.uint8)
        else:
            obs[key] = torch.randn(*lead, *shape, generator=gen) * 5
    return obs


def test_select_keys_by_rank_sorted_and_skipping_bookkeeping():
    assert select_keys(SPACE, ".*", ".*") == (["depth", "image"], ["pos", "vel"])
    assert select_keys(SPACE, "image", "p.*") == (["image"], ["pos"])
    assert select_keys(SPACE, "$^", "vel") == ([], ["vel"])
    assert select_keys(SPACE, "depth|image", "$^", order=["image", "depth"]) == (["image", "depth"], [])
    assert select_keys(SPACE, ".*", ".*", order=["vel", "image", "pos", "depth"]) == (["image", "depth"],
                                                                                       ["vel", "pos"])


def test_select_keys_fullmatch_and_errors():
    with pytest.raises(ValueError, match=r"mlp_keys='po' matches no observation key; available keys: \['depth'"):
        select_keys(SPACE, ".*", "po")  # fullmatch: "po" does not match "pos"
    with pytest.raises(ValueError, match="cnn_keys='reward' matches no observation key"):
        select_keys(SPACE, "reward", ".*")  # bookkeeping keys are never inputs
    with pytest.raises(ValueError, match=r"'image' with shape \(16, 16, 3\) is matched by mlp_keys"):
        select_keys(SPACE, "depth", ".*")
    with pytest.raises(ValueError, match=r"'pos' with shape \(3,\) is matched by cnn_keys"):
        select_keys(SPACE, "image|pos", "vel")
    with pytest.raises(ValueError, match=r"'vel' with shape \(2,\) is matched by cnn_keys"):
        select_keys(SPACE, ".*", "pos")  # a matched key is never dropped silently
    with pytest.raises(ValueError, match=r"'grid' with shape \(5, 5\) is matched by mlp_keys"):
        select_keys({**SPACE, "grid": ((5, 5), np.float32)}, ".*", ".*")
    with pytest.raises(ValueError, match="key_order names 'speed', which is not an observation key"):
        select_keys(SPACE, ".*", ".*", order=["speed"])
    with pytest.raises(ValueError, match="key_order names 'vel', which cnn_keys/mlp_keys do not select"):
        select_keys(SPACE, "image|depth", "pos", order=["image", "depth", "pos", "vel"])
    with pytest.raises(ValueError, match=r"key_order leaves out the selected keys \['depth', 'vel'\]"):
        select_keys(SPACE, ".*", ".*", order=["image", "pos"])


@pytest.mark.parametrize("size, expected", [
    ((16, 16), (2, 4, 4)), ((32, 32), (3, 4, 4)), ((64, 64), (4, 4, 4)), ((96, 96), (4, 6, 6)),
    ((64, 96), (4, 4, 6)), ((8, 8), (1, 4, 4)),
    # Sizes that do not halve cleanly: "same" padding, ceil(n / 2) per stage.
    ((84, 84), (4, 6, 6)), ((78, 78), (4, 5, 5)), ((64, 48), (3, 8, 6)), ((9, 13), (1, 5, 7)),
])
def test_cnn_grid(size, expected):
    assert cnn_grid(*size) == expected


def test_cnn_sizes_follow_minres_and_reject_small_images():
    assert cnn_sizes(84, 84) == [(84, 84), (42, 42), (21, 21), (11, 11), (6, 6)]
    assert cnn_sizes(84, 84, minres=6) == [(84, 84), (42, 42), (21, 21), (11, 11)]
    assert cnn_sizes(64, 64, minres=8) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    with pytest.raises(ValueError, match="at least 8x8"):
        cnn_grid(4, 4)
    with pytest.raises(ValueError, match="at least 12x12"):
        cnn_sizes(10, 40, minres=6)


@pytest.mark.parametrize("size", [(84, 84), (78, 78), (64, 48), (21, 35)])
def test_odd_sizes_round_trip_through_encoder_and_decoder(size):
    space = {"cam": ((*size, 3), np.uint8)}
    config = MultiIOConfig(cnn_depth=2, mlp_keys="$^")
    enc = MultiEncoder(config, space)
    images = torch.randint(0, 256, (2, 3, *size, 3), dtype=torch.uint8)
    embed = enc({"cam": images})
    stages, final_h, final_w = cnn_grid(*size)
    assert embed.shape == (2, 3, enc.out_dim) and enc.out_dim == 2 * 2 ** (stages - 1) * final_h * final_w
    dec = MultiDecoder(config, enc.out_dim, space, ["cam"], [])
    dist = dec(embed)["cam"]
    assert dist.mode().shape == (2, 3, *size, 3)
    loss = dec.loss(embed, {"cam": images})["cam"]
    assert loss.shape == (2, 3) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in [*enc.parameters(), *dec.parameters()])


def test_same_padding_matches_a_reference_convolution_and_crop_mirrors_it():
    # TensorFlow "same" for k=4, s=2: total padding max((out-1)*2 + 4 - n, 0), the odd one
    # at the end; an odd input of 21 gives 11 outputs (1 before, 2 after).
    enc = MultiEncoder(MultiIOConfig(cnn_depth=2, mlp_keys="$^"), {"cam": ((21, 42, 1), np.uint8)})
    pad, conv = enc.cnn[0], enc.cnn[1]
    assert isinstance(pad, SamePad2d) and pad.pad == (1, 1, 1, 2)
    x = torch.randn(1, 1, 21, 42)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 2)), conv.weight, stride=2)
    torch.testing.assert_close(conv(pad(x)), expected)
    assert expected.shape[-2:] == (11, 21)
    # Even sizes keep the plain padding-1 convolution (no extra module), as before.
    even = MultiEncoder(MultiIOConfig(cnn_depth=2, mlp_keys="$^"), {"cam": ((64, 64, 1), np.uint8)})
    assert not any(isinstance(m, (SamePad2d, Crop2d)) for m in even.cnn)
    dec = MultiDecoder(MultiIOConfig(cnn_depth=2), 4, {"cam": ((21, 42, 1), np.uint8)}, ["cam"], [])
    crops = [m for m in dec.deconv if isinstance(m, Crop2d)]
    assert [(c.height, c.width) for c in crops] == [(11, 21), (21, 42)]  # sizes (21, 42) -> (11, 21) -> (6, 11)


def test_image_conversion_round_trip():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(preprocess_image(x), torch.tensor([-0.5, 0.2 - 0.5, 0.5]))
    assert torch.equal(postprocess_image(preprocess_image(x)), x)
    with pytest.raises(TypeError, match="'cam' must be uint8, got torch.float32"):
        preprocess_image(x.float(), "cam")


def test_encoder_shapes_layers_and_out_dim():
    enc = MultiEncoder(MultiIOConfig(**SMALL), SPACE)
    assert enc.cnn_keys == ["depth", "image"] and enc.mlp_keys == ["pos", "vel"]
    convs = [m for m in enc.cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 4, (4, 4), (2, 2)), (4, 8, (4, 4), (2, 2))]
    assert enc.out_dim == 8 * 4 * 4 + 8
    assert enc(_obs()).shape == (2, 3, enc.out_dim)
    big = MultiEncoder(MultiIOConfig(cnn_keys="cam", mlp_keys="$^"), {"cam": ((64, 64, 3), np.uint8)})
    assert [m.out_channels for m in big.cnn if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128, 256]
    assert big.out_dim == 256 * 4 * 4


def test_encoder_matches_hand_composition_and_key_order():
    config = MultiIOConfig(**SMALL, key_order=["image", "depth", "vel", "pos"])
    enc, obs = MultiEncoder(config, SPACE), _obs()
    out = enc(obs)
    images = torch.cat([obs["image"], obs["depth"]], -1).float() / 255 - 0.5
    cnn = enc.cnn(images.reshape(6, 16, 16, 4).permute(0, 3, 1, 2)).reshape(2, 3, -1)
    mlp = enc.mlp(symlog(torch.cat([obs["vel"], obs["pos"]], -1)))
    torch.testing.assert_close(out, torch.cat([cnn, mlp], -1))
    torch.testing.assert_close(enc({k: v[1:, 2:] for k, v in obs.items()})[0, 0], out[1, 2])  # rows independent


def test_encoder_input_errors():
    enc = MultiEncoder(MultiIOConfig(**SMALL), SPACE)
    obs = _obs()
    with pytest.raises(KeyError, match="observation 'vel' is missing"):
        enc({k: v for k, v in obs.items() if k != "vel"})
    with pytest.raises(ValueError, match=r"'pos': expected shape \[..., 3\], got \(2, 3, 4\)"):
        enc({**obs, "pos": torch.zeros(2, 3, 4)})
    with pytest.raises(ValueError, match=r"'image': expected shape \[..., 16, 16, 3\], got \(2, 3, 3, 16, 16\)"):
        enc({**obs, "image": obs["image"].permute(0, 1, 4, 2, 3)})
    with pytest.raises(ValueError, match=r"'vel' has leading dims \(3, 2\)"):
        enc({**obs, "vel": torch.zeros(3, 2, 2)})
    with pytest.raises(TypeError, match="'image' must be uint8"):
        enc({**obs, "image": obs["image"].float()})
    mixed = {"a": ((16, 16, 3), np.uint8), "b": ((32, 32, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"must share H and W.*a: \(16, 16, 3\), b: \(32, 32, 3\)"):
        MultiEncoder(MultiIOConfig(**SMALL), mixed)
    with pytest.raises(ValueError, match="no observation key selected"):
        MultiEncoder(MultiIOConfig(cnn_keys="$^", mlp_keys="$^"), SPACE)


def test_decoder_distributions_shapes_and_losses():
    config = MultiIOConfig(**SMALL)
    dec = MultiDecoder(config, 10, SPACE, ["image", "depth"], ["pos", "vel"])
    feat = torch.randn(2, 3, 10)
    dists = dec(feat)
    assert set(dists) == {"image", "depth", "pos", "vel"}
    assert isinstance(dists["image"], MSE) and isinstance(dists["vel"], SymlogMSE)
    assert dists["image"].mode().shape == (2, 3, 16, 16, 3) and dists["depth"].mode().shape == (2, 3, 16, 16, 1)
    assert dists["pos"].mode().shape == (2, 3, 3)
    obs = _obs()
    losses = dec.loss(feat, obs)
    assert all(loss.shape == (2, 3) for loss in losses.values())
    target = obs["depth"].float() / 255 - 0.5
    # Full sums of squared errors (the references' MSEDist / SymlogDist), not half.
    torch.testing.assert_close(losses["depth"], (dists["depth"].pred - target).square().sum((-3, -2, -1)))
    torch.testing.assert_close(losses["vel"], (dists["vel"].pred - symlog(obs["vel"])).square().sum(-1))
    # The image channels are one output split per key: image first, then depth.
    full = dec.deconv(dec.image_head(feat.reshape(6, 10)).reshape(6, *dec.grid)).permute(0, 2, 3, 1)
    torch.testing.assert_close(dists["depth"].pred, full[..., 3:].reshape(2, 3, 16, 16, 1))


def test_decoder_gradients_reach_every_parameter_and_errors():
    dec = MultiDecoder(MultiIOConfig(**SMALL), 10, SPACE, ["image"], ["pos"])
    losses = dec.loss(torch.randn(2, 3, 10), _obs())
    assert set(losses) == {"image", "pos"}
    sum(loss.sum() for loss in losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())
    with pytest.raises(ValueError, match=r"features must be \[..., 10\]"):
        dec(torch.zeros(2, 3, 9))
    with pytest.raises(ValueError, match=r"features have leading dims \(3, 2\)"):
        dec.loss(torch.zeros(3, 2, 10), _obs())
    with pytest.raises(ValueError, match=r"decoder key 'pos' has shape \(3,\); expected a 3-D shape"):
        MultiDecoder(MultiIOConfig(**SMALL), 10, SPACE, ["pos"], [])


@pytest.mark.parametrize("size", [(96, 96), (32, 64)])
def test_decoder_restores_image_size(size):
    space = {"cam": ((*size, 3), np.uint8)}
    dec = MultiDecoder(MultiIOConfig(cnn_depth=2), 6, space, ["cam"], [])
    assert dec(torch.randn(2, 6))["cam"].mode().shape == (2, *size, 3)
    enc = MultiEncoder(MultiIOConfig(cnn_depth=2, mlp_keys="$^"), space)
    assert enc.out_dim == 2 * 2 ** (cnn_grid(*size)[0] - 1) * cnn_grid(*size)[1] * cnn_grid(*size)[2]
