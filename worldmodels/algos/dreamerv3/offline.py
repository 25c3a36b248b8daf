"""DreamerV3 trained offline from folders of recorded episodes (no environment).

    python -m worldmodels.record --suite classic --task cartpole --episodes 50 --out data/cartpole_random
    python -m worldmodels.record --suite classic --task cartpole --episodes 10 --seed 1 \\
        --out data/cartpole_random_eval
    python -m worldmodels.train +exp=dreamer_offline data.train_dir=data/cartpole_random \\
        data.eval_dir=data/cartpole_random_eval

Training batches are random windows of ``algo.batch_length`` steps from
``data.train_dir`` (:meth:`OfflineDataset.sample`); the world model learns from them,
and the actor-critic too when ``model.train_actor=true`` (false in the offline
experiment). Evaluation on ``data.eval_dir`` reports, with the same per-step loss as
training (:func:`step_losses`):

- ``eval/loss`` and ``eval/<term>``: every step once, in zero-padded chunks of
  ``batch_length`` steps (the model restarts at each chunk), averaged over real steps
  only (the ``mask``);
- ``eval/episode_loss``: whole episodes one at a time, in chunks of
  ``algo.eval_chunk`` steps with the RSSM state and the last action carried across
  chunks, averaged over all steps.

Spaces: the observation space is read from the first episode of ``data.train_dir``
(every key but the bookkeeping ones, with its per-step shape and dtype; images of
``data.crop`` pixels when cropping); the action size is ``action``'s last dimension;
with ``data.discrete: auto`` actions are discrete when every row of the first
episode's ``action`` except at ``is_last`` steps (whose action is never taken and may
be zeros) is one-hot; ``true``/``false`` force it. The spaces are saved in the data's
state (so in every checkpoint) for :mod:`.bc`.

Images stay uint8: the encoder normalises them itself (``x / 255 - 0.5``) and
symlog-compresses vectors, so ``data.standardize`` must be null (anything else
raises); ``data.crop`` crops images (``data.crop_mode`` for training, always the
center for evaluation).

robomimic: with ``data.path`` (one HDF5 file, :mod:`worldmodels.data.robomimic`) the
episodes are the demos of its ``data.split`` mask for training and of
``data.eval_split`` for evaluation (``data.obs_keys``: the ``obs/<key>`` datasets
read); ``data.train_dir`` / ``data.eval_dir`` are then unused. ``data.cameras`` stacks
image keys along channels into ``image`` (flipped per ``data.camera_flips``) for
either source. The transform (cameras, flips, crop;
:class:`~worldmodels.data.obs_transform.ObsTransform`) is saved in the data state
beside the spaces, so BC applies the same one to environment observations.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ...data.episodes import EPISODE_SUFFIXES, EpisodeError, first_readable_episode
from ...data.obs_transform import ObsTransform
from ...data.offline import OfflineDataset
from ...data.robomimic import RobomimicFile
from ...envs.factory import ActionSpace, ObsSpace
from ...envs.spaces import EnvSpaces
from ...nn.multi_io import is_bookkeeping, select_keys
from ...training.contract import Evaluator, TrainData
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from .agent import BATCH_KEYS, DreamerAgent, DreamerConfig
from .collect import batch_to_torch
from .evaluate import openloop_frames
from .experiment import build_optimizer
from .world_model import WorldModel

Tensor = torch.Tensor
RECORD_COMMAND = "python -m worldmodels.record --suite classic --task cartpole --episodes 50 --out {dir}"
EVAL_NOISE_OFFSET = 20_000  # evaluation samples its latents from a generator seeded seed + this


def episode_dir(path: Any, option: str) -> Path:
    """``path`` as a directory holding episode files, else a FileNotFoundError naming
    ``option`` and the command that records episodes there."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{option} is not set; point it at a folder of episodes recorded with "
                                f"`{RECORD_COMMAND.format(dir='DIR')}`.")
    directory = Path(str(path))
    if not directory.is_dir():
        problem = "does not exist"
    elif not any(p.suffix in EPISODE_SUFFIXES and not p.name.startswith(".") for p in directory.iterdir()):
        problem = "holds no episode files (*.npz, *.h5)"
    else:
        return directory
    raise FileNotFoundError(f"{option}={directory} {problem}. Record episodes first, e.g. "
                            f"`{RECORD_COMMAND.format(dir=directory)}` (another --seed for the evaluation folder).")


def data_transform(data: DictConfig) -> ObsTransform:
    """The observation transform of ``data.cameras``, ``data.camera_flips`` and ``data.crop``."""
    cameras, flips, crop = data.get("cameras"), data.get("camera_flips"), data.get("crop")
    return ObsTransform(cameras=tuple(cameras or ()), flips=dict(flips or {}), crop=None if crop is None else int(crop))


def data_source(data: DictConfig, split_option: str, dir_option: str) -> Path | RobomimicFile:
    """Where episodes come from: the robomimic file ``data.path`` (its split
    ``data.<split_option>``, observation keys ``data.obs_keys``) when set, else the
    folder ``data.<dir_option>``."""
    if data.get("path"):
        keys = data.get("obs_keys")
        return RobomimicFile(str(data.path), str(data.get(split_option) or "all"),
                             None if keys is None else [str(k) for k in keys])
    return episode_dir(data.get(dir_option), f"data.{dir_option}")


def first_episode(source: Path | RobomimicFile, transform: ObsTransform,
                  on_error: str = "raise") -> tuple[str, dict[str, np.ndarray]]:
    """``(source name, episode)`` of the first readable episode of ``source``, cameras stacked."""
    if isinstance(source, RobomimicFile):
        name, episode = source.source(source.demos[0]), source.read(source.demos[0])
    else:
        path, episode = first_readable_episode(source, on_error)
        name = str(path)
    return name, transform.stack(episode, name)


def episode_obs_space(episode: dict[str, np.ndarray], crop: int | None = None) -> ObsSpace:
    """``{key: (per-step shape, dtype)}`` of the observation keys of an episode
    ``{key: [T, ...]}``; images ``[T, H, W, C]`` become ``(crop, crop, C)`` when cropping."""
    space = {}
    for key, array in episode.items():
        if is_bookkeeping(key):
            continue
        shape = tuple(array.shape[1:])
        if crop is not None and array.ndim == 4:
            shape = (int(crop), int(crop), shape[2])
        space[key] = (shape, array.dtype)
    return space


def decide_discrete(episode: dict[str, np.ndarray], mode: Any, source: str) -> bool:
    """Whether ``episode["action"]`` holds one-hot (discrete) actions: ``mode`` ``"auto"``
    decides from the rows not at ``is_last`` steps (all one-hot, at least one row);
    ``True``/``False`` force it (``True`` with non-one-hot rows raises, naming the file)."""
    rows = episode["action"][~episode["is_last"].astype(bool)]
    onehot = len(rows) > 0 and bool((((rows == 0) | (rows == 1)).all(-1) & (rows.sum(-1) == 1)).all())
    if mode == "auto":
        return onehot
    if mode is not True and mode is not False:
        raise ValueError(f"data.discrete must be auto, true or false, got {mode!r}.")
    if mode and not onehot:
        raise EpisodeError(source, "action", "data.discrete=true but its rows are not all one-hot")
    return mode


def offline_spaces(cfg: DictConfig) -> tuple[ObsSpace, ActionSpace]:
    """``(obs_space, act_space)`` read from the first training episode (``data.path``'s
    ``data.split`` or ``data.train_dir``), cameras stacked and images cropped."""
    source = data_source(cfg.data, "split", "train_dir")
    path, episode = first_episode(source, data_transform(cfg.data), _on_error(cfg))
    crop = cfg.data.get("crop")
    discrete = decide_discrete(episode, cfg.data.get("discrete", "auto"), str(path))
    return episode_obs_space(episode, crop), ActionSpace(discrete, int(episode["action"].shape[-1]))


def input_keys(cfg: DictConfig, obs_space: ObsSpace) -> list[str]:
    """The observation keys the encoder reads, in its order (image keys first)."""
    order = cfg.model.get("key_order")
    cnn, mlp = select_keys(obs_space, str(cfg.model.cnn_keys), str(cfg.model.mlp_keys),
                           None if order is None else list(order))
    return cnn + mlp


def spaces_state(obs_space: ObsSpace, act_space: Any, keys: list[str]) -> dict[str, Any]:
    """Spaces as plain values (safe for ``torch.load(weights_only=True)``)."""
    return {"obs": {k: {"shape": list(shape), "dtype": np.dtype(dtype).name} for k, (shape, dtype) in obs_space.items()},
            "action": {"discrete": bool(act_space.discrete), "size": int(act_space.size)}, "keys": list(keys)}


def spaces_from_state(state: dict[str, Any]) -> tuple[ObsSpace, ActionSpace, list[str]]:
    """The inverse of :func:`spaces_state`."""
    obs = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in state["obs"].items()}
    return obs, ActionSpace(bool(state["action"]["discrete"]), int(state["action"]["size"])), list(state["keys"])


def step_losses(wm: WorldModel, batch: dict[str, Tensor], *, state: tuple[Tensor, Tensor] | None = None,
                last_action: Tensor | None = None, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], Any]:
    """The world-model loss terms per step, ``{term: [B, T]}``, and the posterior.

    The same terms as :meth:`WorldModel.loss` (decoder keys, ``reward``, ``cont``,
    ``dyn``, ``rep``, ``kl``, ``total``) before their mean over ``B, T``. ``state``
    ``(h [B, H], z [B, S, K])`` and ``last_action [B, A]`` (the action before step 0)
    continue a sequence from an earlier chunk; ``noise`` (uniform ``[B, T, S, K]``) or
    ``generator`` fix the posterior samples.
    """
    c = wm.config
    obs = {k: batch[k] for k in wm.obs_keys}
    embed = wm.encoder(obs)
    is_first = batch["is_first"].bool()
    action = batch["action"].to(embed.dtype)
    before = torch.zeros_like(action[:, :1]) if last_action is None else last_action.to(embed.dtype).unsqueeze(1)
    prev = torch.cat([before, action[:, :-1]], 1) * (~is_first).unsqueeze(-1).to(embed.dtype)
    post = wm.rssm.observe(embed, prev, is_first, state=state, noise=noise, generator=generator)
    feat = wm.features(post.deter, post.stoch)
    terms = dict(wm.decoder.loss(feat, obs))
    terms["reward"] = -wm.reward(feat).log_prob(batch["reward"].float())
    terms["cont"] = -wm.cont(feat).log_prob(1.0 - batch["is_terminal"].float())
    kl = wm.rssm.kl_loss(post.post_logits, post.prior_logits, c.free_nats, c.dyn_scale, c.rep_scale)
    terms.update(dyn=kl.dyn, rep=kl.rep, kl=kl.loss)
    total = c.reward_scale * terms["reward"] + c.cont_scale * terms["cont"] + terms["kl"]
    for key in wm.encoder.cnn_keys:
        total = total + c.image_scale * terms[key]
    for key in wm.encoder.mlp_keys:
        total = total + c.vector_scale * terms[key]
    terms["total"] = total
    return terms, post


class OfflineData(TrainData):
    """``TrainData`` over :meth:`OfflineDataset.sample`: ``{key: [B, L, ...]}`` tensors
    on ``device`` (images uint8, flags bool). Its state is the dataset's sampling RNG
    (restored on resume) and ``spaces`` (see :func:`spaces_state`)."""

    def __init__(self, dataset: OfflineDataset, batch_size: int, device: torch.device | str = "cpu",
                 spaces: dict[str, Any] | None = None):
        self.dataset, self.batch_size, self.device = dataset, int(batch_size), torch.device(device)
        self.spaces = spaces or {}

    def next_batch(self) -> dict[str, Tensor]:
        return batch_to_torch(self.dataset.sample(self.batch_size), self.device)

    def state_dict(self) -> dict[str, Any]:
        """The sampling state, the spaces and ``transform`` (the dataset's
        :class:`ObsTransform`, applied by BC to environment observations)."""
        return {"dataset": self.dataset.state_dict(), "spaces": self.spaces,
                "transform": self.dataset.transform.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state["dataset"])


class OfflineEvaluator(Evaluator):
    """World-model losses on held-out episodes and an open-loop GIF (module docstring).

    Args:
        dataset: the evaluation episodes (center-cropped like training).
        batch_size: rows of the padded batches. max_episodes: use only the first
            episodes (None: all). chunk: steps per RSSM call in the episode evaluation.
        seed: seed of the posterior samples (the same at every evaluation).
        context, length, sequences: open-loop video: steps seen before predicting,
            steps per video, episodes side by side.
    """

    def __init__(self, dataset: OfflineDataset, *, batch_size: int, max_episodes: int | None = None,
                 chunk: int = 256, seed: int = 0, context: int = 5, length: int = 50, sequences: int = 4):
        if chunk < 1 or (max_episodes is not None and max_episodes < 1):
            raise ValueError(f"need eval_chunk >= 1 and eval_max_episodes >= 1 or null, got {chunk}, {max_episodes}.")
        self.dataset, self.batch_size, self.max_episodes, self.chunk = dataset, int(batch_size), max_episodes, chunk
        self.seed = int(seed)
        self.context, self.length, self.sequences = int(context), int(length), int(sequences)

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def evaluate(self, model: DreamerAgent) -> dict[str, float]:
        """``eval/loss`` (``total``), ``eval/<term>``, ``eval/episode_loss`` and
        ``eval/episode_steps`` (steps in the evaluated episodes)."""
        metrics = self.padded_loss(model)
        metrics.update(self.episode_loss(model))
        return metrics

    def _padded_batches(self):
        """:meth:`OfflineDataset.padded_batches`, cut after the chunks of ``max_episodes`` episodes."""
        rows_left = math.inf
        if self.max_episodes is not None:
            length = self.dataset.batch_length
            rows_left = sum(-(-n // length) for n in self.dataset.lengths[:self.max_episodes])
        for batch in self.dataset.padded_batches(self.batch_size):
            if rows_left <= 0:
                return
            if len(batch["mask"]) > rows_left:
                batch = {k: v[:int(rows_left)] for k, v in batch.items()}
            rows_left -= len(batch["mask"])
            yield batch

    def padded_loss(self, model: DreamerAgent) -> dict[str, float]:
        """Mask-weighted means over the real steps of the padded chunks."""
        wm, device = model.world_model, model.device
        generator, c = self._generator(device), wm.config
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), device=device)
        for batch in self._padded_batches():
            tensors = batch_to_torch(batch, device)
            mask = tensors.pop("mask")
            noise = torch.rand((*mask.shape, c.stoch, c.classes), generator=generator, device=device)
            terms, _ = step_losses(wm, tensors, noise=noise)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + (value.float() * mask).sum()
            count = count + mask.sum()
        metrics = {f"eval/{name}": float(value / count) for name, value in sums.items() if name != "total"}
        metrics["eval/loss"] = float(sums["total"] / count)
        return metrics

    def episode_loss(self, model: DreamerAgent) -> dict[str, float]:
        """Mean per-step ``total`` over whole episodes, state carried across chunks."""
        wm, device = model.world_model, model.device
        generator, c = self._generator(device), wm.config
        total, steps = torch.zeros((), device=device), 0
        for episode in itertools.islice(self.dataset.episodes(), self.max_episodes):
            tensors = batch_to_torch(episode, device)
            length = tensors["is_first"].shape[1]
            noise = torch.rand((1, length, c.stoch, c.classes), generator=generator, device=device)
            state = last_action = None
            for start in range(0, length, self.chunk):
                part = {k: v[:, start:start + self.chunk] for k, v in tensors.items()}
                terms, post = step_losses(wm, part, state=state, last_action=last_action,
                                          noise=noise[:, start:start + self.chunk])
                total = total + terms["total"].float().sum()
                state, last_action = wm.rssm.last_state(post), part["action"][:, -1]
            steps += length
        return {"eval/episode_loss": float(total / steps), "eval/episode_steps": float(steps)}

    def write_media(self, model: DreamerAgent, directory: Path, step: int) -> list[Path]:
        """``openloop_step{step:06d}.gif`` from the first evaluation episodes (rows truth |
        prediction | error, see :func:`openloop_frames`); ``[]`` without image keys."""
        if not model.world_model.encoder.cnn_keys:
            return []
        episodes = list(itertools.islice(self.dataset.episodes(), max(1, self.sequences)))
        length = min(self.length, *(e["is_first"].shape[1] for e in episodes))
        batch = {k: np.concatenate([e[k][:, :length] for e in episodes]) for k in episodes[0]}
        context = max(1, min(self.context, length - 1))
        video = model.open_loop(batch_to_torch(batch, model.device), context)
        frames = openloop_frames(video["truth"], video["prediction"], video["error"], context)
        path = Path(directory) / f"openloop_step{step:06d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        import imageio.v3 as iio

        iio.imwrite(path, frames, duration=120, loop=0)
        return [path]


def check_data_options(data: DictConfig) -> None:
    """Refuse options this algorithm cannot feed to the encoder (module docstring)."""
    if data.get("standardize") is not None:
        raise ValueError(f"data.standardize={data.standardize!r} is not supported by DreamerV3: its encoder takes "
                         "uint8 images (and normalises them itself, x / 255 - 0.5) and symlogs vectors; "
                         "set data.standardize=null (data.crop still works).")


def check_same_space(reference: ObsSpace, episode: dict[str, np.ndarray], keys: list[str], crop: int | None,
                     source: str) -> None:
    """Every key of ``keys`` in ``episode`` with ``reference``'s step shape and dtype (the
    first episode of ``data.eval_dir`` against those of ``data.train_dir``)."""
    space = episode_obs_space(episode, crop)
    for key in keys:
        if key not in space:
            raise EpisodeError(source, key, f"missing, but the model reads it (data.train_dir has it); "
                                            f"this episode has {sorted(space)}")
        if tuple(space[key][0]) != tuple(reference[key][0]) or space[key][1] != reference[key][1]:
            raise EpisodeError(source, key, f"step shape/dtype {space[key][0]} {space[key][1]} differs from "
                                            f"{reference[key][0]} {reference[key][1]} in data.train_dir")


def _dataset(cfg: DictConfig, source: Path | RobomimicFile, keys: list[str], crop_mode: str) -> OfflineDataset:
    transform = data_transform(cfg.data)
    return OfflineDataset(source, int(cfg.algo.batch_length), keys=[*keys, *BATCH_KEYS, "is_last"], crop=transform.crop,
                          crop_mode=crop_mode, standardize=None, seed=int(cfg.seed), on_error=_on_error(cfg),
                          cameras=transform.cameras, camera_flips=transform.flips)


def _on_error(cfg: DictConfig) -> str:
    """``data.on_error``: ``raise`` or ``skip`` unreadable episode files."""
    return str(cfg.data.get("on_error", "raise"))


def build_model(cfg: DictConfig) -> DreamerAgent:
    obs_space, act_space = offline_spaces(cfg)
    agent = DreamerAgent(dataclass_from_config(DreamerConfig, cfg.model), obs_space, act_space)
    agent.env_spaces = EnvSpaces(obs_space, act_space)
    return agent


def build_data(cfg: DictConfig, device: torch.device) -> OfflineData:
    check_data_options(cfg.data)
    obs_space, act_space = offline_spaces(cfg)
    keys = input_keys(cfg, obs_space)
    dataset = _dataset(cfg, data_source(cfg.data, "split", "train_dir"), keys,
                       str(cfg.data.get("crop_mode", "center")))
    return OfflineData(dataset, int(cfg.train.batch_size), device, spaces_state(obs_space, act_space, keys))


def build_evaluator(cfg: DictConfig, device: torch.device) -> OfflineEvaluator:
    check_data_options(cfg.data)
    obs_space, act_space = offline_spaces(cfg)
    keys = input_keys(cfg, obs_space)
    directory = data_source(cfg.data, "eval_split", "eval_dir")
    first, episode = first_episode(directory, data_transform(cfg.data), _on_error(cfg))
    check_same_space(obs_space, episode, keys, cfg.data.get("crop"), str(first))
    if episode["action"].shape[-1] != act_space.size:
        raise EpisodeError(first, "action", f"has {episode['action'].shape[-1]} dimensions, "
                                            f"data.train_dir {act_space.size}")
    algo = cfg.algo
    cap = algo.get("eval_max_episodes")
    return OfflineEvaluator(
        _dataset(cfg, directory, keys, "center"), batch_size=int(algo.get("eval_batch_size") or cfg.train.batch_size),
        max_episodes=None if cap is None else int(cap), chunk=int(algo.eval_chunk),
        seed=int(cfg.seed) + EVAL_NOISE_OFFSET, context=int(algo.openloop_context),
        length=int(algo.openloop_length), sequences=int(algo.openloop_sequences))


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer)
