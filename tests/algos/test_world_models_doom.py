"""World Models on Doom take-cover: the action mapping, the score (frames survived), the
done logit's loss, dream episodes that end where the sampled done says, the controller on
[z, h, c] without bias, and the whole pipeline on envpool's TakeCover-v1 at tiny sizes.

envpool is a dependency of these tests on purpose: without TakeCover-v1 they fail."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from worldmodels.algos.world_models.c_stages import real_rollouts
from worldmodels.algos.world_models.config import PipelineConfigError, preset
from worldmodels.algos.world_models.controller import ControllerSpec, parameter_count, population_actions
from worldmodels.algos.world_models.dream import DreamSettings, dream_rollouts, still_alive
from worldmodels.algos.world_models.envs import (
    DOOM_FRAME_SKIP,
    DOOM_LEFT,
    DOOM_RIGHT,
    DOOM_STALLED,
    DOOM_STAY,
    DoomBatch,
    doom_discrete_actions,
    resolve_env,
)
from worldmodels.algos.world_models.mdnrnn import MDNRNN, MDNRNNConfig, done_loss
from worldmodels.algos.world_models.pipeline import run_pipeline
from worldmodels.algos.world_models.rundir import STAGES, load_npz
from worldmodels.algos.world_models.vm_stages import collect_round
from worldmodels.nn.vae import ConvVAE, ConvVAEConfig
from worldmodels.utils.watchdog import Watchdog


def test_controller_output_is_thresholded_at_a_third_into_left_stay_right():
    raw = np.array([[-1.0], [-0.34], [-0.33], [0.0], [0.33], [0.34], [1.0]], np.float32)
    expected = [DOOM_LEFT, DOOM_LEFT, DOOM_STAY, DOOM_STAY, DOOM_STAY, DOOM_RIGHT, DOOM_RIGHT]
    np.testing.assert_array_equal(doom_discrete_actions(raw), expected)


def horizontal_shift(before: np.ndarray, after: np.ndarray) -> int:
    """The roll (pixels, + = the scene moved right) that best maps ``before``'s walls onto ``after``'s."""
    a, b = before.astype(float).mean(-1)[20:44], after.astype(float).mean(-1)[20:44]
    return min(range(-20, 21), key=lambda s: np.abs(np.roll(a, s, 1) - b).mean())


def test_left_and_right_strafe_the_view_opposite_ways_and_stay_keeps_it():
    batch = DoomBatch(3, seed=1, max_steps=525)
    start = batch.reset()
    assert start.shape == (3, 64, 64, 3) and start.dtype == np.uint8
    actions = np.array([[0.0], [1.0], [-1.0]], np.float32)     # stay, right, left
    for _ in range(6):
        frames, _, _ = batch.step(actions)
    batch.close()
    stay, right, left = (horizontal_shift(start[i], frames[i]) for i in range(3))
    assert stay == 0
    assert right <= -2 and left >= 2      # strafing right moves the scene left, and the other way round


def test_the_score_is_the_frames_survived_in_real_episodes():
    env = resolve_env("doom")
    assert resolve_env("TakeCover-v1") is env and env.action_dim == 1 and env.alive_reward == DOOM_FRAME_SKIP
    # the stay policy's episode lengths, counted by stepping the env directly
    counter = DoomBatch(3, seed=5, max_steps=525)
    counter.reset()
    alive, steps = np.ones(3, bool), np.zeros(3, int)
    while alive.any():
        _, _, done = counter.step(np.zeros((3, 1), np.float32))
        steps += alive
        alive &= ~done
    counter.close()
    # the same episodes through the controller path: a zero controller outputs tanh(0) = 0, stay
    vae = ConvVAE(ConvVAEConfig(image_size=64, channels=3, latent_dim=4, widths=[4, 4, 8, 8])).eval()
    model = MDNRNN(MDNRNNConfig(latent_dim=4, action_dim=1, hidden_size=8, num_mixtures=2, predict_done=True)).eval()
    spec = ControllerSpec("zhc", bias=False)
    theta = torch.zeros(1, parameter_count(spec.feature_dim(4, 8), 1, bias=False))
    batch = DoomBatch(3, seed=5, max_steps=525)
    returns, _ = real_rollouts(batch, vae, model, theta, 3, 525, lambda raw: raw, spec=spec)
    batch.close()
    np.testing.assert_array_equal(returns.flatten().numpy(), DOOM_FRAME_SKIP * steps)
    assert steps.min() > 5       # a real episode, not one cut at the start


def test_random_episodes_score_four_frames_a_step_and_end_with_a_done():
    env = resolve_env("doom")
    batch = DoomBatch(4, seed=3, max_steps=525)
    episodes = collect_round(env, batch, np.random.default_rng(0), 525)
    batch.close()
    for episode in episodes:
        assert episode["reward"].sum() == DOOM_FRAME_SKIP * len(episode["action"])
        assert episode["done"][-1] and not episode["done"][:-1].any()
        assert episode["action"].shape[1] == 1 and np.abs(episode["action"]).max() <= 1


def test_a_doom_step_that_stops_answering_is_reported_with_the_resume_command():
    fired = threading.Event()
    reported: list[str] = []

    class StalledPool:   # a batch whose game process died: step waits until the watchdog has spoken
        def step(self, actions):
            assert fired.wait(5.0)
            return np.zeros((1, 3, 64, 64), np.uint8), np.zeros(1), np.ones(1, bool), np.zeros(1, bool), {}

    batch = DoomBatch.__new__(DoomBatch)
    batch.num_envs, batch._env = 1, StalledPool()
    batch._watchdog = Watchdog(0.05, DOOM_STALLED, lambda message: (reported.append(message), fired.set()))
    frames, _, done = batch.step(np.zeros((1, 1), np.float32))
    batch._watchdog.close()
    assert reported == [DOOM_STALLED] and frames.shape == (1, 64, 64, 3) and done.tolist() == [True]
    assert "--resume <run directory> --stage" in DOOM_STALLED and "did not answer for 600 s" in DOOM_STALLED


def test_doom_envs_start_in_a_process_that_has_loaded_scipys_openblas():
    # cma loads scipy, whose OpenBLAS fork handler deadlocks when VizDoom's game processes
    # are forked from several threads at once: without stop_openblas_threads 15 of 24 such
    # processes hung in envpool.make. Three makes of 8 envs here would hang with odds ~94%.
    script = ("import numpy as np, scipy.linalg\n"
              "scipy.linalg.eigvalsh(np.eye(300) + np.ones((300, 300)))\n"
              "from worldmodels.algos.world_models.envs import DoomBatch\n"
              "for seed in range(3):\n"
              "    batch = DoomBatch(8, seed, 10)\n"
              "    batch.reset(); batch.close()\n"
              "print('started')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "started"


def test_the_done_loss_matches_a_hand_computed_weighted_cross_entropy():
    logits = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    done = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    # w = 10 on done steps: -10 log sigmoid(0), -log(1 - sigmoid(2)), -10 log sigmoid(-1)
    expected = (10 * math.log(2.0) + math.log(1 + math.exp(2.0)) + 10 * math.log(1 + math.e)) / 3
    assert abs(done_loss(logits, done, 10.0).item() - expected) < 1e-12
    unweighted = (math.log(2.0) + math.log(1 + math.exp(2.0)) + math.log(1 + math.e)) / 3
    assert abs(done_loss(logits, done).item() - unweighted) < 1e-12


def test_compute_loss_adds_the_weighted_done_loss():
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(latent_dim=3, action_dim=1, hidden_size=8, num_mixtures=2, predict_done=True,
                                done_weight=10.0))
    batch = {"z": torch.randn(2, 6, 3), "action": torch.rand(2, 5, 1) * 2 - 1, "reward": torch.randn(2, 5),
             "done": torch.tensor([[0.0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])}
    loss, metrics = model.compute_loss(batch)
    logits = model(batch["z"][:, :-1], batch["action"])["done_logit"]
    weighted = done_loss(logits, batch["done"], 10.0)
    torch.testing.assert_close(metrics["done_bce"], weighted.detach())
    torch.testing.assert_close(loss, metrics["nll_per_dim"] + metrics["reward_mse"] + weighted)


def constant_done_model(probability: float) -> MDNRNN:
    """An M whose done probability is ``probability`` at every step."""
    model = MDNRNN(MDNRNNConfig(latent_dim=3, action_dim=1, hidden_size=8, num_mixtures=2, predict_done=True))
    with torch.no_grad():
        model.done.weight.zero_()
        model.done.bias.fill_(math.log(probability / (1 - probability)))
    return model.eval()


def test_a_dream_episode_ends_at_the_first_step_whose_sampled_done_fires():
    probability, rollouts, horizon, seed, latent = 0.2, 6, 80, 123, 3
    model = constant_done_model(probability)
    starts = torch.randn(10, latent)
    spec = ControllerSpec("zhc", bias=False)
    theta = torch.randn(2, parameter_count(spec.feature_dim(latent, 8), 1, bias=False))
    settings = DreamSettings(rollouts, horizon, 1.15, spec, alive_reward=4.0)
    returns = dream_rollouts(model, theta, starts, settings, seed, lambda raw: raw)
    # replay the dream's draws: start index, then per step uniforms [R, Z], normals [R, Z], done uniforms [R]
    generator = torch.Generator().manual_seed(seed)
    torch.randint(len(starts), (rollouts,), generator=generator)
    ends = torch.full((rollouts,), horizon)
    for step in range(horizon):
        torch.rand((rollouts, latent), generator=generator), torch.randn((rollouts, latent), generator=generator)
        fired = torch.rand((rollouts,), generator=generator) < probability
        ends = torch.where(fired & (ends == horizon), torch.tensor(step + 1), ends)
    expected = 4.0 * ends.float()
    assert ends.max() < horizon                      # every episode ended inside the horizon
    assert len(set(ends.tolist())) > 1               # at different steps
    torch.testing.assert_close(returns, expected.expand(2, -1))   # both candidates share the draws


def test_a_dream_that_never_ends_lasts_the_horizon():
    model = constant_done_model(1e-6)
    spec = ControllerSpec("zhc", bias=False)
    theta = torch.zeros(1, parameter_count(spec.feature_dim(3, 8), 1, bias=False))
    returns = dream_rollouts(model, theta, torch.randn(4, 3), DreamSettings(3, 40, 1.0, spec, 4.0), 0, lambda r: r)
    torch.testing.assert_close(returns, torch.full((1, 3), 160.0))


def test_the_threshold_rule_ends_only_where_the_logit_is_above_zero():
    spec = ControllerSpec("zhc", bias=False)
    theta = torch.zeros(1, parameter_count(spec.feature_dim(3, 8), 1, bias=False))
    starts = torch.randn(4, 3)
    likely = DreamSettings(3, 40, 1.0, spec, 4.0, done_rule="threshold")
    # p = 0.4 ends every sampled episode early, never a thresholded one; p = 0.6 ends it at the first step
    assert dream_rollouts(constant_done_model(0.4), theta, starts, DreamSettings(3, 40, 1.0, spec, 4.0), 0,
                          lambda r: r).max() < 160.0
    torch.testing.assert_close(dream_rollouts(constant_done_model(0.4), theta, starts, likely, 0, lambda r: r),
                               torch.full((1, 3), 160.0))
    torch.testing.assert_close(dream_rollouts(constant_done_model(0.6), theta, starts, likely, 0, lambda r: r),
                               torch.full((1, 3), 4.0))
    torch.testing.assert_close(still_alive(torch.tensor([-0.1, 0.0, 0.1]), torch.zeros(3), "threshold"),
                               torch.tensor([1.0, 1.0, 0.0]))


def test_an_unknown_done_rule_is_one_line():
    with pytest.raises(ValueError, match="done_rule='logit' is not one of sample, threshold"):
        DreamSettings(done_rule="logit")
    with pytest.raises(PipelineConfigError, match="dream_done='x' is not one of sample, threshold"):
        preset("tiny", env="tiny", dream_done="x")


def test_the_doom_controller_reads_z_h_c_without_bias_1088_parameters():
    spec = resolve_env("doom").controller
    assert (spec.inputs, spec.bias) == ("zhc", False)
    assert parameter_count(spec.feature_dim(64, 512), 1, bias=False) == 1088
    z, h, c = torch.randn(5, 64), torch.randn(5, 512), torch.randn(5, 512)
    theta = torch.randn(3, 1088) * 0.05
    features = spec.features(z, (h, c))
    torch.testing.assert_close(features, torch.cat([z, h, c], -1))
    actions = population_actions(theta, features.expand(3, -1, -1), bias=False)
    torch.testing.assert_close(actions, torch.tanh(features @ theta.T).T.unsqueeze(-1))
    assert not torch.allclose(actions, population_actions(theta, spec.features(z, (h, -c)).expand(3, -1, -1),
                                                          bias=False))   # c is an input


def test_doom_presets_follow_the_authors_and_flags_override_them():
    cfg = preset("quick", env="doom")
    assert (cfg.latent_dim, cfg.hidden_size, cfg.num_mixtures) == (64, 512, 5)
    assert cfg.predict_done and cfg.train_in_dream and cfg.temperature == 1.15
    assert cfg.controller_steps * DOOM_FRAME_SKIP == 2100
    assert 1.15 in cfg.eval_temperatures
    assert preset("quick", env="doom", latent_dim=32, predict_done=False).latent_dim == 32
    assert preset("quick", env="carracing").latent_dim == 32 and not preset("quick").predict_done


def test_the_pipeline_runs_end_to_end_on_doom(tmp_path):
    cfg = preset("tiny", env="doom", generations=1, eval_episodes=3, collect_envs=2, mean_eval_every=1)
    outcomes = run_pipeline(cfg, tmp_path, list(STAGES))
    assert all(outcome.startswith("done") for outcome in outcomes.values()), outcomes
    episode = load_npz(sorted((tmp_path / "episodes").glob("episode_*.npz"))[0])
    assert episode["frames"].shape[1:] == (64, 64, 3) and episode["action"].shape[1] == 1
    state = torch.load(tmp_path / "mdnrnn.pt", weights_only=True)
    assert state["config"]["predict_done"] and "done_bce" in state
    best = torch.load(tmp_path / "controller_best.pt", weights_only=True)
    assert best["theta"].shape == (cfg.latent_dim + 2 * cfg.hidden_size,)   # [z, h, c], no bias
    results = json.loads((tmp_path / "evaluation_results.json").read_text())
    assert results["env"] == "TakeCover-v1" and results["score"] == "frames survived"
    for key in ("real_returns", "random_policy_returns"):
        scores = np.array(results[key])
        assert len(scores) == 3 and (scores % DOOM_FRAME_SKIP == 0).all()
        assert (scores > 0).all() and (scores <= DOOM_FRAME_SKIP * cfg.controller_steps).all()
    temperatures = [row["temperature"] for row in results["dream_by_temperature"]]
    assert temperatures == sorted({cfg.temperature, *cfg.eval_temperatures})
    probe = np.loadtxt(tmp_path / "cmaes_mean_eval.csv", delimiter=",", skiprows=1, ndmin=2)
    assert probe.shape == (1, 3) and probe[0, 1] % DOOM_FRAME_SKIP == 0 and probe[0, 1] > 0   # the mean, 3 episodes
    rows = (tmp_path / "temperature_gap.csv").read_text().splitlines()
    assert rows[0] == "temperature,dream_mean,dream_std,real_mean,gap" and len(rows) == 1 + len(temperatures)
