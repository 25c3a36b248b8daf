"""DreamerV3 output distributions: symlog, two-hot, MSE heads, Bernoulli, one-hot, bounded normal."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodels.nn.distributions import (
    MSE,
    Bernoulli,
    BoundedNormal,
    OneHotDist,
    SymlogMSE,
    TwoHotSymlog,
    symexp,
    symlog,
    symlog_bins,
    two_hot,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_symlog_values_and_inverse():
    x = torch.tensor([-10.0, -1.0, 0.0, 0.5, math.e - 1.0], dtype=torch.float64)
    expected = torch.tensor([-math.log(11.0), -math.log(2.0), 0.0, math.log(1.5), 1.0], dtype=torch.float64)
    torch.testing.assert_close(symlog(x), expected)
    y = torch.randn(100, generator=_gen(), dtype=torch.float64) * 30
    torch.testing.assert_close(symexp(symlog(y)), y)
    torch.testing.assert_close(symlog(symexp(y / 10)), y / 10)


def test_bins_are_evenly_spaced_over_range():
    bins = symlog_bins()
    assert bins.shape == (255,) and bins[0] == -20 and bins[-1] == 20 and bins[127] == 0
    torch.testing.assert_close(bins.diff(), torch.full((254,), 40 / 254))
    with pytest.raises(ValueError, match="num_bins >= 2"):
        symlog_bins(1)


def test_two_hot_reconstructs_symlog_exactly():
    bins = symlog_bins(dtype=torch.float64)
    y = torch.cat([torch.randn(500, generator=_gen(), dtype=torch.float64) * 1e3,
                   torch.tensor([0.0, symexp(torch.tensor(20.0)).item(), -symexp(torch.tensor(20.0)).item()],
                                dtype=torch.float64),
                   bins[:5], bins[-5:]])
    x = symlog(y)
    w = two_hot(x, bins)
    assert torch.all(w >= 0) and torch.all((w > 0).sum(-1) <= 2)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(x))
    torch.testing.assert_close((w * bins).sum(-1), x, atol=1e-12, rtol=0)
    # The two non-zero bins are the neighbours of x, the closer one weighted more.
    idx = torch.nonzero(w[0]).flatten()
    assert bins[idx[0]] <= x[0] <= bins[idx[-1]] and idx[-1] - idx[0] <= 1


def test_two_hot_hand_example_and_clamping():
    bins = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    w = two_hot(torch.tensor([0.25, 5.0, -3.0, 2.0]), bins)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.75, 0.25, 0.0], [0, 0, 0, 1.0], [1.0, 0, 0, 0],
                                                [0, 0, 0, 1.0]]))


def test_two_hot_log_prob_equals_cross_entropy_and_is_maximised_by_target():
    logits = torch.randn(3, 255, generator=_gen())
    y = torch.tensor([0.3, -7.0, 120.0])
    target = two_hot(symlog(y), symlog_bins())
    expected = (target * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(TwoHotSymlog(logits).log_prob(y), expected)
    # Cross-entropy -sum t log p is minimised at p = t: log t (finite where t > 0) beats any other logits.
    best = TwoHotSymlog(torch.log(target.clamp(min=1e-30))).log_prob(y)
    assert torch.all(best > TwoHotSymlog(logits).log_prob(y))
    perturbed = torch.log(target.clamp(min=1e-30)) + 0.1 * torch.randn(3, 255, generator=_gen(1))
    assert torch.all(best >= TwoHotSymlog(perturbed).log_prob(y) - 1e-6)
    torch.testing.assert_close(best, (target * torch.log(target.clamp(min=1e-30))).sum(-1))


def test_two_hot_mean_of_peaked_distribution_returns_target():
    y = torch.tensor([0.0, 1.0, -3.5, 250.0, -1e4], dtype=torch.float64)
    target = two_hot(symlog(y), symlog_bins(dtype=torch.float64))
    dist = TwoHotSymlog(torch.log(target.clamp(min=1e-300)))
    torch.testing.assert_close(dist.mean(), y, rtol=1e-9, atol=1e-9)
    assert TwoHotSymlog(torch.zeros(4, 255)).mean().abs().max() < 1e-4  # symmetric bins -> 0


def test_two_hot_gradient_is_softmax_minus_target():
    logits = torch.randn(2, 255, generator=_gen(), requires_grad=True)
    y = torch.tensor([2.0, -0.1])
    TwoHotSymlog(logits).log_prob(y).sum().backward()
    expected = two_hot(symlog(y), symlog_bins()) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected)
    fp64 = TwoHotSymlog(logits.detach().double()).log_prob(y)  # fp32 targets against fp64 logits
    assert fp64.dtype == torch.float64
    torch.testing.assert_close(fp64.float(), TwoHotSymlog(logits.detach()).log_prob(y))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
        TwoHotSymlog(logits).log_prob(torch.zeros(3))


def test_symlog_mse_and_mse():
    pred = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    y = torch.tensor([[0.0, math.e - 1], [1.0, -1.0]])
    dist = SymlogMSE(pred)
    # symlog(y) = [[0, 1], [log 2, -log 2]]
    # The full sum of squared errors, as both references (not half of it).
    expected = torch.tensor([0.0, -((2 - math.log(2)) ** 2 + (1 - math.log(2)) ** 2)])
    torch.testing.assert_close(dist.log_prob(y), expected)
    torch.testing.assert_close(dist.mode(), torch.tensor([[0.0, math.e - 1], [math.exp(2) - 1, 1 - math.e]]))
    img = torch.randn(2, 3, 4, 5, 3, generator=_gen())
    target = torch.randn(2, 3, 4, 5, 3, generator=_gen(1))
    lp = MSE(img).log_prob(target)
    assert lp.shape == (2, 3)
    torch.testing.assert_close(lp[1, 2], -((img[1, 2] - target[1, 2]) ** 2).sum())
    with pytest.raises(ValueError, match="does not match prediction shape"):
        MSE(img).log_prob(target[0])


def test_bernoulli():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    dist = Bernoulli(logits)
    torch.testing.assert_close(dist.mean(), torch.sigmoid(logits))
    torch.testing.assert_close(dist.mode(), torch.tensor([0.0, 0.0, 1.0]))
    c = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    expected = torch.log(torch.stack([p[0], 1 - p[1], 1 - p[2]]))
    torch.testing.assert_close(dist.log_prob(c), expected)


def test_one_hot_dist_probs_log_prob_entropy_mode():
    logits = torch.randn(4, 6, generator=_gen(), dtype=torch.float64)
    dist = OneHotDist(logits, unimix=0.01)
    probs = 0.99 * torch.softmax(logits, -1) + 0.01 / 6
    torch.testing.assert_close(dist.probs, probs)
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 5, 2, 2]), 6).double()
    torch.testing.assert_close(dist.log_prob(onehot), torch.log(probs[torch.arange(4), [0, 5, 2, 2]]))
    torch.testing.assert_close(dist.entropy(), -(probs * probs.log()).sum(-1))
    torch.testing.assert_close(dist.mode(), torch.nn.functional.one_hot(logits.argmax(-1), 6).double())
    with pytest.raises(ValueError, match="unimix"):
        OneHotDist(logits, unimix=1.0)


def test_one_hot_sample_is_straight_through_and_matches_frequencies():
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    dist = OneHotDist(logits)
    sample = dist.sample(seed=3)
    assert torch.equal(sample.detach().sum(-1), torch.ones(1)) and set(sample.detach().unique().tolist()) <= {0, 1}
    weights = torch.tensor([[1.0, -2.0, 0.5]])
    (sample * weights).sum().backward()
    probs = dist.probs.detach()
    # d sample / d probs = I, so d/dlogits = 0.99 * p_soft * (w - sum w p_soft).
    soft = torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, 0.99 * soft * (weights - (weights * soft).sum(-1, keepdim=True)))
    many = OneHotDist(logits.detach().expand(20000, 3)).sample(seed=0)
    torch.testing.assert_close(many.mean(0), probs[0], atol=0.015, rtol=0)


def test_bounded_normal_against_torch_normal():
    mean_raw = torch.randn(5, 3, generator=_gen(), dtype=torch.float64)
    std_raw = torch.randn(5, 3, generator=_gen(1), dtype=torch.float64) * 3
    dist = BoundedNormal(mean_raw, std_raw, min_std=0.1, max_std=1.0)
    std = 0.9 * torch.sigmoid(std_raw + 2) + 0.1
    assert torch.all(std >= 0.1) and torch.all(std <= 1.0)
    ref = torch.distributions.Normal(torch.tanh(mean_raw), std)
    action = torch.randn(5, 3, generator=_gen(2), dtype=torch.float64)
    torch.testing.assert_close(dist.log_prob(action), ref.log_prob(action).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))
    torch.testing.assert_close(dist.mode(), torch.tanh(mean_raw))
    noise = torch.randn(5, 3, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(dist.rsample(noise), torch.tanh(mean_raw) + std * noise)
    with pytest.raises(ValueError, match="min_std"):
        BoundedNormal(mean_raw, std_raw, min_std=0.0)


def test_bounded_normal_rsample_is_differentiable():
    mean_raw = torch.zeros(2, 3, requires_grad=True)
    std_raw = torch.zeros(2, 3, requires_grad=True)
    noise = torch.ones(2, 3)
    BoundedNormal(mean_raw, std_raw).rsample(noise).sum().backward()
    torch.testing.assert_close(mean_raw.grad, torch.ones(2, 3))  # d tanh(0) = 1
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(std_raw.grad, torch.full((2, 3), 0.9 * float(s * (1 - s))))
