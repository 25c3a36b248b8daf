"""Factories that let :func:`worldmodels.training.loop.fit` train the next-frame
predictor on a recorded frame dataset (:mod:`worldmodels.data.frames`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ...data.frames import (
    MANIFEST, FrameDataError, FrameShards, check_stack_fits, gather_windows, read_manifest, split_episodes,
)
from ...ops.image_quality import psnr_ref, ssim_ref
from ...training.contract import Evaluator, TrainData
from ...training.loop import Factories
from ...utils.config import dataclass_from_config
from ...utils.images import (
    ffmpeg_available, image_grid, openloop_frames, save_png, side_by_side_frames, write_gif, write_mp4,
)
from .latent import AutoencoderNextFrame, LatentNextFrameConfig
from .model import NextFrameConfig, NextFramePredictor
from .rollout import append_rollout_csv, rollout_table, shuffle_actions

ROLLOUT_CSV = "val_rollout_metrics.csv"


# model.name -> (its config dataclass, its class): the U-Net on pixels, or the
# autoencoder with a latent predictor
MODELS = {
    "nextframe": (NextFrameConfig, NextFramePredictor),
    "nextframe_ae": (LatentNextFrameConfig, AutoencoderNextFrame),
}


def frame_model_config(cfg: DictConfig) -> dict:
    """``cfg.model`` as a dict, ``channels`` and ``image_size`` set to ``auto`` taken from
    the manifest's ``frame_shape`` (``[C, H, W]``, square frames)."""
    values = dict(OmegaConf.to_container(cfg.model, resolve=True))
    if "auto" in (values.get("channels"), values.get("image_size")):
        shape = [int(d) for d in read_manifest(Path(cfg.data.root))["frame_shape"]]
        if len(shape) != 3 or shape[1] != shape[2]:
            raise FrameDataError(f"{Path(cfg.data.root) / MANIFEST}: key 'frame_shape' is {shape}; the next-frame "
                                 "models take square [C, H, W] frames.")
        values["channels"] = shape[0] if values.get("channels") == "auto" else values["channels"]
        values["image_size"] = shape[1] if values.get("image_size") == "auto" else values["image_size"]
    return values


def build_model(cfg: DictConfig) -> NextFramePredictor | AutoencoderNextFrame:
    """The model ``model.name`` chooses (:data:`MODELS`), shapes from the config or the manifest."""
    name = cfg.model.name
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a next-frame model: {', '.join(MODELS)}.")
    config_class, model_class = MODELS[name]
    return model_class(dataclass_from_config(config_class, frame_model_config(cfg)))


def open_shards(cfg: DictConfig) -> FrameShards:
    """The dataset of ``data.root``, checked against the model's shapes (one line naming
    the manifest key and the config key that disagree)."""
    shards = FrameShards(cfg.data.root)
    model, manifest = frame_model_config(cfg), shards.root / "manifest.json"
    expected = (int(model["channels"]), int(model["image_size"]), int(model["image_size"]))
    if shards.frame_shape != expected:
        raise FrameDataError(f"{manifest}: key 'frame_shape' is {list(shards.frame_shape)} but model.channels and "
                             f"model.image_size ask for {list(expected)}.")
    if shards.num_actions != int(model["num_actions"]):
        raise FrameDataError(f"{manifest}: key 'num_actions' is {shards.num_actions} but model.num_actions="
                             f"{model['num_actions']}; set model.num_actions={shards.num_actions}.")
    return shards


def split(cfg: DictConfig, shards: FrameShards):
    """Train and validation episodes (``data.val_ratio``, seeded by ``data.split_seed``, not
    by ``seed``: every rank of a data-parallel run, whose data factory sees ``seed + rank``,
    and every seed of a sweep hold out the same episodes; checkpoints from before the key
    split by ``seed``)."""
    return split_episodes(shards.episodes, float(cfg.data.val_ratio), int(cfg.data.get("split_seed", cfg.seed)))


def to_unit(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).float().div_(255.0)


class FrameStackBatches(TrainData):
    """Random frame-stack samples of the training episodes: ``frames [B, K, C, H, W]``,
    ``actions [B]``, ``target [B, C, H, W]`` (floats in [0, 1]). Batch ``n`` is drawn from
    ``seed`` and ``n`` alone, so the position is one integer."""

    def __init__(self, shards: FrameShards, windows: np.ndarray, batch_size: int, stack: int, seed: int,
                 device: torch.device):
        self.shards, self.windows, self.batch_size, self.stack = shards, windows, batch_size, stack
        self.seed, self.device, self.batches = seed, device, 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.batches])
        self.batches += 1
        chosen = self.windows[rng.integers(0, len(self.windows), self.batch_size)]
        frames, actions = gather_windows(self.shards, chosen, self.stack)
        frames = to_unit(frames, self.device)
        return {"frames": frames[:, :self.stack], "target": frames[:, self.stack],
                "actions": torch.from_numpy(actions[:, 0]).to(self.device)}

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])


def build_data(cfg: DictConfig, device: torch.device) -> FrameStackBatches:
    shards = open_shards(cfg)
    train, _ = split(cfg, shards)
    stack = int(cfg.data.stack)
    windows = check_stack_fits(train, stack, 1, "training", shards.root)
    return FrameStackBatches(shards, windows, int(cfg.train.batch_size), stack, int(cfg.seed), device)


def _fixed_subset(windows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` windows (all when fewer), drawn once with ``seed``, in dataset order."""
    if len(windows) <= count:
        return windows
    chosen = np.random.default_rng(seed).choice(len(windows), count, replace=False)
    return windows[np.sort(chosen)]


class NextFrameEvaluator(Evaluator):
    """One-step scores (loss, MSE, PSNR, SSIM; copy-last-frame's PSNR and SSIM; the PSNR
    with shuffled actions) on fixed held-out stacks, and open-loop rollouts to ``algo.val_rollout_horizon`` against copy-last and
    shuffled actions; media: image strips, the rollout GIF (rows truth, prediction, error),
    the rollout MP4 when imageio-ffmpeg is there (truth left, prediction right), rows of
    ``val_rollout_metrics.csv`` beside ``media/``."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        algo, self.stack, self.seed = cfg.algo, int(cfg.data.stack), int(cfg.seed)
        self.device, self.batch_size = device, int(algo.eval_batch_size)
        shards = open_shards(cfg)
        _, val = split(cfg, shards)
        one_step = _fixed_subset(check_stack_fits(val, self.stack, 1, "validation", shards.root),
                                 int(algo.val_samples), self.seed)
        self.frames, actions = gather_windows(shards, one_step, self.stack)
        self.actions = torch.from_numpy(actions[:, 0])
        self.shuffled = shuffle_actions(self.actions, self.seed)   # the same stacks with other stacks' actions
        self.horizon = int(algo.val_rollout_horizon)
        rollouts = _fixed_subset(check_stack_fits(val, self.stack, self.horizon, "validation", shards.root),
                                 int(algo.val_rollouts), self.seed + 1)
        frames, actions = gather_windows(shards, rollouts, self.stack, self.horizon)
        self.rollout_frames, self.rollout_actions = to_unit(frames, device), torch.from_numpy(actions).to(device)
        self.media_count = int(algo.media_count)
        self.table: dict[str, torch.Tensor] | None = None
        self.rollout: torch.Tensor | None = None

    def _one_step(self, model: NextFramePredictor) -> dict[str, float]:
        sums = dict.fromkeys(("loss", "mse", "psnr", "ssim", "psnr_copy_last", "ssim_copy_last", "psnr_shuffled"), 0.0)
        for start in range(0, len(self.frames), self.batch_size):
            frames = to_unit(self.frames[start:start + self.batch_size], self.device)
            actions = self.actions[start:start + self.batch_size].to(self.device)
            batch = {"frames": frames[:, :self.stack], "target": frames[:, self.stack], "actions": actions}
            loss, _ = model.compute_loss(batch)
            prediction, target, last = model.predict(batch["frames"], actions).float(), batch["target"], \
                batch["frames"][:, -1]
            shuffled = model.predict(batch["frames"], self.shuffled[start:start + self.batch_size].to(self.device))
            count = len(target)
            sums["loss"] += float(loss) * count
            sums["mse"] += float((prediction - target).square().mean()) * count
            sums["psnr"] += float(psnr_ref(prediction, target).sum())
            sums["ssim"] += float(ssim_ref(prediction, target).sum())
            sums["psnr_copy_last"] += float(psnr_ref(last, target).sum())
            sums["ssim_copy_last"] += float(ssim_ref(last, target).sum())
            sums["psnr_shuffled"] += float(psnr_ref(shuffled.float(), target).sum())
        metrics = {f"eval/{name}": value / len(self.frames) for name, value in sums.items()}
        metrics["eval/delta_psnr_shuffled"] = metrics["eval/psnr"] - metrics["eval/psnr_shuffled"]
        return metrics

    def evaluate(self, model: NextFramePredictor) -> dict[str, float]:
        metrics = self._one_step(model)
        self.table, self.rollout = rollout_table(model, self.rollout_frames, self.rollout_actions, self.stack,
                                                 self.seed)
        last = self.horizon - 1
        for name in ("psnr", "ssim", "copy_last_psnr", "shuffled_psnr"):
            metrics[f"eval/rollout_{name}_h1"] = float(self.table[name][0])
            metrics[f"eval/rollout_{name}_h{self.horizon}"] = float(self.table[name][last])
        metrics["eval/rollout_delta_psnr_mean"] = float(self.table["delta_psnr"].mean())
        return metrics

    def write_media(self, model: NextFramePredictor, directory: Path, step: int) -> list[Path]:
        directory = Path(directory)
        if self.table is None:
            self.evaluate(model)
        append_rollout_csv(directory.parent / ROLLOUT_CSV, step, self.table)
        shown = min(self.media_count, len(self.frames))
        frames = to_unit(self.frames[:shown], self.device)
        prediction = model.predict(frames[:, :self.stack], self.actions[:shown].to(self.device)).float()
        rows = [torch.cat([frames[i, :self.stack], prediction[i:i + 1], frames[i, self.stack:]]) for i in range(shown)]
        strip = save_png(directory / f"strip_step{step:06d}.png", image_grid(rows, scale=2))
        truth = (self.rollout_frames[:shown] * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
        predicted = torch.cat([self.rollout_frames[:shown, :self.stack], self.rollout[:shown].float()], 1)
        predicted = (predicted * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
        video = write_gif(directory / f"rollout_step{step:06d}.gif",
                          openloop_frames(truth, predicted, None, context=self.stack))
        written = [strip, video]
        if ffmpeg_available():   # truth left, prediction right; without ffmpeg the GIF says the same
            unit = torch.cat([self.rollout_frames[:shown, :self.stack], self.rollout[:shown].float()], 1)
            written.append(write_mp4(directory / f"rollout_step{step:06d}.mp4",
                                     side_by_side_frames(self.rollout_frames[:shown].float().cpu(), unit.cpu(),
                                                         context=self.stack)))
        return written


def build_evaluator(cfg: DictConfig, device: torch.device) -> NextFrameEvaluator:
    return NextFrameEvaluator(cfg, device)


FACTORIES = Factories(model=build_model, data=build_data, evaluator=build_evaluator)

__all__ = ["FACTORIES", "MODELS", "FrameStackBatches", "NextFrameEvaluator", "ROLLOUT_CSV", "build_data", "build_evaluator",
           "build_model", "frame_model_config", "open_shards"]
