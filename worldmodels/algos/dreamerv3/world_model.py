"""DreamerV3's world model: encoder -> RSSM -> decoder, reward and continue heads.

With ``x_t`` the observations, ``a_{t-1}`` the action preceding them (zero at
episode starts), ``s_t = (h_t, z_t)`` the posterior state and ``f_t = [h_t, z_t]``
its features, the loss per step is (DreamerV3 eq. 5; ``sg`` stop-gradient)::

    L_t = sum_k beta_k * -log p(x^k_t | f_t)                    decoder, per key
        + beta_r * -log p_twohot(r_t | f_t)                        reward (symlog two-hot)
        + beta_c * -log Bernoulli(1 - terminal_t | f_t)            continue
        + dyn_scale * max(1, KL(sg(q_t) || p_t)) + rep_scale * max(1, KL(q_t || sg(p_t)))

and the loss is its mean over ``B`` and ``T``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...nn.distributions import Bernoulli, TwoHotSymlog
from ...nn.mlp import MLP, OneHotInputs
from ...nn.multi_io import (
    MultiDecoder,
    MultiEncoder,
    postprocess_image,
    preprocess_image,
)
from ...nn.rssm import RSSM
from ...ops.onehot_linear import gathers, onehot_index
from ...ops.rssm import RSSMImaginer, RSSMObservation
from .config import DreamerConfig

Tensor = torch.Tensor
RESERVED_TERMS = frozenset({"reward", "cont", "dyn", "rep", "kl", "total"})


def prev_actions(action: Tensor, is_first: Tensor) -> Tensor:
    """The action preceding each step: ``prev[:, t] = action[:, t - 1]``, zero at ``t = 0``
    and where ``is_first[:, t]``. ``action [B, T, A]``, ``is_first [B, T]`` -> ``[B, T, A]``."""
    if action.dim() != 3 or is_first.shape != action.shape[:2]:
        raise ValueError(f"need action [B, T, A] and is_first [B, T], got {tuple(action.shape)} and "
                         f"{tuple(is_first.shape)}.")
    prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], dim=1)
    return prev * (~is_first.bool()).unsqueeze(-1).to(prev.dtype)


class WorldModel(nn.Module):
    """Dict observations ``{key: [B, T, ...]}`` -> posterior states, reconstructions,
    reward ``r_t`` and continue ``c_t`` predictions (see the module docstring).

    Args:
        config: :class:`DreamerConfig`. obs_space: ``{key: (shape, dtype)}``.
        action_dim: ``A`` (one-hot size for discrete actions).
    Attributes:
        encoder, rssm, decoder, reward_head (``MLP -> reward_bins`` logits, zero-init
        output so the first predictions are exactly 0), cont_head (``MLP -> 1`` logit);
        ``feat_dim = deter + stoch * classes``.
    """

    def __init__(self, config: DreamerConfig, obs_space: Mapping[str, tuple], action_dim: int):
        super().__init__()
        self.config = config
        io = config.io()
        self.encoder = MultiEncoder(io, obs_space)
        clash = sorted(RESERVED_TERMS & set(self.obs_keys))
        if clash:
            raise ValueError(f"observation keys {clash} clash with loss-term names {sorted(RESERVED_TERMS)}.")
        self.rssm = RSSM(config.rssm(self.encoder.out_dim, action_dim))
        self.feat_dim = config.deter + config.stoch * config.classes
        self.decoder = MultiDecoder(io, self.feat_dim, obs_space, self.encoder.cnn_keys, self.encoder.mlp_keys)
        units, layers = config.head_units, config.head_layers
        self.reward_head = MLP(self.feat_dim, config.reward_bins, units, layers, zero_init_output=True)
        self.cont_head = MLP(self.feat_dim, 1, units, layers)
        self._imaginer: RSSMImaginer | None = None

    @property
    def obs_keys(self) -> list[str]:
        """The observation keys the model reads (image keys first)."""
        return self.encoder.cnn_keys + self.encoder.mlp_keys

    def imaginer(self) -> RSSMImaginer:
        """The RSSM's no-grad horizon roller, created once (it caches CUDA graphs)."""
        if self._imaginer is None:
            self._imaginer = self.rssm.imaginer()
        return self._imaginer

    @staticmethod
    def features(deter: Tensor, stoch: Tensor) -> Tensor:
        """``[h, flat(z)]``: ``[..., H], [..., S, K] -> [..., H + S*K]``."""
        return RSSM.features(deter, stoch)

    def reward(self, feat: Tensor, parts: OneHotInputs | None = None) -> TwoHotSymlog:
        """Reward distribution ``[...]`` from ``feat [..., F]`` (``.mean()`` is the prediction);
        ``parts``: ``feat`` by parts (:meth:`onehot_inputs`), read instead when given."""
        return TwoHotSymlog(self.reward_head.forward_parts(feat, parts))

    def cont(self, feat: Tensor, parts: OneHotInputs | None = None) -> Bernoulli:
        """Continue distribution ``[...]`` (probability that the episode goes on); ``parts``
        as in :meth:`reward`."""
        return Bernoulli(self.cont_head.forward_parts(feat, parts).squeeze(-1))

    @staticmethod
    def onehot_inputs(post: RSSMObservation) -> OneHotInputs | None:
        """The posterior's features by parts (``h``, the indices of ``z``, ``z``) where the
        heads' first layers can gather the weight columns the samples select instead of
        multiplying by the one-hot ``z`` (:func:`~worldmodels.ops.onehot_linear.gathers`;
        the straight-through ``z`` still gets the gradient ``dy W_z``), else None."""
        if not gathers(post.deter):
            return None
        index = onehot_index(post.stoch)
        return None if index is None else OneHotInputs(post.deter, index, post.stoch)

    def observe(self, batch: Mapping[str, Tensor]) -> RSSMObservation:
        """Posterior scan over a replay batch (``action [B, T, A]`` taken after step ``t``)."""
        embed = self.encoder({k: batch[k] for k in self.obs_keys})
        is_first = batch["is_first"].bool()
        action = prev_actions(batch["action"].to(embed.dtype), is_first)
        return self.rssm.observe(embed, action, is_first)

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], RSSMObservation, Tensor]:
        """World-model loss on a replay batch of ``[B, T, ...]`` tensors.

        Returns:
            ``(terms, posterior, features)``: ``terms`` maps every decoder key,
            ``reward``, ``cont`` (NLLs), ``dyn``, ``rep`` (KLs before free bits), ``kl``
            (scaled, with free bits) to its mean over ``B, T``, and ``total`` to
            ``sum_k beta_k NLL_k + beta_r reward + beta_c cont + kl``; ``posterior`` is the
            :class:`RSSMObservation` ``[B, T, ...]``; ``features`` ``[B, T, F]``.
        """
        c = self.config
        post = self.observe(batch)
        feat = self.features(post.deter, post.stoch)
        parts = self.onehot_inputs(post)
        obs = {k: batch[k] for k in self.obs_keys}
        terms = {key: nll.mean() for key, nll in self.decoder.loss(feat, obs, parts).items()}
        reward_nll = -self.reward(feat, parts).log_prob(batch["reward"].float())
        cont_nll = -self.cont(feat, parts).log_prob(1.0 - batch["is_terminal"].float())
        kl = self.rssm.kl_loss(post.post_logits, post.prior_logits, c.free_nats, c.dyn_scale, c.rep_scale)
        terms.update(reward=reward_nll.mean(), cont=cont_nll.mean(), dyn=kl.dyn.mean(), rep=kl.rep.mean(),
                     kl=kl.loss.mean())
        total = c.reward_scale * terms["reward"] + c.cont_scale * terms["cont"] + terms["kl"]
        for key in self.encoder.cnn_keys:
            total = total + c.image_scale * terms[key]
        for key in self.encoder.mlp_keys:
            total = total + c.vector_scale * terms[key]
        terms["total"] = total
        return terms, post, feat

    @torch.no_grad()
    def open_loop(self, batch: Mapping[str, Tensor], context: int) -> dict[str, Tensor]:
        """Posterior over the first ``context`` steps, then the prior driven by the
        recorded actions for the rest; decoded images of the first image key.

        Returns ``{"truth", "prediction", "error"}``, uint8 ``[B, T, H, W, C]`` (error
        ``= (prediction - truth + 1) / 2`` in image units, grey where exact), or ``{}``
        when the model reads no image key.
        """
        if not self.encoder.cnn_keys:
            return {}
        steps = batch["is_first"].shape[1]
        if not 1 <= context <= steps:
            raise ValueError(f"context={context} must lie in [1, T={steps}].")
        is_first = batch["is_first"].bool()
        action = prev_actions(batch["action"].float(), is_first)
        embed = self.encoder({k: batch[k][:, :context] for k in self.obs_keys})
        post = self.rssm.observe(embed, action[:, :context], is_first[:, :context])
        feats = [self.features(post.deter, post.stoch)]
        if context < steps:
            prior = self.rssm.imagine(self.rssm.last_state(post), action[:, context:])
            feats.append(self.features(prior.deter, prior.stoch))
        key = self.encoder.cnn_keys[0]
        pred = self.decoder(torch.cat(feats, dim=1))[key].mode()
        truth = batch[key]
        error = (pred - preprocess_image(truth, key)) / 2.0
        return {"truth": truth, "prediction": postprocess_image(pred), "error": postprocess_image(error)}


__all__ = ["WorldModel", "prev_actions"]
