"""The observation transform shared by offline datasets and environment evaluation.

One :class:`ObsTransform` says how stored or live observations become the model's
inputs, so that a policy trained on transformed episodes sees the same inputs in an
environment:

1. cameras: the image keys ``cameras`` (each ``(..., H, W, 3)``, identical shapes)
   are flipped per camera (``flips[camera]``: ``none``, ``vertical``, ``horizontal``
   or ``both``; robomimic renders are upside down, hence ``vertical``) and stacked
   along channels, in that order, into one ``image_key`` observation
   ``(..., H, W, 3k)``; the camera keys themselves are dropped;
2. crop: image keys are center-cropped to ``crop x crop`` (training may draw random
   offsets instead, :class:`~worldmodels.data.offline.OfflineDataset`);
3. standardisation: ``None`` (uint8 stays), ``"image"`` (per frame over H, W, C) or
   ``"dataset"`` (per channel with the stored ``mean`` / ``std``); float32 out.

:meth:`ObsTransform.state_dict` gives plain values (safe for
``torch.load(weights_only=True)``), so a checkpoint records the transform and
evaluation rebuilds it with :meth:`ObsTransform.from_state`; :class:`TransformedAgent`
puts it in front of an agent's policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .episodes import EpisodeError

FLIPS = ("none", "vertical", "horizontal", "both")
STANDARDIZE_MODES = (None, "image", "dataset")
EPS = 1e-6


def flip_frames(frames: np.ndarray, flip: str) -> np.ndarray:
    """``frames`` ``(..., H, W, C)`` flipped upside down (``vertical``), left-right
    (``horizontal``), both, or unchanged (``none``); a view, no copy."""
    if flip not in FLIPS:
        raise ValueError(f"camera flip must be one of {FLIPS}, got {flip!r}")
    if flip in ("vertical", "both"):
        frames = frames[..., ::-1, :, :]
    if flip in ("horizontal", "both"):
        frames = frames[..., :, ::-1, :]
    return frames


def stack_cameras(obs: Mapping[str, np.ndarray], cameras: Sequence[str], flips: Mapping[str, str] | None = None,
                  image_key: str = "image", source: str = "observation") -> dict[str, np.ndarray]:
    """``obs`` with the ``cameras`` replaced by one ``image_key`` array: each camera
    flipped (``flips``) and concatenated along the last axis in ``cameras``' order.

    Raises :class:`EpisodeError` (naming ``source`` and the key) when a camera is
    missing or its shape differs from the first camera's.
    """
    flips = dict(flips or {})
    out = {k: v for k, v in obs.items() if k not in cameras}
    frames = []
    for camera in cameras:
        if camera not in obs:
            raise EpisodeError(source, camera, f"camera missing (keys here: {sorted(obs)})")
        array = np.asarray(obs[camera])
        if frames and array.shape != frames[0].shape:
            raise EpisodeError(source, camera, f"shape {array.shape} differs from {frames[0].shape} of "
                                               f"{cameras[0]!r}; stacked cameras need identical shapes")
        frames.append(flip_frames(array, flips.get(camera, "none")))
    out[image_key] = np.ascontiguousarray(np.concatenate(frames, axis=-1))
    return out


def crop_frames(frames: np.ndarray, size: int, top: int | None = None, left: int | None = None) -> np.ndarray:
    """``frames`` ``(..., H, W, C)`` cut to ``(..., size, size, C)`` at ``(top, left)``
    (the center when None)."""
    height, width = frames.shape[-3], frames.shape[-2]
    if height < size or width < size:
        raise ValueError(f"frames are {height}x{width}, smaller than crop={size}")
    top = (height - size) // 2 if top is None else top
    left = (width - size) // 2 if left is None else left
    return np.ascontiguousarray(frames[..., top:top + size, left:left + size, :])


def standardize_frames(frames: np.ndarray, mode: str, mean: np.ndarray | None = None,
                       std: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``frames`` ``(..., H, W, C)`` as float32: per frame (``image``) or per
    channel with ``mean`` / ``std`` (``dataset``): ``(x - mean) / (std + 1e-6)``."""
    x = frames.astype(np.float32)
    if mode == "image":
        mean = x.mean(axis=(-3, -2, -1), keepdims=True)
        std = x.std(axis=(-3, -2, -1), keepdims=True)
        return (x - mean) / (std + EPS)
    if mode == "dataset":
        return (x - np.asarray(mean, np.float32)) / (np.asarray(std, np.float32) + EPS)
    raise ValueError(f"standardize must be one of {STANDARDIZE_MODES[1:]}, got {mode!r}")


@dataclass
class ObsTransform:
    """Camera stacking/flips, center crop and standardisation (module docstring).

    ``mean`` / ``std`` hold the per-channel statistics of ``standardize="dataset"``
    per image key (float32 ``(C,)``).
    """

    cameras: tuple[str, ...] = ()
    flips: dict[str, str] = field(default_factory=dict)
    image_key: str = "image"
    crop: int | None = None
    standardize: str | None = None
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    std: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.cameras = tuple(str(c) for c in (self.cameras or ()))
        self.flips = {str(k): str(v) for k, v in (self.flips or {}).items()}
        for camera, flip in self.flips.items():
            if camera not in self.cameras:
                raise ValueError(f"camera_flips names {camera!r}, which is not one of the cameras {list(self.cameras)}")
            if flip not in FLIPS:
                raise ValueError(f"camera_flips.{camera} must be one of {FLIPS}, got {flip!r}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras lists a key twice: {list(self.cameras)}")
        if self.standardize not in STANDARDIZE_MODES:
            raise ValueError(f"standardize must be one of {STANDARDIZE_MODES}, got {self.standardize!r}")
        self.crop = None if self.crop is None else int(self.crop)

    def stack(self, obs: Mapping[str, np.ndarray], source: str = "observation") -> dict[str, np.ndarray]:
        """``obs`` (episode ``{key: [T, ...]}`` or env batch ``{key: [N, ...]}``) with the
        cameras stacked into ``image_key``; unchanged without cameras."""
        if not self.cameras:
            return dict(obs)
        return stack_cameras(obs, self.cameras, self.flips, self.image_key, source)

    def images(self, key: str, frames: np.ndarray) -> np.ndarray:
        """Image ``frames`` ``(..., H, W, C)`` center-cropped and standardised as configured."""
        if self.crop is not None:
            frames = crop_frames(frames, self.crop)
        if self.standardize is not None:
            frames = standardize_frames(frames, self.standardize, self.mean.get(key), self.std.get(key))
        return frames

    def observation(self, obs: Mapping[str, np.ndarray], image_keys: Sequence[str],
                    source: str = "observation") -> dict[str, np.ndarray]:
        """An environment's (or evaluation's) observations as the model reads them:
        cameras stacked, then ``image_keys`` center-cropped and standardised."""
        out = self.stack(obs, source)
        for key in image_keys:
            if key in out:
                out[key] = self.images(key, np.asarray(out[key]))
        return out

    def space(self, obs_space: Mapping[str, tuple]) -> dict[str, tuple]:
        """``{key: (step shape, dtype)}`` after the transform (images: 3-d step shapes)."""
        space = dict(obs_space)
        if self.cameras:
            dummy = {k: np.zeros((1, *obs_space[k][0]), obs_space[k][1]) for k in self.cameras if k in obs_space}
            stacked = stack_cameras({**dummy}, self.cameras, self.flips, self.image_key, "observation space")
            space = {k: v for k, v in space.items() if k not in self.cameras}
            space[self.image_key] = (tuple(stacked[self.image_key].shape[1:]), stacked[self.image_key].dtype)
        for key, (shape, dtype) in list(space.items()):
            if len(shape) != 3:
                continue
            if self.crop is not None:
                shape = (self.crop, self.crop, shape[2])
            space[key] = (tuple(shape), np.dtype(np.float32) if self.standardize else np.dtype(dtype))
        return space

    @property
    def changes_observations(self) -> bool:
        """Whether :meth:`observation` does anything (cameras, crop or standardisation set)."""
        return bool(self.cameras) or self.crop is not None or self.standardize is not None

    def state_dict(self) -> dict[str, Any]:
        """Plain values (lists, str, int, None) for a checkpoint."""
        return {"cameras": list(self.cameras), "flips": dict(self.flips), "image_key": self.image_key,
                "crop": self.crop, "standardize": self.standardize,
                "mean": {k: np.asarray(v, np.float32).tolist() for k, v in self.mean.items()},
                "std": {k: np.asarray(v, np.float32).tolist() for k, v in self.std.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ObsTransform:
        """The inverse of :meth:`state_dict`."""
        return cls(cameras=tuple(state.get("cameras") or ()), flips=dict(state.get("flips") or {}),
                   image_key=str(state.get("image_key", "image")), crop=state.get("crop"),
                   standardize=state.get("standardize"),
                   mean={k: np.asarray(v, np.float32) for k, v in (state.get("mean") or {}).items()},
                   std={k: np.asarray(v, np.float32) for k, v in (state.get("std") or {}).items()})


class TransformedAgent:
    """An agent whose :meth:`policy` sees env observations through ``transform`` (the
    one its training data went through); every other attribute is the agent's own."""

    def __init__(self, agent: Any, transform: ObsTransform, image_keys: Sequence[str]):
        self.agent, self.transform, self.image_keys = agent, transform, list(image_keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["agent"], name)

    def policy(self, obs: Mapping[str, np.ndarray], state: Any, *args: Any, **kwargs: Any) -> Any:
        return self.agent.policy(self.transform.observation(obs, self.image_keys, "env"), state, *args, **kwargs)
