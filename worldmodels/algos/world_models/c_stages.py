"""The last two stages: train C with CMA-ES (in the dream or in the real env), then
evaluate the best controller in the real env (and the dream), with optional videos.

Real-env generations step P x R envs together (one envpool batch): frames go through
the VAE encoder (posterior mean as z) and the MDN-RNN's LSTM as one batch, and the P
controllers act through one batched matmul, as in the dream. Unlike the dream, the real
envs do not share tracks across candidates (envpool seeds each env of a batch apart),
except with ``antithetic``: the two members of a mirrored pair then drive the same
tracks (:class:`~worldmodels.algos.world_models.envs.TwinBatch`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...training.checkpoint import load_checkpoint, save_checkpoint
from .cmaes import PopulationSearch, fitness
from .config import PipelineConfig, to_json
from .controller import action_map, parameter_count, population_actions
from .dream import DreamSettings, dream_rollouts
from .envs import TwinBatch, WorldModelsEnv, make_batch
from .mdnrnn import MDNRNN, sample_mixture
from .population import PopulationSplit
from .rundir import load_npz, save_json, stage_logger
from .vm_stages import collect_round, load_mdnrnn, load_vae, to_images


@torch.no_grad()
def real_rollouts(env_batch, vae, model: MDNRNN, theta: torch.Tensor, rollouts: int, steps: int,
                  to_env_action, record: bool = False) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Real-env returns ``[P, R]`` of P candidates, R episodes each, on a batch of P*R envs
    (episodes capped at ``steps``); with ``record`` also env 0's frames."""
    device = theta.device
    population = theta.shape[0]
    batch = population * rollouts
    frames = env_batch.reset()
    state = model.initial_state(batch, device)
    alive = torch.ones(batch, device=device)
    total = torch.zeros(batch, device=device)
    recorded = [frames[0]] if record else []
    for _ in range(steps):
        z = vae.encode(to_images(torch.from_numpy(frames), device))[0]
        features = torch.cat([z, state[0]], -1).view(population, rollouts, -1)
        action = to_env_action(population_actions(theta, features)).reshape(batch, -1)
        frames, reward, done = env_batch.step(action.cpu().numpy())
        total += torch.from_numpy(reward).to(device) * alive
        alive = alive * torch.from_numpy(~done).to(device).float()
        state = model.step(z, action, state)
        if record and alive[0] > 0:
            recorded.append(frames[0])
        if not alive.any():
            break
    return total.view(population, rollouts), recorded


def dream_starts(run: Path) -> torch.Tensor:
    """The posterior means of every episode's first frame ``[E, Z]``: where dreams start."""
    latents = load_npz(run / "latents.npz")
    return torch.from_numpy(latents["mu"][latents["frame_starts"]])


def generation_seed(cfg: PipelineConfig, generation: int) -> int:
    return cfg.seed * 1_000_003 + generation


class Evaluator:
    """Mean return over R rollouts per candidate ``[P]``, in the dream or the real env."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device,
                 rows: slice | None = None):
        self.cfg, self.env, self.device = cfg, env, device
        rows = rows or slice(0, cfg.population)     # the candidates this process scores
        self.model = load_mdnrnn(run, device)
        self.to_env_action = action_map(env.action_map)
        if cfg.train_in_dream:
            self.starts = dream_starts(run)
        else:
            self.vae = load_vae(run, device)
            maker = TwinBatch if cfg.antithetic else make_batch   # antithetic: pair members on the same seeds
            count = rows.stop - rows.start
            # envpool seeds env i of a batch with seed + i: a share's envs keep the seeds they have in one batch
            envs, first_seed = count * cfg.rollouts_per_candidate, cfg.seed + rows.start * cfg.rollouts_per_candidate
            self.batch = maker(env, envs, first_seed, cfg.controller_steps)

    def __call__(self, theta: torch.Tensor, generation: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.train_in_dream:
            settings = DreamSettings(cfg.rollouts_per_candidate, cfg.controller_steps, cfg.temperature)
            returns = dream_rollouts(self.model, theta, self.starts, settings, generation_seed(cfg, generation),
                                     self.to_env_action)
        else:
            returns, _ = real_rollouts(self.batch, self.vae, self.model, theta, cfg.rollouts_per_candidate,
                                       cfg.controller_steps, self.to_env_action)
        return returns.mean(1)

    def close(self) -> None:
        if not self.cfg.train_in_dream:
            self.batch.close()


class MeanProbe:
    """Every ``cfg.mean_eval_every`` generations (0: never), the CMA-ES mean over
    ``cfg.eval_episodes`` real episodes, as the authors' code does; rows of
    ``cmaes_mean_eval.csv`` (generation, mean_return, std_return)."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device, model: MDNRNN,
                 logger=None):
        self.cfg, self.run, self.env, self.device, self.model, self.logger = cfg, run, env, device, model, logger
        self.vae = load_vae(run, device) if cfg.mean_eval_every else None
        self.batch = None

    def __call__(self, generation: int, mean: np.ndarray) -> None:
        cfg = self.cfg
        if not cfg.mean_eval_every or (generation + 1) % cfg.mean_eval_every:
            return
        if self.batch is None:
            self.batch = make_batch(self.env, cfg.eval_episodes, cfg.seed + 20_000, cfg.controller_steps)
        theta = torch.from_numpy(mean).float().to(self.device).unsqueeze(0)
        returns, _ = real_rollouts(self.batch, self.vae, self.model, theta, cfg.eval_episodes, cfg.controller_steps,
                                   action_map(self.env.action_map))
        path = self.run / "cmaes_mean_eval.csv"
        with path.open("a") as handle:
            if handle.tell() == 0:
                handle.write("generation,mean_return,std_return\n")
            handle.write(f"{generation},{returns.mean().item():.4f},{returns.std(unbiased=False).item():.4f}\n")
        if self.logger is not None:
            self.logger.log(generation, {"cmaes/mean_eval_return": returns.mean().item()})

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()


def _save_best(run: Path, search: PopulationSearch, feature_dim: int, action_dim: int) -> float:
    losses, solutions = np.stack(search.losses), np.stack(search.solutions)
    generation, index = np.unravel_index(np.argmin(losses), losses.shape)
    save_checkpoint(run / "controller_best.pt", {
        "theta": torch.from_numpy(solutions[generation, index]).float(), "mean": torch.from_numpy(search.mean).float(),
        "fitness": float(-losses[generation, index]), "generation": int(generation),
        "feature_dim": feature_dim, "action_dim": action_dim})
    return float(-losses[generation, index])


def write_curve(run: Path, losses: np.ndarray) -> None:
    """``cmaes_curve.csv`` and ``cmaes_curve.png``: best, mean and worst fitness per generation."""
    fit = -np.asarray(losses)
    rows = np.stack([np.arange(len(fit)), fit.max(1), fit.mean(1), fit.min(1)], 1)
    np.savetxt(run / "cmaes_curve.csv", rows, delimiter=",", header="generation,best,mean,worst", comments="",
               fmt=["%d", "%.4f", "%.4f", "%.4f"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for column, label in ((1, "best"), (2, "mean"), (3, "worst")):
        axis.plot(rows[:, 0], rows[:, column], label=label, marker="o" if len(rows) < 30 else None)
    axis.set_xlabel("generation"), axis.set_ylabel("fitness"), axis.legend(), axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(run / "cmaes_curve.png", dpi=100)
    plt.close(figure)


class SearchRecord:
    """Rank 0's side of the controller stage: the strategy, its history and best
    controller on disk, the stage's logs, the progress bar and the mean probe."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device, model: MDNRNN):
        self.cfg, self.run, self.env = cfg, run, env
        self.feature_dim = cfg.latent_dim + model.config.hidden_size
        self.dim = parameter_count(self.feature_dim, env.action_dim)
        self.state_path = run / "cmaes_state.npz"
        settings = (self.dim, cfg.population, cfg.sigma0, cfg.seed, cfg.antithetic)
        found = self.state_path.is_file()
        self.search = PopulationSearch.load(self.state_path, *settings) if found else PopulationSearch(*settings)
        resume_step = self.search.generation - 1 if self.search.generation else None   # the last generation logged
        self.logger = stage_logger(run, "controller", to_json(cfg), resume_step=resume_step)
        self.probe = MeanProbe(cfg, run, env, device, model, self.logger)
        self.bar = tqdm(total=cfg.generations, initial=self.search.generation, desc="cma-es", unit="generation")
        self.best = float("-inf")

    def record(self, generation: int, solutions: np.ndarray, returns: np.ndarray) -> None:
        """Tell the strategy a scored generation, save its state and best, log it."""
        fit = fitness(returns, solutions, self.cfg.weight_decay)
        self.search.tell(solutions, fit)
        self.search.save(self.state_path)
        self.best = _save_best(self.run, self.search, self.feature_dim, self.env.action_dim)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{fit.max():.2f}", mean=f"{fit.mean():.2f}", overall=f"{self.best:.2f}")
        self.logger.log(generation, {"cmaes/best": fit.max(), "cmaes/mean": fit.mean(), "cmaes/worst": fit.min(),
                                     "cmaes/mean_return": returns.mean(), "cmaes/best_so_far": self.best})
        self.probe(generation, self.search.mean)

    def close(self) -> None:
        self.bar.close()
        self.probe.close()
        self.logger.close()
        if self.search.losses:
            write_curve(self.run, np.stack(self.search.losses))


def train_controller(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """CMA-ES generations up to ``cfg.generations``, resuming from ``cmaes_state.npz``.
    Under torchrun rank 0 asks and tells, and every rank scores its share of each
    generation (:class:`~worldmodels.algos.world_models.population.PopulationSplit`)."""
    split = PopulationSplit(cfg.population)
    evaluate = Evaluator(cfg, run, env, device, split.rows)
    record = SearchRecord(cfg, run, env, device, evaluate.model) if split.is_main else None
    first = split.broadcast_int(record.search.generation if record else 0)
    dim = parameter_count(cfg.latent_dim + evaluate.model.config.hidden_size, env.action_dim)
    try:
        if first >= cfg.generations:
            return f"skipped: {first} generations already run"
        for generation in range(first, cfg.generations):
            solutions = split.broadcast(record.search.ask() if record else None, dim)
            share = torch.from_numpy(solutions[split.rows]).float().to(device)
            returns = split.gather(evaluate(share, generation))
            if record:
                record.record(generation, solutions, returns)
    finally:
        evaluate.close()
        if record:
            record.close()
    where = "dream" if cfg.train_in_dream else "real env"
    ranks = f" on {split.world_size} ranks" if split.world_size > 1 else ""
    best = f", best fitness {record.best:.2f}" if record else ""
    return f"done: {cfg.generations} generations in the {where}{ranks}{best}"


def evaluate_controller(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """``evaluation_results.json``: the best controller over ``eval_episodes`` real episodes
    and as many dream episodes; ``videos/`` when asked."""
    vae, model = load_vae(run, device), load_mdnrnn(run, device)
    best = load_checkpoint(run / "controller_best.pt")
    theta = best["theta"].to(device).unsqueeze(0)
    to_env_action = action_map(env.action_map)
    batch = make_batch(env, cfg.eval_episodes, cfg.seed + 10_000, cfg.controller_steps)
    real, frames = real_rollouts(batch, vae, model, theta, cfg.eval_episodes, cfg.controller_steps, to_env_action,
                                 record=cfg.save_videos)
    batch.close()
    settings = DreamSettings(cfg.eval_episodes, cfg.controller_steps, cfg.temperature)
    dream = dream_rollouts(model, theta, dream_starts(run), settings, cfg.seed + 10_000, to_env_action)
    real_np, dream_np = real.flatten().cpu().numpy(), dream.flatten().cpu().numpy()
    random_np = random_policy_returns(cfg, env)
    results = {"env": env.env_id, "episodes": cfg.eval_episodes, "steps_cap": cfg.controller_steps,
               "real_mean": float(real_np.mean()), "real_std": float(real_np.std()), "real_returns": real_np.tolist(),
               "dream_mean": float(dream_np.mean()), "dream_std": float(dream_np.std()),
               "random_policy_mean": float(random_np.mean()), "random_policy_std": float(random_np.std()),
               "temperature": cfg.temperature, "trained_in_dream": cfg.train_in_dream,
               "controller_generation": int(best["generation"]), "controller_fitness": float(best["fitness"])}
    save_json(run / "evaluation_results.json", results)
    logger = stage_logger(run, "eval", to_json(cfg))
    logger.log(results["controller_generation"], {f"eval/{key}": results[key] for key in (
        "real_mean", "real_std", "dream_mean", "dream_std", "random_policy_mean", "random_policy_std")})
    logger.close()
    if cfg.save_videos:
        write_videos(cfg, run, vae, model, theta, frames, to_env_action, device)
    return (f"done: real {results['real_mean']:.2f} +- {results['real_std']:.2f}, dream {results['dream_mean']:.2f}, "
            f"random policy {results['random_policy_mean']:.2f}")


def random_policy_returns(cfg: PipelineConfig, env: WorldModelsEnv) -> np.ndarray:
    """Returns ``[eval_episodes]`` of the random collection policy on the evaluation seeds."""
    batch = make_batch(env, cfg.eval_episodes, cfg.seed + 10_000, cfg.controller_steps)
    episodes = collect_round(env, batch, np.random.default_rng([cfg.seed, 10_000]), cfg.controller_steps)
    batch.close()
    return np.array([episode["reward"].sum() for episode in episodes])


@torch.no_grad()
def write_videos(cfg: PipelineConfig, run: Path, vae, model: MDNRNN, theta: torch.Tensor, frames: list[np.ndarray],
                 to_env_action, device: torch.device) -> None:
    """``videos/rollout.gif``: real frames | VAE reconstruction | the dream from the same start."""
    from ...utils.images import write_gif

    real = to_images(torch.from_numpy(np.stack(frames[: cfg.video_steps])), device)
    recon = vae.reconstruct(real)
    z = vae.encode(real[:1])[0]
    state = model.initial_state(1, device)
    dreamed = [vae.decode(z)]
    for _ in range(len(real) - 1):
        action = to_env_action(population_actions(theta, torch.cat([z, state[0]], -1).view(1, 1, -1))).view(1, -1)
        state = model.step(z, action, state)
        out = model.heads(state[0])
        noise = torch.rand_like(z), torch.randn_like(z)
        z = sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], cfg.temperature, *noise)
        dreamed.append(vae.decode(z))
    row = torch.cat([real, recon, torch.cat(dreamed)], dim=-1)   # side by side
    video = (row.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    video = video.repeat(3, axis=1).repeat(3, axis=2) if video.shape[1] < 32 else video
    write_gif(run / "videos" / "rollout.gif", video, duration=60)
