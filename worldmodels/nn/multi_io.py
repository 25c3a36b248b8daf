"""Dict observations in and out (DreamerV3's multi-encoder and multi-decoder).

Image keys (``[H, W, C]``, uint8, channels-last) go through a CNN; vector keys
(``[D]``) through an MLP after ``symlog``. Which keys are used, and in which order,
is fixed by :func:`select_keys` so that features never misalign between runs.

CNN resolution (``minres``, as danijar/dreamerv3 and NM512/dreamerv3-torch): the
encoder applies ``k = floor(log2(min(H, W) / minres))`` stride-2 convolutions with
"same" padding (TensorFlow's: each side becomes ``ceil(n / 2)``, the odd pixel of
padding goes to the bottom/right), so any size of at least ``2 * minres`` works:
64x64 ends at 4x4, 96x96 at 6x6, 84x84 at 6x6 (84, 42, 21, 11, 6), 78x78 at 5x5. For
sides that are multiples of ``2**k`` the padding is 1 on each side, as before. The
decoder mirrors the encoder: transposed 4x4/2 convolutions double the grid and, where
the encoder's input at that stage was odd, the last row or column is cropped, so it
produces exactly the input size. (The crop is this package's: the references' decoders
start from ``minres x minres`` and only restore sizes of ``minres * 2**k``.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .distributions import MSE, SymlogMSE, symlog
from .mlp import MLP, NORM_EPS, OneHotInputs, init_fan_avg_, linear_by_parts

Tensor = torch.Tensor
BOOKKEEPING = frozenset({"reward", "is_first", "is_last", "is_terminal", "discount", "action"})
NO_KEYS = frozenset({"$^", "^$"})  # patterns that select nothing on purpose (never an error)


@dataclass
class MultiIOConfig:
    """Key selection and sizes of :class:`MultiEncoder` / :class:`MultiDecoder`."""

    cnn_keys: str = ".*"               # regex (fullmatch) over image keys
    mlp_keys: str = ".*"               # regex (fullmatch) over vector keys
    cnn_depth: int = 32                # channels of the first conv stage, doubled per stage
    mlp_units: int = 256
    mlp_layers: int = 2
    key_order: list[str] | None = None  # explicit order of the selected keys (else sorted)
    minres: int = 4                    # the CNN halves the image until its smaller side is below 2 * minres

    def __post_init__(self) -> None:
        for name in ("cnn_depth", "mlp_units", "mlp_layers", "minres"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")


def is_bookkeeping(key: str) -> bool:
    """Keys that are never model inputs: reward, is_first/last/terminal, discount, action, log_*."""
    return key in BOOKKEEPING or key.startswith("log_")


def _shape(spec) -> tuple[int, ...]:
    """The shape of an ``obs_space`` entry: ``(shape, dtype)`` or anything with ``.shape``."""
    return tuple(spec.shape) if hasattr(spec, "shape") else tuple(spec[0])


def _matches(pattern: str, keys: Sequence[str]) -> list[str]:
    return [] if pattern in NO_KEYS else [k for k in keys if re.fullmatch(pattern, k)]


def select_keys(obs_space: Mapping[str, tuple], cnn_keys: str, mlp_keys: str,
                order: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The image and vector input keys of ``obs_space`` (``{key: (shape, dtype)}``).

    A key is an image input when ``re.fullmatch(cnn_keys, key)`` and its shape is 3-D
    ``(H, W, C)``, a vector input when ``re.fullmatch(mlp_keys, key)`` and it is 1-D.
    Bookkeeping keys (:func:`is_bookkeeping`) are skipped. A key that a pattern matches
    is never dropped silently: it must be taken by one of the branches (so with
    ``cnn_keys=".*"`` a vector left out of ``mlp_keys`` is an error; narrow both
    patterns). Returns ``(cnn, mlp)`` in the order of ``order`` when given, else sorted.

    Raises:
        ValueError: a pattern (other than ``"$^"``/``"^$"``) matches no key; a matched
            key is taken by no branch (wrong rank, e.g. an image matched only by
            ``mlp_keys``, or a 0-D/2-D key); ``order`` names a key that is missing or
            not selected, repeats a key, or leaves out a selected key.
    """
    candidates = sorted(k for k in obs_space if not is_bookkeeping(k))
    shapes = {k: _shape(obs_space[k]) for k in candidates}
    by_cnn, by_mlp = _matches(cnn_keys, candidates), _matches(mlp_keys, candidates)
    for name, pattern, matched in (("cnn_keys", cnn_keys, by_cnn), ("mlp_keys", mlp_keys, by_mlp)):
        if pattern not in NO_KEYS and not matched:
            raise ValueError(f"{name}={pattern!r} matches no observation key; available keys: {candidates}.")
    cnn = [k for k in by_cnn if len(shapes[k]) == 3]
    mlp = [k for k in by_mlp if len(shapes[k]) == 1]
    for key in sorted(set(by_cnn + by_mlp) - set(cnn + mlp)):
        branch = "mlp_keys (vectors must be 1-D)" if key in by_mlp else "cnn_keys (images must be 3-D (H, W, C))"
        raise ValueError(f"observation {key!r} with shape {shapes[key]} is matched by {branch}; "
                         "change the regex or reshape the observation.")
    if order is None:
        return cnn, mlp
    return _apply_order(cnn, mlp, list(order), obs_space)


def _apply_order(cnn: list[str], mlp: list[str], order: list[str],
                 obs_space: Mapping[str, tuple]) -> tuple[list[str], list[str]]:
    selected = set(cnn) | set(mlp)
    for key in order:
        if key not in obs_space:
            raise ValueError(f"key_order names {key!r}, which is not an observation key; "
                             f"available: {sorted(obs_space)}.")
        if key not in selected:
            raise ValueError(f"key_order names {key!r}, which cnn_keys/mlp_keys do not select "
                             f"(selected: {sorted(selected)}).")
    if len(set(order)) != len(order):
        raise ValueError(f"key_order repeats a key: {order}.")
    missing = sorted(selected - set(order))
    if missing:
        raise ValueError(f"key_order leaves out the selected keys {missing}; list every selected key.")
    return [k for k in order if k in cnn], [k for k in order if k in mlp]


def cnn_sizes(height: int, width: int, minres: int = 4) -> list[tuple[int, int]]:
    """The ``(H_i, W_i)`` grid before each stride-2 stage and after the last one:
    ``k + 1`` sizes with ``k = floor(log2(min(H, W) / minres))`` and
    ``H_{i+1} = ceil(H_i / 2)`` (module docstring)."""
    if minres < 1:
        raise ValueError(f"minres={minres} must be >= 1.")
    if min(height, width) < max(2 * minres, 2):
        raise ValueError(f"images must be at least {2 * minres}x{2 * minres} (twice minres={minres}), "
                         f"got {height}x{width}.")
    stages = (min(height, width) // minres).bit_length() - 1
    sizes = [(height, width)]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def cnn_grid(height: int, width: int, minres: int = 4) -> tuple[int, int, int]:
    """``(stages, final_h, final_w)`` for an ``H x W`` image (see the module docstring)."""
    sizes = cnn_sizes(height, width, minres)
    return len(sizes) - 1, sizes[-1][0], sizes[-1][1]


class SamePad2d(nn.Module):
    """Zero padding of ``[N, C, H, W]`` for a 4x4 stride-2 convolution with "same" output
    ``ceil(n / 2)``: ``1`` before and ``1`` (even ``n``) or ``2`` (odd ``n``) after, per side."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.pad = (1, 1 + width % 2, 1, 1 + height % 2)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.pad(x, self.pad)


class Crop2d(nn.Module):
    """Keep the first ``height x width`` pixels of ``[N, C, H', W']`` (undoes the extra
    bottom/right padding of :class:`SamePad2d` after a transposed convolution)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : self.height, : self.width]


def _conv_down(channels: int, depth: int, size: tuple[int, int]) -> list[nn.Module]:
    """A 4x4/2 convolution with "same" padding for an input of ``size`` (padding 1 when even)."""
    if size[0] % 2 == 0 and size[1] % 2 == 0:
        return [nn.Conv2d(channels, depth, 4, 2, 1, bias=False)]
    return [SamePad2d(*size), nn.Conv2d(channels, depth, 4, 2, 0, bias=False)]


def _conv_up(channels: int, depth: int, size: tuple[int, int], bias: bool) -> list[nn.Module]:
    """A 4x4/2 transposed convolution (``n -> 2n``) cropped to ``size`` when it is odd."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(channels, depth, 4, 2, 1, bias=bias)]
    if size[0] % 2 or size[1] % 2:
        layers.append(Crop2d(*size))
    return layers


def preprocess_image(x: Tensor, key: str = "image") -> Tensor:
    """uint8 ``[..., H, W, C]`` -> float32 ``x / 255 - 0.5``."""
    if x.dtype != torch.uint8:
        raise TypeError(f"image observation {key!r} must be uint8, got {x.dtype}.")
    return x.float() / 255.0 - 0.5


def postprocess_image(x: Tensor) -> Tensor:
    """Float ``x / 255 - 0.5`` images -> uint8 (clipped), the inverse of :func:`preprocess_image`."""
    return ((x + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``[N, C, H, W]`` at every pixel (eps 1e-3)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _check_obs(obs: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Check every key of ``shapes`` is in ``obs`` as ``[*lead, *shape]``; return ``lead``."""
    lead = None
    for key, shape in shapes.items():
        if key not in obs:
            raise KeyError(f"observation {key!r} is missing; got keys {sorted(obs)}.")
        x = obs[key]
        if x.dim() <= len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
            raise ValueError(f"observation {key!r}: expected shape [..., {', '.join(map(str, shape))}], "
                             f"got {tuple(x.shape)}.")
        this_lead = tuple(x.shape[: x.dim() - len(shape)])
        if lead is not None and this_lead != lead:
            raise ValueError(f"observation {key!r} has leading dims {this_lead}, other keys {lead}.")
        lead = this_lead
    return lead


def _image_layout(keys: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int, int]:
    """``(H, W, C_total)`` of the image keys concatenated on channels."""
    sizes = {shapes[k][:2] for k in keys}
    if len(sizes) > 1:
        raise ValueError("image keys must share H and W to be stacked on channels, got "
                         + ", ".join(f"{k}: {shapes[k]}" for k in keys) + ".")
    height, width = shapes[keys[0]][:2]
    return height, width, sum(shapes[k][2] for k in keys)


class MultiEncoder(nn.Module):
    """Dict of observations ``{key: [*lead, *shape]}`` -> features ``[*lead, out_dim]``.

    Images: ``x / 255 - 0.5`` stacked on channels, then per stage ``i``
    ``SiLU(ChannelNorm(Conv4x4/2(depth * 2**i)))`` ("same" padding, see the module
    docstring) and a flatten. Vectors: ``symlog``,
    concatenated, then :class:`~worldmodels.nn.mlp.MLP` (``mlp_layers x mlp_units``).
    The output concatenates the image then the vector part.
    """

    def __init__(self, config: MultiIOConfig, obs_space: Mapping[str, tuple]):
        super().__init__()
        self.config = config
        self.cnn_keys, self.mlp_keys = select_keys(obs_space, config.cnn_keys, config.mlp_keys, config.key_order)
        if not self.cnn_keys and not self.mlp_keys:
            raise ValueError(f"no observation key selected as input from {sorted(obs_space)}.")
        self.shapes = {k: _shape(obs_space[k]) for k in self.cnn_keys + self.mlp_keys}
        self.out_dim = 0
        self.cnn = self.mlp = None
        if self.cnn_keys:
            height, width, channels = _image_layout(self.cnn_keys, self.shapes)
            sizes = cnn_sizes(height, width, config.minres)
            final_h, final_w = sizes[-1]
            layers: list[nn.Module] = []
            for i, size in enumerate(sizes[:-1]):
                depth = config.cnn_depth * 2**i
                layers += [*_conv_down(channels, depth, size), ChannelNorm(depth), nn.SiLU()]
                channels = depth
            self.cnn = nn.Sequential(*layers, nn.Flatten())
            init_fan_avg_(self.cnn)
            self.out_dim += channels * final_h * final_w
        if self.mlp_keys:
            vec_dim = sum(self.shapes[k][0] for k in self.mlp_keys)
            self.mlp = MLP(vec_dim, None, config.mlp_units, config.mlp_layers)
            self.out_dim += self.mlp.out_dim

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        lead = _check_obs(obs, self.shapes)
        parts = []
        if self.cnn is not None:
            images = torch.cat([preprocess_image(obs[k], k) for k in self.cnn_keys], dim=-1)
            images = images.reshape(-1, *images.shape[len(lead):]).permute(0, 3, 1, 2)
            parts.append(self.cnn(images).reshape(*lead, -1))
        if self.mlp is not None:
            vectors = torch.cat([symlog(obs[k].float()) for k in self.mlp_keys], dim=-1)
            parts.append(self.mlp(vectors))
        return torch.cat(parts, dim=-1)


class MultiDecoder(nn.Module):
    """Features ``[*lead, feat_dim]`` -> ``{key: distribution}`` over the observations.

    Images: ``Linear -> [8d.., h, w]`` then transposed 4x4/2 convs halving the depth
    (``SiLU(ChannelNorm(.))`` between them, each cropped to the encoder's size at that
    stage) up to exactly ``(H, W, C_total)``, split per key into
    :class:`~worldmodels.nn.distributions.MSE` over ``x / 255 - 0.5``. Vectors: an MLP to
    the concatenated size, split into :class:`~worldmodels.nn.distributions.SymlogMSE`.
    """

    def __init__(self, config: MultiIOConfig, feat_dim: int, obs_space: Mapping[str, tuple],
                 cnn_keys: Sequence[str], mlp_keys: Sequence[str]):
        super().__init__()
        self.config, self.feat_dim = config, feat_dim
        self.cnn_keys, self.mlp_keys = list(cnn_keys), list(mlp_keys)
        if not self.cnn_keys and not self.mlp_keys:
            raise ValueError("MultiDecoder needs at least one image or vector key.")
        for key in self.cnn_keys + self.mlp_keys:
            if key not in obs_space:
                raise KeyError(f"decoder key {key!r} is not in the observation space {sorted(obs_space)}.")
        self.shapes = {k: _shape(obs_space[k]) for k in self.cnn_keys + self.mlp_keys}
        for key in self.cnn_keys + self.mlp_keys:
            rank = 3 if key in self.cnn_keys else 1
            if len(self.shapes[key]) != rank:
                raise ValueError(f"decoder key {key!r} has shape {self.shapes[key]}; expected a {rank}-D shape.")
        self.image_head = self.mlp = None
        if self.cnn_keys:
            self._build_cnn(config)
        if self.mlp_keys:
            out = sum(self.shapes[k][0] for k in self.mlp_keys)
            self.mlp = MLP(feat_dim, out, config.mlp_units, config.mlp_layers)

    def _build_cnn(self, config: MultiIOConfig) -> None:
        height, width, channels = _image_layout(self.cnn_keys, self.shapes)
        sizes = cnn_sizes(height, width, config.minres)
        stages, (final_h, final_w) = len(sizes) - 1, sizes[-1]
        depths = [config.cnn_depth * 2**i for i in range(stages)]
        self.grid = (depths[-1], final_h, final_w)
        self.image_head = nn.Linear(self.feat_dim, depths[-1] * final_h * final_w)
        layers: list[nn.Module] = []
        for i in reversed(range(stages)):
            if i > 0:
                layers += [*_conv_up(depths[i], depths[i - 1], sizes[i], bias=False),
                           ChannelNorm(depths[i - 1]), nn.SiLU()]
            else:
                layers += _conv_up(depths[0], channels, sizes[0], bias=True)
        self.deconv = nn.Sequential(*layers)
        init_fan_avg_(self.image_head)
        init_fan_avg_(self.deconv)

    def _image_head(self, feat: Tensor, parts: OneHotInputs | None) -> Tensor:
        """The first layer's output ``[N, C, h, w]`` (channels-last in memory, as the
        transposed convolutions run fastest on the CPU)."""
        if parts is None:
            x = self.image_head(feat.reshape(-1, self.feat_dim))
        else:
            x = linear_by_parts(self.image_head, parts)
        return x.reshape(-1, *self.grid).contiguous(memory_format=torch.channels_last)

    def forward(self, feat: Tensor, parts: OneHotInputs | None = None) -> dict[str, MSE | SymlogMSE]:
        """``parts``: ``feat`` by parts when its latents are exactly one-hot; the first
        layers then gather their weight columns (:meth:`MLP.forward_onehot`)."""
        if feat.shape[-1] != self.feat_dim:
            raise ValueError(f"features must be [..., {self.feat_dim}], got shape {tuple(feat.shape)}.")
        lead, dists = feat.shape[:-1], {}
        if self.image_head is not None:
            x = self.deconv(self._image_head(feat, parts)).permute(0, 2, 3, 1)
            x = x.reshape(*lead, *x.shape[1:])
            splits = [self.shapes[k][2] for k in self.cnn_keys]
            for key, pred in zip(self.cnn_keys, torch.split(x, splits, dim=-1)):
                dists[key] = MSE(pred, dims=3)
        if self.mlp is not None:
            splits = [self.shapes[k][0] for k in self.mlp_keys]
            pred = self.mlp.forward_parts(feat, parts)
            for key, pred in zip(self.mlp_keys, torch.split(pred, splits, dim=-1)):
                dists[key] = SymlogMSE(pred, dims=1)
        return dists

    def loss(self, feat: Tensor, obs: Mapping[str, Tensor], parts: OneHotInputs | None = None) -> dict[str, Tensor]:
        """Negative log-likelihoods ``{key: [*lead]}``; images compared in ``x / 255 - 0.5``
        units. ``parts`` as in :meth:`forward`."""
        lead = _check_obs(obs, self.shapes)
        if lead != tuple(feat.shape[:-1]):
            raise ValueError(f"features have leading dims {tuple(feat.shape[:-1])}, observations {lead}.")
        dists = self(feat, parts)
        losses = {}
        for key, dist in dists.items():
            target = preprocess_image(obs[key], key) if key in self.cnn_keys else obs[key].float()
            losses[key] = -dist.log_prob(target)
        return losses


__all__ = [
    "BOOKKEEPING",
    "ChannelNorm",
    "Crop2d",
    "MultiDecoder",
    "MultiEncoder",
    "MultiIOConfig",
    "SamePad2d",
    "cnn_grid",
    "cnn_sizes",
    "is_bookkeeping",
    "postprocess_image",
    "preprocess_image",
    "select_keys",
]
