"""Hyperparameters of the DreamerV3 agent (Hafner et al. 2023, "Mastering Diverse
Domains through World Models", Table of hyperparameters).

Sizes default to a small model so that CPU tests and smoke runs are fast; the
paper's values are given in the comments (its size presets range from S to XL:
``deter`` 512..4096 with MLP ``units`` 512..1024, always ``32 x 32`` latents). The
loss-side hyperparameters (``free_nats``, KL scales, ``horizon``, ``discount``,
``lam``, ``entropy``, learning rates, ...) default to the paper's values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...nn.multi_io import MultiIOConfig
from ...nn.rssm import RSSMConfig


@dataclass
class DreamerConfig:
    """Every hyperparameter of :class:`~worldmodels.algos.dreamerv3.agent.DreamerAgent`.

    Adam epsilon: the paper's table uses ``1e-8`` for the world model and ``1e-5``
    for the actor and critic; :meth:`DreamerAgent.param_groups` puts these per group
    (``model_eps``, ``ac_eps``) so one ``torch.optim.Adam`` serves all three.
    """

    # RSSM (paper: stoch=32, classes=32, deter 512 (S) .. 4096 (XL), hidden = units).
    deter: int = 128
    stoch: int = 8
    classes: int = 8
    hidden: int = 128
    blocks: int = 2
    rssm_initial: str = "learned"
    rssm_impl: str = "auto"
    unimix: float = 0.01           # RSSM latents and discrete actions (paper: 1%)
    # Encoder / decoder (MultiIOConfig; paper: cnn_depth 32 (S) .. 96 (XL), mlp 512+ x 2..5).
    cnn_keys: str = ".*"
    mlp_keys: str = ".*"
    cnn_depth: int = 16
    mlp_units: int = 128
    mlp_layers: int = 2
    key_order: list[str] | None = None
    minres: int = 4                # CNN stages halve images until below 2 * minres (as both references)
    # Heads (paper: units as the model size, reward/continue/actor/critic MLPs).
    head_units: int = 128
    head_layers: int = 2           # reward and continue heads
    actor_layers: int = 2
    critic_layers: int = 2
    reward_bins: int = 255         # two-hot bins over symlog space [-20, 20], reward and critic
    actor_min_std: float = 0.1     # BoundedNormal std range (continuous actions)
    actor_max_std: float = 1.0
    # Actor gradient for continuous actions: "reinforce" (the 2024 code, and this package
    # before the option) or "dynamics" (backpropagation through the imagined dynamics: the
    # 2023 code's actor_grad_cont: backprop, NM512's imag_gradient: dynamics). Discrete
    # actions always use REINFORCE.
    actor_grad: str = "reinforce"
    # World-model loss.
    free_nats: float = 1.0
    dyn_scale: float = 0.5
    rep_scale: float = 0.1
    # Decoder NLLs are full sums of squared errors (danijar/dreamerv3 2023 MSEDist and
    # SymlogDist, NM512/dreamerv3-torch), see worldmodels.nn.distributions.
    image_scale: float = 1.0       # every image (CNN) decoder key
    vector_scale: float = 1.0      # every vector (MLP) decoder key
    reward_scale: float = 1.0
    cont_scale: float = 1.0
    # Actor-critic in imagination.
    actor_scale: float = 1.0
    critic_scale: float = 1.0
    horizon: int = 15
    discount: float = 1.0 - 1.0 / 333.0
    lam: float = 0.95
    entropy: float = 3e-4
    slow_critic_fraction: float = 0.02
    slow_critic_reg: float = 1.0
    return_norm_decay: float = 0.99
    return_norm_low: float = 0.05  # percentiles of the return range S = max(1, P95 - P5)
    return_norm_high: float = 0.95
    train_actor: bool = True
    # Behaviour cloning of the batch's own actions by the actor, jointly with the world
    # model (offline demonstrations): + bc_scale * mean -log pi(a_t | sg(s_t)); 0: off.
    bc_scale: float = 0.0
    # Optimisation (one Adam, three parameter groups).
    model_lr: float = 1e-4
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    model_eps: float = 1e-8
    ac_eps: float = 1e-5
    model_grad_clip: float = 1000.0  # each part's gradient norm is clipped on its own
    ac_grad_clip: float = 100.0

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon={self.horizon} must be >= 1.")
        if not 0.0 < self.discount <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"need 0 < discount <= 1 and 0 <= lam <= 1, got discount={self.discount}, "
                             f"lam={self.lam}.")
        if not 0.0 <= self.slow_critic_fraction <= 1.0:
            raise ValueError(f"slow_critic_fraction={self.slow_critic_fraction} must lie in [0, 1].")
        if self.reward_bins < 2:
            raise ValueError(f"reward_bins={self.reward_bins} must be >= 2.")
        for name in ("head_units", "model_lr", "actor_lr", "critic_lr", "model_eps", "ac_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0.")
        for name in ("head_layers", "actor_layers", "critic_layers", "free_nats", "entropy", "slow_critic_reg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")

    def io(self) -> MultiIOConfig:
        """The encoder/decoder configuration."""
        return MultiIOConfig(cnn_keys=self.cnn_keys, mlp_keys=self.mlp_keys, cnn_depth=self.cnn_depth,
                             mlp_units=self.mlp_units, mlp_layers=self.mlp_layers, minres=self.minres,
                             key_order=None if self.key_order is None else list(self.key_order))

    def rssm(self, embed_dim: int, action_dim: int) -> RSSMConfig:
        """The RSSM configuration for an encoder of width ``embed_dim`` and ``action_dim`` actions."""
        return RSSMConfig(deter=self.deter, stoch=self.stoch, classes=self.classes, hidden=self.hidden,
                          blocks=self.blocks, embed_dim=embed_dim, action_dim=action_dim, unimix=self.unimix,
                          initial=self.rssm_initial, impl=self.rssm_impl)


__all__ = ["DreamerConfig"]
