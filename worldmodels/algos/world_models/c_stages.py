"""The controller stage: train C with CMA-ES (in the dream or in the real env), and the
rollouts it shares with the ``eval`` stage (:mod:`~worldmodels.algos.world_models.c_eval`).

Real-env generations step P x R envs together (one envpool batch): frames go through
the VAE encoder (posterior mean as z) and the MDN-RNN's LSTM as one batch, and the P
controllers act through one batched matmul, as in the dream. Unlike the dream, the real
envs do not share tracks across candidates (envpool seeds each env of a batch apart),
except with ``antithetic``: the two members of a mirrored pair then drive the same
tracks (:class:`~worldmodels.algos.world_models.envs.TwinBatch`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...training.checkpoint import load_checkpoint, save_checkpoint
from .cmaes import PopulationSearch, fitness
from .config import PipelineConfig, PipelineConfigError
from .controller import ControllerSpec, FeatureScale, action_map, parameter_count, population_actions
from .dream import DreamSettings, dream_rollouts
from .envs import TwinBatch, WorldModelsEnv, make_batch
from .feature_scale import measure_scale, probe_features, saturation
from .mdnrnn import MDNRNN
from .population import PopulationSplit
from .rundir import load_npz, stage_logger
from .vm_stages import load_mdnrnn, load_vae, to_images


@torch.no_grad()
def real_rollouts(env_batch, vae, model: MDNRNN, theta: torch.Tensor, rollouts: int, steps: int,
                  to_env_action, record: bool = False,
                  spec: ControllerSpec = ControllerSpec(),
                  latent_noise: torch.Generator | None = None) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Real-env returns ``[P, R]`` of P candidates, R episodes each, on a batch of P*R envs
    (episodes capped at ``steps``); with ``record`` also env 0's frames. z is V's
    posterior mean, or with ``latent_noise`` (a CPU generator) a draw from the posterior."""
    device = theta.device
    population = theta.shape[0]
    batch = population * rollouts
    frames = env_batch.reset()
    state = model.initial_state(batch, device)
    alive = torch.ones(batch, device=device)
    total = torch.zeros(batch, device=device)
    recorded = [frames[0]] if record else []
    for _ in range(steps):
        z = encode_latent(vae, to_images(torch.from_numpy(frames), device), latent_noise)
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


def encode_latent(vae, images: torch.Tensor, noise: torch.Generator | None) -> torch.Tensor:
    """V's latent of ``images``: the posterior mean, or ``mu + sigma * eps`` with eps drawn
    from ``noise`` (the authors' real env draws z this way)."""
    mu, logvar = vae.encode(images)
    if noise is None:
        return mu
    return mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=noise).to(mu.device)


def latent_noise(cfg: PipelineConfig, seed: int) -> torch.Generator | None:
    """The generator of z's draws where ``cfg.latent`` is ``sample``; None for ``mean``."""
    return torch.Generator().manual_seed(seed) if cfg.latent == "sample" else None


def dream_starts(run: Path) -> torch.Tensor:
    """The posterior means of every episode's first frame ``[E, Z]``: where dreams start."""
    latents = load_npz(run / "latents.npz")
    return torch.from_numpy(latents["mu"][latents["frame_starts"]])


EVAL_SEED = 10_000         # evaluation episodes use seeds cfg.seed + EVAL_SEED + i
MEAN_PROBE_SEED = 20_000   # the CMA-ES mean's probes use seeds cfg.seed + MEAN_PROBE_SEED + i


def generation_seed(cfg: PipelineConfig, generation: int) -> int:
    return cfg.seed * 1_000_003 + generation


def dream_settings(cfg: PipelineConfig, env: WorldModelsEnv, rollouts: int, temperature: float,
                   spec: ControllerSpec | None = None) -> DreamSettings:
    """The dream of ``env``: ``rollouts`` per candidate over ``cfg.controller_steps`` steps
    at ``temperature``, the controller reading its inputs as ``spec`` says (default ``env``'s)."""
    return DreamSettings(rollouts, cfg.controller_steps, temperature, spec or env.controller, env.alive_reward,
                         done_rule=cfg.dream_done)


def checked_input_scale(cfg: PipelineConfig, path: Path, saved: dict) -> FeatureScale | None:
    """The input scale a controller checkpoint was trained with (None: raw); a checkpoint
    trained with another ``controller_input`` than ``cfg``'s is refused, naming both."""
    trained = saved.get("controller_input", "raw")
    if trained != cfg.controller_input:
        raise PipelineConfigError(f"{path} was trained with controller_input={trained!r}, this run has "
                                  f"{cfg.controller_input!r}; pass --controller-input {trained} "
                                  "or use a new run directory.")
    return FeatureScale.from_state(saved) if trained == "standardized" else None


def controller_spec(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, model: MDNRNN, device: torch.device,
                    checkpoint: Path) -> ControllerSpec:
    """``env``'s controller with the input scale of ``cfg.controller_input``: the one saved
    in ``checkpoint`` when it exists (a resumed search), else measured on M's features
    over the training episodes (``latents.npz``)."""
    scale = checked_input_scale(cfg, checkpoint, load_checkpoint(checkpoint)) if checkpoint.is_file() else None
    if cfg.controller_input == "raw":
        return env.controller
    if scale is None:
        scale = measure_scale(model, load_npz(run / "latents.npz"), env.controller, device)
    return dataclasses.replace(env.controller, scale=scale.to(device))


def controller_dim(cfg: PipelineConfig, env: WorldModelsEnv, hidden_size: int) -> tuple[int, int]:
    """The controller's feature count and parameter count for ``env``."""
    features = env.controller.feature_dim(cfg.latent_dim, hidden_size)
    return features, parameter_count(features, env.action_dim, env.controller.bias)


class Evaluator:
    """Mean return over R rollouts per candidate ``[P]``, in the dream or the real env.
    Its controller spec (``self.spec``) carries the input scale of the search whose
    checkpoint is ``out/controller_best.pt`` (``out``: the run by default)."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device,
                 rows: slice | None = None, out: Path | None = None):
        self.cfg, self.env, self.device = cfg, env, device
        rows = rows or slice(0, cfg.population)     # the candidates this process scores
        self.model = load_mdnrnn(run, device)
        self.spec = controller_spec(cfg, run, env, self.model, device, (out or run) / "controller_best.pt")
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
            settings = dream_settings(cfg, self.env, cfg.rollouts_per_candidate, cfg.temperature, self.spec)
            returns = dream_rollouts(self.model, theta, self.starts, settings, generation_seed(cfg, generation),
                                     self.to_env_action)
        else:
            returns, _ = real_rollouts(self.batch, self.vae, self.model, theta, cfg.rollouts_per_candidate,
                                       cfg.controller_steps, self.to_env_action, spec=self.spec,
                                       latent_noise=latent_noise(cfg, generation_seed(cfg, generation)))
        return returns.mean(1)

    def close(self) -> None:
        if not self.cfg.train_in_dream:
            self.batch.close()


class MeanProbe:
    """Every ``cfg.mean_eval_every`` generations (0: never), the CMA-ES mean over
    ``cfg.eval_episodes`` real episodes, as the authors' code does; rows of
    ``cmaes_mean_eval.csv`` (generation, mean_return, std_return). Every probe plays the
    same episodes (seeds ``cfg.seed + MEAN_PROBE_SEED + i``, in batches of ``collect_envs``);
    the CSV goes to ``out`` (the run by default)."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device, model: MDNRNN,
                 logger=None, spec: ControllerSpec | None = None, out: Path | None = None):
        self.cfg, self.run, self.env, self.device, self.model, self.logger = cfg, out or run, env, device, model, logger
        self.spec = spec or env.controller
        self.vae = load_vae(run, device) if cfg.mean_eval_every else None

    def __call__(self, generation: int, mean: np.ndarray) -> None:
        cfg = self.cfg
        if not cfg.mean_eval_every or (generation + 1) % cfg.mean_eval_every:
            return
        theta = torch.from_numpy(mean).float().to(self.device).unsqueeze(0)
        scores, _ = real_scores(cfg, self.env, self.vae, self.model, theta, record=False, offset=MEAN_PROBE_SEED,
                                spec=self.spec)
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


def _save_best(out: Path, search: PopulationSearch, feature_dim: int, action_dim: int, cfg: PipelineConfig,
               spec: ControllerSpec) -> float:
    """``out/controller_best.pt``: the fittest candidate so far, the strategy's mean, the
    dream temperature it was scored at and its input scale (``input_mean``/``input_std``
    when standardized)."""
    losses, solutions = np.stack(search.losses), np.stack(search.solutions)
    generation, index = np.unravel_index(np.argmin(losses), losses.shape)
    save_checkpoint(out / "controller_best.pt", {
        "theta": torch.from_numpy(solutions[generation, index]).float(), "mean": torch.from_numpy(search.mean).float(),
        "fitness": float(-losses[generation, index]), "generation": int(generation),
        "feature_dim": feature_dim, "action_dim": action_dim, "temperature": float(cfg.temperature),
        "controller_input": cfg.controller_input, **(spec.scale.state() if spec.scale is not None else {})})
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
    controller in ``out`` (the run, or one temperature's folder), the stage's logs
    (``logs/<log_name>/``: fitness, and how saturated the population's tanh is on a
    fixed sample of training features), the progress bar and the mean probe."""

    def __init__(self, cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device, model: MDNRNN,
                 spec: ControllerSpec, out: Path | None = None, log_name: str = "controller"):
        self.cfg, self.out, self.env, self.spec, self.device = cfg, out or run, env, spec, device
        self.out.mkdir(parents=True, exist_ok=True)
        self.feature_dim, self.dim = controller_dim(cfg, env, model.config.hidden_size)
        self.state_path = self.out / "cmaes_state.npz"
        settings = (self.dim, cfg.population, cfg.sigma0, cfg.seed, cfg.antithetic)
        found = self.state_path.is_file()
        self.search = PopulationSearch.load(self.state_path, *settings) if found else PopulationSearch(*settings)
        resume_step = self.search.generation - 1 if self.search.generation else None   # the last generation logged
        self.logger = stage_logger(run, log_name, cfg, resume_step=resume_step)
        self.probe = MeanProbe(cfg, run, env, device, model, self.logger, spec, self.out)
        self.probe_rows = probe_features(model, load_npz(run / "latents.npz"), env.controller, device, cfg.seed)
        self.bar = tqdm(total=cfg.generations, initial=self.search.generation, desc="cma-es", unit="generation")
        self.best = float("-inf")

    def record(self, generation: int, solutions: np.ndarray, returns: np.ndarray) -> None:
        """Tell the strategy a scored generation, save its state and best, log it."""
        fit = fitness(returns, solutions, self.cfg.weight_decay)
        self.search.tell(solutions, fit)
        self.search.save(self.state_path)
        self.best = _save_best(self.out, self.search, self.feature_dim, self.env.action_dim, self.cfg, self.spec)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{fit.max():.2f}", mean=f"{fit.mean():.2f}", overall=f"{self.best:.2f}")
        theta = torch.from_numpy(solutions).float().to(self.device)
        saturated = {f"cmaes/{key}": value for key, value in saturation(theta, self.probe_rows, self.spec).items()}
        self.logger.log(generation, {"cmaes/best": fit.max(), "cmaes/mean": fit.mean(), "cmaes/worst": fit.min(),
                                     "cmaes/mean_return": returns.mean(), "cmaes/best_so_far": self.best,
                                     **saturated})
        self.probe(generation, self.search.mean)

    def close(self) -> None:
        self.bar.close()
        self.probe.close()
        self.logger.close()
        if self.search.losses:
            write_curve(self.out, np.stack(self.search.losses))


def train_controller(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device,
                     out: Path | None = None, log_name: str = "controller") -> str:
    """CMA-ES generations up to ``cfg.generations`` at ``cfg.temperature``, resuming from
    ``out/cmaes_state.npz`` (``out``: the run by default; V, M and the latents are read
    from ``run``). Under torchrun rank 0 asks and tells, and every rank scores its share
    of each generation (:class:`~worldmodels.algos.world_models.population.PopulationSplit`)."""
    split = PopulationSplit(cfg.population)
    evaluate = Evaluator(cfg, run, env, device, split.rows, out)
    record = (SearchRecord(cfg, run, env, device, evaluate.model, evaluate.spec, out, log_name)
              if split.is_main else None)
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
                record: bool, offset: int = EVAL_SEED,
                spec: ControllerSpec | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The controller ``theta [1, n]`` (reading its inputs as ``spec``, default ``env``'s)
    over ``eval_episodes`` real episodes: returns and the first episode's frames (with ``record``)."""
    scores, frames = [], []
    for seed, count in eval_chunks(cfg, offset):
        batch = make_batch(env, count, seed, cfg.controller_steps)
        returns, recorded = real_rollouts(batch, vae, model, theta, count, cfg.controller_steps,
                                          action_map(env.action_map), record=record and not scores,
                                          spec=spec or env.controller, latent_noise=latent_noise(cfg, seed))
        batch.close()
        scores.append(returns.flatten().cpu().numpy())
        frames = frames or recorded
    return np.concatenate(scores), frames
