"""M: the MDN-RNN of World Models (Ha & Schmidhuber 2018, section 2.2).

An LSTM over ``[z_t, a_t]`` whose hidden state ``h_t`` parameterises, for every latent
dimension j separately, a mixture of K Gaussians over ``z_{t+1, j}``:

    p(z_{t+1} | z_t, a_t, h_t) = prod_j sum_k pi_{jk} N(z_{t+1,j}; mu_{jk}, sigma_{jk}^2),

plus an optional reward head (mean squared error) and an optional done ("restart")
logit (binary cross-entropy, the positive case weighted by ``done_weight``: the
authors' ``restart_factor`` is 10 for Doom). Sampling with temperature tau divides the mixture logits
by tau and scales sigma by sqrt(tau), as the authors' code does; tau -> 0 picks the
most probable component's mean.

Differences from the authors' code, on purpose: log sigma is bounded to
[LOG_SIGMA_MIN, LOG_SIGMA_MAX] through a sigmoid (an unbounded ``exp(raw)`` lets the
likelihood diverge on near-constant latent dimensions, a failure seen in public
re-implementations), and the reward head is a regression rather than absent
(CarRacing in the paper trains in the real env and needs none; the dream does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_SIGMA_MIN = -7.0
LOG_SIGMA_MAX = 2.0
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class MDNRNNConfig:
    latent_dim: int = 32
    action_dim: int = 3
    hidden_size: int = 256
    num_mixtures: int = 5
    predict_reward: bool = True
    predict_done: bool = False
    done_weight: float = 1.0      # weight of done=1 steps in the done loss (the authors' restart_factor)

    def __post_init__(self) -> None:
        for key in ("latent_dim", "action_dim", "hidden_size", "num_mixtures"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"MDNRNNConfig.{key}={getattr(self, key)} must be >= 1.")
        if self.done_weight <= 0:
            raise ValueError(f"MDNRNNConfig.done_weight={self.done_weight} must be > 0.")


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is 1 (all of them if ``mask`` is None)."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def done_loss(done_logit: torch.Tensor, done: torch.Tensor, weight: float = 1.0,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean weighted binary cross-entropy of done logits (over ``mask``'s steps): each step's
    ``-(w * y * log sigmoid(l) + (1 - y) * log(1 - sigmoid(l)))``, as the authors' restart
    cost ``(1 + y * (w - 1)) * BCE`` (the same for y in {0, 1})."""
    pos_weight = torch.as_tensor(float(weight), dtype=done_logit.dtype, device=done_logit.device)
    per_step = F.binary_cross_entropy_with_logits(done_logit, done, pos_weight=pos_weight, reduction="none")
    return masked_mean(per_step, mask)


def mixture_log_prob(target: torch.Tensor, logit_pi: torch.Tensor, mu: torch.Tensor,
                     log_sigma: torch.Tensor) -> torch.Tensor:
    """log p(target) summed over latent dims: ``target [..., Z]``, the mixture terms
    ``[..., Z, K]``; returns ``[...]``. Per dimension a log-sum-exp over components."""
    log_pi = F.log_softmax(logit_pi, dim=-1)
    x = target.unsqueeze(-1)
    log_normal = -log_sigma - LOG_SQRT_2PI - 0.5 * ((x - mu) / log_sigma.exp()).square()
    return torch.logsumexp(log_pi + log_normal, dim=-1).sum(-1)


def sample_mixture(logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, tau: float,
                   uniform: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """One draw per latent dim ``[..., Z]`` from mixtures ``[..., Z, K]`` at temperature tau.

    The randomness is given (``uniform`` in [0, 1) and ``normal``, both ``[..., Z]``), so
    candidates that share them share their draws (common random numbers). The component
    is chosen by inverse CDF of softmax(logit / tau); tau == 0 takes the argmax component
    and its mean.
    """
    if tau < 0:
        raise ValueError(f"tau={tau} must be >= 0.")
    if tau == 0:
        index = logit_pi.argmax(-1, keepdim=True)
        return mu.gather(-1, index).squeeze(-1)
    scaled = logit_pi / tau
    weights = (scaled - scaled.amax(-1, keepdim=True)).exp()     # softmax numerators (a softmax over
    cdf = weights.cumsum(-1)                                      # K=5 is slow on the CPU)
    below = (cdf <= uniform.unsqueeze(-1) * cdf[..., -1:]).sum(-1, keepdim=True)
    index = below.clamp_max(logit_pi.shape[-1] - 1)
    mean = mu.gather(-1, index).squeeze(-1)
    sigma = log_sigma.gather(-1, index).squeeze(-1).exp()
    return mean + sigma * math.sqrt(tau) * normal


class MDNRNN(nn.Module):
    """LSTM + mixture-density head; ``forward`` over sequences, ``step`` one step."""

    def __init__(self, config: MDNRNNConfig):
        super().__init__()
        self.config = c = config
        self.lstm = nn.LSTM(c.latent_dim + c.action_dim, c.hidden_size, batch_first=True)
        self.mixture = nn.Linear(c.hidden_size, 3 * c.latent_dim * c.num_mixtures)
        self.reward = nn.Linear(c.hidden_size, 1) if c.predict_reward else None
        self.done = nn.Linear(c.hidden_size, 1) if c.predict_done else None

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mixture terms ``logit_pi, mu, log_sigma`` ``[..., Z, K]`` and the optional
        ``reward`` and ``done_logit`` ``[...]`` from hidden states ``[..., H]``."""
        c = self.config
        raw = self.mixture(h).unflatten(-1, (c.latent_dim, c.num_mixtures, 3))
        logit_pi, mu, raw_sigma = raw.unbind(-1)
        log_sigma = LOG_SIGMA_MIN + (LOG_SIGMA_MAX - LOG_SIGMA_MIN) * torch.sigmoid(raw_sigma)
        out = {"logit_pi": logit_pi, "mu": mu, "log_sigma": log_sigma}
        if self.reward is not None:
            out["reward"] = self.reward(h).squeeze(-1)
        if self.done is not None:
            out["done_logit"] = self.done(h).squeeze(-1)
        return out

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads for sequences ``z [B, T, Z]``, ``action [B, T, A]`` (predicting step t+1)."""
        hidden, _ = self.lstm(torch.cat([z, action], -1))
        return self.heads(hidden)

    def step(self, z: torch.Tensor, action: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step for a batch ``[N, Z]``, ``[N, A]``; state ``(h, c)`` each ``[N, H]``."""
        weight_ih, weight_hh, bias_ih, bias_hh = (self.lstm.weight_ih_l0, self.lstm.weight_hh_l0,
                                                  self.lstm.bias_ih_l0, self.lstm.bias_hh_l0)
        return torch._VF.lstm_cell(torch.cat([z, action], -1), state, weight_ih, weight_hh, bias_ih, bias_hh)

    def initial_state(self, batch: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h, c)`` for ``batch`` sequences."""
        zeros = torch.zeros(batch, self.config.hidden_size, device=device)
        return zeros, zeros.clone()

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mixture NLL per latent dim (+ reward MSE, + done BCE) on ``batch`` with
        ``z [B, T+1, Z]``, ``action [B, T, A]``, ``reward [B, T]``, ``done [B, T]`` and an
        optional ``mask [B, T]`` (1 on real steps, 0 on padding: means are over real steps)."""
        z, mask = batch["z"], batch.get("mask")
        out = self(z[:, :-1], batch["action"])
        log_prob = mixture_log_prob(z[:, 1:], out["logit_pi"], out["mu"], out["log_sigma"])
        nll = -masked_mean(log_prob, mask) / self.config.latent_dim
        metrics = {"nll_per_dim": nll.detach()}
        loss = nll
        if self.reward is not None:
            reward_loss = masked_mean((out["reward"] - batch["reward"]).square(), mask)
            loss = loss + reward_loss
            metrics["reward_mse"] = reward_loss.detach()
        if self.done is not None:
            done_cost = done_loss(out["done_logit"], batch["done"], self.config.done_weight, mask)
            loss = loss + done_cost
            metrics["done_bce"] = done_cost.detach()
        return loss, metrics
