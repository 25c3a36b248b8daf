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
from .config import PipelineConfig
from .controller import ControllerSpec, action_map, parameter_count, population_actions
from .dream import DreamSettings, dream_rollouts
from .envs import TwinBatch, WorldModelsEnv, make_batch
from .mdnrnn import MDNRNN, sample_mixture
from .population import PopulationSplit
from .rundir import load_npz, save_json, stage_logger
from .vm_stages import collect_round, load_mdnrnn, load_vae, to_images


@torch.no_grad()
def real_rollouts(env_batch, vae, model: MDNRNN, theta: torch.Tensor, rollouts: int, steps: int,
                  to_env_action, record: bool = False,
                  spec: ControllerSpec = ControllerSpec()) -> tuple[torch.Tensor, list[np.ndarray]]:
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
        features = spec.features(z, state).view(population, rollouts, -1)
        action = to_env_action(population_actions(theta, features, spec.bias)).reshape(batch, -1)
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


EVAL_SEED = 10_000         # evaluation episodes use seeds cfg.seed + EVAL_SEED + i
MEAN_PROBE_SEED = 20_000   # the CMA-ES mean's probes use seeds cfg.seed + MEAN_PROBE_SEED + i


def generation_seed(cfg: PipelineConfig, generation: int) -> int:
    return cfg.seed * 1_000_003 + generation


def dream_settings(cfg: PipelineConfig, env: WorldModelsEnv, rollouts: int, temperature: float) -> DreamSettings:
    """The dream of ``env``: ``rollouts`` per candidate over ``cfg.controller_steps`` steps at ``temperature``."""
    return DreamSettings(rollouts, cfg.controller_steps, temperature, env.controller, env.alive_reward,
                         done_rule=cfg.dream_done)


def controller_dim(cfg: PipelineConfig, env: WorldModelsEnv, hidden_size: int) -> tuple[int, int]:
    """The controller's feature count and parameter count for ``env``."""
    features = env.controller.feature_dim(cfg.latent_dim, hidden_size)
    return features, parameter_count(features, env.action_dim, env.controller.bias)


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
            settings = dream_settings(cfg, self.env, cfg.rollouts_per_candidate, cfg.temperature)
            returns = dream_rollouts(self.model, theta, self.starts, settings, generation_seed(cfg, generation),
                                     self.to_env_action)
        else:
            returns, _ = real_rollouts(self.batch, self.vae, self.model, theta, cfg.rollouts_per_candidate,
                                       cfg.controller_steps, self.to_env_action, spec=self.env.controller)
        return returns.mean(1)

    def close(self) -> None:
        if not self.cfg.train_in_dream:
            self.batch.close()


class MeanProbe:
    """Every ``cfg.mean_eval_every`` generations (0: never), the CMA-ES mean over
    ``cfg.eval_episodes`` real episodes, as the authors' code does; rows of
    ``cmaes_mean_eval.csv`` (generation, mean_return, std_return). Every probe plays the
    same episodes (seeds ``cfg.seed + MEAN_PROBE_SEED + i``, in batches of ``collect_envs``)."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device, model: MDNRNN,
                 logger=None):
        self.cfg, self.run, self.env, self.device, self.model, self.logger = cfg, run, env, device, model, logger
        self.vae = load_vae(run, device) if cfg.mean_eval_every else None

    def __call__(self, generation: int, mean: np.ndarray) -> None:
        cfg = self.cfg
        if not cfg.mean_eval_every or (generation + 1) % cfg.mean_eval_every:
            return
        theta = torch.from_numpy(mean).float().to(self.device).unsqueeze(0)
        scores, _ = real_scores(cfg, self.env, self.vae, self.model, theta, record=False, offset=MEAN_PROBE_SEED)
        returns = torch.from_numpy(scores)
        path = self.run / "cmaes_mean_eval.csv"
        with path.open("a") as handle:
            if handle.tell() == 0:
                handle.write("generation,mean_return,std_return\n")
            handle.write(f"{generation},{returns.mean().item():.4f},{returns.std(unbiased=False).item():.4f}\n")
        if self.logger is not None:
            self.logger.log(generation, {"cmaes/mean_eval_return": returns.mean().item()})

    def close(self) -> None:
        pass


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
        self.feature_dim, self.dim = controller_dim(cfg, env, model.config.hidden_size)
        self.state_path = run / "cmaes_state.npz"
        settings = (self.dim, cfg.population, cfg.sigma0, cfg.seed, cfg.antithetic)
        found = self.state_path.is_file()
        self.search = PopulationSearch.load(self.state_path, *settings) if found else PopulationSearch(*settings)
        resume_step = self.search.generation - 1 if self.search.generation else None   # the last generation logged
        self.logger = stage_logger(run, "controller", cfg, resume_step=resume_step)
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
    _, dim = controller_dim(cfg, env, evaluate.model.config.hidden_size)
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


def eval_chunks(cfg: PipelineConfig, offset: int = EVAL_SEED) -> list[tuple[int, int]]:
    """``(first seed, episodes)`` of the evaluation batches: ``eval_episodes`` episodes in
    batches of at most ``collect_envs`` envs (100 VizDoom processes at once would not fit
    a small machine); env ``i`` of the whole evaluation has seed ``cfg.seed + offset + i``."""
    size = min(cfg.eval_episodes, cfg.collect_envs)
    return [(cfg.seed + offset + first, min(size, cfg.eval_episodes - first))
            for first in range(0, cfg.eval_episodes, size)]


def real_scores(cfg: PipelineConfig, env: WorldModelsEnv, vae, model: MDNRNN, theta: torch.Tensor,
                record: bool, offset: int = EVAL_SEED) -> tuple[np.ndarray, list[np.ndarray]]:
    """The controller ``theta [1, n]`` over ``eval_episodes`` real episodes: returns and the
    first episode's frames (with ``record``)."""
    scores, frames = [], []
    for seed, count in eval_chunks(cfg, offset):
        batch = make_batch(env, count, seed, cfg.controller_steps)
        returns, recorded = real_rollouts(batch, vae, model, theta, count, cfg.controller_steps,
                                          action_map(env.action_map), record=record and not scores,
                                          spec=env.controller)
        batch.close()
        scores.append(returns.flatten().cpu().numpy())
        frames = frames or recorded
    return np.concatenate(scores), frames


def dream_by_temperature(cfg: PipelineConfig, env: WorldModelsEnv, run: Path, model: MDNRNN, theta: torch.Tensor,
                         real_mean: float) -> list[dict[str, float]]:
    """The controller's dream score over ``eval_episodes`` dreams at ``cfg.temperature`` and
    each of ``cfg.eval_temperatures``, beside its real score (the paper's table 2)."""
    rows = []
    for tau in sorted({cfg.temperature, *cfg.eval_temperatures}):
        dream = dream_rollouts(model, theta, dream_starts(run), dream_settings(cfg, env, cfg.eval_episodes, tau),
                               cfg.seed + EVAL_SEED, action_map(env.action_map)).flatten().cpu().numpy()
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
    theta = best["theta"].to(device).unsqueeze(0)
    real_np, frames = real_scores(cfg, env, vae, model, theta, record=cfg.save_videos)
    by_tau = dream_by_temperature(cfg, env, run, model, theta, float(real_np.mean()))
    dream = next(row for row in by_tau if row["temperature"] == cfg.temperature)
    random_np = random_policy_returns(cfg, env)
    results = {"env": env.env_id, "episodes": cfg.eval_episodes, "steps_cap": cfg.controller_steps,
               "score": "frames survived" if env.alive_reward is not None else "return",
               "real_mean": float(real_np.mean()), "real_std": float(real_np.std()), "real_returns": real_np.tolist(),
               "dream_mean": dream["dream_mean"], "dream_std": dream["dream_std"], "dream_by_temperature": by_tau,
               "random_policy_mean": float(random_np.mean()), "random_policy_std": float(random_np.std()),
               "random_policy_returns": random_np.tolist(),
               "temperature": cfg.temperature, "trained_in_dream": cfg.train_in_dream,
               "controller_generation": int(best["generation"]), "controller_fitness": float(best["fitness"])}
    save_json(run / "evaluation_results.json", results)
    logger = stage_logger(run, "eval", cfg)
    logger.log(results["controller_generation"], {f"eval/{key}": results[key] for key in (
        "real_mean", "real_std", "dream_mean", "dream_std", "random_policy_mean", "random_policy_std")})
    logger.close()
    if cfg.save_videos:
        write_videos(cfg, run, vae, model, theta, frames, env, device)
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
                 env: WorldModelsEnv, device: torch.device) -> None:
    """``videos/rollout.gif``: real frames | VAE reconstruction | the dream from the same start."""
    from ...utils.images import write_gif

    real = to_images(torch.from_numpy(np.stack(frames[: cfg.video_steps])), device)
    recon = vae.reconstruct(real)
    z = vae.encode(real[:1])[0]
    state = model.initial_state(1, device)
    dreamed = [vae.decode(z)]
    for _ in range(len(real) - 1):
        features = env.controller.features(z, state).view(1, 1, -1)
        action = action_map(env.action_map)(population_actions(theta, features, env.controller.bias)).view(1, -1)
        state = model.step(z, action, state)
        out = model.heads(state[0])
        noise = torch.rand_like(z), torch.randn_like(z)
        z = sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], cfg.temperature, *noise)
        dreamed.append(vae.decode(z))
    row = torch.cat([real, recon, torch.cat(dreamed)], dim=-1)   # side by side
    video = (row.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    video = video.repeat(3, axis=1).repeat(3, axis=2) if video.shape[1] < 32 else video
    write_gif(run / "videos" / "rollout.gif", video, duration=60)
