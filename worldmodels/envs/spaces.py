"""What every backend's vectorised env shares: the observation layout, the action space
and its checks, and the :class:`VectorEnv` interface (see :mod:`worldmodels.envs.factory`
for the conventions: dict of arrays with leading dim ``N``, DreamerV3's autoreset)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self

FLAGS = ("is_first", "is_last", "is_terminal")
ObsSpace = dict[str, tuple[tuple[int, ...], np.dtype]]


@dataclass(frozen=True)
class ActionSpace:
    """Per-env actions: ``size`` choices (discrete, ints in ``[0, size)``) or a ``size``-dim
    float vector in ``[low, high]`` (continuous; ``low``/``high`` float32 ``(size,)``)."""

    discrete: bool
    size: int
    low: Any = None
    high: Any = None


@dataclass(frozen=True)
class EnvSpaces:
    """What a model is built from: the observation space (key -> per-env ``(shape,
    dtype)``, the reward and flags included, as :attr:`VectorEnv.obs_space`) and the
    :class:`ActionSpace`. :meth:`to_state` / :meth:`from_state` turn it into plain
    values, so a checkpoint records it and an agent is rebuilt without any env package."""

    obs: ObsSpace
    act: ActionSpace

    def to_state(self) -> dict[str, Any]:
        act = self.act
        bounds = {} if act.discrete else {"low": np.asarray(act.low, np.float64).tolist(),
                                          "high": np.asarray(act.high, np.float64).tolist()}
        return {"obs": {k: {"shape": [int(d) for d in shape], "dtype": np.dtype(dtype).name}
                        for k, (shape, dtype) in self.obs.items()},
                "act": {"discrete": bool(act.discrete), "size": int(act.size), **bounds}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EnvSpaces:
        obs = {k: (tuple(int(d) for d in v["shape"]), np.dtype(v["dtype"])) for k, v in state["obs"].items()}
        act = state["act"]
        if act["discrete"]:
            space = ActionSpace(True, int(act["size"]), 0, int(act["size"]) - 1)
        else:
            space = ActionSpace(False, int(act["size"]), np.asarray(act["low"], np.float32),
                                np.asarray(act["high"], np.float32))
        return cls(obs, space)

    @property
    def image_keys(self) -> list[str]:
        """Keys of uint8 ``(H, W, C)`` images."""
        return [k for k, (shape, dtype) in self.obs.items() if len(shape) == 3 and np.dtype(dtype) == np.uint8]


def action_space_of(space: Any) -> ActionSpace:
    """An :class:`ActionSpace` from a gym/gymnasium ``Discrete`` or ``Box`` (duck-typed)."""
    if hasattr(space, "n"):
        return ActionSpace(True, int(space.n), 0, int(space.n) - 1)
    low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape).reshape(-1)
    return ActionSpace(False, int(low.size), low.copy(), high.copy())


def prepare_actions(space: ActionSpace, action: Any, num_envs: int) -> np.ndarray:
    """Validate a batch: discrete ``[N]`` ints or one-hot ``[N, n]`` -> int64 ``[N]``;
    continuous ``[N, A]`` -> float32 ``[N, A]`` clipped to the bounds."""
    action = np.asarray(action)
    if space.discrete:
        if action.shape == (num_envs, space.size):
            action = action.argmax(-1)
        if action.shape != (num_envs,):
            raise ValueError(f"discrete actions must have shape [{num_envs}] or one-hot "
                             f"[{num_envs}, {space.size}], got {list(action.shape)}")
        action = action.astype(np.int64, copy=False)
        if np.count_nonzero((action < 0) | (action >= space.size)):
            raise ValueError(f"discrete actions must be in [0, {space.size}), got {action.tolist()}")
        return action
    if action.shape == (num_envs,) and space.size == 1:
        action = action[:, None]
    if action.shape != (num_envs, space.size):
        raise ValueError(f"continuous actions must have shape [{num_envs}, {space.size}], got {list(action.shape)}")
    return np.clip(action.astype(np.float32), space.low, space.high)


def random_actions(space: ActionSpace, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random actions: int64 ``[N]`` (discrete) or float32 ``[N, A]`` within the
    bounds (infinite bounds replaced by -1/1)."""
    if space.discrete:
        return rng.integers(0, space.size, num_envs)
    low = np.where(np.isfinite(space.low), space.low, -1.0)
    high = np.where(np.isfinite(space.high), space.high, 1.0)
    return rng.uniform(low, high, (num_envs, space.size)).astype(np.float32)


def obs_layout(space: Any) -> ObsSpace:
    """``image`` for a uint8 ``(H, W, C)`` space, else ``vector`` (dict spaces concatenated)."""
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, Mapping):
        return {"vector": ((sum(int(np.prod(s.shape)) for s in spaces.values()),), np.dtype(np.float32))}
    if len(space.shape) == 3 and np.dtype(space.dtype) == np.uint8:
        return {"image": (tuple(int(d) for d in space.shape), np.dtype(np.uint8))}
    return {"vector": ((int(np.prod(space.shape)),), np.dtype(np.float32))}


def flat_observation(obs: Any, batch: tuple[int, ...] = ()) -> np.ndarray:
    """Observation(s) as float32 ``[*batch, D]``; dicts concatenated in sorted key order."""
    if hasattr(obs, "_asdict"):
        obs = obs._asdict()
    if isinstance(obs, Mapping):
        return np.concatenate([flat_observation(obs[key], batch) for key in sorted(obs)], axis=-1)
    return np.asarray(obs, np.float32).reshape(*batch, -1)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H0, W0, C]`` (or ``[H0, W0]``) -> ``[H, W, C]`` (PIL bilinear, else nearest)."""
    image = np.asarray(image, np.uint8)
    image = image[..., None] if image.ndim == 2 else image
    if image.shape[:2] == tuple(size):
        return image
    try:
        from PIL import Image
    except ImportError:
        rows = np.arange(size[0]) * image.shape[0] // size[0]
        cols = np.arange(size[1]) * image.shape[1] // size[1]
        return image[rows][:, cols]
    channels = [np.asarray(Image.fromarray(image[..., c]).resize(size[::-1], Image.BILINEAR))
                for c in range(image.shape[-1])]
    return np.stack(channels, -1)


class VectorEnv:
    """``num_envs`` environments behind one batched, autoresetting interface.

    Attributes: ``num_envs``; ``obs_space`` (key -> per-env ``(shape, dtype)``, including
    ``reward`` float32 ``()`` and the bool ``()`` flags); ``act_space`` (:class:`ActionSpace`);
    ``deterministic``: a fresh env with the same seed stepped with the same actions gives
    the same observations (a resumed run replays the env's history to restore it).
    """

    num_envs: int
    obs_space: ObsSpace
    act_space: ActionSpace
    deterministic: bool = True

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env: observations, reward 0, ``is_first`` True, other flags False."""
        raise NotImplementedError

    def step(self, action: Any) -> dict[str, np.ndarray]:
        """One agent step of every env (see the module docstring for autoreset)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the environments."""

    def reseed(self) -> bool:
        """Seed the envs again at the next reset as at the first one (env ``i`` with
        ``seed + i``), so the episodes that follow repeat those of the first reset; False
        where the backend cannot (the default)."""
        return False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _set_spaces(self, layout: ObsSpace, action_space: Any) -> None:
        flags = {key: ((), np.dtype(np.bool_)) for key in FLAGS}
        self.obs_space = {**layout, "reward": ((), np.dtype(np.float32)), **flags}
        self.act_space = action_space_of(action_space)
