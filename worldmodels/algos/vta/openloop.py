"""VTA as an offline open-loop frame predictor (issue 20's cross-family table).

VTA is action-free (``uses_actions = False``): actions are accepted and ignored, so the
table's true-versus-shuffled-actions gap is zero by construction.

Training: one AdamW update of VTA's own loss (the negative ELBO per frame,
:meth:`~worldmodels.algos.vta.model.VTA.forward`) on the window: its first
``init_size`` frames start the abstract level (the forward summary ``c_0 = a_{-1}``),
the remaining ``T - init_size`` frames are the modelled window (the original code's
``seq_size``). So a window of ``T`` frames needs ``T - init_size <= seg_len * seg_num``
(the segment limits must be able to cover it); the sizes below take windows of up to
``init_size + seg_len * seg_num`` frames (32 for both). Unlike the VTA experiments there
are no frames after the modelled window for the boundary detector (the table's windows
are short).

Frames are RGB floats; the reconstruction term is the Gaussian NLL with ``obs_std`` 0.1
(as the maze config: the original's 1.0 weighs a frame about 100x less against the KL
terms), on raw [0, 1] pixels (no bit quantisation).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ...errors import WorldModelsError
from ...training.openloop import clipped_step, unknown_size
from .model import VTA, VTAConfig, quantize

Tensor = torch.Tensor

# init_size 2, seg_len 5, seg_num 6 (windows up to 32 frames), Gaussian NLL with obs_std 0.1,
# lr 1e-3 (the maze experiment's). tiny: narrow convolutions and 64-unit states; small: the
# package's VTA widths (128-unit states) with a fourth stage for 64x64 frames.
SIZES = {
    "tiny": {"widths": [16, 32, 64, 64], "feat_size": 64, "belief_size": 64, "state_size": 8, "boundary_layers": 2},
    "small": {"widths": [32, 64, 128, 128], "feat_size": 128, "belief_size": 128, "state_size": 8,
              "boundary_layers": 3},
}
COMMON = {"init_size": 2, "seg_len": 5, "seg_num": 6, "loss_type": "gaussian", "obs_std": 0.1}
LEARNING_RATE = 1e-3
GRAD_CLIP = 100.0    # the training loop's default train.grad_clip


class VTAOpenLoop:
    """VTA as an open-loop predictor (the ``OpenLoopModel`` protocol of
    :mod:`worldmodels.training.openloop`); see the module docstring."""

    name = "vta"
    uses_actions = False

    def __init__(self, model: VTA, device: str | torch.device):
        self.model = model.to(device)
        self.device = torch.device(device)
        c = model.config
        self.frame_shape = (c.channels, c.image_size, c.image_size)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def train_step(self, frames: Tensor, actions: Tensor) -> dict[str, float]:
        """One AdamW update of VTA's negative ELBO on the window (actions ignored)."""
        self._check_frames(frames)
        c = self.model.config
        seq_size = frames.shape[1] - c.init_size
        if not 1 <= seq_size <= c.seg_len * c.seg_num:
            raise WorldModelsError(f"VTA's open-loop windows hold init_size={c.init_size} frames plus 1 .. "
                                   f"seg_len * seg_num = {c.seg_len * c.seg_num}; got T={frames.shape[1]}.")
        frames = frames.to(self.device)
        self.model.train()
        no_actions = frames.new_zeros(*frames.shape[:2], 0)
        out = self.model(frames, no_actions, seq_size, c.init_size, c.obs_std, c.loss_type)
        clipped_step(self.optimizer, self.model.parameters(), out.train_loss, GRAD_CLIP)
        self.model.step += 1      # the boundary temperature's schedule, as VTA.compute_loss counts it
        terms = {"loss": out.train_loss, "obs_cost": out.obs_cost.mean(), "kl_abs": out.kl_abs.mean(),
                 "kl_obs": out.kl_obs.mean(), "kl_mask": out.kl_mask.mean(),
                 "boundary_rate": out.mask[:, 1:].float().mean()}
        return {name: float(value.detach()) for name, value in terms.items()}

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, horizon: int) -> Tensor:
        """Open loop, deterministic: the posterior over the ``K`` context frames (the
        detector's most likely boundaries, the **posterior means** of ``z`` and ``s``;
        the first ``min(init_size, K - 1)`` frames only start the abstract level), then
        ``horizon`` steps of the prior, each with a boundary where ``p(m_{t+1} | o_t) >
        1/2`` (or the segment limits force one) and the **prior means** of ``z`` and
        ``s``, decoded to their mean frames. ``actions [B, K + horizon - 1]`` are
        checked and ignored. Returns ``[B, horizon, C, H, W]`` in [0, 1]."""
        self._check_frames(context)
        expected = context.shape[1] + horizon - 1
        if horizon < 1 or actions.dim() != 2 or tuple(actions.shape) != (context.shape[0], expected):
            raise WorldModelsError(f"rollout: horizon={horizon} must be >= 1 and actions [B, K + horizon - 1] = "
                                   f"[{context.shape[0]}, {expected}], got {list(actions.shape)}.")
        self.model.eval()
        state, feat, mask = self._filter_context(context.to(self.device))
        hrssm, c = self.model.hrssm, self.model.config
        length, count = hrssm._current_segment_length(mask), mask.sum(1)
        no_action = feat.new_zeros(len(feat), 0)
        feats = []
        for _ in range(horizon):
            likely = hrssm.prior_boundary_logits(feat) > 0
            read = (length >= c.seg_len) | (likely & (count < c.seg_num))
            state, feat = self._prior_mean_step(state, read.float().unsqueeze(-1), no_action)
            feats.append(feat)
            count = count + read.float()
            length = torch.where(read, torch.ones_like(length), length + 1)
        return self.model.to_image(self.model.decode(torch.stack(feats, dim=1)))

    def _filter_context(self, context: Tensor) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """The posterior state after the context, its last observation feature ``[B, F]``
        and the context's boundary mask ``[B, K - init]`` (eval mode: the most likely
        boundaries; zero latent noise: the posterior means)."""
        hrssm, c = self.model.hrssm, self.model.config
        init = min(c.init_size, context.shape[1] - 1)
        embed = self.model.embed(quantize(context, c.obs_bit, dequantize=False))
        no_actions = embed.new_zeros(*embed.shape[:2], 0)
        logits = hrssm.boundary_logits(embed, no_actions)[:, init:]
        mask = hrssm.sample_boundaries(logits, self.model.mask_beta()).mask
        means = embed.new_zeros(*mask.shape, 2, c.state_size)
        state, records = hrssm._filter(hrssm._window(embed, no_actions, init, mask, means))
        return state, records["feat"][:, -1], mask

    def _prior_mean_step(self, state: tuple[Tensor, ...], read: Tensor, action: Tensor):
        """One step of VTA's generative model (:meth:`HierarchicalRSSM._prior_step`) with
        the prior means of ``z`` and ``s`` in place of samples."""
        hrssm = self.model.hrssm
        abs_belief, abs_state, obs_belief, obs_state = state
        copy = 1 - read
        abs_belief = read * hrssm.update_abs_belief(abs_state, abs_belief) + copy * abs_belief
        abs_state = read * hrssm.prior_abs(abs_belief).mean + copy * abs_state
        abs_feat = hrssm.abs_feat(torch.cat([abs_belief, abs_state], dim=-1))
        updated = hrssm.update_obs_belief(torch.cat([obs_state, abs_feat, action], dim=-1), obs_belief)
        obs_belief = read * hrssm.init_obs_belief(abs_feat) + copy * updated
        obs_state = hrssm.prior_obs(obs_belief).mean
        feat = hrssm.obs_feat(torch.cat([obs_belief, obs_state], dim=-1))
        return (abs_belief, abs_state, obs_belief, obs_state), feat

    def _check_frames(self, frames: Tensor) -> None:
        if frames.dim() != 5 or tuple(frames.shape[2:]) != self.frame_shape or not frames.is_floating_point():
            raise WorldModelsError(f"frames must be float [B, T, {', '.join(map(str, self.frame_shape))}] in "
                                   f"[0, 1], got {list(frames.shape)} {frames.dtype}.")


def build_openloop(frame_shape: tuple[int, int, int], num_actions: int, size: str, seed: int,
                   device: str) -> VTAOpenLoop:
    """VTA at ``size`` (``tiny`` or ``small``) for ``frame_shape (C, H, W)`` square frames of
    side ``4 * 2**k``; ``num_actions`` is unused (VTA is action-free)."""
    if size not in SIZES:
        raise WorldModelsError(unknown_size(size))
    channels, height, width = frame_shape
    if height != width:
        raise WorldModelsError(f"VTA needs square frames, got {height}x{width}.")
    torch.manual_seed(seed)
    try:
        config = VTAConfig(image_size=height, channels=channels, action_size=0, **SIZES[size], **COMMON)
        return VTAOpenLoop(VTA(config), device)
    except ValueError as error:   # a frame side the convolutions cannot take
        raise WorldModelsError(f"vta open-loop: {error}") from error


__all__ = ["COMMON", "SIZES", "VTAOpenLoop", "build_openloop"]
