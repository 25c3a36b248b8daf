"""Hierarchical recurrent state-space model of VTA (Kim, Ahn & Bengio, NeurIPS 2019).

Two levels share one time axis. Binary boundaries ``m_t`` cut the sequence into
segments (``m_t = 1``: a segment starts at ``t``). The abstract level holds
``(c_t, z_t)`` and changes only at boundaries; the observation level holds
``(h_t, s_t)``, restarts from the abstract state at each boundary and steps every
frame::

    c_0 = a_{-1};  c_t = m_t GRU_c(z_{t-1}, c_{t-1}) + (1 - m_t) c_{t-1}
    z_t ~ m_t q(z | a_{t-1}, b_t) + (1 - m_t) delta(z_{t-1})     prior p(z | c_t)
    f_t = F_abs(c_t, z_t)
    h_t = m_t H_0(f_t) + (1 - m_t) GRU_h([s_{t-1}, f_t, a^act_{t-1}], h_{t-1})
    s_t ~ q(s | h_t, e_t)                                        prior p(s | h_t)
    o_t = F_obs(h_t, s_t)  ->  decoder;   p(m_{t+1} | o_t)       (prior boundary)

``e_t`` is the frame embedding, ``a_t`` a forward GRU summary of every frame up to
``t`` (the context frames before the window included, so ``c_0 = a_{-1}`` starts the
abstract level from the context, as the original code does) and ``b_t`` a backward
summary of the frames of the segment that starts at ``t``. The posterior boundaries
come from a convolutional detector over the embeddings and are drawn with the
straight-through Gumbel-sigmoid sampler of :func:`worldmodels.ops.boundary_sample`
under the ``seg_len``/``seg_num`` limits; the same limits fix the prior's log-odds
(to ``±log 999``) where they decide. The KL terms are

    KL_abs = sum_t m_t KL(q(z_t) || p(z_t)),  KL_obs = sum_t KL(q(s_t) || p(s_t)),
    KL_mask = sum_{t>0} KL(Bern(q(m_t)) || Bern(p(m_t | o_{t-1}))).

With ``limits_in_kl="prior"`` (the original code's choice) ``q(m_t)`` in ``KL_mask``
is the detector's own probability even where the limits decided the sample, so a
detector that never fires pays about ``log 1000 = 6.9`` nats at every step where a
segment runs over ``seg_len``; with ``"both"`` those steps cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from ..ops import sampling as sampling_ops
from ..ops.sampling import CONSTRAINED_LOGIT, BoundarySample, boundary_constraints
from .gru import GRU, GRUCell
from .hrssm_parts import (DETECTOR_NORMS, BoundaryDetector, GaussianHead, bernoulli_kl,
                          bernoulli_log_probs, soft_bound)

Tensor = torch.Tensor
LIMITS_IN_KL = ("prior", "both")
__all__ = ["HRSSMConfig", "HRSSMOutput", "HierarchicalRSSM", "mask_kl"]


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
    detector_norm: str = "group"      # group | none (see BoundaryDetector)
    limits_in_kl: str = "prior"       # prior | both (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("feat_size", "belief_size", "state_size", "boundary_layers", "seg_len", "seg_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.logit_bound is not None and self.logit_bound <= 0:
            raise ValueError(f"logit_bound={self.logit_bound} must be None or > 0.")
        if self.action_size < 0:
            raise ValueError(f"action_size={self.action_size} must be >= 0.")
        if self.detector_norm not in DETECTOR_NORMS:
            raise ValueError(f"detector_norm={self.detector_norm!r} is not one of {DETECTOR_NORMS}.")
        if self.limits_in_kl not in LIMITS_IN_KL:
            raise ValueError(f"limits_in_kl={self.limits_in_kl!r} is not one of {LIMITS_IN_KL}.")


@dataclass
class HRSSMOutput:
    """Per-step results over the modelled window of ``S`` steps."""

    feat: Tensor                 # [B, S, F] observation-level features to decode
    boundary: BoundarySample     # posterior: mask, probs [B, S], log_probs [B, S, 2]
    boundary_logits: Tensor | None  # [B, S] the detector's log-odds (None for given boundaries)
    free: Tensor                 # [B, S] bool: steps where the sample decided (not the limits)
    posterior_boundary_log_probs: Tensor  # [B, S, 2]: the q(m_t) that KL_mask charges
    prior_boundary_log_probs: Tensor  # [B, S, 2]; step 0 (always a boundary) is fixed
    kl_abs: Tensor               # [B, S]
    kl_obs: Tensor               # [B, S]
    kl_mask: Tensor              # [B, S] (0 at step 0)
    abs_entropy: Tensor          # [B, S] entropy of q(z_t) (counted where m_t = 1)
    obs_entropy: Tensor          # [B, S]


@dataclass
class _Window:
    """The posterior's inputs at each window step."""

    embed: Tensor     # [B, S, F]
    mask: Tensor      # [B, S]
    past: Tensor      # [B, S, belief]: a_{t-1}, the forward summary before each step
    segment: Tensor   # [B, S, belief]: b_t, the backward summary of t's segment
    action: Tensor    # [B, S, A]: the action taken before each step
    noise: Tensor | None = None  # [B, S, 2, state]: N(0, I) draws for z_t and s_t; None: fresh


class HierarchicalRSSM(nn.Module):
    """The two-level latent model of VTA over frame embeddings (see module docstring)."""

    def __init__(self, config: HRSSMConfig):
        super().__init__()
        self.config = c = config
        feat, belief, state, act = c.feat_size, c.belief_size, c.state_size, c.action_size
        self.post_boundary = BoundaryDetector(feat + act, feat, c.boundary_layers, c.detector_norm,
                                              init_rate=1 / max(c.seg_len, 2))
        self.prior_boundary = nn.Linear(feat, 1)
        self.past_summary = GRU(feat, belief)                 # forward over every frame
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

    # ------------------------------------------------------------ boundaries

    def boundary_logits(self, embed: Tensor, action: Tensor) -> Tensor:
        """The detector's log-odds ``[B, L]`` of a boundary at every frame."""
        return soft_bound(self.post_boundary(torch.cat([embed, action], dim=-1)), self.config.logit_bound)

    def sample_boundaries(self, logits: Tensor, beta: float, noise: Tensor | None = None) -> BoundarySample:
        """Posterior boundaries from window log-odds ``[B, S]``: Gumbel-sigmoid draws in
        training, the most likely boundaries (``q(m_t) > 1/2``, within the segment
        limits) in eval mode unless ``noise`` is given."""
        if noise is None and not self.training:
            noise = logits.new_full(logits.shape, 0.5)  # no logistic noise: m_t = [q(m_t) > 1/2]
        return sampling_ops.boundary_sample(logits, beta, self.config.seg_len, self.config.seg_num, noise=noise)

    def given_boundaries(self, proposal: Tensor) -> BoundarySample:
        """Boundaries fixed from outside (ground-truth events, a baseline): bool
        ``[B, S]`` proposals under the ``seg_len``/``seg_num`` limits, as a sample
        whose posterior is the point mass on the mask (``KL_mask = -log p(m)``)."""
        proposal = proposal.bool()
        forced, forbidden = boundary_constraints(proposal, self.config.seg_len, self.config.seg_num)
        mask = ((proposal | forced) & ~forbidden).float()
        log_probs = torch.stack([torch.log1p(-mask), torch.log(mask)], dim=-1)
        return BoundarySample(mask, mask, log_probs)

    def limits(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(forced, forbidden)`` bool ``[B, S]``: where the segment limits decided a mask."""
        return boundary_constraints(mask.detach() > 0.5, self.config.seg_len, self.config.seg_num)

    # ------------------------------------------------------------ inference

    def forward(self, embed: Tensor, action: Tensor, init_size: int, seq_size: int,
                beta: float, noise: Tensor | None = None, boundaries: Tensor | None = None,
                boundary_logits: Tensor | None = None, freeze_boundaries: bool = False,
                latent_noise: Tensor | None = None) -> HRSSMOutput:
        """Infer both levels over the window ``[init_size, init_size + seq_size)``.

        Args:
            embed: frame embeddings ``[B, L, F]`` with ``L >= init_size + seq_size``
                (frames before the window start the abstract level; frames after it
                only inform the boundary detector).
            action: ``[B, L, A]``; ``action[:, t]`` is the action taken after frame ``t``.
            beta: Gumbel-sigmoid temperature of the boundary sampler.
            noise: optional uniform noise ``[B, seq_size]`` for the boundary draws.
            boundaries: optional bool ``[B, seq_size]``: use these boundaries (under
                the segment limits, see :meth:`given_boundaries`) instead of the detector's.
            boundary_logits: with ``boundaries``, the detector's log-odds ``[B, seq_size]``
                that drew them (a score-function estimator's draws): ``KL_mask`` charges
                them instead of the point mass on the given boundaries.
            freeze_boundaries: keep the boundary detector out of the gradient.
            latent_noise: optional ``N(0, I)`` draws ``[B, seq_size, 2, state]`` behind
                the posterior samples ``z_t = mu + sigma * noise[:, t, 0]`` and
                ``s_t = mu + sigma * noise[:, t, 1]`` (common random numbers: two
                boundary draws scored with the same noise differ by what their
                boundaries change, not by the latents' sampling noise).
        """
        self._check(embed, action, init_size, seq_size)
        window = slice(init_size, init_size + seq_size)
        logits = boundary_logits
        if boundaries is not None:
            if boundaries.shape != (embed.shape[0], seq_size):
                raise ValueError(f"boundaries must be [B, seq_size] = {[embed.shape[0], seq_size]}, "
                                 f"got {list(boundaries.shape)}.")
            boundary = self.given_boundaries(boundaries)
        else:
            logits = self.boundary_logits(embed, action)[:, window]
            if freeze_boundaries:
                logits = logits.detach()
            boundary = self.sample_boundaries(logits, beta, noise)
        inputs = self._window(embed, action, init_size, boundary.mask, latent_noise)
        _, records = self._filter(inputs)
        forced, forbidden = self.limits(boundary.mask)
        prior_log_probs = self.prior_boundary_log_probs(records["feat"], forced, forbidden)
        posterior_log_probs = self._posterior_for_kl(boundary, logits, forced, forbidden)
        return HRSSMOutput(
            feat=records["feat"], boundary=boundary, boundary_logits=logits, free=~(forced | forbidden),
            posterior_boundary_log_probs=posterior_log_probs, prior_boundary_log_probs=prior_log_probs,
            kl_abs=records["kl_abs"], kl_obs=records["kl_obs"],
            kl_mask=mask_kl(posterior_log_probs, prior_log_probs),
            abs_entropy=records["abs_entropy"], obs_entropy=records["obs_entropy"],
        )

    def _posterior_for_kl(self, boundary: BoundarySample, logits: Tensor | None, forced: Tensor,
                          forbidden: Tensor) -> Tensor:
        """The ``q(m_t)`` ``[B, S, 2]`` that ``KL_mask`` charges: the detector's own
        probabilities (``limits_in_kl="prior"``), or with the steps the limits decided
        fixed as the prior's are (``"both"``); the point mass on given boundaries when
        no detector drew them."""
        if logits is None:
            return boundary.log_probs
        logits = logits.to(boundary.log_probs.dtype)
        if self.config.limits_in_kl == "both":
            fixed = torch.where(forced, CONSTRAINED_LOGIT, -CONSTRAINED_LOGIT).to(logits.dtype)
            logits = torch.where(forced | forbidden, fixed, logits)
        return bernoulli_log_probs(logits)

    def _window(self, embed: Tensor, action: Tensor, init_size: int, mask: Tensor,
                noise: Tensor | None = None) -> _Window:
        """The posterior's per-step inputs over the ``mask.shape[1]`` window steps."""
        steps = mask.shape[1]
        expected = (mask.shape[0], steps, 2, self.config.state_size)
        if noise is not None and tuple(noise.shape) != expected:
            raise ValueError(f"latent_noise must be [B, seq_size, 2, state] = {list(expected)}, "
                             f"got {list(noise.shape)}.")
        past = self.past_summary(embed[:, : init_size + steps])
        past = F.pad(past, (0, 0, 1, 0))[:, init_size : init_size + steps]  # a_{t-1}; a_{-1} = 0
        x = embed[:, init_size : init_size + steps]
        prev_action = F.pad(action, (0, 0, 1, 0))[:, init_size : init_size + steps]
        return _Window(x, mask, past, self.segment_summaries(x, mask), prev_action, noise)

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

    def _filter(self, inputs: _Window) -> tuple[tuple, dict[str, Tensor]]:
        """Posterior steps over the window; returns the last state and the per-step
        records ``[B, S, ...]``. Only the recurrent path runs step by step; the
        abstract posterior (whose inputs are known up front), the priors, the
        features and the KL terms run once over all steps."""
        post_abs = self.post_abs(torch.cat([inputs.past, inputs.segment], dim=-1))
        abs_draws = draw(post_abs, None if inputs.noise is None else inputs.noise[:, :, 0])
        state, steps = None, []
        for t in range(inputs.mask.shape[1]):
            state, post_obs = self._transition(state, inputs, abs_draws, t)
            steps.append((*state, post_obs.mean, post_obs.stddev))
        abs_belief, abs_state, obs_belief, obs_state, obs_mean, obs_std = (torch.stack(x, dim=1) for x in zip(*steps))
        post_obs = Normal(obs_mean, obs_std)
        read = inputs.mask
        records = {
            "feat": self.obs_feat(torch.cat([obs_belief, obs_state], dim=-1)),
            "kl_abs": read * kl_divergence(post_abs, self.prior_abs(abs_belief)).sum(-1),
            "kl_obs": kl_divergence(post_obs, self.prior_obs(obs_belief)).sum(-1),
            "abs_entropy": post_abs.entropy().sum(-1),
            "obs_entropy": post_obs.entropy().sum(-1),
        }
        return state, records

    def _transition(self, state, inputs: _Window, abs_draws: Tensor, t: int):
        """The recurrent path of one posterior step at window step ``t``; ``state``
        None starts the window (``c_0 = a_{-1}``, a boundary by construction).
        ``abs_draws`` ``[B, S, state]`` are the abstract posterior's samples.
        Returns the new state and ``q(s_t)``."""
        read = inputs.mask[:, t : t + 1]
        copy = 1 - read
        if state is None:
            zeros = inputs.embed.new_zeros
            abs_belief = inputs.past[:, 0]
            abs_state, obs_belief, obs_state = (zeros(read.shape[0], size) for size in self._state_sizes()[1:])
        else:
            abs_belief, abs_state, obs_belief, obs_state = state
            abs_belief = read * self.update_abs_belief(abs_state, abs_belief) + copy * abs_belief
        abs_state = read * abs_draws[:, t] + copy * abs_state
        abs_feat = self.abs_feat(torch.cat([abs_belief, abs_state], dim=-1))
        updated = self.update_obs_belief(torch.cat([obs_state, abs_feat, inputs.action[:, t]], dim=-1), obs_belief)
        obs_belief = read * self.init_obs_belief(abs_feat) + copy * updated
        post_obs = self.post_obs(torch.cat([obs_belief, inputs.embed[:, t]], dim=-1))
        obs_state = draw(post_obs, None if inputs.noise is None else inputs.noise[:, t, 1])
        return (abs_belief, abs_state, obs_belief, obs_state), post_obs

    def _state_sizes(self) -> tuple[int, int, int, int]:
        c = self.config
        return c.belief_size, c.state_size, c.belief_size, c.state_size

    # ------------------------------------------------------------ generation

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
        window = slice(init_size, init_size + steps)
        mask = self.sample_boundaries(self.boundary_logits(embed, action)[:, window], beta).mask[:, :context]
        state, records = self._filter(self._window(embed, action, init_size, mask))
        prev_action = F.pad(action, (0, 0, 1, 0))[:, window]
        feats, masks = [records["feat"][:, t] for t in range(context)], [mask]
        length, count = self._current_segment_length(mask), mask.sum(1)
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
        window = slice(init_size, init_size + context)
        mask = self.sample_boundaries(self.boundary_logits(embed, action)[:, window], beta).mask
        state, _ = self._filter(self._window(embed, action, init_size, mask))
        read = embed.new_ones(embed.shape[0], 1)
        no_action = embed.new_zeros(embed.shape[0], self.config.action_size)
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

    # ------------------------------------------------------------ prior boundaries

    def prior_boundary_logits(self, feat: Tensor) -> Tensor:
        """Log-odds of ``p(m_{t+1} = 1 | o_t)`` from observation features ``[..., F]``."""
        return soft_bound(self.prior_boundary(feat).squeeze(-1), self.config.logit_bound)

    def prior_boundary_log_probs(self, feat: Tensor, forced: Tensor, forbidden: Tensor) -> Tensor:
        """``log p(m_t | o_{t-1})`` ``[B, S, 2]`` with the segment limits applied where
        they decide (``forced``/``forbidden`` bool ``[B, S]``, from :meth:`limits`)."""
        logits = F.pad(self.prior_boundary_logits(feat[:, :-1]), (1, 0))
        fixed = torch.where(forced, CONSTRAINED_LOGIT, -CONSTRAINED_LOGIT).to(logits.dtype)
        return bernoulli_log_probs(torch.where(forced | forbidden, fixed, logits))

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


def mask_kl(q_log_probs: Tensor, p_log_probs: Tensor) -> Tensor:
    """``KL_mask`` per step ``[B, S]`` from ``[B, S, 2]`` log-probabilities; 0 at step 0,
    which starts a segment by construction."""
    return F.pad(bernoulli_kl(q_log_probs[:, 1:], p_log_probs[:, 1:]), (1, 0))


def draw(dist: Normal, noise: Tensor | None) -> Tensor:
    """A reparameterised sample ``mu + sigma * noise`` (fresh ``N(0, I)`` when ``noise`` is None)."""
    if noise is None:
        return dist.rsample()
    return dist.loc + dist.scale * noise.to(dist.loc.dtype)
