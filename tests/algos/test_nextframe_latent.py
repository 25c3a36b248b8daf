"""The autoencoder variant of the next-frame predictor: the variance-target regulariser
against a hand computation, the shapes (64 and 84 pixels, RGB and gray), the stop-gradient
between the autoencoder and the latent predictor, and the loss it trains on."""

from __future__ import annotations

import pytest
import torch

from worldmodels.algos.nextframe.latent import AutoencoderNextFrame, LatentNextFrameConfig, variance_regulariser
from worldmodels.algos.nextframe.model import NextFrameConfig, NextFramePredictor, pad_to_multiple


def tiny(**overrides) -> AutoencoderNextFrame:
    values = dict(image_size=16, widths=[8, 8], latent_channels=4, predictor_width=8, predictor_blocks=2,
                  action_embed=4, num_actions=5)
    return AutoencoderNextFrame(LatentNextFrameConfig(**{**values, **overrides}))


def test_the_variance_regulariser_matches_a_hand_computation():
    z = torch.tensor([[1.0, 2.0], [3.0, 6.0]])    # unit 0: 1, 3 (variance 1); unit 1: 2, 6 (variance 4)
    penalty, variance = variance_regulariser(z, var_lambda=0.5, var_target=1.0)
    assert float(variance) == pytest.approx(2.5)   # population variance per unit, averaged
    assert float(penalty) == pytest.approx(0.5 * (2.5 - 1.0) ** 2)
    spatial = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 1.0]]], [[[4.0, 1.0]]]])   # [3, 1, 1, 2]
    penalty, variance = variance_regulariser(spatial, 2.0, 0.5)
    assert float(variance) == pytest.approx((8 / 3 + 0) / 2) and float(penalty) == pytest.approx(2 * (4 / 3 - 0.5) ** 2)


@pytest.mark.parametrize("size,channels,latent", [(16, 3, 4), (21, 1, 6)])
def test_shapes_of_latents_reconstructions_and_predictions(size, channels, latent):
    torch.manual_seed(0)
    model = tiny(image_size=size, channels=channels)
    frames = torch.rand(2, 4, channels, size, size)
    z = model.autoencoder.encode(frames[:, 0])
    assert z.shape == (2, 4, latent, latent)      # two halvings of the frame padded to a multiple of 4
    assert model.autoencoder.decode(z, size).shape == (2, channels, size, size)
    prediction = model.predict(frames, torch.tensor([0, 4]))
    assert prediction.shape == (2, channels, size, size) and 0 <= prediction.min() and prediction.max() <= 1
    with pytest.raises(ValueError, match=rf"frames must be \[B, 4, {channels}, {size}, {size}\]"):
        model(frames[:, :3], torch.tensor([0, 4]))


def test_the_latent_predictor_starts_by_copying_the_last_latent_and_then_uses_the_action():
    torch.manual_seed(0)
    model = tiny()
    frames = torch.rand(2, 4, 3, 16, 16)
    latents = model.autoencoder.encode(frames.flatten(0, 1)).unflatten(0, (2, 4))
    torch.testing.assert_close(model.predictor(latents, torch.tensor([0, 1])), latents[:, -1])
    torch.nn.init.normal_(model.predictor.head.weight, std=0.1)
    for film in model.predictor.films:
        torch.nn.init.normal_(film.linear.weight)
    moved = model.predictor(latents, torch.tensor([0, 0])) - model.predictor(latents, torch.tensor([3, 3]))
    assert moved.abs().max() > 1e-3


def batch(size=16, channels=3):
    generator = torch.Generator().manual_seed(1)
    return {"frames": torch.rand(3, 4, channels, size, size, generator=generator), "actions": torch.tensor([0, 1, 2]),
            "target": torch.rand(3, channels, size, size, generator=generator)}


def test_the_loss_adds_reconstruction_regulariser_and_latent_error():
    torch.manual_seed(0)
    model = tiny(var_reg_lambda=0.7, var_target=0.3, latent_weight=2.0, huber_delta=0.05)
    data = batch()
    loss, metrics = model.compute_loss(data)
    images = data["target"]
    z = model.autoencoder.encode(images)
    recon = torch.nn.functional.huber_loss(model.autoencoder.decode(z, 16), images, delta=0.05)
    variance = z.flatten(1).var(0, unbiased=False).mean()
    torch.testing.assert_close(metrics["recon"], recon.detach())
    torch.testing.assert_close(metrics["var_reg"], 0.7 * (variance.detach() - 0.3) ** 2)
    torch.testing.assert_close(loss, recon + 0.7 * (variance - 0.3) ** 2 + 2.0 * metrics["latent_mse"])


def gradients(model, data):
    model.zero_grad()
    model.compute_loss(data)[0].backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def test_no_gradient_of_the_prediction_reaches_the_autoencoder():
    torch.manual_seed(0)
    model, data = tiny(latent_weight=1.0), batch()
    torch.nn.init.normal_(model.predictor.head.weight, std=0.1)
    with_prediction = gradients(model, data)
    model.config.latent_weight = 0.0
    without = gradients(model, data)
    for name, grad in with_prediction.items():
        if name.startswith("autoencoder."):
            torch.testing.assert_close(grad, without[name], msg=name)
    assert with_prediction["predictor.head.weight"].abs().sum() > 0
    assert without["predictor.head.weight"].abs().sum() == 0


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model, data = tiny(), batch()
    first = float(model.compute_loss(data)[0].detach())
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        model.compute_loss(data)[0].backward()
        optimizer.step()
    assert float(model.compute_loss(data)[0].detach()) < 0.7 * first


def test_the_unet_pads_frames_whose_size_is_not_a_multiple_of_its_halvings():
    padded = pad_to_multiple(torch.arange(6.0).view(1, 1, 2, 3), 4)
    assert padded.shape == (1, 1, 4, 4)
    torch.testing.assert_close(padded[0, 0, :, 3], torch.tensor([2.0, 5.0, 5.0, 5.0]))   # edge values repeated
    model = NextFramePredictor(NextFrameConfig(image_size=21, channels=1, widths=[8, 8, 8], action_embed=4,
                                               num_actions=5))
    frames = torch.rand(2, 4, 1, 21, 21)
    torch.testing.assert_close(model(frames, torch.tensor([1, 2])), frames[:, -1])   # zero head: copy-last, cropped
