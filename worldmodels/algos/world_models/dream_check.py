"""Does M's dream show what the env shows? Four views of the same recorded steps.

The policy check (:mod:`.policy_check`) says whether the dream ranks behaviours as the
env does; this one shows where the dream goes wrong, in pixels. For recorded episodes
(the last collected ones that last at least ``steps`` steps), all decoded by V:

- ``real``: the recorded frames;
- ``recon``: V's reconstruction of each frame (what V keeps of it);
- ``one-step``: M's sample of frame t+1 given the real latents up to t and the recorded
  actions (teacher forcing: M's one-step model);
- ``dream``: M's free-running sample from the first frame's latent under the same
  recorded actions (what the controller trains in).

Per block of steps it reports, where the env has one, the share of pixels that show
the event that ends episodes in each view (Doom take-cover: fireballs, bright yellow,
per 1,000 pixels); for every env it draws the views side by side::

    python -m worldmodels.algos.world_models.dream_check --run runs/world_models/<run>

Writes ``dream_check.csv``, ``dream_check.json`` and ``dream_check.png`` (one episode:
rows real, recon, one-step, dream; a column every ``block`` steps) to the run.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from ...errors import WorldModelsError
from ...utils.atomic import atomic_write
from .config import PipelineConfig, from_json
from .mdnrnn import MDNRNN, sample_mixture
from .rundir import check_inputs, load_npz, save_json, saved_settings
from .vm_stages import episode_paths, load_mdnrnn, load_vae, to_images

VIEWS = ("real", "recon", "one-step", "dream")
CHECK_SEED = 40_000   # M's draws use the seed cfg.seed + CHECK_SEED


def fireball_pixels(frames: np.ndarray) -> np.ndarray:
    """Boolean ``[..., H, W]``: pixels of Doom take-cover's fireballs in uint8 RGB frames
    ``[..., H, W, 3]`` (red > 180, green > 140, blue < 140; nothing else in the scene is)."""
    red, green, blue = (frames[..., i].astype(np.int16) for i in range(3))
    return (red > 180) & (green > 140) & (blue < 140)


EVENTS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "doom": ("fireball px per 1000", fireball_pixels),
}


def recorded_episodes(run: Path, count: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[N, steps + 1, S, S, 3]`` uint8 and actions ``[N, steps, A]`` of the last
    ``count`` collected episodes that last at least ``steps`` steps."""
    frames, actions = [], []
    for path in reversed(episode_paths(run)):
        episode = load_npz(path)
        if len(episode["action"]) >= steps:
            frames.append(episode["frames"][:steps + 1])
            actions.append(episode["action"][:steps].reshape(steps, -1))
            if len(frames) == count:
                break
    if not frames:
        raise WorldModelsError(f"{run}: no collected episode lasts {steps} steps; lower --steps.")
    return np.stack(frames), np.stack(actions).astype(np.float32)


def _to_uint8(images: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    return (images.clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy().reshape(shape)


@torch.no_grad()
def view_latents(vae, model: MDNRNN, frames: np.ndarray, actions: np.ndarray, tau: float,
                 seed: int) -> dict[str, torch.Tensor]:
    """The latents ``[N, T+1, Z]`` behind the views of ``frames [N, T+1, S, S, 3]`` under
    ``actions [N, T, A]``: ``recon`` V's posterior means; ``one-step`` M's draw for step
    t+1 from the means up to t; ``dream`` M's draws fed back from the first mean. M draws
    at temperature ``tau`` from a stream seeded by ``seed``; step 0 is the mean in all three."""
    n, t1 = frames.shape[:2]
    flat = to_images(torch.from_numpy(frames.reshape(n * t1, *frames.shape[2:])), torch.device("cpu"))
    mu = vae.encode(flat)[0].view(n, t1, -1)
    act = torch.from_numpy(actions)
    generator = torch.Generator().manual_seed(seed)

    def draw(out: dict[str, torch.Tensor]) -> torch.Tensor:
        shape = out["mu"].shape[:-1]
        return sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], tau,
                              torch.rand(shape, generator=generator), torch.randn(shape, generator=generator))

    one_step = torch.cat([mu[:, :1], draw(model(mu[:, :-1], act))], 1)
    z, state, dream = mu[:, 0], model.initial_state(n), [mu[:, 0]]
    for step in range(t1 - 1):
        state = model.step(z, act[:, step], state)
        z = draw(model.heads(state[0]))
        dream.append(z)
    return {"recon": mu, "one-step": one_step, "dream": torch.stack(dream, 1)}


@torch.no_grad()
def four_views(vae, model: MDNRNN, frames: np.ndarray, actions: np.ndarray, tau: float,
               seed: int) -> dict[str, np.ndarray]:
    """The :data:`VIEWS` of ``frames`` (:func:`view_latents` decoded by V), each uint8
    ``[N, T+1, S, S, 3]``; frame 0 of all but ``real`` is V's reconstruction."""
    latents = view_latents(vae, model, frames, actions, tau, seed)
    views = {"real": frames}
    for name, z in latents.items():
        views[name] = _to_uint8(vae.decode(z.reshape(-1, z.shape[-1])), frames.shape)
    return views


def block_rows(views: dict[str, np.ndarray], block: int, env: str) -> list[dict]:
    """Per block of ``block`` steps (frames 1..T), each view's event pixels per 1,000 for
    an env in :data:`EVENTS`; no rows for another env (its check is the picture)."""
    if env not in EVENTS:
        return []
    shares = {name: EVENTS[env][1](v).mean(axis=(-1, -2)) * 1000 for name, v in views.items()}
    steps = views["real"].shape[1] - 1
    rows = []
    for first in range(1, steps + 1, block):
        span = slice(first, min(first + block, steps + 1))
        rows.append({"steps": f"{first}-{span.stop - 1}", **{name: float(s[:, span].mean()) for name, s in shares.items()}})
    return rows


def picture(views: dict[str, np.ndarray], block: int, episode: int = 0) -> np.ndarray:
    """One episode's views as a grid: a row per view, a column every ``block`` steps."""
    columns = range(0, views["real"].shape[1], block)
    return np.concatenate([np.concatenate([views[name][episode, t] for t in columns], 1) for name in VIEWS], 0)


def check(cfg: PipelineConfig, run: Path, episodes: int, steps: int, block: int,
          temperature: float | None = None) -> list[dict]:
    """Runs the check on ``run``; writes ``dream_check.csv/json/png``; returns the rows."""
    check_inputs(run, "controller", cfg.env, ())
    vae, model = load_vae(run, torch.device("cpu")), load_mdnrnn(run, torch.device("cpu"))
    frames, actions = recorded_episodes(run, episodes, steps)
    tau = cfg.temperature if temperature is None else temperature
    views = four_views(vae, model, frames, actions, tau, cfg.seed + CHECK_SEED)
    rows = block_rows(views, block, cfg.env)
    event = EVENTS.get(cfg.env)
    save_json(run / "dream_check.json", {"env": cfg.env, "temperature": tau, "episodes": len(frames),
                                         "steps": steps, "event": event[0] if event else None, "blocks": rows})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["steps", *VIEWS])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run / "dream_check.csv", lambda f: f.write(text.getvalue().encode()))
    grid = picture(views, block)
    atomic_write(run / "dream_check.png", lambda f: f.write(iio.imwrite("<bytes>", grid, extension=".png")))
    return rows


def format_table(rows: list[dict], event: str | None) -> str:
    if event is None:
        return "no event statistic for this env: compare the rows of dream_check.png"
    lines = [f"{'steps':>8}  {event}: " + " | ".join(VIEWS)]
    lines += [f"{r['steps']:>8}  " + " | ".join(f"{r[v]:7.2f}" for v in VIEWS) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worldmodels.algos.world_models.dream_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a World Models run directory")
    parser.add_argument("--episodes", type=int, default=64, help="recorded episodes to compare")
    parser.add_argument("--steps", type=int, default=48, help="steps of each episode")
    parser.add_argument("--block", type=int, default=8, help="steps per row of the table (and per picture column)")
    parser.add_argument("--temperature", type=float, default=None, help="M's tau (default: the run's)")
    args = parser.parse_args(argv)
    try:
        values = saved_settings(args.run)
        for flag in ("episodes", "steps", "block"):
            if getattr(args, flag) < 1:
                raise WorldModelsError(f"--{flag} {getattr(args, flag)}: needs at least 1.")
        cfg = from_json(values)
        rows = check(cfg, args.run, args.episodes, args.steps, args.block, args.temperature)
    except WorldModelsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    event = EVENTS.get(cfg.env)
    print(format_table(rows, event[0] if event else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
