"""Held-out evaluation of VTA: ELBO terms, boundary F1 against ground truth and a
random baseline of the same boundary rate, and the visualisation on new bests."""

from __future__ import annotations

from pathlib import Path

import torch

from ...training.contract import Evaluator
from .metrics import boundary_scores, periodic_boundaries, random_boundaries
from .model import VTA, detector_health
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


def foreground_error(reconstruction: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean absolute error over the channels of the foreground pixels (those whose
    brightest true channel exceeds ``threshold``; the balls, the maze walls), both
    ``[B, S, C, H, W]`` in [0, 1]. Shapes in the right place but in the average
    colour score about 0.4 on saturated colours; the right colours score near 0."""
    foreground = truth.amax(dim=2, keepdim=True) > threshold
    error = (reconstruction.float() - truth.float()).abs().mean(dim=2, keepdim=True)
    return error[foreground].mean().item() if foreground.any() else 0.0


def _cost_per_frame(out) -> float:
    """Reconstruction plus latent KL (no ``KL_mask``) per frame, averaged over the batch."""
    return (out.obs_cost + out.kl_abs + out.kl_obs).mean().item()


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
        """ELBO terms, boundary scores beside two baselines at the model's boundary
        rate (random places; every k-th frame), where the ELBO pays, and the
        detector's health (entropy, log-odds, gradient) on the held-out set."""
        c = model.config
        frames, actions = self.held_out["frames"], self._actions(model)
        with torch.random.fork_rng(devices=[frames.device] if frames.is_cuda else []), torch.enable_grad():
            torch.manual_seed(EVAL_SEED)
            out = model(frames, actions, c.seq_size, c.init_size, c.obs_std, c.loss_type,
                        events=self.held_out["events"])
            metrics = {f"eval/{k}": v.item() for k, v in detector_health(out).items()}
            metrics.update(self._logit_gradient(out))
        predicted = out.mask.detach() > 0.5
        truth = self.held_out["events"][:, c.init_size : c.init_size + c.seq_size].to(predicted.device)
        metrics.update({
            "eval/loss": out.train_loss.item(),
            "eval/obs_cost": out.obs_cost.mean().item(),
            "eval/kl_abs": out.kl_abs.mean().item(),
            "eval/kl_obs": out.kl_obs.mean().item(),
            "eval/kl_mask": out.kl_mask.mean().item(),
            "eval/event_rate": truth[:, 1:].float().mean().item(),
        })
        target = frames[:, c.init_size : c.init_size + c.seq_size]
        metrics["eval/foreground_error"] = foreground_error(out.reconstruction, target)
        metrics.update(self._scores(predicted.cpu(), truth.cpu()))
        metrics.update(cost_split(out, predicted, truth))
        metrics.update(self._loss_with(model, frames, actions, truth, predicted, out))
        return metrics

    def _loss_with(self, model: VTA, frames: torch.Tensor, actions: torch.Tensor, truth: torch.Tensor,
                   predicted: torch.Tensor, own) -> dict[str, float]:
        """The held-out loss of the same model with its boundaries replaced by the true
        events (``eval/loss_true_boundaries``) and by as many random ones
        (``eval/loss_random_boundaries``), under the same segment limits: whether the
        ELBO prefers the events (then finding them is the detector's job) or not. The
        ``eval/cost_*_boundaries`` are the same without ``KL_mask`` (reconstruction and
        latent KL only), which a boundary prior trained on other boundaries would bias."""
        c = model.config
        generator = torch.Generator().manual_seed(EVAL_SEED)
        rate = predicted[:, 1:].float().mean().item()
        placements = {"true": truth.bool(),
                      "random": random_boundaries(truth.shape, rate, generator).to(truth.device)}
        metrics = {"eval/cost_own_boundaries": _cost_per_frame(own)}
        for name, boundaries in placements.items():
            with torch.random.fork_rng(devices=[frames.device] if frames.is_cuda else []):
                torch.manual_seed(EVAL_SEED)
                out = model(frames, actions, c.seq_size, c.init_size, c.obs_std, c.loss_type, boundaries=boundaries)
            metrics[f"eval/loss_{name}_boundaries"] = out.train_loss.item()
            metrics[f"eval/cost_{name}_boundaries"] = _cost_per_frame(out)
        return metrics

    def _scores(self, predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        """Precision, recall, F1 and rate of the model's boundaries, and the same
        scores of the baselines at its rate (``random_*``, ``periodic_*``)."""
        model_scores = boundary_scores(predicted, truth, self.tolerance)
        metrics = {f"eval/boundary_{k}": v for k, v in model_scores.items()}
        generator = torch.Generator().manual_seed(EVAL_SEED)
        for name, baseline in (("random", random_boundaries), ("periodic", periodic_boundaries)):
            scores = boundary_scores(baseline(predicted.shape, model_scores["rate"], generator), truth, self.tolerance)
            metrics.update({f"eval/{name}_{k}": v for k, v in scores.items() if k != "rate"})
        return metrics

    @staticmethod
    def _logit_gradient(out) -> dict[str, float]:
        """``eval/boundary_logit_grad``: RMS over the free steps (step 0 aside) of the
        gradient of each sequence's negative ELBO with respect to the detector's
        log-odds; it falls to ~0 when the detector saturates."""
        logits = out.boundary_logits
        free = out.free.clone()
        free[:, 0] = False
        if logits is None or not logits.requires_grad or not free.any():
            return {}
        (grad,) = torch.autograd.grad(out.train_loss, logits)
        per_sequence = grad * logits.numel()  # train_loss averages over B sequences and S steps
        return {"eval/boundary_logit_grad": per_sequence[free].square().mean().sqrt().item()}

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
