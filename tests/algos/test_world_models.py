"""World Models' M and C: the MDN-RNN likelihood and sampling, the batched controller,
the batched dream, and CMA-ES resume by replay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldmodels.algos.world_models.cmaes import PopulationSearch, SearchStateError, fitness
from worldmodels.algos.world_models.controller import carracing_actions, parameter_count, population_actions
from worldmodels.algos.world_models.dream import DreamSettings, dream_returns, dream_returns_loop, dream_rollouts
from worldmodels.algos.world_models.mdnrnn import (
    LOG_SIGMA_MAX,
    LOG_SIGMA_MIN,
    MDNRNN,
    MDNRNNConfig,
    mixture_log_prob,
    sample_mixture,
)


def normal_pdf(x: float, mean: float, sigma: float) -> float:
    return math.exp(-0.5 * ((x - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def test_mixture_log_prob_matches_a_hand_computed_two_dim_case():
    # dim 0: pi = (1/4, 3/4), mu = (0, 1), sigma = (1, 2), x = 0.5
    # dim 1: pi = (1/2, 1/2), mu = (-1, 2), sigma = (0.5, 1), x = 1.5
    f64 = {"dtype": torch.float64}
    logit_pi = torch.tensor([[0.0, math.log(3.0)], [0.7, 0.7]], **f64)
    mu = torch.tensor([[0.0, 1.0], [-1.0, 2.0]], **f64)
    log_sigma = torch.log(torch.tensor([[1.0, 2.0], [0.5, 1.0]], **f64))
    x = torch.tensor([0.5, 1.5], **f64)
    dim0 = 0.25 * normal_pdf(0.5, 0.0, 1.0) + 0.75 * normal_pdf(0.5, 1.0, 2.0)
    dim1 = 0.5 * normal_pdf(1.5, -1.0, 0.5) + 0.5 * normal_pdf(1.5, 2.0, 1.0)
    expected = math.log(dim0) + math.log(dim1)
    got = mixture_log_prob(x, logit_pi, mu, log_sigma)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_log_prob_is_stable_far_from_every_component():
    logit_pi = torch.zeros(1, 3)
    mu = torch.zeros(1, 3)
    log_sigma = torch.full((1, 3), LOG_SIGMA_MIN)
    value = mixture_log_prob(torch.tensor([50.0]), logit_pi, mu, log_sigma)
    assert torch.isfinite(value) and value.item() < -1e6


def tiny_model(**overrides) -> MDNRNN:
    torch.manual_seed(0)
    return MDNRNN(MDNRNNConfig(**{"latent_dim": 3, "action_dim": 2, "hidden_size": 8, "num_mixtures": 4,
                                  **overrides}))


def test_each_latent_dim_has_its_own_mixture_weights_and_sigma_is_bounded():
    model = tiny_model()
    with torch.no_grad():
        model.mixture.bias.uniform_(-1e4, 1e4)
    out = model.heads(torch.randn(5, 8))
    assert out["logit_pi"].shape == (5, 3, 4)
    assert not torch.allclose(out["logit_pi"][:, 0], out["logit_pi"][:, 1])
    assert out["log_sigma"].min() >= LOG_SIGMA_MIN and out["log_sigma"].max() <= LOG_SIGMA_MAX


def test_compute_loss_is_the_mixture_nll_per_dim_plus_the_reward_mse():
    model = tiny_model()
    z, action, reward = torch.randn(2, 6, 3), torch.randn(2, 5, 2), torch.randn(2, 5)
    loss, metrics = model.compute_loss({"z": z, "action": action, "reward": reward, "done": torch.zeros(2, 5)})
    out = model(z[:, :-1], action)
    nll = -mixture_log_prob(z[:, 1:], out["logit_pi"], out["mu"], out["log_sigma"]).mean() / 3
    assert metrics["nll_per_dim"].item() == pytest.approx(nll.item(), rel=1e-6)
    assert loss.item() == pytest.approx(nll.item() + (out["reward"] - reward).square().mean().item(), rel=1e-6)


def test_a_masked_batch_has_the_loss_of_its_real_steps_alone():
    """Padding (mask 0) changes no loss term: a sequence padded with junk after its end has
    the losses of the same steps unpadded (predict_done on, deaths weighted)."""
    model = MDNRNN(MDNRNNConfig(latent_dim=3, action_dim=2, hidden_size=8, num_mixtures=2,
                                predict_done=True, done_weight=10.0))
    z, action, reward = torch.randn(1, 5, 3), torch.randn(1, 4, 2), torch.randn(1, 4)
    done = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    _, short = model.compute_loss({"z": z, "action": action, "reward": reward, "done": done})
    pad = {"z": torch.cat([z, 50 * torch.randn(1, 3, 3)], 1), "action": torch.cat([action, torch.randn(1, 3, 2)], 1),
           "reward": torch.cat([reward, torch.full((1, 3), 9.0)], 1), "done": torch.cat([done, torch.ones(1, 3)], 1),
           "mask": torch.tensor([[1.0, 1, 1, 1, 0, 0, 0]])}
    _, padded = model.compute_loss(pad)
    for key in ("nll_per_dim", "reward_mse", "done_bce"):
        assert padded[key].item() == pytest.approx(short[key].item(), rel=1e-5), key
    _, unmasked = model.compute_loss({k: v for k, v in pad.items() if k != "mask"})
    assert unmasked["nll_per_dim"].item() > short["nll_per_dim"].item() + 1.0   # the junk would count


def test_step_equals_the_sequence_lstm():
    model = tiny_model()
    z, action = torch.randn(3, 4, 3), torch.randn(3, 4, 2)
    sequence = model(z, action)["mu"]
    state = model.initial_state(3)
    for t in range(4):
        state = model.step(z[:, t], action[:, t], state)
    torch.testing.assert_close(model.heads(state[0])["mu"], sequence[:, -1])


@pytest.mark.parametrize("tau", [0.0, 1e-8])
def test_sampling_as_tau_goes_to_zero_gives_the_mean_of_the_most_probable_component(tau):
    generator = torch.Generator().manual_seed(1)
    logit_pi, mu = torch.randn(6, 3, 5, generator=generator), torch.randn(6, 3, 5, generator=generator)
    log_sigma = torch.zeros(6, 3, 5)
    uniform, normal = torch.rand(6, 3, generator=generator), torch.randn(6, 3, generator=generator)
    sample = sample_mixture(logit_pi, mu, log_sigma, tau, uniform, normal)
    mode = mu.gather(-1, logit_pi.argmax(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(sample, mode, atol=1e-3, rtol=0)


def test_sampling_at_tau_one_draws_components_with_their_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3])
    count = 20000
    logit_pi = probs.log().expand(count, 1, 3)
    mu = torch.tensor([0.0, 10.0, 20.0]).expand(count, 1, 3)
    log_sigma = torch.full((count, 1, 3), LOG_SIGMA_MIN)
    generator = torch.Generator().manual_seed(0)
    sample = sample_mixture(logit_pi, mu, log_sigma, 1.0, torch.rand(count, 1, generator=generator),
                            torch.randn(count, 1, generator=generator))
    frequencies = torch.stack([(sample.round() == v).float().mean() for v in (0.0, 10.0, 20.0)])
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


def test_controller_of_carracing_has_867_parameters_and_env_bounds():
    assert parameter_count(32 + 256, 3) == 867
    mapped = carracing_actions(torch.tensor([[-1.0, -1.0, 1.0], [0.5, 0.0, -1.0], [0.0, 1.0, 0.25]]))
    torch.testing.assert_close(mapped, torch.tensor([[-1.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.25]]))


def test_batched_controller_equals_a_loop_over_candidates():
    features, actions, population = 7, 3, 5
    theta = torch.randn(population, parameter_count(features, actions), dtype=torch.float64)
    inputs = torch.randn(population, 4, features, dtype=torch.float64)
    batched = population_actions(theta, inputs)
    for p in range(population):
        weight = theta[p, : features * actions].view(features, actions)
        bias = theta[p, features * actions:]
        torch.testing.assert_close(batched[p], torch.tanh(inputs[p] @ weight + bias))


def test_wrong_theta_size_is_refused_naming_the_shape():
    with pytest.raises(ValueError, match=r"theta has shape \(2, 10\): \[P, n\] needs n = \(F \+ 1\) \* A = 8 \* A"):
        population_actions(torch.zeros(2, 10), torch.zeros(2, 1, 7))


@pytest.mark.parametrize("predict_done", [False, True])
def test_batched_dream_equals_per_candidate_dreams_with_the_same_seed(predict_done):
    model = tiny_model(predict_done=predict_done).eval()
    if predict_done:
        with torch.no_grad():
            model.done.bias.fill_(-2.0)   # some episodes end inside the horizon
    theta = 0.5 * torch.randn(4, parameter_count(3 + 8, 2))
    starts = torch.randn(10, 3)
    settings = DreamSettings(rollouts=3, horizon=12, temperature=1.2)
    batched = dream_returns(model, theta, starts, settings, seed=7, to_env_action=torch.tanh)
    looped = dream_returns_loop(model, theta, starts, settings, seed=7, to_env_action=torch.tanh)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    other_seed = dream_returns(model, theta, starts, settings, seed=8, to_env_action=torch.tanh)
    assert not torch.allclose(batched, other_seed)


def test_dream_shares_random_numbers_across_candidates_and_masks_ended_episodes():
    model = tiny_model(predict_done=True).eval()
    theta = torch.randn(1, parameter_count(11, 2)).expand(3, -1).contiguous()
    settings = DreamSettings(rollouts=2, horizon=6, temperature=1.0)
    returns = dream_rollouts(model, theta, torch.randn(5, 3), settings, seed=3, to_env_action=torch.tanh)
    torch.testing.assert_close(returns[1], returns[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(returns[2], returns[0], atol=1e-6, rtol=0)
    with torch.no_grad():
        model.done.bias.fill_(1e4)      # every episode ends after its first step
        model.reward.bias.fill_(1.0)
        model.reward.weight.zero_()
    first_only = dream_rollouts(model, theta, torch.randn(5, 3), settings, seed=3, to_env_action=torch.tanh)
    torch.testing.assert_close(first_only, torch.ones(3, 2))


def run_search(search: PopulationSearch, generations: int) -> None:
    for _ in range(generations):
        solutions = search.ask()
        search.tell(solutions, -np.square(solutions - 0.3).sum(1))


def test_cmaes_resume_asks_the_same_next_generation_as_an_uninterrupted_run(tmp_path):
    uninterrupted = PopulationSearch(dim=6, popsize=5, sigma0=0.1, seed=0)
    run_search(uninterrupted, 3)
    interrupted = PopulationSearch(dim=6, popsize=5, sigma0=0.1, seed=0)
    run_search(interrupted, 3)
    interrupted.save(tmp_path / "state.npz")
    np.random.seed(12345)     # whatever other code does to NumPy's global generator
    resumed = PopulationSearch.load(tmp_path / "state.npz", dim=6, popsize=5, sigma0=0.1, seed=0)
    assert resumed.generation == 3
    np.random.seed(999)
    next_resumed = resumed.ask()
    np.testing.assert_array_equal(next_resumed, uninterrupted.ask())
    np.testing.assert_array_equal(resumed.mean, uninterrupted.mean)


def test_cmaes_resume_refuses_other_settings(tmp_path):
    search = PopulationSearch(dim=4, popsize=4, sigma0=0.1, seed=0)
    run_search(search, 1)
    search.save(tmp_path / "state.npz")
    with pytest.raises(SearchStateError, match="popsize"):
        PopulationSearch.load(tmp_path / "state.npz", dim=4, popsize=6, sigma0=0.1, seed=0)


def test_antithetic_candidates_are_mirrored_pairs_about_the_mean_and_the_search_still_converges():
    search = PopulationSearch(dim=6, popsize=8, sigma0=0.1, seed=3, antithetic=True)
    plain = PopulationSearch(dim=6, popsize=8, sigma0=0.1, seed=3)
    first, plain_first = search.ask(), plain.ask()
    np.testing.assert_array_equal(first[:4], plain_first[:4])           # the first half is pycma's own draw
    np.testing.assert_allclose(first[:4] + first[4:], 0.0, atol=1e-15)  # mirrored about the mean 0
    assert not np.allclose(first[4:], plain_first[4:])
    search.tell(first, -np.square(first - 0.3).sum(1))
    for _ in range(40):
        mean = search.mean
        solutions = search.ask()
        np.testing.assert_allclose(solutions[:4] + solutions[4:] - 2 * mean, 0.0, atol=1e-12)
        search.tell(solutions, -np.square(solutions - 0.3).sum(1))
    np.testing.assert_allclose(search.mean, 0.3, atol=0.05)


def test_antithetic_search_resumes_to_the_same_next_generation_and_refuses_a_plain_one(tmp_path):
    uninterrupted = PopulationSearch(dim=5, popsize=6, sigma0=0.1, seed=1, antithetic=True)
    run_search(uninterrupted, 3)
    uninterrupted.save(tmp_path / "state.npz")
    resumed = PopulationSearch.load(tmp_path / "state.npz", dim=5, popsize=6, sigma0=0.1, seed=1, antithetic=True)
    np.testing.assert_array_equal(resumed.ask(), uninterrupted.ask())
    with pytest.raises(SearchStateError, match="antithetic"):
        PopulationSearch.load(tmp_path / "state.npz", dim=5, popsize=6, sigma0=0.1, seed=1)
    with pytest.raises(SearchStateError, match="even population, not 5"):
        PopulationSearch(dim=5, popsize=5, sigma0=0.1, seed=1, antithetic=True)


def test_fitness_is_mean_return_minus_weight_decay_times_mean_square():
    theta = np.array([[1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(fitness(np.array([10.0, 2.0]), theta, 0.01), [10.0 - 0.05, 2.0])
