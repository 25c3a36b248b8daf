"""The first four stages: collect random rollouts, train V (the VAE), encode every frame,
train M (the MDN-RNN). Each reads what the stage before wrote in the run directory and
resumes from its own output (existing episodes are kept; the VAE and the MDN-RNN
continue from their last finished epoch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...nn.vae import ConvVAE, ConvVAEConfig
from ...training import distributed
from ...training.checkpoint import load_checkpoint, save_checkpoint
from ...training.loop import SilentLogger
from .config import PipelineConfig
from .envs import WorldModelsEnv, make_batch
from .mdnrnn import MDNRNN, MDNRNNConfig
from .rundir import load_npz, save_json, save_npz, stage_logger

ACTION_CHANGE_PROB = 0.2


def random_actions(env: WorldModelsEnv, rng: np.random.Generator, count: int) -> np.ndarray:
    """Env actions ``[count, A]`` of the random collection policy. CarRacing: steering in
    [-1, 1], gas in [0, 1], brake in [0, 0.2] (a uniform brake in [0, 1] keeps the car
    still); the tiny env: uniform in [-1, 1]."""
    if env.name == "carracing":
        return np.stack([rng.uniform(-1, 1, count), rng.uniform(0, 1, count), rng.uniform(0, 0.2, count)], 1)
    return rng.uniform(-1, 1, (count, env.action_dim))


def collect_round(env: WorldModelsEnv, batch, rng: np.random.Generator, steps: int) -> list[dict[str, np.ndarray]]:
    """One episode per env of ``batch`` under the random policy (each env keeps its action
    and draws a new one with probability 0.2 a step)."""
    frames = [batch.reset()]
    actions, rewards, dones = [], [], []
    action = random_actions(env, rng, batch.num_envs)
    length = np.full(batch.num_envs, steps)
    alive = np.ones(batch.num_envs, bool)
    for t in range(steps):
        change = rng.random(batch.num_envs) < ACTION_CHANGE_PROB
        action = np.where(change[:, None], random_actions(env, rng, batch.num_envs), action)
        obs, reward, done = batch.step(action.astype(np.float32))
        frames.append(obs), actions.append(action.astype(np.float32)), rewards.append(reward), dones.append(done)
        length[alive & done] = t + 1
        alive &= ~done
        if not alive.any():
            break
    stacked = [np.stack(x, 1) for x in (frames, actions, rewards, dones)]
    return [{"frames": stacked[0][i, :n + 1], "action": stacked[1][i, :n], "reward": stacked[2][i, :n],
             "done": stacked[3][i, :n]} for i, n in enumerate(length.tolist())]


def collect(cfg: PipelineConfig, run: Path, env: WorldModelsEnv) -> str:
    """Write ``cfg.rollouts`` random episodes to ``run/episodes`` (keeping those there)."""
    folder = run / "episodes"
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("episode_*.npz")))
    if have >= cfg.rollouts:
        return f"skipped: {have} episodes already there"
    rng = np.random.default_rng([cfg.seed, have])
    batch = make_batch(env, cfg.collect_envs, cfg.seed + have, cfg.rollout_steps)
    logger = stage_logger(run, "collect", cfg, resume_step=have or None)
    with tqdm(total=cfg.rollouts, initial=have, desc="collect", unit="episode") as bar:
        while have < cfg.rollouts:
            episodes = collect_round(env, batch, rng, cfg.rollout_steps)[: cfg.rollouts - have]
            for episode in episodes:
                save_npz(folder / f"episode_{have:05d}.npz", **episode)
                have += 1
                bar.update(1)
            logger.log(have, {"collect/mean_return": float(np.mean([e["reward"].sum() for e in episodes])),
                              "collect/mean_length": float(np.mean([len(e["action"]) for e in episodes]))})
    batch.close()
    logger.close()
    return f"done: {have} episodes"


def episode_paths(run: Path) -> list[Path]:
    return sorted((run / "episodes").glob("episode_*.npz"))


def load_frames(run: Path) -> torch.Tensor:
    """Every collected frame ``[N, S, S, 3]`` uint8."""
    return torch.from_numpy(np.concatenate([load_npz(p)["frames"] for p in episode_paths(run)]))


def to_images(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` -> float ``[N, 3, S, S]`` in [0, 1] on ``device``."""
    return frames.to(device).permute(0, 3, 1, 2).float().div(255.0)


def build_vae(cfg: PipelineConfig, env: WorldModelsEnv) -> ConvVAE:
    return ConvVAE(ConvVAEConfig(image_size=env.image_size, channels=3, latent_dim=cfg.latent_dim,
                                 widths=list(cfg.vae_widths), beta=1.0, likelihood="gaussian"))


def load_vae(run: Path, device: torch.device) -> ConvVAE:
    state = load_checkpoint(run / "vae.pt")
    model = ConvVAE(ConvVAEConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def resume_epoch(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> int:
    """Load ``path``'s model and optimiser state where it exists; the epochs it holds (0 without it)."""
    if not path.is_file():
        return 0
    state = load_checkpoint(path, device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def _stage_log(run: Path, stage: str, cfg: PipelineConfig, resume_step: int | None):
    return stage_logger(run, stage, cfg, resume_step=resume_step) if distributed.is_main() else SilentLogger()


def _save(path: Path, state: dict) -> None:
    """Rank 0 writes the stage checkpoint (every rank holds the same weights)."""
    if distributed.is_main():
        save_checkpoint(path, state)


def _epoch_means(sums: dict[str, float], count: float) -> dict[str, float]:
    """Per-item means of ``sums`` over every rank's ``count`` items (one all-reduce)."""
    totals = distributed.average_values({**sums, "_count": count})   # means over the ranks: the ratio is the same
    return {key: value / max(totals["_count"], 1e-12) for key, value in totals.items() if key != "_count"}


def rank_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """This rank's share of an epoch's ``order``: global batches of ``batch_size`` per
    rank times the world size, each dealt out round-robin, so every rank takes the same
    number of steps and the ranks together see each item once (a last global batch
    smaller than the world size is dropped). One process: ``order.split(batch_size)``."""
    where = distributed.placement()
    world = where.world_size if where.enabled else 1
    rank = where.rank if where.enabled else 0
    return [b[rank::world] for b in order.split(batch_size * world) if len(b) >= world]


def train_vae(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """VAE epochs over every frame; loss = recon + max(KL, kl_tolerance * Z) (the authors' floor).
    The initial weights and each epoch's draws come from the seed (and the epoch), so a
    resumed run ends with the weights of an uninterrupted one. Under torchrun each rank
    takes its share of every global batch (:func:`rank_batches`) and the gradients are
    averaged before each step, so every rank holds the same weights; rank 0 writes them."""
    torch.manual_seed(cfg.seed)
    model = build_vae(cfg, env).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.vae_lr)
    epoch = resume_epoch(run / "vae.pt", model, optimizer, device)
    if epoch >= cfg.vae_epochs:
        return f"skipped: vae.pt has {epoch} epochs"
    frames = load_frames(run)
    floor = cfg.kl_tolerance * cfg.latent_dim
    logger = _stage_log(run, "vae", cfg, epoch or None)
    rank = distributed.placement().rank
    for epoch in range(epoch, cfg.vae_epochs):
        sums, seen = {"vae/recon": 0.0, "vae/kl": 0.0, "vae/loss": 0.0}, 0
        torch.manual_seed(cfg.seed * 1000 + epoch + 7919 * rank)
        order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        bar = tqdm(rank_batches(order, cfg.vae_batch_size), desc=f"vae epoch {epoch + 1}/{cfg.vae_epochs}",
                   disable=not distributed.is_main())
        for index in bar:
            images = to_images(frames[index], device)
            mu, logvar = model.encode(images)
            parts = model.losses(images, mu + torch.randn_like(mu) * (0.5 * logvar).exp(), mu, logvar)
            loss = parts["recon"] + parts["kl"].clamp_min(floor)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(list(model.parameters()))
            optimizer.step()
            bar.set_postfix(recon=f"{parts['recon'].item():.1f}", kl=f"{parts['kl'].item():.1f}")
            for key, value in (("vae/recon", parts["recon"]), ("vae/kl", parts["kl"]), ("vae/loss", loss)):
                sums[key] += value.item() * len(index)
            seen += len(index)
        logger.log(epoch + 1, _epoch_means(sums, seen))   # means over the epoch's frames, every rank's
        _save(run / "vae.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "config": dataclasses.asdict(model.config), "epoch": epoch + 1,
                               "recon": parts["recon"].item(), "kl": parts["kl"].item()})
    logger.close()
    distributed.barrier()   # vae.pt is written before any rank moves on
    return f"done: {cfg.vae_epochs} epochs, last batch recon {parts['recon'].item():.1f} kl {parts['kl'].item():.1f}"


@torch.no_grad()
def encode(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """``latents.npz`` (mu, logvar of every frame; actions, rewards, dones; episode offsets)
    and ``latents.json`` (what they are and where they came from)."""
    vae = load_vae(run, device)
    parts: dict[str, list[np.ndarray]] = {"mu": [], "logvar": [], "action": [], "reward": [], "done": []}
    lengths = []
    for path in tqdm(episode_paths(run), desc="encode", unit="episode"):
        episode = load_npz(path)
        mu, logvar = vae.encode(to_images(torch.from_numpy(episode["frames"]), device))
        parts["mu"].append(mu.cpu().numpy()), parts["logvar"].append(logvar.cpu().numpy())
        for key in ("action", "reward", "done"):
            parts[key].append(episode[key])
        lengths.append(len(episode["action"]))
    steps = np.asarray(lengths, np.int64)
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    arrays["step_starts"] = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(np.int64)
    arrays["frame_starts"] = arrays["step_starts"] + np.arange(len(steps), dtype=np.int64)
    arrays["lengths"] = steps
    save_npz(run / "latents.npz", **arrays)
    kl = 0.5 * (np.square(arrays["mu"]) + np.exp(arrays["logvar"]) - 1 - arrays["logvar"]).sum(1)
    logger = stage_logger(run, "encode", cfg)
    logger.log(0, {"encode/frames": float(len(kl)), "encode/mean_kl": float(kl.mean())})
    logger.close()
    save_json(run / "latents.json", {"env": env.env_id, "latent_dim": cfg.latent_dim, "episodes": len(steps),
                                     "frames": int(len(arrays["mu"])), "steps": int(steps.sum()),
                                     "action_dim": env.action_dim, "source": "vae.pt",
                                     "arrays": {k: list(v.shape) for k, v in arrays.items()}})
    return f"done: {len(steps)} episodes, {len(arrays['mu'])} frames"


def mdn_config(cfg: PipelineConfig, env: WorldModelsEnv) -> MDNRNNConfig:
    return MDNRNNConfig(latent_dim=cfg.latent_dim, action_dim=env.action_dim, hidden_size=cfg.hidden_size,
                        num_mixtures=cfg.num_mixtures, predict_reward=True, predict_done=cfg.predict_done,
                        done_weight=cfg.done_weight)


def load_mdnrnn(run: Path, device: torch.device) -> MDNRNN:
    state = load_checkpoint(run / "mdnrnn.pt")
    model = MDNRNN(MDNRNNConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def sequence_batch(latents: dict[str, np.ndarray], seq_len: int, batch: int, rng: np.random.Generator,
                   device: torch.device, sample: bool = True) -> dict[str, torch.Tensor]:
    """``batch`` random chunks of ``seq_len`` steps, z drawn from each frame's posterior
    (``sample``, the authors') or its posterior mean.

    Episodes are drawn in proportion to their length (as chunks of the authors' stream of
    concatenated episodes are) and a chunk starts anywhere that leaves ``seq_len`` steps.
    An episode shorter than ``seq_len`` is taken whole from its first frame and padded:
    ``mask [B, T]`` is 1 on its steps and 0 on the padding, which the losses leave out."""
    lengths = latents["lengths"]
    episodes = rng.choice(len(lengths), batch, p=lengths / lengths.sum())
    length = lengths[episodes][:, None]
    offsets = rng.integers(0, np.maximum(length - seq_len, 0) + 1)
    step = offsets + np.arange(seq_len)
    frame = np.minimum(offsets + np.arange(seq_len + 1), length)        # an episode has length + 1 frames
    frame_index = latents["frame_starts"][episodes][:, None] + frame
    step_index = latents["step_starts"][episodes][:, None] + np.minimum(step, length - 1)
    mu, logvar = latents["mu"][frame_index], latents["logvar"][frame_index]
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32) if sample else mu
    out = {"z": z, "action": latents["action"][step_index], "reward": latents["reward"][step_index],
           "done": latents["done"][step_index], "mask": step < length}
    return {key: torch.from_numpy(np.ascontiguousarray(value, np.float32)).to(device) for key, value in out.items()}


def train_mdnrnn(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """MDN-RNN epochs (an epoch: as many chunks as the data has steps / seq_len); seeded
    per epoch as the VAE is. Under torchrun each rank draws its own chunks (its own
    stream, seeded by the rank) for its share of the epoch's batches and the gradients
    are averaged before clipping, so every rank holds the same weights; rank 0 writes them."""
    torch.manual_seed(cfg.seed)
    model = MDNRNN(mdn_config(cfg, env)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.mdn_lr)
    epoch = resume_epoch(run / "mdnrnn.pt", model, optimizer, device)
    if epoch >= cfg.mdn_epochs:
        return f"skipped: mdnrnn.pt has {epoch} epochs"
    latents = load_npz(run / "latents.npz")
    where = distributed.placement()
    world = where.world_size if where.enabled else 1
    batches = max(1, int(latents["lengths"].sum()) // (cfg.mdn_seq_len * cfg.mdn_batch_size * world))
    logger = _stage_log(run, "mdnrnn", cfg, epoch or None)
    for epoch in range(epoch, cfg.mdn_epochs):
        rng = np.random.default_rng([cfg.seed, epoch] if world == 1 else [cfg.seed, epoch, where.rank])
        bar = tqdm(range(batches), desc=f"mdnrnn epoch {epoch + 1}/{cfg.mdn_epochs}", disable=not where.is_main)
        sums: dict[str, float] = {}
        for _ in bar:
            loss, metrics = model.compute_loss(sequence_batch(latents, cfg.mdn_seq_len, cfg.mdn_batch_size, rng, device,
                                                             sample=cfg.mdn_latent == "sample"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(list(model.parameters()))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in metrics.items()})
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[f"mdnrnn/{key}"] = sums.get(f"mdnrnn/{key}", 0.0) + value.item()
        logger.log(epoch + 1, _epoch_means(sums, batches))   # means over the epoch's batches, every rank's
        _save(run / "mdnrnn.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "config": dataclasses.asdict(model.config), "epoch": epoch + 1,
                                  **{k: v.item() for k, v in metrics.items()}})
    logger.close()
    distributed.barrier()   # mdnrnn.pt is written before any rank moves on
    return "done: {} epochs, {}".format(cfg.mdn_epochs, ", ".join(f"{k} {v.item():.3f}" for k, v in metrics.items()))
