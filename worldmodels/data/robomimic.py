"""robomimic's single-file HDF5 datasets, read as episodes of this package.

The layout (robomimic's ``dataset_states_to_obs`` output)::

    data                      attrs: env_args (JSON, {"env_name": ...}), total
    data/demo_<i>/obs/<key>   (N, ...) observations: images uint8 (N, H, W, 3), vectors
    data/demo_<i>/next_obs/<key>  (N, ...) the observation after each action (optional)
    data/demo_<i>/actions     (N, A)
    data/demo_<i>/rewards     (N,)   reward of the i-th transition
    data/demo_<i>/dones       (N,)   1 where the transition ends the task
    data/demo_<i>            attrs: num_samples (N)
    mask/<split>              demo names (bytes), e.g. mask/train, mask/valid

A demo of ``N`` transitions becomes an episode of ``N + 1`` steps in the format of
:mod:`worldmodels.data.episodes`: observations ``obs[0..N-1]`` and the final
``next_obs[N-1]`` (only that last frame of ``next_obs`` is read), ``action`` the
demo's actions and a zero row at the final step, ``reward = [0, rewards...]``,
``is_terminal = [False, dones...]``, ``is_last`` at the final step. Without
``next_obs`` the episode has ``N`` steps and the last transition's reward and done
(which arrive with the unread final observation) are dropped, with a warning: the
success reward of a sparse-reward demo sits there, which is why ``next_obs[N-1]``
is read rather than ignored.

:class:`RobomimicFile` selects a split (``mask/<split>``, or ``all`` demos sorted by
index) and observation keys, and reads lazily: one demo per iteration step.
:func:`write_robomimic` writes episodes in this layout (for tests and examples).
Every error is an :class:`EpisodeError` naming the file and the HDF5 key.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..nn.multi_io import is_bookkeeping
from .episodes import EpisodeError, _h5py, validate_episode

SPLITS = ("all", "train", "valid")
_DEMO = re.compile(r"^demo_(\d+)$")


def _demo_index(name: str) -> int:
    match = _DEMO.match(name)
    return int(match.group(1)) if match else -1


class RobomimicFile:
    """The demos of one robomimic HDF5 file as episodes (module docstring).

    Args:
        path: the ``.hdf5`` file.
        split: ``all`` (every ``data/demo_<i>``, by index) or the name of a mask under
            ``mask/`` (``train``, ``valid``, ...).
        obs_keys: the ``obs/<key>`` datasets to read (all of the first demo's when None).

    Attributes ``demos`` (demo names in order), ``env_name`` (from ``env_args``, ``""``
    when absent) and ``obs_keys`` are read on construction; demos are read only when
    iterated (:meth:`__iter__`) or asked for (:meth:`read`).
    """

    def __init__(self, path: str | os.PathLike, split: str = "all", obs_keys: Sequence[str] | None = None):
        self.path, self.split = Path(path), str(split)
        if not self.path.is_file():
            raise EpisodeError(self.path, None, "no such robomimic HDF5 file")
        with self._open() as f:
            if "data" not in f:
                raise EpisodeError(self.path, "data", "group missing; not a robomimic dataset")
            self.demos = self._split_demos(f)
            if not self.demos:
                raise EpisodeError(self.path, f"mask/{self.split}" if self.split != "all" else "data",
                                   "selects no demo")
            self.env_name = self._env_name(f)
            first = self._demo_group(f, self.demos[0])
            if obs_keys is None:
                obs_keys = sorted(self._group(first, f"data/{self.demos[0]}/obs"))
            self.obs_keys = [str(k) for k in obs_keys]
        self._warned = False

    def _open(self):
        try:
            return _h5py("reading robomimic").File(self.path, "r")
        except OSError as error:
            raise EpisodeError(self.path, None, f"not a readable HDF5 file (corrupt or truncated?): {error}") from error

    def _group(self, parent, name: str):
        key = name.rsplit("/", 1)[-1]
        if key not in parent:
            raise EpisodeError(self.path, name, f"missing (here: {sorted(parent)})")
        return parent[key]

    def _split_demos(self, f) -> list[str]:
        if self.split == "all":
            return sorted((n for n in f["data"] if _DEMO.match(n)), key=_demo_index)
        if "mask" not in f:
            raise EpisodeError(self.path, f"mask/{self.split}", "no mask group; use split=all or a file with "
                                                                "mask/train and mask/valid")
        if self.split not in f["mask"]:
            raise EpisodeError(self.path, f"mask/{self.split}", f"no such split mask (masks: {sorted(f['mask'])})")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][self.split][()]]
        for name in names:
            if name not in f["data"]:
                raise EpisodeError(self.path, f"data/{name}", f"demo group missing (listed in mask/{self.split})")
        return names

    def _env_name(self, f) -> str:
        raw = f["data"].attrs.get("env_args", f.attrs.get("env_args"))
        if raw is None:
            return ""
        try:
            return str(json.loads(raw.decode() if isinstance(raw, bytes) else raw).get("env_name", ""))
        except (ValueError, AttributeError) as error:
            raise EpisodeError(self.path, "data.attrs/env_args", f"not a JSON object: {error}") from error

    def _demo_group(self, f, name: str):
        return self._group(f["data"], f"data/{name}")

    def __len__(self) -> int:
        return len(self.demos)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """The episodes of the split in order, each read when the iteration reaches it."""
        with self._open() as f:
            for name in self.demos:
                yield self._read(f, name)

    def read(self, name: str) -> dict[str, np.ndarray]:
        """The episode of demo ``name`` (e.g. ``"demo_3"``)."""
        with self._open() as f:
            return self._read(f, name)

    def source(self, name: str) -> str:
        """``"<file>:data/<name>"``, the source named in errors about that demo."""
        return f"{self.path}:data/{name}"

    def _read(self, f, name: str) -> dict[str, np.ndarray]:
        base = f"data/{name}"
        demo = self._demo_group(f, name)
        obs = self._group(demo, f"{base}/obs")
        actions = np.asarray(self._group(demo, f"{base}/actions")[()])
        count = len(actions)
        declared = demo.attrs.get("num_samples")
        if declared is not None and int(declared) != count:
            raise EpisodeError(self.path, f"{base}/actions", f"has {count} rows but num_samples is {int(declared)}")
        rewards = np.asarray(self._group(demo, f"{base}/rewards")[()], np.float32)
        dones = np.asarray(self._group(demo, f"{base}/dones")[()])
        for key, array in (("rewards", rewards), ("dones", dones)):
            if len(array) != count:
                raise EpisodeError(self.path, f"{base}/{key}", f"has {len(array)} rows, actions {count}")
        episode = {key: np.asarray(self._group(obs, f"{base}/obs/{key}")[()]) for key in self.obs_keys}
        final = demo.get("next_obs")
        if final is not None and all(key in final for key in self.obs_keys):
            for key in self.obs_keys:
                episode[key] = np.concatenate([episode[key], np.asarray(final[key][-1:])])
            episode["action"] = np.concatenate([actions, np.zeros_like(actions[:1])]).astype(np.float32)
            arrived_reward, arrived_done = rewards, dones
        else:
            if not self._warned:
                warnings.warn(f"{self.path}: {base} has no next_obs for {self.obs_keys}; each demo's last "
                              "transition's reward and done are dropped", stacklevel=3)
                self._warned = True
            episode["action"] = actions.astype(np.float32)
            arrived_reward, arrived_done = rewards[:-1], dones[:-1]
        episode["reward"] = np.concatenate([[0.0], arrived_reward]).astype(np.float32)
        episode["is_terminal"] = np.concatenate([[False], arrived_done.astype(bool)])
        episode["is_first"] = np.arange(len(episode["reward"])) == 0
        return validate_episode(episode, self.source(name))


def _demo_names(count: int) -> list[str]:
    return [f"demo_{i}" for i in range(count)]


def write_robomimic(path: str | os.PathLike, episodes: Sequence[Mapping[str, np.ndarray]], *, env_name: str = "",
                    masks: Mapping[str, Sequence[int]] | None = None, next_obs: bool = True,
                    compress: bool = False) -> Path:
    """Write ``episodes`` (this package's format, at least 2 steps each) as a robomimic
    HDF5 file; returns ``path``.

    Episode ``j`` becomes ``data/demo_<j>`` with ``N = T - 1`` transitions: ``obs`` the
    first ``N`` observations, ``next_obs`` the last ``N``, ``actions = action[:-1]``,
    ``rewards = reward[1:]``, ``dones = is_terminal[1:]`` (the inverse of
    :class:`RobomimicFile`; the final step's action is not stored). ``masks`` maps a
    split name to demo indices (``{"train": [0, 1], "valid": [2]}``), written as
    ``mask/<split>`` byte names; ``env_name`` goes into ``data.attrs["env_args"]``.
    """
    h5py = _h5py("writing robomimic")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = _demo_names(len(episodes))
    options = {"compression": "gzip"} if compress else {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 1, "env_kwargs": {}})
        total = 0
        for name, raw in zip(names, episodes):
            episode = validate_episode(raw, f"{path}:{name}")
            steps = len(episode["reward"])
            if steps < 2:
                raise EpisodeError(f"{path}:{name}", "reward", "needs at least 2 steps (one transition)")
            demo = data.create_group(name)
            demo.attrs["num_samples"] = steps - 1
            total += steps - 1
            keys = [k for k in episode if not is_bookkeeping(k)]
            for key in keys:
                demo.create_dataset(f"obs/{key}", data=episode[key][:-1], **options)
                if next_obs:
                    demo.create_dataset(f"next_obs/{key}", data=episode[key][1:], **options)
            demo.create_dataset("actions", data=episode["action"][:-1].astype(np.float64))
            demo.create_dataset("rewards", data=episode["reward"][1:].astype(np.float64))
            demo.create_dataset("dones", data=episode["is_terminal"][1:].astype(np.int64))
        data.attrs["total"] = total
        for split, indices in (masks or {}).items():
            f.create_dataset(f"mask/{split}", data=np.array([names[i].encode() for i in indices], dtype="S"))
    return path
