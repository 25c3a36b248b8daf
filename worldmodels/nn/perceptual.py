"""LPIPS perceptual distance (Zhang et al. 2018, VGG16 variant) as IRIS uses it.

For images ``x, y [N, 3, H, W]`` in [-1, 1] (``H, W >= 16``)::

    f^l(x)   = VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of
               (x - shift) / scale                      (l = 0..4, C_l channels)
    n^l(x)   = f^l(x) / (|f^l(x)|_2 over channels + 1e-10)
    d(x, y)  = sum_l mean_{h,w} sum_c w^l_c (n^l(x) - n^l(y))_c^2,   w^l >= 0

Nothing is downloaded: weights come from a file holding the state dict of
taming-transformers' / IRIS's ``LPIPS`` module (torchvision's VGG16 features plus the
LPIPS v0.1 linear layers), saved with ``torch.save(lpips.state_dict(), path)`` and
read with ``torch.load(weights_only=True)``. Its keys: ``net.slice{1..5}.{i}.weight``
and ``.bias`` (``i`` the index in ``torchvision.models.vgg16().features``),
``lin{0..4}.model.1.weight`` ``[1, C_l, 1, 1]``, and optionally
``scaling_layer.shift`` / ``scaling_layer.scale``. The module is frozen (no parameter
requires grad) and has no dropout; gradients flow to its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

Tensor = torch.Tensor

VGG16_CHANNELS = (64, 128, 256, 512, 512)
# Convolutions of torchvision's vgg16().features, in order, and where the five slices end
# (after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_OPTIONAL_KEYS = frozenset({"scaling_layer.shift", "scaling_layer.scale"})
MIN_SIZE = 16


def _vgg16_layers() -> list[nn.Module]:
    """``vgg16().features[:30]``: conv/ReLU/max-pool layers with torchvision's indices."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CONVS:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    return layers


class VGG16Features(nn.Module):
    """``x [N, 3, H, W] -> [relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]`` feature maps."""

    def __init__(self):
        super().__init__()
        layers, start = _vgg16_layers(), 0
        for number, end in enumerate(_SLICE_ENDS, start=1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), layers[index])
            self.add_module(f"slice{number}", block)
            start = end

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for number in range(1, len(_SLICE_ENDS) + 1):
            x = getattr(self, f"slice{number}")(x)
            features.append(x)
        return features


class ScalingLayer(nn.Module):
    """``(x - shift) / scale`` per RGB channel: [-1, 1] images to ImageNet statistics."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Non-negative channel weights: ``[N, C, H, W] -> [N, 1, H, W]`` (1x1 conv, no bias).
    ``model.0`` is an identity where LPIPS has its (here omitted) dropout."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))
        nn.init.uniform_(self.model[1].weight, 0.0, 1.0 / channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _unit_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG16 distance, frozen. Randomly initialised (non-negative linear weights)
    unless built by :func:`load_lpips`; ``forward(x, y)`` with ``x, y [N, 3, H, W]`` in
    [-1, 1] returns the distances ``[N]`` (0 for identical images)."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features()
        for index, channels in enumerate(VGG16_CHANNELS):
            self.add_module(f"lin{index}", NetLinLayer(channels))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS compares two [N, 3, H, W] batches with H, W >= {MIN_SIZE}, "
                             f"got shapes {list(x.shape)} and {list(y.shape)}.")
        features_x = self.net(self.scaling_layer(x))
        features_y = self.net(self.scaling_layer(y))
        distance = x.new_zeros(x.shape[0])
        for index, (fx, fy) in enumerate(zip(features_x, features_y)):
            diff = (_unit_channels(fx) - _unit_channels(fy)).square()
            distance = distance + getattr(self, f"lin{index}")(diff).mean(dim=(1, 2, 3))
        return distance


def _check_state_dict(state: object, expected: Mapping[str, Tensor], path: Path) -> None:
    """Raise a ``ValueError`` naming the mismatch when ``state`` is not an LPIPS state dict."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (got {type(state).__name__}).")
    missing = sorted(set(expected) - set(state) - _OPTIONAL_KEYS)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} is not an LPIPS-VGG16 state dict: missing keys {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected keys {unexpected[:6]}"
            f"{' ...' if len(unexpected) > 6 else ''}. Expected the keys of taming-transformers' LPIPS "
            "(net.slice1.0.weight, ..., lin0.model.1.weight, ...), saved with torch.save(lpips.state_dict())."
        )
    wrong = [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{path}: LPIPS tensors with wrong shapes: "
                         + ", ".join(f"{k} {list(state[k].shape)} != {list(expected[k].shape)}" for k in wrong[:6]))
    negative = [f"lin{i}" for i in range(len(VGG16_CHANNELS)) if (state[f"lin{i}.model.1.weight"] < 0).any()]
    if negative:
        raise ValueError(f"{path}: the LPIPS linear weights of {negative} must be non-negative.")


def load_lpips(path: str | Path) -> LPIPS:
    """An :class:`LPIPS` with the weights of the state dict file ``path`` (see the
    module docstring for its keys); raises ``FileNotFoundError`` / ``ValueError`` with
    the path and the mismatch when the file is absent or holds something else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights {path} do not exist; give the path of a saved LPIPS-VGG16 "
                                "state dict (perceptual_weights_path), or null to train without it.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    lpips = LPIPS()
    _check_state_dict(state, lpips.state_dict(), path)
    lpips.load_state_dict(state, strict=False)
    return lpips
