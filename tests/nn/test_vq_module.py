"""The VectorQuantizer module: config checks, IRIS init, both layouts, losses,
gradients, embed, EMA mode and dead-code restarts."""

from __future__ import annotations

import pytest
import torch

from worldmodels.nn.vq import VectorQuantizer, VQConfig
from worldmodels.ops import _dispatch

needs_triton = pytest.mark.skipif(
    not _dispatch.triton_runs_on(torch.device("cpu")), reason="triton (interpreter) not available"
)
IMPLS = ["ref", pytest.param("triton", marks=needs_triton)]
SMALL = {"num_codes": 12, "dim": 6}


@pytest.mark.parametrize("bad, match", [
    ({"num_codes": 0}, "num_codes=0"),
    ({"dim": 0}, "dim=0"),
    ({"beta": -1.0}, "beta=-1.0"),
    ({"decay": 1.0}, "decay=1.0"),
    ({"dead_threshold": -0.5}, "dead_threshold=-0.5"),
    ({"impl": "fast"}, "impl='fast'"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        VQConfig(**{**SMALL, **bad})


def test_iris_init_and_state():
    quantizer = VectorQuantizer(VQConfig(num_codes=64, dim=8))
    assert quantizer.codebook.shape == (64, 8) and quantizer.codebook.requires_grad
    assert quantizer.codebook.abs().max() <= 1 / 64
    assert set(quantizer.state_dict()) == {"codebook"}
    ema = VectorQuantizer(VQConfig(num_codes=64, dim=8, ema=True))
    assert not ema.codebook.requires_grad
    assert torch.equal(ema.ema_sum, ema.codebook) and torch.equal(ema.ema_count, torch.ones(64))


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_first_shapes_losses_and_gradients(impl):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(VQConfig(**SMALL, impl=impl))
    encoder = torch.nn.Conv2d(3, 6, 1)
    images = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = quantizer(encoder(images))
    assert out.z_q.shape == (2, 6, 4, 5) and out.tokens.shape == (2, 4, 5)
    assert out.tokens.dtype == torch.int64
    assert set(out.losses) == {"codebook", "commitment", "loss"}
    assert all(torch.isfinite(v) and v.shape == () for v in out.losses.values())
    torch.testing.assert_close(out.losses["loss"], out.losses["codebook"] + out.losses["commitment"])
    (out.z_q.square().sum() + out.losses["loss"]).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert encoder.weight.grad.abs().sum() > 0
    assert quantizer.codebook.grad is not None and quantizer.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_embed_returns_the_forward_values(impl):
    quantizer = VectorQuantizer(VQConfig(**SMALL, impl=impl))
    z = torch.randn(2, 6, 3, 3) / 12
    out = quantizer(z)
    assert torch.equal(quantizer.embed(out.tokens), out.z_q)
    flat = quantizer(z.movedim(1, -1), channels_last=True)
    assert flat.z_q.shape == (2, 3, 3, 6) and flat.tokens.shape == (2, 3, 3)
    assert torch.equal(flat.tokens, out.tokens)
    assert torch.equal(quantizer.embed(flat.tokens, channels_last=True), flat.z_q)


def test_channels_last_any_leading_shape():
    quantizer = VectorQuantizer(VQConfig(**SMALL))
    out = quantizer(torch.randn(7, 6), channels_last=True)
    assert out.z_q.shape == (7, 6) and out.tokens.shape == (7,)


def test_layout_errors():
    quantizer = VectorQuantizer(VQConfig(**SMALL))
    with pytest.raises(ValueError, match=r"channels-first z must be \[B, D=6, \.\.\.\]"):
        quantizer(torch.randn(2, 4, 4, 6))
    with pytest.raises(ValueError, match="the codebook has D=6"):
        quantizer(torch.randn(2, 6, 4), channels_last=True)
    with pytest.raises(TypeError, match="tokens must be int32/int64"):
        quantizer.embed(torch.zeros(3))


@pytest.mark.parametrize("impl", IMPLS)
def test_ema_mode_moves_codes_without_gradients(impl):
    torch.manual_seed(1)
    quantizer = VectorQuantizer(VQConfig(**SMALL, ema=True, decay=0.5, impl=impl))
    before = quantizer.codebook.detach().clone()
    z = torch.randn(4, 6, 2, 2, requires_grad=True)
    out = quantizer(z)
    assert not torch.equal(quantizer.codebook, before)
    torch.testing.assert_close(out.losses["loss"], out.losses["commitment"])
    assert not out.losses["codebook"].requires_grad
    out.losses["loss"].backward()  # the codebook changed in place after the forward pass
    assert z.grad.abs().sum() > 0 and quantizer.codebook.grad is None
    quantizer.eval()
    frozen = quantizer.codebook.detach().clone()
    quantizer(z)
    assert torch.equal(quantizer.codebook, frozen)


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_are_restarted_in_training(ema):
    torch.manual_seed(2)
    quantizer = VectorQuantizer(VQConfig(**SMALL, ema=ema, decay=0.5, dead_threshold=0.9))
    z = (5 + torch.randn(3, 6, 2, 2)).requires_grad_()  # far from every code: one takes all
    out = quantizer(z)
    rows = z.detach().movedim(1, -1).reshape(-1, 6)
    restarted = [(rows == code).all(1).any().item() for code in quantizer.codebook.detach()]
    assert sum(restarted) >= SMALL["num_codes"] - 1
    assert (quantizer.ema_count >= 0.9).all()
    out.losses["loss"].backward()
