"""Behaviour cloning on the frozen encoder of a trained DreamerV3 world model.

    python -m worldmodels.train +exp=dreamer_bc \\
        checkpoint=runs/<date>/<time>_dreamer_offline/checkpoints/best.pt data.train_dir=data/cartpole_expert

The checkpoint (online ``dreamerv3`` or ``dreamer_offline`` run; read with
``torch.load(weights_only=True)``) gives the agent: its config from the run's
``resolved_config.yaml`` (next to ``checkpoints/``; the config stored in the
checkpoint when that file is missing), its spaces from the checkpoint's data state
(offline runs) or else from the run's ``data.train_dir`` / environment. Its encoder
is frozen (``requires_grad_(False)``, always in eval mode) and an MLP policy learns
``obs_t -> action_t`` from the single steps of ``data.train_dir`` (``is_last`` steps
are left out: their action is never taken): cross-entropy for discrete actions;
for continuous ones the NLL of a :class:`BoundedNormal` (``bc.continuous_loss: nll``,
actions in ``[-1, 1]`` as the agent stores them) or the MSE (``mse``, any units).

Keys: the encoder reads its keys in one order (images stacked on channels, vectors
concatenated). ``bc.key_order`` states that order (null: the checkpoint encoder's
own); a list that differs from it, and data or env observations that lack one of
its keys or give it another shape, raise naming the key.

Evaluation: ``algo.eval_episodes`` episodes in ``env.*`` with the greedy policy
(argmax / mean): ``eval/return_mean``, ``eval/return_std``, ``eval/neg_return`` (the
best metric), ``eval/random_return_mean`` (a uniformly random policy in the same
env, measured at the first evaluation and repeated after; on the same episode seeds
where the env can be seeded again, :meth:`VectorEnv.reseed`), in an env that reports
successes (robosuite) ``eval/success_rate`` and ``eval/random_success_rate``, and with
``data.eval_dir`` the held-out ``eval/accuracy`` (discrete) or ``eval/mse`` and
``eval/nll``.

Observation transform: the world-model checkpoint records the cameras, flips and
crop its data went through (:class:`~worldmodels.data.obs_transform.ObsTransform`);
BC applies that transform (``data.crop`` / ``data.cameras`` replace its parts where
set) to its episodes and to the env's observations before the policy sees them, and
records it in its own checkpoint (:func:`load_bc_agent` reuses it). With
``data.path`` the steps come from a robomimic file (``data.split``; held out:
``data.eval_split``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ...data.episodes import EpisodeError
from ...data.obs_transform import ObsTransform
from ...data.offline import OfflineDataset
from ...data.robomimic import RobomimicFile
from ...envs.factory import ActionSpace, ObsSpace, VectorEnv, infer_spaces, make_env, spec_from_config
from ...envs.spaces import EnvSpaces
from ...nn.distributions import BoundedNormal
from ...nn.mlp import MLP
from ...nn.multi_io import MultiEncoder
from ...rl.actions import from_env_action
from ...rl.evaluator import EVAL_SEED_OFFSET, EpisodeEvaluator, EvalResult, eval_env_config
from ...training.checkpoint import CheckpointError, load_checkpoint
from ...training.contract import Evaluator, TrainData
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from .agent import DreamerAgent, DreamerConfig
from .offline import (
    data_source,
    data_transform,
    episode_obs_space,
    first_episode,
    input_keys,
    offline_spaces,
    spaces_from_state,
)

Tensor = torch.Tensor
DREAMER_ALGOS = ("dreamerv3", "dreamer_offline")


def checkpoint_config(path: Path, state: dict[str, Any]) -> DictConfig:
    """The config of the run that wrote ``path``: ``<run>/resolved_config.yaml`` for
    ``<run>/checkpoints/<file>.pt``, else the config stored in the checkpoint."""
    saved = path.resolve().parent.parent / "resolved_config.yaml"
    cfg = OmegaConf.load(saved) if saved.is_file() else OmegaConf.create(state.get("config") or {})
    name = OmegaConf.select(cfg, "algo.name")
    if name not in DREAMER_ALGOS:
        raise CheckpointError(f"{path} was written by algo.name={name!r}, not a DreamerV3 run {DREAMER_ALGOS}.")
    return cfg


def checkpoint_spaces(state: dict[str, Any], cfg: DictConfig) -> tuple[ObsSpace, ActionSpace]:
    """The spaces the checkpoint's agent was built with (see the module docstring)."""
    if state.get("env_spaces"):
        spaces = EnvSpaces.from_state(state["env_spaces"])
        return spaces.obs, spaces.act
    saved = (state.get("data") or {}).get("spaces")
    if saved:
        obs_space, act_space, _ = spaces_from_state(saved)
        return obs_space, act_space
    if cfg.algo.name == "dreamer_offline":
        return offline_spaces(cfg)
    spaces = infer_spaces(spec_from_config(cfg.env, seed=int(cfg.seed), num_envs=1))
    return spaces.obs, spaces.act


def _checkpoint_path(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.get("checkpoint"):
        raise FileNotFoundError("checkpoint is not set: pass checkpoint=<run dir>/checkpoints/best.pt (or last.pt) "
                                "of a DreamerV3 run, e.g. one of +exp=dreamer_offline.")
    return Path(str(cfg.checkpoint))


def checkpoint_transform(state: dict[str, Any], cfg: DictConfig) -> ObsTransform:
    """The observation transform the checkpoint's world model was trained with: the one
    its data state records, else (older offline runs) its ``data.crop``; online runs: none."""
    saved = (state.get("data") or {}).get("transform")
    if saved:
        return ObsTransform.from_state(saved)
    if cfg.algo.name == "dreamer_offline":
        return data_transform(cfg.data)
    return ObsTransform()


@functools.lru_cache(maxsize=4)
def _spaces_cached(path: str, mtime_ns: int) -> tuple[ObsSpace, ActionSpace, list[str], list[str], dict]:
    state = load_checkpoint(path)
    cfg = checkpoint_config(Path(path), state)
    obs_space, act_space = checkpoint_spaces(state, cfg)
    keys = input_keys(cfg, obs_space)
    cnn = [k for k in keys if len(obs_space[k][0]) == 3]
    return obs_space, act_space, cnn, [k for k in keys if k not in cnn], checkpoint_transform(state, cfg).state_dict()


def bc_transform(cfg: DictConfig) -> ObsTransform:
    """The transform BC applies to its episodes and to env observations: the world-model
    checkpoint's (:func:`checkpoint_transform`), with ``data.crop`` and ``data.cameras``
    (with ``data.camera_flips``) replacing its values where they are set."""
    path = _checkpoint_path(cfg)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    state = dict(_spaces_cached(str(path.resolve()), path.stat().st_mtime_ns)[4])
    data = cfg.data
    if data.get("crop") is not None:
        state["crop"] = int(data.crop)
    if data.get("cameras"):
        state["cameras"], state["flips"] = list(data.cameras), dict(data.get("camera_flips") or {})
    return ObsTransform.from_state(state)


def checkpoint_keys(cfg: DictConfig) -> tuple[ObsSpace, ActionSpace, list[str]]:
    """``(obs_space, act_space, keys)``: the checkpoint's spaces and the encoder's keys in
    ``bc.key_order`` (checked against the encoder's order, :func:`resolve_key_order`)."""
    path = _checkpoint_path(cfg)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    obs_space, act_space, cnn, mlp, _ = _spaces_cached(str(path.resolve()), path.stat().st_mtime_ns)
    order = OmegaConf.select(cfg, "bc.key_order")
    return obs_space, act_space, resolve_key_order(cnn, mlp, None if order is None else list(order))


def resolve_key_order(cnn: list[str], mlp: list[str], order: list[str] | None) -> list[str]:
    """``order`` (or ``cnn + mlp`` when None) after checking it names exactly the encoder's
    keys with the image keys in ``cnn``'s order and the vector keys in ``mlp``'s."""
    encoder = cnn + mlp
    if order is None:
        return encoder
    order = [str(k) for k in order]
    for key in order:
        if key not in encoder:
            raise ValueError(f"bc.key_order names {key!r}, which the checkpoint's encoder does not read; "
                             f"it reads {encoder} in this order.")
    for key in encoder:
        if key not in order:
            raise ValueError(f"bc.key_order leaves out {key!r}, which the checkpoint's encoder reads; "
                             f"it reads {encoder} in this order.")
    for branch in (cnn, mlp):
        given = [k for k in order if k in branch]
        for want, got in zip(branch, given):
            if want != got:
                raise ValueError(f"bc.key_order puts {got!r} where the checkpoint's encoder reads {want!r}: its "
                                 f"weights expect the order {encoder}; features would misalign.")
    return cnn + mlp


def check_keys(obs_space: ObsSpace, keys: list[str], got: ObsSpace, source: str) -> None:
    """Each of ``keys`` in ``got`` with the checkpoint's per-step shape and dtype."""
    for key in keys:
        if key not in got:
            raise EpisodeError(source, key, f"missing; the checkpoint's encoder reads it (keys here: {sorted(got)})")
        (shape, dtype), (want_shape, want_dtype) = got[key], obs_space[key]
        if tuple(shape) != tuple(want_shape) or np.dtype(dtype) != np.dtype(want_dtype):
            raise EpisodeError(source, key, f"step shape/dtype {tuple(shape)} {np.dtype(dtype)} differs from the "
                                            f"checkpoint's {tuple(want_shape)} {np.dtype(want_dtype)}")


class BCPolicy(nn.Module):
    """Frozen encoder + MLP head: ``{key: [N, ...]}`` -> action logits ``[N, A]``
    (discrete), BoundedNormal ``(mean_raw, std_raw)`` ``[N, 2A]`` (``nll``) or actions
    ``[N, A]`` (``mse``)."""

    def __init__(self, encoder: MultiEncoder, act_space: Any, keys: list[str], *, units: int = 256, layers: int = 2,
                 continuous_loss: str = "nll", min_std: float = 0.1, max_std: float = 1.0):
        super().__init__()
        if continuous_loss not in ("nll", "mse"):
            raise ValueError(f"bc.continuous_loss must be nll or mse, got {continuous_loss!r}.")
        self.encoder = encoder.requires_grad_(False).eval()
        self.keys, self.discrete, self.action_dim = list(keys), bool(act_space.discrete), int(act_space.size)
        self.loss_kind = "ce" if self.discrete else continuous_loss
        self.min_std, self.max_std = float(min_std), float(max_std)
        out = 2 * self.action_dim if self.loss_kind == "nll" else self.action_dim
        self.head = MLP(encoder.out_dim, out, units, layers)

    def train(self, mode: bool = True) -> BCPolicy:
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            feat = self.encoder({k: obs[k] for k in self.keys})
        return self.head(feat)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-step ``nll`` ``[N]`` and ``accuracy`` (discrete) or ``mse`` ``[N]``."""
        out, action = self(batch).float(), batch["action"].float()
        if self.loss_kind == "ce":
            target = action.argmax(-1)
            return {"nll": F.cross_entropy(out, target, reduction="none"),
                    "accuracy": (out.argmax(-1) == target).float()}
        if self.loss_kind == "nll":
            dist = BoundedNormal(*out.chunk(2, -1), self.min_std, self.max_std)
            return {"nll": -dist.log_prob(action), "mse": (dist.mode() - action).square().mean(-1)}
        mse = (out - action).square().mean(-1)
        return {"nll": mse, "mse": mse}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        terms = {k: v.mean() for k, v in self.losses(batch).items()}
        return terms["nll"], {f"bc/{k}": v.detach() for k, v in terms.items()}

    @torch.no_grad()
    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Greedy actions for numpy/tensor observations ``[N, ...]``: int64 ``[N]`` (argmax)
        or float32 ``[N, A]`` (the mean; in ``[-1, 1]`` for ``nll``)."""
        device = next(self.head.parameters()).device
        out = self({k: torch.as_tensor(np.asarray(obs[k])).to(device) for k in self.keys}).float()
        if self.discrete:
            return out.argmax(-1).cpu().numpy().astype(np.int64)
        if self.loss_kind == "nll":
            out = torch.tanh(out.chunk(2, -1)[0])
        return out.cpu().numpy().astype(np.float32)


class StepData:
    """The single steps of a folder of episodes or a robomimic file (``is_last`` steps
    left out) as arrays ``{key: [N, ...]}`` for ``keys`` and ``action``, transformed by
    ``transform`` (cameras, center crop) and checked against the checkpoint."""

    def __init__(self, directory: Path | RobomimicFile, obs_space: ObsSpace, act_space: Any, keys: list[str],
                 transform: ObsTransform | None = None, on_error: str = "raise"):
        transform = transform or ObsTransform()
        first, episode = first_episode(directory, transform, on_error)
        check_keys(obs_space, keys, episode_obs_space(episode, transform.crop), first)
        if episode["action"].shape[-1] != act_space.size:
            raise EpisodeError(first, "action", f"has {episode['action'].shape[-1]} dimensions, the checkpoint's "
                                                f"agent {act_space.size}")
        dataset = OfflineDataset(directory, 1, keys=[*keys, "action", "is_last"], crop=transform.crop,
                                 on_error=on_error, cameras=transform.cameras, camera_flips=transform.flips)
        self.transform = dataset.transform
        parts = list(dataset.episodes())
        keep = ~np.concatenate([p["is_last"][0] for p in parts])
        self.arrays = {k: np.concatenate([p[k][0] for p in parts])[keep] for k in [*keys, "action"]}
        if len(keep) and not keep.any():
            raise EpisodeError(directory, "is_last", "every step is a last step; no (observation, action) pair")

    def __len__(self) -> int:
        return len(self.arrays["action"])

    def batch(self, index: np.ndarray, device: torch.device) -> dict[str, Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v[index])).to(device) for k, v in self.arrays.items()}


class BCData(TrainData):
    """``TrainData``: ``batch_size`` uniformly sampled steps ``{key: [B, ...]}``; state: its
    RNG and ``transform`` (the steps' :class:`ObsTransform`, which :func:`load_bc_agent`
    applies to env observations)."""

    def __init__(self, steps: StepData, batch_size: int, seed: int, device: torch.device | str = "cpu"):
        self.steps, self.batch_size, self.device = steps, int(batch_size), torch.device(device)
        self._rng = np.random.default_rng(seed)

    def next_batch(self) -> dict[str, Tensor]:
        return self.steps.batch(self._rng.integers(0, len(self.steps), self.batch_size), self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "transform": self.steps.transform.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


class BCAgent:
    """:class:`~worldmodels.rl.protocols.Agent` view of a :class:`BCPolicy` (stateless,
    always greedy), in the agent's action form (``mse`` actions are mapped from the
    env's units back to ``[-1, 1]``). Env observations go through ``transform`` (the
    training data's cameras, crop and standardisation) first."""

    def __init__(self, model: BCPolicy, act_space: Any, transform: ObsTransform | None = None):
        self.model, self.act_space = model, act_space
        self.transform = transform or ObsTransform()

    def init_policy_state(self, num_envs: int) -> None:
        return None

    def policy(self, obs: dict[str, np.ndarray], state: None, mode: str = "greedy", **kwargs: Any):
        obs = self.transform.observation(obs, self.model.encoder.cnn_keys, "env")
        action = self.model.act(obs)
        if not self.model.discrete and self.model.loss_kind == "mse":
            action = from_env_action(self.act_space, action)
        return action, None


class BCEvaluator(Evaluator):
    """Greedy episodes of the BC policy, a random baseline and held-out metrics (module docstring)."""

    def __init__(self, env: VectorEnv, keys: list[str], obs_space: ObsSpace, held_out: StepData | None = None,
                 seed: int = 0, batch_size: int = 1024, transform: ObsTransform | None = None):
        self.transform = transform or ObsTransform()
        check_keys(obs_space, keys, self.transform.space(env.obs_space), "env")
        self.runner = EpisodeEvaluator(env, env.num_envs, mode="greedy", seed=seed)
        self.held_out, self.batch_size = held_out, int(batch_size)
        self.random_result: EvalResult | None = None

    @property
    def env(self) -> VectorEnv:
        return self.runner.env

    def evaluate(self, model: BCPolicy) -> dict[str, float]:
        self.env.reseed()   # where the backend can: every evaluation and the random baseline on the same episodes
        result = self.runner.run(BCAgent(model, self.env.act_space, self.transform))
        if self.random_result is None:
            self.env.reseed()
            self.random_result = self.runner.run(None)
        returns, random_returns = result.returns, self.random_result.returns
        metrics = {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std()),
                   "eval/neg_return": -float(returns.mean()),
                   "eval/random_return_mean": float(random_returns.mean())}
        if result.successes is not None:
            metrics["eval/success_rate"] = float(result.successes.mean())
            metrics["eval/random_success_rate"] = float(self.random_result.successes.mean())
        if self.held_out is not None:
            metrics.update(self.held_out_metrics(model))
        return metrics

    @torch.no_grad()
    def held_out_metrics(self, model: BCPolicy) -> dict[str, float]:
        """``eval/<term>`` means over every held-out step."""
        device, sums = next(model.head.parameters()).device, {}
        for start in range(0, len(self.held_out), self.batch_size):
            index = np.arange(start, min(start + self.batch_size, len(self.held_out)))
            for name, value in model.losses(self.held_out.batch(index, device)).items():
                sums[name] = sums.get(name, 0.0) + float(value.float().sum())
        return {f"eval/{name}": value / len(self.held_out) for name, value in sums.items()}

    def close(self) -> None:
        self.runner.close()


def load_agent(path: str | Path) -> tuple[DreamerAgent, ObsSpace]:
    """The :class:`DreamerAgent` saved in the checkpoint ``path`` of a DreamerV3 run
    (online or offline), rebuilt with that run's config and spaces, in eval mode; and
    the observation space it was built for."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    state = load_checkpoint(path)
    ckpt_cfg = checkpoint_config(path, state)
    obs_space, act_space = checkpoint_spaces(state, ckpt_cfg)
    agent = DreamerAgent(dataclass_from_config(DreamerConfig, ckpt_cfg.model), obs_space, act_space)
    agent.load_state_dict(state["model"])
    return agent.eval(), obs_space


def load_bc_agent(path: str | Path, act_space: Any | None = None) -> BCAgent:
    """The greedy :class:`BCAgent` of a BC checkpoint ``path``, in eval mode, with the
    observation transform its training data recorded (so env observations are
    stacked, flipped and cropped as its episodes were). ``act_space``: the env's (for
    ``mse`` policies' action units); the checkpoint's world model's when None."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    state = load_checkpoint(path)
    saved = path.resolve().parent.parent / "resolved_config.yaml"
    cfg = OmegaConf.load(saved) if saved.is_file() else OmegaConf.create(state.get("config") or {})
    if OmegaConf.select(cfg, "algo.name") != "dreamer_bc":
        raise CheckpointError(f"{path} was not written by a dreamer_bc run.")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    transform = ObsTransform.from_state((state.get("data") or {}).get("transform") or {})
    return BCAgent(model.eval(), act_space or checkpoint_keys(cfg)[1], transform)


def build_model(cfg: DictConfig) -> BCPolicy:
    _, act_space, keys = checkpoint_keys(cfg)
    agent, _ = load_agent(_checkpoint_path(cfg))
    bc = cfg.bc
    return BCPolicy(agent.world_model.encoder, act_space, keys, units=int(bc.units), layers=int(bc.layers),
                    continuous_loss=str(bc.continuous_loss), min_std=float(agent.config.actor_min_std),
                    max_std=float(agent.config.actor_max_std))


def _steps(cfg: DictConfig, split_option: str, dir_option: str) -> StepData:
    obs_space, act_space, keys = checkpoint_keys(cfg)
    source = data_source(cfg.data, split_option, dir_option)
    steps = StepData(source, obs_space, act_space, keys, bc_transform(cfg), str(cfg.data.get("on_error", "raise")))
    if not act_space.discrete and str(cfg.bc.continuous_loss) == "nll" and np.abs(steps.arrays["action"]).max() > 1:
        where = source.path if isinstance(source, RobomimicFile) else source
        raise EpisodeError(where, "action", "continuous actions outside [-1, 1] cannot be fitted by "
                                            "bc.continuous_loss=nll (tanh-bounded); use bc.continuous_loss=mse")
    return steps


def build_data(cfg: DictConfig, device: torch.device) -> BCData:
    return BCData(_steps(cfg, "split", "train_dir"), int(cfg.train.batch_size), int(cfg.seed), device)


def build_optimizer(cfg: DictConfig, model: BCPolicy) -> torch.optim.Optimizer:
    """AdamW (``train.lr``, ``train.weight_decay``) over the head only."""
    return torch.optim.AdamW(model.head.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def build_evaluator(cfg: DictConfig, device: torch.device) -> BCEvaluator:
    obs_space, _, keys = checkpoint_keys(cfg)
    held = cfg.data.get("eval_split") if cfg.data.get("path") else cfg.data.get("eval_dir")
    held_out = None if held is None else _steps(cfg, "eval_split", "eval_dir")
    seed = int(cfg.seed) + EVAL_SEED_OFFSET
    env = make_env(spec_from_config(eval_env_config(cfg), seed=seed, num_envs=int(cfg.algo.eval_episodes)))
    try:
        return BCEvaluator(env, keys, obs_space, held_out, seed, transform=bc_transform(cfg))
    except BaseException:
        env.close()
        raise


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator, optimizer=build_optimizer)
