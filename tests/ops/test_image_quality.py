"""PSNR and SSIM per image against scikit-image's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from worldmodels.ops import psnr, psnr_ref, ssim, ssim_ref


def skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image's SSIM of one ``[C, H, W]`` pair with the settings ``ssim_ref`` follows."""
    return structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
                                 channel_axis=0)


def image_pairs(count: int, channels: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured targets (smooth blobs plus texture) and predictions at several noise
    levels, in [0, 1], float64."""
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(count, channels, 4, 4, generator=generator, dtype=torch.float64),
                                             size=(height, width), mode="bilinear", align_corners=False)
    target = (0.7 * smooth + 0.3 * torch.rand(count, channels, height, width, generator=generator,
                                              dtype=torch.float64)).clamp(0, 1)
    noise = torch.linspace(0.01, 0.4, count, dtype=torch.float64).view(-1, 1, 1, 1)
    prediction = (target + noise * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return prediction, target


@pytest.mark.parametrize("channels,height,width", [(3, 64, 64), (1, 11, 11), (3, 17, 30), (2, 40, 23)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_matches_scikit_image_per_image(channels, height, width, dtype):
    prediction, target = image_pairs(5, channels, height, width)
    ours = ssim_ref(prediction.to(dtype), target.to(dtype))
    expected = [skimage_ssim(p.to(dtype).double().numpy(), t.to(dtype).double().numpy())
                for p, t in zip(prediction, target)]
    assert ours.shape == (5,)
    np.testing.assert_allclose(ours.double().numpy(), expected, atol=1e-5, rtol=0)
    assert len(set(np.round(expected, 4))) == 5   # the pairs differ, so a pooled value would fail


def test_ssim_of_identical_images_is_one_and_of_unrelated_noise_near_zero():
    _, target = image_pairs(2, 3, 32, 32)
    assert torch.allclose(ssim(target, target), torch.ones(2, dtype=torch.float64))
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert ssim(noise, target).abs().max() < 0.1


def test_psnr_matches_scikit_image_per_image_not_over_the_batch():
    prediction, target = image_pairs(4, 3, 20, 24)
    ours = psnr_ref(prediction, target)
    expected = [peak_signal_noise_ratio(t.numpy(), p.numpy(), data_range=1) for p, t in zip(prediction, target)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5, rtol=0)
    pooled = 10 * np.log10(1 / float((prediction - target).square().mean()))
    assert abs(float(ours.mean()) - pooled) > 0.1


def test_leading_dimensions_are_kept():
    prediction, target = image_pairs(6, 3, 16, 16)
    shaped = ssim(prediction.view(2, 3, 3, 16, 16), target.view(2, 3, 3, 16, 16))
    assert shaped.shape == (2, 3)
    torch.testing.assert_close(shaped.flatten(), ssim(prediction, target))
    assert psnr(prediction.view(2, 3, 3, 16, 16), target.view(2, 3, 3, 16, 16)).shape == (2, 3)


def test_ssim_keeps_fp32_under_bf16_autocast():
    prediction, target = image_pairs(3, 3, 32, 32)
    prediction, target = prediction.float(), target.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim(prediction, target)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, ssim(prediction, target), atol=1e-6, rtol=0)


def test_ssim_reference_gradient_is_correct_in_float64():
    prediction, target = image_pairs(2, 1, 12, 13)
    prediction.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssim_ref(p, target), (prediction,))


def test_bad_inputs_are_refused_with_what_to_do():
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"prediction \(1, 3, 16, 16\) and target \(1, 3, 8, 8\) differ"):
        ssim(image, image[..., :8, :8])
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(image[..., :10, :10], image[..., :10, :10])
    with pytest.raises(TypeError, match="divide uint8 frames by 255"):
        psnr(image.to(torch.uint8), image.to(torch.uint8))
    with pytest.raises(ValueError, match="impl='triton' is not one of auto, ref"):
        ssim(image, image, impl="triton")
