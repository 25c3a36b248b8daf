"""DreamerV3 actor-critic targets: lambda-returns, return normaliser, slow-critic EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worldmodels.algos.dreamerv3.returns import (
    ReturnNormalizer,
    ema_update_,
    lambda_returns,
)


def _n_step(reward, cont, value, gamma, t, n):
    """G_t^(n) = sum_{k<n} (prod_{j<k} gamma c_{t+j}) r_{t+k} + (prod_{j<n} gamma c_{t+j}) v_{t+n}."""
    total, weight = 0.0, 1.0
    for k in range(n):
        total += weight * reward[t + k]
        weight *= gamma * cont[t + k]
    return total + weight * value[t + n]


def _naive_lambda(reward, cont, value, gamma, lam):
    """R_t = (1 - lam) sum_{n=1}^{H-t-1} lam^(n-1) G^(n) + lam^(H-t-1) G^(H-t), row by row."""
    batch, horizon = reward.shape
    out = torch.zeros(batch, horizon, dtype=torch.float64)
    for b in range(batch):
        r, c, v = reward[b].tolist(), cont[b].tolist(), value[b].tolist()
        for t in range(horizon):
            steps = horizon - t
            mix = sum((1 - lam) * lam ** (n - 1) * _n_step(r, c, v, gamma, t, n) for n in range(1, steps))
            out[b, t] = mix + lam ** (steps - 1) * _n_step(r, c, v, gamma, t, steps)
    return out


def _trajectory(batch=3, horizon=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    reward = torch.randn(batch, horizon, generator=gen, dtype=torch.float64)
    cont = (torch.rand(batch, horizon, generator=gen) > 0.2).double()
    value = torch.randn(batch, horizon + 1, generator=gen, dtype=torch.float64)
    return reward, cont, value


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.95, 0.37])
def test_lambda_returns_match_n_step_mixture(lam):
    reward, cont, value = _trajectory()
    got = lambda_returns(reward, cont, value, discount=0.9, lam=lam)
    torch.testing.assert_close(got, _naive_lambda(reward, cont, value, 0.9, lam))


def test_lambda_returns_limits_by_hand():
    reward, cont, value = _trajectory(batch=2, horizon=4, seed=1)
    gamma = 0.8
    # lam = 0: one-step TD targets.
    torch.testing.assert_close(lambda_returns(reward, cont, value, gamma, 0.0), reward + gamma * cont * value[:, 1:])
    # lam = 1: discounted Monte-Carlo sum plus the bootstrap, cut at terminations.
    mc = torch.zeros_like(reward)
    for b in range(2):
        for t in range(4):
            acc, w = 0.0, 1.0
            for k in range(t, 4):
                acc, w = acc + w * reward[b, k], w * gamma * cont[b, k]
            mc[b, t] = acc + w * value[b, 4]
    torch.testing.assert_close(lambda_returns(reward, cont, value, gamma, 1.0), mc)
    # The last return is r_{H-1} + gamma c_{H-1} v_H whatever lambda.
    last = lambda_returns(reward, cont, value, gamma, 0.6)[:, -1]
    torch.testing.assert_close(last, reward[:, -1] + gamma * cont[:, -1] * value[:, -1])


def test_lambda_returns_default_discount_gradient_and_errors():
    reward, cont, value = _trajectory(batch=1, horizon=1)
    value.requires_grad_(True)
    out = lambda_returns(reward, cont, value)
    gamma = 1 - 1 / 333
    torch.testing.assert_close(out[0, 0], reward[0, 0] + gamma * cont[0, 0] * value[0, 1])
    out.sum().backward()
    torch.testing.assert_close(value.grad, torch.tensor([[0.0, gamma * cont[0, 0].item()]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"value \[..., H \+ 1\].*value \(2, 4\)"):
        lambda_returns(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="lam=1.5"):
        lambda_returns(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 5), lam=1.5)


def test_return_normalizer_ema_by_hand():
    norm = ReturnNormalizer(decay=0.9, low=0.05, high=0.95)
    first = torch.arange(21, dtype=torch.float32) * 10.0  # 0..200: q05 = 10, q95 = 190
    norm.update(first)
    torch.testing.assert_close(norm.low, torch.tensor(0.1 * 10.0))
    torch.testing.assert_close(norm.high, torch.tensor(0.1 * 190.0))
    torch.testing.assert_close(norm.scale(), torch.tensor(18.0))
    second = torch.linspace(-100, 100, 41).reshape(41, 1)  # q05 = -90, q95 = 90
    norm.update(second)
    torch.testing.assert_close(norm.low, torch.tensor(0.9 * 1.0 + 0.1 * -90.0))
    torch.testing.assert_close(norm.high, torch.tensor(0.9 * 19.0 + 0.1 * 90.0))
    torch.testing.assert_close(norm.scale(), torch.tensor(17.1 + 9.0 - (0.9 - 9.0)))


def test_return_normalizer_scale_floor_and_state_dict():
    norm = ReturnNormalizer()
    assert norm.scale().item() == 1.0  # nothing seen yet
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        norm.update(torch.rand(64, generator=gen) * 0.5)  # range < 1: the scale stays at the floor
        assert norm.scale().item() == 1.0
    for _ in range(400):
        norm(torch.randn(64, generator=gen) * 10)
    assert norm.scale().item() > 20.0
    clone = ReturnNormalizer()
    clone.load_state_dict(norm.state_dict())
    assert set(norm.state_dict()) == {"low", "high"}
    torch.testing.assert_close(clone.scale(), norm.scale())
    with pytest.raises(ValueError, match="decay=1.0"):
        ReturnNormalizer(decay=1.0)


def test_ema_update_moves_target_towards_source():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    source[1].running_mean.fill_(2.0)
    source[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update_(target, source, fraction=0.25)
    after, src = target.state_dict(), source.state_dict()
    torch.testing.assert_close(after["0.weight"], 0.75 * before["0.weight"] + 0.25 * src["0.weight"])
    torch.testing.assert_close(after["1.running_mean"], torch.full((4,), 0.5))
    assert after["1.num_batches_tracked"].item() == 7
    ema_update_(target, source, fraction=1.0)
    assert all(torch.equal(after[k], src[k]) for k in src)
    with pytest.raises(ValueError, match=r"target shape \(4, 3\) != source shape \(5, 3\)"):
        ema_update_(nn.Linear(3, 4), nn.Linear(3, 5))
    with pytest.raises(ValueError, match="fraction=1.5"):
        ema_update_(target, source, fraction=1.5)
