"""Held-out evaluation of VTA: ELBO terms, boundary F1 against ground truth and a
random baseline of the same boundary rate, and the visualisation on new bests."""

from __future__ import annotations

from pathlib import Path

import torch

from ...training.contract import Evaluator
from .metrics import boundary_scores, random_boundaries
from .model import VTA
from .visualize import save_visualization

EVAL_SEED = 1234


def cost_split(out, boundaries: torch.Tensor, events: torch.Tensor) -> dict[str, float]:
    """Where the ELBO pays, per step (step 0 left out): the latent KL (abstract +
    observation level) at boundaries and between them, and the observation-level KL and
    reconstruction cost at true events and elsewhere. A boundary is worth placing at an
    event only when ``kl_at_boundaries - kl_between_boundaries`` (what restarting the
    observation level costs) is below what the event costs without one
    (``kl_obs_at_events - kl_obs_elsewhere`` plus the reconstruction difference).
    Keys whose steps are absent from the held-out set are left out."""
    kl = (out.kl_abs + out.kl_obs)[:, 1:]
    boundaries, events = boundaries[:, 1:].bool(), events[:, 1:].bool()
    parts = {"kl_at_boundaries": (kl, boundaries), "kl_between_boundaries": (kl, ~boundaries),
             "kl_obs_at_events": (out.kl_obs[:, 1:], events), "kl_obs_elsewhere": (out.kl_obs[:, 1:], ~events),
             "obs_cost_at_events": (out.obs_cost[:, 1:], events), "obs_cost_elsewhere": (out.obs_cost[:, 1:], ~events)}
    return {f"eval/{name}": values[where].mean().item() for name, (values, where) in parts.items() if where.any()}


class VTAEvaluator(Evaluator):
    """Scores a VTA on a fixed held-out batch ``{"frames", "actions"?, "events"}``.

    ``events`` (bool ``[B, T]``) are the ground-truth boundaries of the whole
    sequence (collisions for bouncing balls, turns/junctions for the maze).
    """

    def __init__(self, held_out: dict[str, torch.Tensor], tolerance: int = 1, num_samples: int = 3):
        self.held_out = held_out
        self.tolerance = tolerance
        self.num_samples = num_samples
        self.best = float("inf")

    def evaluate(self, model: VTA) -> dict[str, float]:
        c = model.config
        frames, actions = self.held_out["frames"], self._actions(model)
        with torch.random.fork_rng(devices=[frames.device] if frames.is_cuda else []):
            torch.manual_seed(EVAL_SEED)
            out = model(frames, actions, c.seq_size, c.init_size, c.obs_std, c.loss_type,
                        events=self.held_out["events"])
        predicted = out.mask.detach() > 0.5
        truth = self.held_out["events"][:, c.init_size : c.init_size + c.seq_size].to(predicted.device)
        model_scores = boundary_scores(predicted.cpu(), truth.cpu(), self.tolerance)
        generator = torch.Generator().manual_seed(EVAL_SEED)
        baseline = random_boundaries(predicted.shape, model_scores["rate"], generator)
        random_scores = boundary_scores(baseline, truth.cpu(), self.tolerance)
        metrics = {
            "eval/loss": out.train_loss.item(),
            "eval/obs_cost": out.obs_cost.mean().item(),
            "eval/kl_abs": out.kl_abs.mean().item(),
            "eval/kl_obs": out.kl_obs.mean().item(),
            "eval/kl_mask": out.kl_mask.mean().item(),
            "eval/event_rate": truth[:, 1:].float().mean().item(),
        }
        metrics.update({f"eval/boundary_{k}": v for k, v in model_scores.items()})
        metrics.update({f"eval/random_{k}": v for k, v in random_scores.items() if k != "rate"})
        metrics.update(cost_split(out, predicted, truth.to(predicted.device)))
        return metrics

    def write_media(self, model: VTA, directory: Path, step: int) -> list[Path]:
        return [save_visualization(model, self.held_out, Path(directory), index=0, step=step,
                                   num_samples=self.num_samples)]

    def visualize(self, model: VTA, directory: Path, index: int, num_samples: int) -> list[Path]:
        """``vis_seq_<index>.png`` and ``jumpy_<index>.png`` for held-out sequence ``index``."""
        count = self.held_out["frames"].shape[0]
        if not 0 <= index < count:
            raise ValueError(f"--idx {index} is outside the {count} held-out sequences (0..{count - 1}).")
        vis = save_visualization(model, self.held_out, Path(directory), index=index, num_samples=num_samples)
        return [vis, vis.with_name(f"jumpy_{index}.png")]

    def _actions(self, model: VTA) -> torch.Tensor:
        frames = self.held_out["frames"]
        actions = self.held_out.get("actions")
        return actions if actions is not None else frames.new_zeros(*frames.shape[:2], model.config.action_size)
