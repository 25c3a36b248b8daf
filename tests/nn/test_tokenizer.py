"""IRIS's discrete autoencoder: config checks, shapes of encode/decode over frames and
sequences, token round trips, the loss and its gradients, uint8 input, overfitting a
fixed batch, and the optional LPIPS perceptual term loaded from a file."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from worldmodels.nn.perceptual import LPIPS, VGG16_CHANNELS, load_lpips
from worldmodels.nn.tokenizer import Tokenizer, TokenizerConfig, codebook_usage, psnr
from worldmodels.nn.tokenizer_blocks import Downsample, Upsample, group_norm
from worldmodels.utils.config import dataclass_from_config

TINY = {"resolution": 16, "ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,),
        "z_channels": 8, "vocab_size": 32}
METRICS = {"reconstruction", "l2", "commitment", "codebook", "psnr", "codebook_usage"}


def tiny_tokenizer(seed: int = 0, **overrides) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(TokenizerConfig(**{**TINY, **overrides}))


def block_frames(count: int, seed: int = 0) -> torch.Tensor:
    """``[1, count, 3, 16, 16]`` frames in [0, 1]: a dark background and a coloured square."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.zeros(1, count, 3, 16, 16)
    for index in range(count):
        frames[0, index] = torch.rand(3, 1, 1, generator=generator) * 0.3
        y, x = torch.randint(0, 10, (2,), generator=generator).tolist()
        frames[0, index, :, y:y + 6, x:x + 6] = torch.rand(3, 1, 1, generator=generator)
    return frames


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "vgg_lpips.pt"
    torch.save(LPIPS().state_dict(), path)
    return path


# --- config -------------------------------------------------------------------------

def test_iris_defaults_give_16_tokens_per_frame():
    config = TokenizerConfig()
    assert config.latent_resolution == 4 and config.tokens_per_frame == 16
    tokenizer = Tokenizer(config).eval()
    with torch.no_grad():
        encoding = tokenizer.encode(torch.rand(1, 3, 64, 64))
    assert encoding.z_q.shape == (1, 512, 4, 4) and encoding.tokens.shape == (1, 16)
    assert tokenizer.perceptual is None


@pytest.mark.parametrize("bad, match", [
    ({"resolution": 20, "ch_mult": (1, 1, 1, 1)}, r"resolution=20 must be divisible by 2\*\*\(len\(ch_mult\) - 1\) = 8"),
    ({"ch_mult": ()}, r"ch_mult=\[\] must be a non-empty"),
    ({"ch_mult": (1, 0)}, r"ch_mult=\[1, 0\]"),
    ({"attn_resolutions": (12,)}, r"\[12\] never occur; the feature maps are \[16, 8\]"),
    ({"num_res_blocks": 0}, "num_res_blocks=0"),
    ({"vocab_size": 0}, "vocab_size=0"),
    ({"z_channels": 0}, "z_channels=0"),
    ({"dropout": 1.0}, r"dropout=1.0 must lie in \[0, 1\)"),
    ({"perceptual_weight": -1.0}, "perceptual_weight=-1.0"),
    ({"commitment_weight": float("nan")}, "commitment_weight=nan"),
    ({"beta": -0.5}, "beta=-0.5"),
    ({"impl": "fast"}, "impl='fast'"),
    ({"in_channels": 1, "perceptual_weights_path": "lpips.pt"}, "needs RGB frames"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**{**TINY, **bad})


def test_config_from_hydra_node_turns_lists_into_tuples():
    node = OmegaConf.create({**TINY, "ch_mult": [1, 2], "attn_resolutions": [8, 16], "name": "tokenizer"})
    config = dataclass_from_config(TokenizerConfig, node)
    assert config.ch_mult == (1, 2) and config.attn_resolutions == (8, 16)
    assert config.tokens_per_frame == 64
    with pytest.raises(ValueError, match="no field"):
        dataclass_from_config(TokenizerConfig, OmegaConf.create({"embed_dim": 4}))


def test_blocks():
    assert group_norm(64).num_groups == 32 and group_norm(48).num_groups == 24 and group_norm(3).num_groups == 3
    x = torch.randn(2, 4, 8, 8)
    assert Downsample(4)(x).shape == (2, 4, 4, 4) and Upsample(4)(x).shape == (2, 4, 16, 16)


# --- encode / decode ----------------------------------------------------------------

@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_encode_decode_shapes(lead):
    tokenizer = tiny_tokenizer().eval()
    obs = torch.rand(*lead, 3, 16, 16)
    encoding = tokenizer.encode(obs)
    assert encoding.z.shape == encoding.z_q.shape == (*lead, 8, 8, 8)
    assert encoding.tokens.shape == (*lead, 64) and encoding.tokens.dtype == torch.int64
    assert 0 <= int(encoding.tokens.min()) and int(encoding.tokens.max()) < 32
    codes = tokenizer.quantizer.codebook[encoding.tokens]  # [*lead, K, D]
    torch.testing.assert_close(encoding.z_q, codes.movedim(-1, -2).unflatten(-1, (8, 8)))
    assert tokenizer.decode(encoding.z_q).shape == obs.shape
    with torch.no_grad():
        recon = tokenizer.encode_decode(obs)
    assert recon.shape == obs.shape and 0 <= float(recon.min()) and float(recon.max()) <= 1


@torch.no_grad()
def test_decode_tokens_equals_decode_of_z_q():
    tokenizer = tiny_tokenizer().eval()
    encoding = tokenizer.encode(torch.rand(2, 3, 3, 16, 16))
    frames = tokenizer.decode_tokens(encoding.tokens)
    assert frames.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(frames, tokenizer.decode(encoding.z_q).clamp(0, 1))
    torch.testing.assert_close(tokenizer.decode_tokens(encoding.tokens[:, 0]), frames[:, 0])


def test_bad_inputs_are_named():
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"\[B, \(T,\) 3, 16, 16\].*\[2, 16, 16, 3\]"):
        tokenizer.encode(torch.rand(2, 16, 16, 3))
    with pytest.raises(TypeError, match="uint8 or floating"):
        tokenizer.encode(torch.zeros(2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="K=64"):
        tokenizer.decode_tokens(torch.zeros(2, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, vocab_size=32\), got \[32, 32\]"):
        tokenizer.decode_tokens(torch.full((2, 64), 32))
    with pytest.raises(ValueError, match=r"z_q must be \[B, \(T,\) 8, 8, 8\]"):
        tokenizer.decode(torch.zeros(2, 4, 8, 8))
    with pytest.raises(KeyError, match="observations"):
        tokenizer.compute_loss({"obs": torch.rand(1, 2, 3, 16, 16)})


# --- loss ---------------------------------------------------------------------------

def test_compute_loss_is_finite_with_gradients_everywhere():
    tokenizer = tiny_tokenizer(commitment_weight=0.5, reconstruction_weight=2.0)
    loss, metrics = tokenizer.compute_loss({"observations": torch.rand(2, 3, 3, 16, 16)})
    assert set(metrics) == METRICS and loss.shape == () and torch.isfinite(loss)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    vq_loss = metrics["codebook"] + metrics["commitment"]
    torch.testing.assert_close(loss.detach(), 0.5 * vq_loss + 2.0 * metrics["reconstruction"])
    assert 0 < float(metrics["codebook_usage"]) <= 1
    loss.backward()
    for module in (tokenizer.encoder, tokenizer.pre_quant_conv, tokenizer.post_quant_conv, tokenizer.decoder):
        assert all(p.grad is not None for p in module.parameters())
        assert sum(float(p.grad.abs().sum()) for p in module.parameters()) > 0
    assert float(tokenizer.quantizer.codebook.grad.abs().sum()) > 0


def test_l2_weight_adds_the_mean_squared_error_on_the_minus_one_one_scale():
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 3, 16, 16)
    plain, with_l2 = tiny_tokenizer(), tiny_tokenizer(l2_weight=3.0)
    with_l2.load_state_dict(plain.state_dict())
    loss, metrics = plain.compute_loss({"observations": frames})
    loss_l2, metrics_l2 = with_l2.compute_loss({"observations": frames})
    recon = with_l2.decode(with_l2.encode(frames).z_q)  # [0, 1] scale, unclamped
    torch.testing.assert_close(metrics_l2["l2"], (2 * recon - 2 * frames).square().mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_l2, loss + 3.0 * metrics["l2"])


def test_l2_term_reconstructs_small_objects_where_l1_alone_stays_at_the_background():
    """A 4x4 bright square at a random place on a black 16x16 frame (6% of the pixels):
    the L1 term's optimum without information is the black median, the squared term's
    gradient grows with the error on the square's pixels."""
    def frames(generator):
        out = torch.zeros(8, 1, 3, 16, 16)
        for i, (row, col) in enumerate(torch.randint(0, 12, (8, 2), generator=generator).tolist()):
            out[i, 0, :, row:row + 4, col:col + 4] = 1.0
        return out

    errors = {}
    for l2_weight in (0.0, 1.0):
        torch.manual_seed(0)
        tokenizer = tiny_tokenizer(l2_weight=l2_weight)
        optimizer = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(150):
            loss, _ = tokenizer.compute_loss({"observations": frames(generator)})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        test = frames(torch.Generator().manual_seed(1))[:, 0]
        with torch.no_grad():
            recon = tokenizer.encode_decode(test)
        errors[l2_weight] = float((recon - test).abs()[test > 0].mean())   # on the square's pixels
    assert errors[0.0] > 0.3 and errors[1.0] < errors[0.0] / 3, errors   # measured 0.40 and 0.10


def test_ema_codebook_is_not_trained_by_gradients():
    tokenizer = tiny_tokenizer(ema=True)
    loss, _ = tokenizer.compute_loss({"observations": torch.rand(1, 2, 3, 16, 16)})
    loss.backward()
    assert tokenizer.quantizer.codebook.grad is None and torch.isfinite(loss)


def test_uint8_observations_equal_float_over_255():
    tokenizer = tiny_tokenizer().eval()
    pixels = torch.randint(0, 256, (2, 2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        loss_u8, metrics_u8 = tokenizer.compute_loss({"observations": pixels})
        loss_f, metrics_f = tokenizer.compute_loss({"observations": pixels.float() / 255})
        assert torch.equal(tokenizer.encode(pixels).tokens, tokenizer.encode(pixels.float() / 255).tokens)
    torch.testing.assert_close(loss_u8, loss_f)
    for name in METRICS:
        torch.testing.assert_close(metrics_u8[name], metrics_f[name])


def test_psnr_and_usage_helpers():
    targets = torch.full((2, 3, 4, 4), 0.5)
    torch.testing.assert_close(psnr(targets + 0.1, targets), torch.tensor(20.0))
    assert float(psnr(targets, targets)) == pytest.approx(100.0)
    torch.testing.assert_close(codebook_usage(torch.tensor([[0, 1], [1, 3]]), 8), torch.tensor(3 / 8))


def test_tiny_tokenizer_overfits_a_fixed_batch():
    tokenizer = tiny_tokenizer()
    batch = {"observations": block_frames(4)}
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=1e-3)
    first = None
    for _ in range(150):
        loss, metrics = tokenizer.compute_loss(batch)
        first = float(metrics["psnr"]) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, metrics = tokenizer.compute_loss(batch)
    assert float(metrics["psnr"]) > first + 5.0, (first, float(metrics["psnr"]))


# --- perceptual ---------------------------------------------------------------------

def test_lpips_state_dict_follows_the_taming_layout():
    state = LPIPS().state_dict()
    assert {"scaling_layer.shift", "net.slice1.0.weight", "net.slice2.5.bias", "net.slice5.28.weight"} <= set(state)
    assert sum(key.endswith(".weight") and key.startswith("net.") for key in state) == 13
    for index, channels in enumerate(VGG16_CHANNELS):
        assert state[f"lin{index}.model.1.weight"].shape == (1, channels, 1, 1)
    assert not any(p.requires_grad for p in LPIPS().parameters())


def test_lpips_from_file_is_zero_for_identical_and_positive_for_different(lpips_file):
    lpips = load_lpips(lpips_file)
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(lpips(x, x), torch.zeros(2))
        distance = lpips(x, y)
    assert distance.shape == (2,) and bool((distance > 0).all())
    with pytest.raises(ValueError, match="H, W >= 16"):
        lpips(x[..., :8, :8], y[..., :8, :8])


def test_lpips_loads_without_the_scaling_buffers(lpips_file, tmp_path):
    state = torch.load(lpips_file, weights_only=True)
    del state["scaling_layer.shift"], state["scaling_layer.scale"]
    torch.save(state, tmp_path / "no_scaling.pt")
    torch.testing.assert_close(load_lpips(tmp_path / "no_scaling.pt").scaling_layer.scale.flatten(),
                               torch.tensor([0.458, 0.448, 0.450]))


def test_lpips_rejects_wrong_files(lpips_file, tmp_path):
    state = torch.load(lpips_file, weights_only=True)
    renamed = {key.replace("lin", "linear"): value for key, value in state.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"not an LPIPS-VGG16 state dict: missing keys \['lin0.model.1.weight'.*"
                                         r"unexpected keys \['linear0.model.1.weight'"):
        load_lpips(tmp_path / "renamed.pt")
    torch.save({**state, "lin0.model.1.weight": -state["lin0.model.1.weight"].abs()}, tmp_path / "negative.pt")
    with pytest.raises(ValueError, match=r"\['lin0'\] must be non-negative"):
        load_lpips(tmp_path / "negative.pt")
    torch.save({**state, "lin1.model.1.weight": torch.ones(1, 3, 1, 1)}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"lin1.model.1.weight \[1, 3, 1, 1\] != \[1, 128, 1, 1\]"):
        load_lpips(tmp_path / "shape.pt")
    with pytest.raises(FileNotFoundError, match="perceptual_weights_path"):
        load_lpips(tmp_path / "absent.pt")


def test_perceptual_term_in_the_loss(lpips_file):
    plain = tiny_tokenizer()
    tokenizer = tiny_tokenizer(perceptual_weights_path=str(lpips_file), perceptual_weight=2.0)
    assert isinstance(tokenizer.perceptual, LPIPS)
    assert set(tokenizer.state_dict()) == set(plain.state_dict())
    assert sum(p.numel() for p in tokenizer.parameters()) == sum(p.numel() for p in plain.parameters())
    loss, metrics = tokenizer.compute_loss({"observations": block_frames(3)})
    assert set(metrics) == METRICS | {"perceptual"} and float(metrics["perceptual"]) > 0
    expected = metrics["codebook"] + metrics["commitment"] + metrics["reconstruction"] + 2.0 * metrics["perceptual"]
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in tokenizer.decoder.parameters()) > 0


def test_perceptual_term_absent_without_path_or_weight(lpips_file):
    for tokenizer in (tiny_tokenizer(), tiny_tokenizer(perceptual_weights_path=str(lpips_file), perceptual_weight=0.0)):
        assert tokenizer.perceptual is None
        _, metrics = tokenizer.compute_loss({"observations": block_frames(2)})
        assert "perceptual" not in metrics
