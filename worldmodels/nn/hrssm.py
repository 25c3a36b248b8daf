"""Hierarchical recurrent state-space model of VTA (Kim, Ahn & Bengio, NeurIPS 2019).

Two levels share one time axis. Binary boundaries ``m_t`` cut the sequence into
segments (``m_t = 1``: a segment starts at ``t``). The abstract level holds
``(c_t, z_t)`` and changes only at boundaries; the observation level holds
``(h_t, s_t)``, restarts from the abstract state at each boundary and steps every
frame::

    c_t = m_t GRU_c(z_{t-1}, c_{t-1}) + (1 - m_t) c_{t-1}
    z_t ~ m_t q(z | c_t, b_t) + (1 - m_t) delta(z_{t-1})        prior p(z | c_t)
    f_t = F_abs(c_t, z_t)
    h_t = m_t H_0(f_t) + (1 - m_t) GRU_h([s_{t-1}, f_t, a_{t-1}], h_{t-1})
    s_t ~ q(s | h_t, e_t)                                        prior p(s | h_t)
    o_t = F_obs(h_t, s_t)  ->  decoder;   p(m_{t+1} | o_t)       (prior boundary)

``e_t`` is the frame embedding and ``b_t`` a backward summary of the frames of the
segment that starts at ``t``. The posterior boundaries come from a convolutional
detector over the embeddings and are drawn with the straight-through Gumbel-sigmoid
sampler of :func:`worldmodels.ops.boundary_sample` under the ``seg_len``/``seg_num``
limits; the same limits fix the prior's logits where they decide. The KL terms are

    KL_abs = sum_t m_t KL(q(z_t) || p(z_t)),  KL_obs = sum_t KL(q(s_t) || p(s_t)),
    KL_mask = sum_{t>0} KL(Bern(q(m_t)) || Bern(p(m_t | o_{t-1}))).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from ..ops import sampling as sampling_ops
from ..ops.sampling import CONSTRAINED_LOGIT, BoundarySample, boundary_constraints
from .gru import GRUCell

Tensor = torch.Tensor


@dataclass
class HRSSMConfig:
    feat_size: int = 128        # frame embeddings and level features
    belief_size: int = 128      # deterministic states c (abstract) and h (observation)
    state_size: int = 8         # Gaussian latents z and s
    action_size: int = 0        # 0: no actions
    boundary_layers: int = 3    # Conv1d layers of the posterior boundary detector
    seg_len: int = 8            # the longest segment
    seg_num: int = 5            # the most segments in the modelled window
    min_std: float = 0.1
    logit_bound: float | None = None  # boundary log-odds squashed into (-bound, bound); None: free

    def __post_init__(self) -> None:
        for name in ("feat_size", "belief_size", "state_size", "boundary_layers", "seg_len", "seg_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.logit_bound is not None and self.logit_bound <= 0:
            raise ValueError(f"logit_bound={self.logit_bound} must be None or > 0.")
        if self.action_size < 0:
            raise ValueError(f"action_size={self.action_size} must be >= 0.")


class GaussianHead(nn.Module):
    """Features -> diagonal Normal over ``size`` units (std >= ``min_std``)."""

    def __init__(self, in_size: int, hidden: int, size: int, min_std: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_size, hidden), nn.ELU(), nn.Linear(hidden, 2 * size))
        self.min_std = min_std

    def forward(self, x: Tensor) -> Normal:
        mean, raw_std = self.net(x).chunk(2, dim=-1)
        return Normal(mean, F.softplus(raw_std) + self.min_std)


def soft_bound(logits: Tensor, bound: float | None) -> Tensor:
    """``bound * tanh(logits / bound)``: log-odds kept inside ``(-bound, bound)``, the
    identity near 0. Bounded boundary log-odds keep every boundary probability above
    ``sigmoid(-bound)``, so the sampler keeps exploring and the straight-through
    gradient never vanishes the way it does once a sigmoid saturates."""
    return logits if bound is None else bound * torch.tanh(logits / bound)


class BoundaryDetector(nn.Module):
    """Posterior boundary log-odds ``[B, L]`` from embeddings ``[B, L, F]``: LayerNorm,
    then a stack of non-causal Conv1d layers (kernel 3), so ``m_t`` sees the frames
    around ``t``. The LayerNorm keeps the logits' scale independent of how large the
    encoder's features grow, so the sampler does not saturate early in training."""

    def __init__(self, in_size: int, hidden: int, layers: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_size)
        convs: list[nn.Module] = []
        for index in range(layers):
            convs += [nn.Conv1d(in_size if index == 0 else hidden, hidden, 3, padding=1), nn.ELU()]
        self.convs = nn.Sequential(*convs)
        self.out = nn.Conv1d(hidden, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.convs(self.norm(x).transpose(1, 2))).squeeze(1)


@dataclass
class HRSSMOutput:
    """Per-step results over the modelled window of ``S`` steps."""

    feat: Tensor                 # [B, S, F] observation-level features to decode
    boundary: BoundarySample     # posterior: mask, probs [B, S], log_probs [B, S, 2]
    prior_boundary_log_probs: Tensor  # [B, S, 2]; step 0 (always a boundary) is fixed
    kl_abs: Tensor               # [B, S]
    kl_obs: Tensor               # [B, S]
    kl_mask: Tensor              # [B, S] (0 at step 0)
    abs_entropy: Tensor          # [B, S] entropy of q(z_t) (counted where m_t = 1)
    obs_entropy: Tensor          # [B, S]


class HierarchicalRSSM(nn.Module):
    """The two-level latent model of VTA over frame embeddings (see module docstring)."""

    def __init__(self, config: HRSSMConfig):
        super().__init__()
        self.config = c = config
        feat, belief, state, act = c.feat_size, c.belief_size, c.state_size, c.action_size
        self.post_boundary = BoundaryDetector(feat + act, feat, c.boundary_layers)
        self.prior_boundary = nn.Linear(feat, 1)
        self.segment_summary = GRUCell(feat, belief)          # backward, reset at segment ends
        self.update_abs_belief = GRUCell(state, belief)
        self.prior_abs = GaussianHead(belief, belief, state, c.min_std)
        self.post_abs = GaussianHead(2 * belief, belief, state, c.min_std)
        self.abs_feat = nn.Sequential(nn.Linear(belief + state, feat), nn.ELU())
        self.init_obs_belief = nn.Sequential(nn.Linear(feat, belief), nn.Tanh())
        self.update_obs_belief = GRUCell(state + feat + act, belief)
        self.prior_obs = GaussianHead(belief, belief, state, c.min_std)
        self.post_obs = GaussianHead(belief + feat, belief, state, c.min_std)
        self.obs_feat = nn.Sequential(nn.Linear(belief + state, feat), nn.ELU())

    def sample_boundaries(self, embed: Tensor, action: Tensor, init_size: int, seq_size: int,
                          beta: float, noise: Tensor | None = None, frozen: bool = False) -> BoundarySample:
        """Posterior boundaries of the window ``[init_size, init_size + seq_size)``:
        Gumbel-sigmoid draws in training, the most likely boundaries (``q(m_t) > 1/2``,
        within the segment limits) in eval mode unless ``noise`` is given; ``frozen``:
        no gradient reaches the detector (boundary warm-up)."""
        logits = soft_bound(self.post_boundary(torch.cat([embed, action], dim=-1)), self.config.logit_bound)
        if frozen:
            logits = logits.detach()
        window = logits[:, init_size : init_size + seq_size]
        if noise is None and not self.training:
            noise = window.new_full(window.shape, 0.5)  # no logistic noise: m_t = [q(m_t) > 1/2]
        return sampling_ops.boundary_sample(window, beta, self.config.seg_len, self.config.seg_num, noise=noise)

    def segment_summaries(self, embed: Tensor, mask: Tensor) -> Tensor:
        """``b_t``: a backward GRU over the window's embeddings ``[B, S, F]`` that
        restarts where the next step starts a segment, so ``b_t`` summarises the
        frames from ``t`` to the end of its segment. Returns ``[B, S, belief]``."""
        batch, steps = mask.shape
        summary = embed.new_zeros(batch, self.config.belief_size)
        out = []
        for t in reversed(range(steps)):
            if t + 1 < steps:
                summary = summary * (1 - mask[:, t + 1 : t + 2])
            summary = self.segment_summary(embed[:, t], summary)
            out.append(summary)
        return torch.stack(out[::-1], dim=1)

    def given_boundaries(self, proposal: Tensor) -> BoundarySample:
        """Boundaries fixed from outside (ground-truth events, a baseline): bool
        ``[B, S]`` proposals under the ``seg_len``/``seg_num`` limits, as a sample
        whose posterior is the point mass on the mask (``KL_mask = -log p(m)``)."""
        proposal = proposal.bool()
        forced, forbidden = boundary_constraints(proposal, self.config.seg_len, self.config.seg_num)
        mask = ((proposal | forced) & ~forbidden).float()
        log_probs = torch.stack([torch.log1p(-mask), torch.log(mask)], dim=-1)
        return BoundarySample(mask, mask, log_probs)

    def forward(self, embed: Tensor, action: Tensor, init_size: int, seq_size: int,
                beta: float, noise: Tensor | None = None, freeze_boundaries: bool = False,
                boundaries: Tensor | None = None) -> HRSSMOutput:
        """Infer both levels over the window ``[init_size, init_size + seq_size)``.

        Args:
            embed: frame embeddings ``[B, L, F]`` with ``L >= init_size + seq_size``
                (frames outside the window only inform the boundary detector).
            action: ``[B, L, A]``; ``action[:, t]`` is the action taken after frame ``t``.
            beta: Gumbel-sigmoid temperature of the boundary sampler.
            noise: optional uniform noise ``[B, seq_size]`` for the boundary draws.
            freeze_boundaries: keep the boundary detector out of the gradient.
            boundaries: optional bool ``[B, seq_size]``: use these boundaries (under
                the segment limits, see :meth:`given_boundaries`) instead of the detector's.
        """
        self._check(embed, action, init_size, seq_size)
        if boundaries is not None:
            if boundaries.shape != (embed.shape[0], seq_size):
                raise ValueError(f"boundaries must be [B, seq_size] = {[embed.shape[0], seq_size]}, "
                                 f"got {list(boundaries.shape)}.")
            boundary = self.given_boundaries(boundaries)
        else:
            boundary = self.sample_boundaries(embed, action, init_size, seq_size, beta, noise, freeze_boundaries)
        x, mask = embed[:, init_size : init_size + seq_size], boundary.mask
        prev_action = F.pad(action, (0, 0, 1, 0))[:, init_size : init_size + seq_size]
        summaries = self.segment_summaries(x, mask)
        state, records = None, []
        for t in range(seq_size):
            state, record = self._transition(state, x[:, t], mask[:, t : t + 1], summaries[:, t], prev_action[:, t])
            records.append(record)
        stacked = {key: torch.stack([r[key] for r in records], dim=1) for key in records[0]}
        prior_log_probs = self.prior_boundary_log_probs(stacked["feat"], mask)
        return HRSSMOutput(
            feat=stacked["feat"], boundary=boundary, prior_boundary_log_probs=prior_log_probs,
            kl_abs=stacked["kl_abs"], kl_obs=stacked["kl_obs"],
            kl_mask=bernoulli_kl(boundary.log_probs, prior_log_probs),
            abs_entropy=stacked["abs_entropy"], obs_entropy=stacked["obs_entropy"],
        )

    def _transition(self, state, embed_t: Tensor, read: Tensor, summary_t: Tensor, action_t: Tensor):
        """One posterior step; ``read`` is ``m_t`` as ``[B, 1]``."""
        batch, c = embed_t.shape[0], self.config
        if state is None:
            zeros = embed_t.new_zeros
            state = (zeros(batch, c.belief_size), zeros(batch, c.state_size),
                     zeros(batch, c.belief_size), zeros(batch, c.state_size))
        abs_belief, abs_state, obs_belief, obs_state = state
        copy = 1 - read
        abs_belief = read * self.update_abs_belief(abs_state, abs_belief) + copy * abs_belief
        prior_abs = self.prior_abs(abs_belief)
        post_abs = self.post_abs(torch.cat([abs_belief, summary_t], dim=-1))
        abs_state = read * post_abs.rsample() + copy * abs_state
        abs_feat = self.abs_feat(torch.cat([abs_belief, abs_state], dim=-1))
        updated = self.update_obs_belief(torch.cat([obs_state, abs_feat, action_t], dim=-1), obs_belief)
        obs_belief = read * self.init_obs_belief(abs_feat) + copy * updated
        prior_obs = self.prior_obs(obs_belief)
        post_obs = self.post_obs(torch.cat([obs_belief, embed_t], dim=-1))
        obs_state = post_obs.rsample()
        record = {
            "feat": self.obs_feat(torch.cat([obs_belief, obs_state], dim=-1)),
            "kl_abs": read.squeeze(-1) * kl_divergence(post_abs, prior_abs).sum(-1),
            "kl_obs": kl_divergence(post_obs, prior_obs).sum(-1),
            "abs_entropy": post_abs.entropy().sum(-1),
            "obs_entropy": post_obs.entropy().sum(-1),
        }
        return (abs_belief, abs_state, obs_belief, obs_state), record

    @torch.no_grad()
    def imagine(self, embed: Tensor, action: Tensor, init_size: int, context: int, horizon: int,
                beta: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Filter ``context`` steps of the window with the posterior, then sample
        ``horizon`` steps from the prior (boundaries included).

        Returns observation features ``[B, context + horizon, F]`` and the boundary
        mask ``[B, context + horizon]`` (posterior, then prior samples).
        """
        steps = context + horizon
        self._check(embed, action, init_size, steps)
        boundary = self.sample_boundaries(embed, action, init_size, steps, beta)
        x, mask = embed[:, init_size : init_size + context], boundary.mask[:, :context]
        prev_action = F.pad(action, (0, 0, 1, 0))[:, init_size : init_size + steps]
        summaries = self.segment_summaries(x, mask)
        state, feats, masks = None, [], [mask]
        for t in range(context):
            state, record = self._transition(state, x[:, t], mask[:, t : t + 1], summaries[:, t], prev_action[:, t])
            feats.append(record["feat"])
        length = self._current_segment_length(mask)
        count = mask.sum(1)
        for t in range(context, steps):
            p_boundary = torch.sigmoid(self.prior_boundary_logits(feats[-1]))
            draw = torch.rand(p_boundary.shape, generator=generator).to(p_boundary.device) < p_boundary
            read = (length >= self.config.seg_len) | (draw & (count < self.config.seg_num))
            state, feat = self._prior_step(state, read.float().unsqueeze(-1), prev_action[:, t])
            feats.append(feat)
            masks.append(read.float().unsqueeze(-1))
            count = count + read.float()
            length = torch.where(read, torch.ones_like(length), length + 1)
        return torch.stack(feats, dim=1), torch.cat(masks, dim=1)

    @torch.no_grad()
    def jumpy_imagine(self, embed: Tensor, action: Tensor, init_size: int, context: int,
                      segments: int, beta: float) -> Tensor:
        """Filter ``context`` steps, then roll the abstract level alone for
        ``segments`` segments, decoding the first frame of each: ``[B, segments, F]``."""
        self._check(embed, action, init_size, context)
        boundary = self.sample_boundaries(embed, action, init_size, context, beta)
        x, mask = embed[:, init_size : init_size + context], boundary.mask
        prev_action = F.pad(action, (0, 0, 1, 0))[:, init_size : init_size + context]
        summaries = self.segment_summaries(x, mask)
        state = None
        for t in range(context):
            state, _ = self._transition(state, x[:, t], mask[:, t : t + 1], summaries[:, t], prev_action[:, t])
        read = x.new_ones(x.shape[0], 1)
        no_action = x.new_zeros(x.shape[0], self.config.action_size)
        feats = []
        for _ in range(segments):
            state, feat = self._prior_step(state, read, no_action)
            feats.append(feat)
        return torch.stack(feats, dim=1)

    def _prior_step(self, state, read: Tensor, action_t: Tensor):
        """One step of the generative model with boundary ``read`` ``[B, 1]``."""
        abs_belief, abs_state, obs_belief, obs_state = state
        copy = 1 - read
        abs_belief = read * self.update_abs_belief(abs_state, abs_belief) + copy * abs_belief
        abs_state = read * self.prior_abs(abs_belief).rsample() + copy * abs_state
        abs_feat = self.abs_feat(torch.cat([abs_belief, abs_state], dim=-1))
        updated = self.update_obs_belief(torch.cat([obs_state, abs_feat, action_t], dim=-1), obs_belief)
        obs_belief = read * self.init_obs_belief(abs_feat) + copy * updated
        obs_state = self.prior_obs(obs_belief).rsample()
        feat = self.obs_feat(torch.cat([obs_belief, obs_state], dim=-1))
        return (abs_belief, abs_state, obs_belief, obs_state), feat

    @staticmethod
    def _current_segment_length(mask: Tensor) -> Tensor:
        """Length of the segment still open at the end of ``mask`` ``[B, T]``."""
        steps = torch.arange(mask.shape[1], device=mask.device)
        last_start = torch.where(mask > 0.5, steps, torch.zeros_like(steps)).amax(dim=1)
        return (mask.shape[1] - last_start).float()

    def prior_boundary_logits(self, feat: Tensor) -> Tensor:
        """Log-odds of ``p(m_{t+1} = 1 | o_t)`` from observation features ``[..., F]``."""
        return soft_bound(self.prior_boundary(feat).squeeze(-1), self.config.logit_bound)

    def prior_boundary_log_probs(self, feat: Tensor, mask: Tensor) -> Tensor:
        """``log p(m_t | o_{t-1})`` ``[B, S, 2]`` with the segment limits applied where
        they decide (the same steps the posterior's limits decided)."""
        logits = F.pad(self.prior_boundary_logits(feat[:, :-1]), (1, 0))
        forced, forbidden = boundary_constraints(mask.detach() > 0.5, self.config.seg_len, self.config.seg_num)
        fixed = torch.where(forced, CONSTRAINED_LOGIT, -CONSTRAINED_LOGIT).to(logits.dtype)
        logits = torch.where(forced | forbidden, fixed, logits)
        return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)

    def _check(self, embed: Tensor, action: Tensor, init_size: int, seq_size: int) -> None:
        c = self.config
        if embed.dim() != 3 or embed.shape[-1] != c.feat_size:
            raise ValueError(f"embed must be [B, L, {c.feat_size}], got {list(embed.shape)}.")
        if action.shape[:2] != embed.shape[:2] or action.shape[-1] != c.action_size:
            raise ValueError(
                f"action must be [B, L, {c.action_size}] matching embed {list(embed.shape[:2])}, "
                f"got {list(action.shape)}."
            )
        if init_size < 0 or seq_size < 1 or init_size + seq_size > embed.shape[1]:
            raise ValueError(
                f"init_size={init_size} + seq_size={seq_size} must fit in the {embed.shape[1]} given steps "
                "(seq_size >= 1)."
            )


def bernoulli_kl(q_log_probs: Tensor, p_log_probs: Tensor) -> Tensor:
    """``KL(q || p)`` of two-class distributions given as log-probabilities ``[..., 2]``
    (a class with ``q = 0`` contributes nothing, so point masses are allowed)."""
    q_log_probs = q_log_probs.clamp_min(-1e4)  # log 0 -> a finite stand-in: 0 * finite = 0
    return (q_log_probs.exp() * (q_log_probs - p_log_probs)).sum(-1)
