import pytest
import torch
import torch.nn.functional as F

from worldmodels.nn.conv import ConvDecoder, ConvEncoder
from worldmodels.nn.vae import ConvVAE, ConvVAEConfig


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3), (8, 1)])
def test_shapes(size, channels):
    vae = ConvVAE(ConvVAEConfig(image_size=size, channels=channels, latent_dim=5, widths=[8, 8, 8, 8]))
    images = torch.rand(3, channels, size, size)
    mu, logvar = vae.encode(images)
    assert mu.shape == logvar.shape == (3, 5)
    assert vae.decode(mu).shape == images.shape
    recon = vae.reconstruct(images)
    assert recon.min() >= 0 and recon.max() <= 1
    assert vae.sample(2).shape == (2, channels, size, size)


@pytest.mark.parametrize("size", [4, 24, 33])
def test_image_size_must_be_a_power_of_two_multiple_of_four(size):
    with pytest.raises(ValueError, match=f"image_size={size}"):
        ConvEncoder(1, size, [8, 8, 8, 8], 4)


def test_too_few_widths_is_an_error():
    with pytest.raises(ValueError, match="needs 4 stage widths"):
        ConvDecoder(4, 1, 64, [8, 8])


def test_bad_config_values():
    with pytest.raises(ValueError, match="likelihood='poisson'"):
        ConvVAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="beta=-1"):
        ConvVAEConfig(beta=-1)


def test_losses_match_the_elbo_formula():
    torch.manual_seed(0)
    vae = ConvVAE(ConvVAEConfig(image_size=16, channels=1, latent_dim=4, widths=[8, 8], beta=0.5))
    images = torch.rand(2, 1, 16, 16)
    mu, logvar = vae.encode(images)
    z = mu + 0.1
    parts = vae.losses(images, z, mu, logvar)
    bce = F.binary_cross_entropy(torch.sigmoid(vae.decode_logits(z)), images, reduction="sum") / 2
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum() / 2
    torch.testing.assert_close(parts["recon"], bce, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(parts["kl"], kl)
    torch.testing.assert_close(parts["loss"], bce + 0.5 * kl, rtol=1e-4, atol=1e-3)


def test_kl_vanishes_at_the_prior():
    vae = ConvVAE(ConvVAEConfig(image_size=8, latent_dim=3, widths=[4]))
    zeros = torch.zeros(2, 3)
    assert vae.losses(torch.rand(2, 1, 8, 8), zeros, zeros, zeros)["kl"].item() == 0.0


def test_gaussian_likelihood_is_half_squared_error():
    vae = ConvVAE(ConvVAEConfig(image_size=8, latent_dim=3, widths=[4], likelihood="gaussian"))
    images, z = torch.rand(2, 1, 8, 8), torch.randn(2, 3)
    parts = vae.losses(images, z, z, torch.zeros(2, 3))
    expected = 0.5 * (vae.decode_logits(z) - images).square().sum() / 2
    torch.testing.assert_close(parts["recon"], expected)


def test_compute_loss_trains_every_parameter():
    vae = ConvVAE(ConvVAEConfig(image_size=16, latent_dim=4, widths=[8, 8]))
    loss, metrics = vae.compute_loss({"image": torch.rand(4, 1, 16, 16)})
    loss.backward()
    assert set(metrics) == {"recon", "kl"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())
