"""One controller per dream temperature, as the paper's table 2 (``train_temperatures``).

The controller stage runs one CMA-ES search per tau, each trained in M's dream at that
tau, in ``temperatures/tau_<t>/`` (its own ``cmaes_state.npz``, ``controller_best.pt``,
``cmaes_curve.*``; logs in ``logs/controller/tau_<t>/``). Every search has the run's
seed, so all start from the same generation 0 and differ by the dream they are scored
in. Each resumes on its own after a crash; a finished one is skipped.

The eval stage scores each tau's best controller in its own dream (``eval_episodes``
dreams at that tau, seed ``seed + 10000``) and in the real env on the same episode seeds
for every tau (``seed + 10000 + i``), with the random policy on those seeds too:
``temperature_table.csv``, ``temperature_table.png`` (the scores as bars, and each
search's best fitness per generation) and the ``temperature_table`` block of
``evaluation_results.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ...training.checkpoint import load_checkpoint
from .c_eval import dream_scores, random_policy_returns, saved_spec
from ...utils.atomic import atomic_write
from .c_stages import EVAL_SEED, eval_chunks, real_scores, train_controller
from .config import PipelineConfig, temperature_folder
from .envs import WorldModelsEnv
from .rundir import load_npz, save_json, stage_logger
from .vm_stages import load_mdnrnn, load_vae

TABLE_COLUMNS = ("temperature", "dream_mean", "dream_std", "real_mean", "real_std", "gap", "generation", "fitness")


def temperature_dir(run: Path, tau: float) -> Path:
    """``run/temperatures/tau_<t>``: the search and controller trained at ``tau``."""
    return run / "temperatures" / temperature_folder(tau)


def train_per_temperature(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """The controller stage once per tau of ``cfg.train_temperatures``, in order."""
    outcomes = []
    for tau in cfg.train_temperatures:
        outcome = train_controller(dataclasses.replace(cfg, temperature=tau), run, env, device,
                                   out=temperature_dir(run, tau), log_name=f"controller/{temperature_folder(tau)}")
        print(f"[controller tau {tau:g}] {outcome}", flush=True)
        outcomes.append(outcome)
    taus = ", ".join(f"{tau:g}" for tau in cfg.train_temperatures)
    if all(outcome.startswith("skipped") for outcome in outcomes):
        return f"skipped: the controllers at tau {taus} have run {cfg.generations} generations"
    return f"done: one controller per tau ({taus}), {cfg.generations} generations each in the dream"


def real_seeds(cfg: PipelineConfig) -> list[int]:
    """The env seeds of the evaluation's real episodes, the same for every tau."""
    return [seed + i for seed, count in eval_chunks(cfg) for i in range(count)]


def temperature_row(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, vae, model, tau: float,
                    device: torch.device) -> dict[str, float]:
    """One row of the table: tau's best controller in its own dream and in the real env."""
    path = temperature_dir(run, tau) / "controller_best.pt"
    best = load_checkpoint(path)
    spec = saved_spec(cfg, env, path, best, device)
    theta = best["theta"].to(device).unsqueeze(0)
    real, _ = real_scores(cfg, env, vae, model, theta, record=False, spec=spec)
    dream = dream_scores(cfg, env, run, model, theta, tau, spec)
    return {"temperature": float(tau), "dream_mean": float(dream.mean()), "dream_std": float(dream.std()),
            "real_mean": float(real.mean()), "real_std": float(real.std()),
            "gap": float(dream.mean() - real.mean()), "generation": int(best["generation"]),
            "fitness": float(best["fitness"]), "real_returns": real.tolist()}


def evaluate_per_temperature(cfg: PipelineConfig, run: Path, env: WorldModelsEnv, device: torch.device) -> str:
    """The eval stage with ``train_temperatures``: the table, its plot and its JSON block."""
    vae, model = load_vae(run, device), load_mdnrnn(run, device)
    rows = [temperature_row(cfg, run, env, vae, model, tau, device) for tau in cfg.train_temperatures]
    random_np = random_policy_returns(cfg, env)
    write_table(run / "temperature_table.csv", rows)
    plot_table(run, cfg.train_temperatures, rows, float(random_np.mean()))
    results = {"env": env.env_id, "episodes": cfg.eval_episodes, "steps_cap": cfg.controller_steps,
               "score": "frames survived" if env.alive_reward is not None else "return",
               "controller_input": cfg.controller_input,
               "random_policy_mean": float(random_np.mean()), "random_policy_std": float(random_np.std()),
               "random_policy_returns": random_np.tolist(),
               "temperature_table": {"columns": list(TABLE_COLUMNS), "real_seeds": real_seeds(cfg),
                                     "dream_seed": cfg.seed + EVAL_SEED, "rows": rows}}
    save_json(run / "evaluation_results.json", results)
    logger = stage_logger(run, "eval", cfg)
    logger.log(0, {f"eval/{temperature_folder(row['temperature'])}/{key}": row[key] for row in rows
                   for key in ("dream_mean", "real_mean", "gap")})
    logger.close()
    table = "; ".join(f"tau {row['temperature']:g}: dream {row['dream_mean']:.1f}, real {row['real_mean']:.1f}"
                      for row in rows)
    return f"done: {table}; random policy {results['random_policy_mean']:.1f}"


def write_table(path: Path, rows: list[dict[str, float]]) -> None:
    """``temperature_table.csv``: one row per tau, :data:`TABLE_COLUMNS`."""
    lines = [",".join(TABLE_COLUMNS)]
    for row in rows:
        lines.append(",".join(str(row[key]) if key == "generation" else f"{row[key]:.4f}" for key in TABLE_COLUMNS))
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def plot_table(run: Path, taus: tuple[float, ...], rows: list[dict[str, float]], random_mean: float) -> None:
    """``temperature_table.png``: dream and real score per tau (mean +- std, the random
    policy as a line) beside each tau's best CMA-ES fitness per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(rows))
    for shift, kind in ((-0.2, "dream"), (0.2, "real")):
        bars.bar(x + shift, [row[f"{kind}_mean"] for row in rows], 0.4, yerr=[row[f"{kind}_std"] for row in rows],
                 capsize=3, label=f"{kind} (own tau)" if kind == "dream" else kind)
    bars.axhline(random_mean, color="grey", linestyle="--", label="random policy (real)")
    bars.set_xticks(x, [f"{row['temperature']:g}" for row in rows])
    bars.set_xlabel("tau the controller was trained at"), bars.set_ylabel("score"), bars.legend()
    for tau in taus:
        losses = load_npz(temperature_dir(run, tau) / "cmaes_state.npz")["losses"]
        curves.plot(np.arange(len(losses)), (-losses).max(1), label=f"tau {tau:g}",
                    marker="o" if len(losses) < 30 else None)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("generation"), curves.set_ylabel("best fitness in the dream"), curves.legend()
    for axis in (bars, curves):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(run / "temperature_table.png", dpi=100)
    plt.close(figure)
