"""Image quality: PSNR and SSIM per image, the scores of the next-frame predictors.

``psnr_ref`` and ``ssim_ref`` are the specification (plain PyTorch, differentiable, so
SSIM also serves as a loss term); ``psnr`` and ``ssim`` are the public ops. Only the
reference exists: they are cheap next to the models they score (one separable 11x11
blur per statistic), and ``impl="auto"`` is the reference on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_QUALITY_IMPLS = ("auto", "ref")


def _check_images(name: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"{name}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")
    if prediction.dim() < 3:
        raise ValueError(f"{name}: expected images [..., C, H, W], got shape {tuple(prediction.shape)}.")
    if not (prediction.is_floating_point() and target.is_floating_point()):
        raise TypeError(f"{name}: expected floating-point images in [0, data_range], got {prediction.dtype} "
                        f"and {target.dtype} (divide uint8 frames by 255).")


def psnr_ref(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
             eps: float = 1e-10) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, ``10 log10(data_range^2 / MSE)``.

    prediction, target: ``[..., C, H, W]`` floats; returns ``[...]`` (one value per image,
    never pooled over the batch: average the result yourself). The MSE is clamped at
    ``eps`` so identical images give a large finite value.
    """
    _check_images("psnr", prediction, target)
    dtype = torch.float64 if torch.float64 in (prediction.dtype, target.dtype) else torch.float32
    mse = (prediction.to(dtype) - target.to(dtype)).square().flatten(-3).mean(-1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(eps))


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """The normalised 1-D Gaussian ``[size]`` of SSIM's window (Wang et al. 2004)."""
    offsets = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * sigma ** 2))
    return (weights / weights.sum()).to(dtype)


def _blur(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``[N, C, H, W]``."""
    channels, size = images.shape[1], window.numel()
    horizontal = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    return F.conv2d(F.conv2d(images, horizontal, groups=channels), vertical, groups=channels)


def ssim_ref(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each image (Wang et al. 2004, eq. 13), averaged over the
    channels and over the pixels whose whole window lies inside the image.

    prediction, target: ``[..., C, H, W]`` floats with ``H, W >= window_size``; returns
    ``[...]`` (float32, or float64 for float64 inputs, also under autocast). Local means, variances and covariance use a Gaussian window (``sigma``)
    and the population (biased) estimates, with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``:
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L, channel_axis=...)``.
    """
    _check_images("ssim", prediction, target)
    height, width = prediction.shape[-2:]
    if min(height, width) < window_size:
        raise ValueError(f"ssim: images of {height}x{width} are smaller than the {window_size}x{window_size} window.")
    lead = prediction.shape[:-3]
    dtype = torch.float64 if torch.float64 in (prediction.dtype, target.dtype) else torch.float32
    x = prediction.reshape(-1, *prediction.shape[-3:]).to(dtype)
    y = target.reshape(-1, *target.shape[-3:]).to(dtype)
    window = gaussian_window(window_size, sigma, device=x.device, dtype=dtype)
    with torch.autocast(x.device.type, enabled=False):   # E[x^2] - E[x]^2 needs fp32, also under bf16 autocast
        moments = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), window)
    mu_x, mu_y, xx, yy, xy = moments.chunk(5, dim=1)
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(1).reshape(lead)


def _check_impl(name: str, impl: str) -> None:
    if impl not in IMAGE_QUALITY_IMPLS:
        raise ValueError(f"{name}: impl={impl!r} is not one of {', '.join(IMAGE_QUALITY_IMPLS)} "
                         "(only the PyTorch reference exists; it runs on every device).")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """PSNR per image (see :func:`psnr_ref`); ``impl``: ``auto`` or ``ref`` (the same)."""
    _check_impl("psnr", impl)
    return psnr_ref(prediction, target, data_range)


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """SSIM per image, Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03 (see
    :func:`ssim_ref`); ``impl``: ``auto`` or ``ref`` (the same)."""
    _check_impl("ssim", impl)
    return ssim_ref(prediction, target, data_range)


__all__ = ["IMAGE_QUALITY_IMPLS", "gaussian_window", "psnr", "psnr_ref", "ssim", "ssim_ref"]
