"""DisARM: the estimate's mean is the exact gradient of E[f] for factorised Bernoullis."""

import itertools

import torch

from worldmodels.nn.disarm import antithetic_pair, disarm_surrogate


def objective(bits: torch.Tensor) -> torch.Tensor:
    """A non-linear function of 3 bits per row ``[N, 3]`` -> ``[N]``."""
    b = bits.float()
    return 5 * b[:, 0] * b[:, 1] - 3 * b[:, 2] + 7 * b[:, 0] * (1 - b[:, 2]) + 2


def exact_gradient(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.detach().clone().requires_grad_()
    p = torch.sigmoid(logits)
    expectation = 0
    for bits in itertools.product([0, 1], repeat=3):
        b = torch.tensor([bits], dtype=torch.float32)
        expectation = expectation + (p ** b * (1 - p) ** (1 - b)).prod() * objective(b)[0]
    (grad,) = torch.autograd.grad(expectation, logits)
    return grad


def test_disarm_is_unbiased():
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    draws = 40_000
    batch = logits.expand(draws, 3).clone().requires_grad_()
    first, second = antithetic_pair(batch, torch.Generator().manual_seed(0))
    surrogate = disarm_surrogate(batch, first, second, objective(first), objective(second))
    assert surrogate.item() == 0.0                      # the value adds nothing to a loss
    surrogate.backward()
    estimate = batch.grad.mean(0, keepdim=True)
    torch.testing.assert_close(estimate, exact_gradient(logits), atol=0.05, rtol=0.02)


def test_draws_are_antithetic_bernoullis():
    logits = torch.full((200_000, 1), -0.8)
    first, second = antithetic_pair(logits, torch.Generator().manual_seed(1))
    p = torch.sigmoid(torch.tensor(-0.8)).item()
    assert abs(first.float().mean().item() - p) < 0.005 and abs(second.float().mean().item() - p) < 0.005
    assert not (first & second).any()                   # p < 1/2: never both
