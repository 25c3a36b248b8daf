"""Lambda-returns, the return target shared by the actor-critics trained in imagination.

Indexing of an imagined trajectory of ``H`` steps from states ``s_0 .. s_H``:
``reward[:, t]`` and ``cont[:, t]`` are the reward and continue flag predicted for the
step ``s_t -> s_{t+1}``, and ``value[:, t]`` is the critic at ``s_t``, so ``value`` has
``H + 1`` entries and ``value[:, H]`` bootstraps.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, discount: float = 1.0 - 1.0 / 333.0,
                   lam: float = 0.95) -> Tensor:
    """TD(lambda) returns ``R [..., H]`` computed backwards from ``R_H = v_H``::

        R_t = r_t + gamma * c_t * ((1 - lam) * v_{t+1} + lam * R_{t+1}),   t = H-1 .. 0

    Args:
        reward: ``[..., H]`` float, ``r_t`` for the step reached from ``s_t``.
        cont: ``[..., H]`` float in [0, 1], ``c_t`` = 1 - termination of that step.
        value: ``[..., H + 1]`` float, ``v_t`` = critic at ``s_t``.
        discount: ``gamma`` (DreamerV3: 1 - 1/333). lam: ``lambda`` in [0, 1].
    Returns:
        ``[..., H]`` in the promoted dtype of the inputs (``R_0 .. R_{H-1}``).
    """
    if reward.shape != cont.shape or value.shape[:-1] != reward.shape[:-1] or value.shape[-1] != reward.shape[-1] + 1:
        raise ValueError(f"need reward and cont [..., H] and value [..., H + 1], got reward {tuple(reward.shape)}, "
                         f"cont {tuple(cont.shape)}, value {tuple(value.shape)}.")
    if reward.dim() < 1 or reward.shape[-1] < 1:
        raise ValueError(f"need a horizon H >= 1, got reward {tuple(reward.shape)}.")
    if not 0.0 <= lam <= 1.0 or not 0.0 <= discount <= 1.0:
        raise ValueError(f"lam={lam} and discount={discount} must lie in [0, 1].")
    horizon = reward.shape[-1]
    interim = reward + discount * cont * (1.0 - lam) * value[..., 1:]
    factor = discount * lam * cont
    returns = [value[..., -1]]
    for t in reversed(range(horizon)):
        returns.append(interim[..., t] + factor[..., t] * returns[-1])
    return torch.stack(returns[:0:-1], dim=-1)


__all__ = ["lambda_returns"]
