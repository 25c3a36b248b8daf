"""Scoring learned boundaries against ground-truth events (collisions, turns).

Step 0 of the window is a boundary by construction and is left out. A predicted
boundary counts as correct when a true event lies within ``tolerance`` steps of it
(precision); a true event counts as found when a predicted boundary lies within
``tolerance`` steps of it (recall).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def dilate(events: Tensor, tolerance: int) -> Tensor:
    """Bool ``[B, T]``: True within ``tolerance`` steps of an event."""
    if tolerance == 0:
        return events
    width = 2 * tolerance + 1
    spread = F.max_pool1d(events.float().unsqueeze(1), width, stride=1, padding=tolerance)
    return spread.squeeze(1) > 0


def boundary_scores(predicted: Tensor, truth: Tensor, tolerance: int = 1) -> dict[str, float]:
    """Precision, recall and F1 of ``predicted`` against ``truth`` (bool ``[B, T]``)."""
    if predicted.shape != truth.shape or predicted.dim() != 2:
        raise ValueError(f"predicted {list(predicted.shape)} and truth {list(truth.shape)} must both be [B, T].")
    predicted, truth = predicted[:, 1:].bool(), truth[:, 1:].bool()
    hits = (predicted & dilate(truth, tolerance)).sum().item()
    found = (truth & dilate(predicted, tolerance)).sum().item()
    n_pred, n_true = predicted.sum().item(), truth.sum().item()
    precision = hits / n_pred if n_pred else 0.0
    recall = found / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "rate": n_pred / max(predicted.numel(), 1)}


def random_boundaries(shape: torch.Size, rate: float, generator: torch.Generator) -> Tensor:
    """Bernoulli(``rate``) boundaries with the forced first step, for a baseline."""
    draws = torch.rand(shape, generator=generator) < rate
    draws[:, 0] = True
    return draws


def periodic_boundaries(shape: torch.Size, rate: float, generator: torch.Generator) -> Tensor:
    """A boundary every ``k = round(1 / rate)`` steps at a random phase per sequence,
    with the forced first step: the baseline of a detector that only keeps time."""
    batch, steps = shape
    if rate <= 0:
        return random_boundaries(shape, 0.0, generator)
    period = max(1, round(1.0 / rate))
    phase = torch.randint(0, period, (batch, 1), generator=generator)
    marks = (torch.arange(steps).unsqueeze(0) - phase) % period == 0
    marks[:, 0] = True
    return marks
