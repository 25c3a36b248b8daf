"""The ``eval`` stage: the best controller over real episodes, beside the random policy on
the same seeds and its dream at each temperature, and the videos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ...training.checkpoint import load_checkpoint
from .c_stages import EVAL_SEED, checked_input_scale, dream_settings, dream_starts, eval_chunks, real_scores
from .config import PipelineConfig
from .controller import ControllerSpec, action_map, population_actions
from .dream import dream_rollouts
from .envs import WorldModelsEnv, make_batch
from .mdnrnn import MDNRNN, sample_mixture
from .rundir import save_json, stage_logger
from .vm_stages import collect_round, load_mdnrnn, load_vae, to_images


def saved_spec(cfg: PipelineConfig, env: WorldModelsEnv, path: Path, saved: dict,
               device: torch.device) -> ControllerSpec:
    """``env``'s controller with the input scale saved in the checkpoint ``saved`` (read from ``path``)."""
    scale = checked_input_scale(cfg, path, saved)
    return env.controller if scale is None else dataclasses.replace(env.controller, scale=scale.to(device))


def dream_scores(cfg: PipelineConfig, env: WorldModelsEnv, run: Path, model: MDNRNN, theta: torch.Tensor,
                 tau: float, spec: ControllerSpec) -> np.ndarray:
    """The controller ``theta [1, n]`` over ``eval_episodes`` dreams at ``tau`` (seed ``cfg.seed + EVAL_SEED``)."""
    settings = dream_settings(cfg, env, cfg.eval_episodes, tau, spec)
    return dream_rollouts(model, theta, dream_starts(run), settings, cfg.seed + EVAL_SEED,
                          action_map(env.action_map)).flatten().cpu().numpy()


def dream_by_temperature(cfg: PipelineConfig, env: WorldModelsEnv, run: Path, model: MDNRNN, theta: torch.Tensor,
                         real_mean: float, spec: ControllerSpec | None = None) -> list[dict[str, float]]:
    """The controller's dream score over ``eval_episodes`` dreams at ``cfg.temperature`` and
    each of ``cfg.eval_temperatures``, beside its real score (the controller trained at one tau)."""
    rows = []
    for tau in sorted({cfg.temperature, *cfg.eval_temperatures}):
        dream = dream_scores(cfg, env, run, model, theta, tau, spec or env.controller)
        rows.append({"temperature": float(tau), "dream_mean": float(dream.mean()), "dream_std": float(dream.std()),
                     "real_mean": real_mean, "gap": float(dream.mean()) - real_mean})
    with (run / "temperature_gap.csv").open("w") as handle:
        handle.write("temperature,dream_mean,dream_std,real_mean,gap\n")
        for row in rows:
            handle.write(",".join(f"{row[key]:.4f}" for key in row) + "\n")
    return rows


def evaluate_controller(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """``evaluation_results.json``: the best controller over ``eval_episodes`` real episodes,
    the random policy over the same episodes' seeds, and the dream at each temperature
    (``temperature_gap.csv``); ``videos/`` when asked."""
    vae, model = load_vae(run, device), load_mdnrnn(run, device)
    best = load_checkpoint(run / "controller_best.pt")
    spec = saved_spec(cfg, env, run / "controller_best.pt", best, device)
    theta = best["theta"].to(device).unsqueeze(0)
    real_np, frames = real_scores(cfg, env, vae, model, theta, record=cfg.save_videos, spec=spec)
    by_tau = dream_by_temperature(cfg, env, run, model, theta, float(real_np.mean()), spec)
    dream = next(row for row in by_tau if row["temperature"] == cfg.temperature)
    random_np = random_policy_returns(cfg, env)
    results = {"env": env.env_id, "episodes": cfg.eval_episodes, "steps_cap": cfg.controller_steps,
               "score": "frames survived" if env.alive_reward is not None else "return",
               "real_mean": float(real_np.mean()), "real_std": float(real_np.std()), "real_returns": real_np.tolist(),
               "dream_mean": dream["dream_mean"], "dream_std": dream["dream_std"], "dream_by_temperature": by_tau,
               "random_policy_mean": float(random_np.mean()), "random_policy_std": float(random_np.std()),
               "random_policy_returns": random_np.tolist(),
               "temperature": cfg.temperature, "trained_in_dream": cfg.train_in_dream,
               "controller_input": cfg.controller_input,
               "controller_generation": int(best["generation"]), "controller_fitness": float(best["fitness"])}
    save_json(run / "evaluation_results.json", results)
    logger = stage_logger(run, "eval", cfg)
    logger.log(results["controller_generation"], {f"eval/{key}": results[key] for key in (
        "real_mean", "real_std", "dream_mean", "dream_std", "random_policy_mean", "random_policy_std")})
    logger.close()
    if cfg.save_videos:
        write_videos(cfg, run, vae, model, theta, frames, env, device, spec)
    return (f"done: real {results['real_mean']:.2f} +- {results['real_std']:.2f}, dream {results['dream_mean']:.2f}, "
            f"random policy {results['random_policy_mean']:.2f} +- {results['random_policy_std']:.2f}")


def random_policy_returns(cfg: PipelineConfig, env: WorldModelsEnv) -> np.ndarray:
    """Returns ``[eval_episodes]`` of the random collection policy on the evaluation seeds."""
    rng = np.random.default_rng([cfg.seed, EVAL_SEED])
    returns = []
    for seed, count in eval_chunks(cfg):
        batch = make_batch(env, count, seed, cfg.controller_steps)
        returns += [episode["reward"].sum() for episode in collect_round(env, batch, rng, cfg.controller_steps)]
        batch.close()
    return np.array(returns)


@torch.no_grad()
def write_videos(cfg: PipelineConfig, run: Path, vae, model: MDNRNN, theta: torch.Tensor, frames: list[np.ndarray],
                 env: WorldModelsEnv, device: torch.device, spec: ControllerSpec | None = None) -> None:
    """``videos/rollout.gif``: real frames | VAE reconstruction | the dream from the same start."""
    from ...utils.images import write_gif

    real = to_images(torch.from_numpy(np.stack(frames[: cfg.video_steps])), device)
    recon = vae.reconstruct(real)
    z = vae.encode(real[:1])[0]
    state = model.initial_state(1, device)
    dreamed = [vae.decode(z)]
    spec = spec or env.controller
    for _ in range(len(real) - 1):
        features = spec.features(z, state).view(1, 1, -1)
        action = action_map(env.action_map)(population_actions(theta, features, spec.bias)).view(1, -1)
        state = model.step(z, action, state)
        out = model.heads(state[0])
        noise = torch.rand_like(z), torch.randn_like(z)
        z = sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], cfg.temperature, *noise)
        dreamed.append(vae.decode(z))
    row = torch.cat([real, recon, torch.cat(dreamed)], dim=-1)   # side by side
    video = (row.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    video = video.repeat(3, axis=1).repeat(3, axis=2) if video.shape[1] < 32 else video
    write_gif(run / "videos" / "rollout.gif", video, duration=60)
