"""The controller's input scale (``controller_input``): raw features or standardized ones.

``raw`` (the paper's and the authors' code): the controller reads ``[z, h]`` or
``[z, h, c]`` as M gives them. ``standardized``: each feature minus its mean, over its
std, both measured once on M's features over the encoded training episodes (M reads
each episode's posterior means and recorded actions from a zero state, as the real-env
controller does) and stored in the controller checkpoint, so that a resumed search, the
evaluation and the videos apply the same numbers in the real env and in the dream.

The saturation probe (:func:`saturation`) says how much of a population acts bang-bang:
the median ``|pre-activation|`` of the tanh and the fraction of steps with
``|tanh| > 0.99``, on a fixed sample of those features (:func:`probe_features`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .controller import ControllerSpec, FeatureScale, unpack
from .mdnrnn import MDNRNN

STD_FLOOR = 1e-3          # a feature (nearly) constant on the training data is centred, not blown up
SATURATED = 0.99          # |tanh| above this counts as a saturated step
PROBE_EPISODES = 64       # episodes whose features the saturation probe samples
PROBE_ROWS = 4096         # feature rows it keeps
EPISODE_BATCH = 256       # episodes M reads together


def raw_spec(spec: ControllerSpec) -> ControllerSpec:
    """``spec`` without its scale."""
    return ControllerSpec(spec.inputs, spec.bias)


@torch.no_grad()
def episode_features(model: MDNRNN, latents: dict[str, np.ndarray], spec: ControllerSpec,
                     episodes: np.ndarray, device: torch.device) -> Iterator[torch.Tensor]:
    """Raw controller features ``[n, F]`` (float32) at every step of ``episodes`` of
    ``latents.npz``, ``EPISODE_BATCH`` episodes at a time: step t reads the posterior
    mean z_t and M's state after the steps before t."""
    spec = raw_spec(spec)
    last_frame, last_step = len(latents["mu"]) - 1, len(latents["action"]) - 1
    for first in range(0, len(episodes), EPISODE_BATCH):
        chunk = episodes[first:first + EPISODE_BATCH]
        lengths = latents["lengths"][chunk]
        steps = np.arange(int(lengths.max()))
        frames = np.minimum(latents["frame_starts"][chunk][:, None] + steps, last_frame)   # padding is masked out
        actions = np.minimum(latents["step_starts"][chunk][:, None] + steps, last_step)
        z = torch.from_numpy(np.ascontiguousarray(latents["mu"][frames], np.float32)).to(device)
        action = torch.from_numpy(np.ascontiguousarray(latents["action"][actions], np.float32)).to(device)
        valid = torch.from_numpy(steps[None, :] < lengths[:, None]).to(device)
        state = model.initial_state(len(chunk), device)
        rows = []
        for t in steps:
            rows.append(spec.features(z[:, t], state)[valid[:, t]])
            state = model.step(z[:, t], action[:, t], state)
        yield torch.cat(rows)


def measure_scale(model: MDNRNN, latents: dict[str, np.ndarray], spec: ControllerSpec,
                  device: torch.device) -> FeatureScale:
    """Mean and std (population, floored at ``STD_FLOOR``) of every feature over all the
    training episodes' steps, merged batch by batch in float64 (Chan et al.)."""
    count, mean, m2 = 0, None, None
    for rows in episode_features(model, latents, spec, np.arange(len(latents["lengths"])), device):
        rows = rows.double()
        n, batch_mean = len(rows), rows.mean(0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = n, batch_mean, batch_m2
            continue
        delta, total = batch_mean - mean, count + n
        mean = mean + delta * n / total
        m2 = m2 + batch_m2 + delta ** 2 * count * n / total
        count = total
    if mean is None:
        raise ValueError("no training steps to measure the controller's input scale on; run the encode stage.")
    std = (m2 / count).sqrt().clamp_min(STD_FLOOR)
    return FeatureScale(mean.float().cpu(), std.float().cpu())


def probe_features(model: MDNRNN, latents: dict[str, np.ndarray], spec: ControllerSpec, device: torch.device,
                   seed: int) -> torch.Tensor:
    """Up to ``PROBE_ROWS`` raw feature rows from up to ``PROBE_EPISODES`` training episodes (seeded)."""
    rng = np.random.default_rng([seed, 7])
    total = len(latents["lengths"])
    episodes = np.sort(rng.choice(total, min(total, PROBE_EPISODES), replace=False))
    rows = torch.cat(list(episode_features(model, latents, spec, episodes, device)))
    keep = np.sort(rng.choice(len(rows), min(len(rows), PROBE_ROWS), replace=False))
    return rows[torch.from_numpy(keep).to(rows.device)]


@torch.no_grad()
def saturation(theta: torch.Tensor, features: torch.Tensor, spec: ControllerSpec) -> dict[str, float]:
    """``median_abs_preactivation`` and ``saturated_fraction`` (``|tanh| > 0.99``) of the
    candidates ``theta [P, n]`` on raw ``features [N, F]`` (scaled by ``spec.scale`` when set)."""
    inputs = features if spec.scale is None else spec.scale.to(features.device)(features)
    weight, bias = unpack(theta.to(features.dtype), inputs.shape[-1], theta.shape[1] // (
        inputs.shape[-1] + (1 if spec.bias else 0)), spec.bias)
    pre = torch.matmul(inputs, weight)                   # [P, N, A]
    if bias is not None:
        pre = pre + bias
    return {"median_abs_preactivation": float(pre.abs().median()),
            "saturated_fraction": float((pre.tanh().abs() > SATURATED).float().mean())}
