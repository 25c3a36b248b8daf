"""One controller per dream temperature (``train_temperatures``) and the standardized
controller input (``controller_input``), on the tiny env: each tau's search is scored in
its own dream and resumes on its own, the table's real scores share one set of seeds,
the input scale is measured, saved, reloaded and applied in the dream and the real env."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from worldmodels.algos.world_models import c_stages, feature_scale
from worldmodels.algos.world_models.c_stages import (
    Evaluator,
    dream_settings,
    dream_starts,
    generation_seed,
    real_rollouts,
)
from worldmodels.algos.world_models.cmaes import fitness
from worldmodels.algos.world_models.config import PipelineConfigError, parse_temperatures, preset
from worldmodels.algos.world_models.controller import FeatureScale, action_map
from worldmodels.algos.world_models.dream import dream_rollouts
from worldmodels.algos.world_models.envs import make_batch, resolve_env
from worldmodels.algos.world_models.feature_scale import measure_scale, saturation
from worldmodels.algos.world_models.pipeline import main, run_pipeline
from worldmodels.algos.world_models.rundir import STAGES, MissingInputError, load_npz
from worldmodels.algos.world_models.temperatures import TABLE_COLUMNS, temperature_dir
from worldmodels.algos.world_models.vm_stages import load_mdnrnn, load_vae
from worldmodels.train import precheck
from worldmodels.training.checkpoint import load_checkpoint

TAUS = (0.5, 1.5)
CPU = torch.device("cpu")


def tiny(**overrides):
    return preset("tiny", env="tiny", **{"train_temperatures": TAUS, "generations": 2, **overrides})


@pytest.fixture(scope="module")
def tau_run(tmp_path_factory):
    """A tiny run with one controller per tau (every stage)."""
    run = tmp_path_factory.mktemp("wm_tau") / "run"
    outcomes = run_pipeline(tiny(), run, list(STAGES))
    return run, outcomes


def fresh_copy(run, target, keep_controllers=False):
    """``run``'s V, M and latents in ``target`` (the controllers too when asked)."""
    shutil.copytree(run, target, ignore=None if keep_controllers else shutil.ignore_patterns(
        "temperatures", "controller_best.pt", "cmaes_state.npz", "logs", "evaluation_results.json"))
    return target


def test_each_tau_has_its_own_search_scored_in_its_own_dream(tau_run):
    run, outcomes = tau_run
    assert outcomes["controller"].startswith("done: one controller per tau (0.5, 1.5)")
    cfg, env = tiny(), resolve_env("tiny")
    states = {tau: load_npz(temperature_dir(run, tau) / "cmaes_state.npz") for tau in TAUS}
    # the same seed: the same generation 0, scored in two dreams, so different losses
    np.testing.assert_array_equal(states[0.5]["solutions"][0], states[1.5]["solutions"][0])
    assert not np.allclose(states[0.5]["losses"], states[1.5]["losses"])
    for tau, state in states.items():
        assert state["losses"].shape == (cfg.generations, cfg.population)
        best = load_checkpoint(temperature_dir(run, tau) / "controller_best.pt")
        assert best["temperature"] == tau and best["controller_input"] == "raw"
        # generation 0's recorded losses are minus the fitness of that tau's dream
        model, solutions = load_mdnrnn(run, CPU), state["solutions"][0]
        returns = dream_rollouts(model, torch.from_numpy(solutions).float(), dream_starts(run),
                                 dream_settings(cfg, env, cfg.rollouts_per_candidate, tau), generation_seed(cfg, 0),
                                 action_map(env.action_map)).mean(1).double().numpy()
        np.testing.assert_allclose(-state["losses"][0], fitness(returns, solutions, cfg.weight_decay), rtol=1e-5)
    assert not (run / "controller_best.pt").exists() and not (run / "cmaes_state.npz").exists()


def test_a_crashed_tau_resumes_its_own_search_and_a_finished_one_is_skipped(tau_run, tmp_path, monkeypatch):
    run, _ = tau_run
    crashed = fresh_copy(run, tmp_path / "crashed")
    scored = []
    evaluate = Evaluator.__call__

    def crash_at_tau_1_5_generation_1(self, theta, generation):
        if (self.cfg.temperature, generation) == (1.5, 1):
            raise RuntimeError("simulated crash")
        return evaluate(self, theta, generation)

    monkeypatch.setattr(Evaluator, "__call__", crash_at_tau_1_5_generation_1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(tiny(), crashed, ["controller"])
    monkeypatch.setattr(Evaluator, "__call__", lambda self, theta, generation: scored.append(
        (self.cfg.temperature, generation)) or evaluate(self, theta, generation))
    run_pipeline(tiny(), crashed, ["controller"])
    assert scored == [(1.5, 1)]                      # tau 0.5 skipped, tau 1.5 resumed at its generation 1
    for tau in TAUS:                                 # the CMA-ES state restored: the uninterrupted run's
        whole, again = (load_npz(temperature_dir(folder, tau) / "cmaes_state.npz") for folder in (run, crashed))
        np.testing.assert_array_equal(again["solutions"], whole["solutions"])
        np.testing.assert_allclose(again["losses"], whole["losses"], rtol=1e-6)
    assert run_pipeline(tiny(), crashed, ["controller"])["controller"].startswith("skipped")
    assert scored == [(1.5, 1)]


def test_the_table_scores_every_tau_on_the_same_real_seeds(tau_run, tmp_path, monkeypatch):
    run, _ = tau_run
    cfg, env = tiny(), resolve_env("tiny")
    seeds = []
    monkeypatch.setattr(c_stages, "make_batch", lambda env, count, seed, steps: seeds.append((seed, count)) or
                        make_batch(env, count, seed, steps))
    evaluated = fresh_copy(run, tmp_path / "eval", keep_controllers=True)
    assert run_pipeline(cfg, evaluated, ["eval"])["eval"].startswith("done: tau 0.5: dream")
    assert seeds == [(cfg.seed + 10_000, cfg.eval_episodes)] * len(TAUS)   # one batch per tau, the same seeds
    header, *lines = (evaluated / "temperature_table.csv").read_text().splitlines()
    assert header == "temperature,dream_mean,dream_std,real_mean,real_std,gap,generation,fitness"
    assert [float(line.split(",")[0]) for line in lines] == list(TAUS)
    block = json.loads((evaluated / "evaluation_results.json").read_text())["temperature_table"]
    assert block["columns"] == list(TABLE_COLUMNS) and block["real_seeds"] == [10_000, 10_001]
    model = load_mdnrnn(run, CPU)
    for tau, row in zip(TAUS, block["rows"]):
        assert row["gap"] == pytest.approx(row["dream_mean"] - row["real_mean"])
        assert row["real_mean"] == pytest.approx(np.mean(row["real_returns"]))
        theta = load_checkpoint(temperature_dir(run, tau) / "controller_best.pt")["theta"].unsqueeze(0)
        dream = dream_rollouts(model, theta, dream_starts(run), dream_settings(cfg, env, cfg.eval_episodes, tau),
                               cfg.seed + 10_000, action_map(env.action_map))
        assert row["dream_mean"] == pytest.approx(dream.mean().item(), rel=1e-5)   # its own dream, at its tau
    assert (evaluated / "temperature_table.png").stat().st_size > 0


def test_eval_without_a_taus_controller_names_it_and_the_command(tau_run, tmp_path):
    run, _ = tau_run
    partial = fresh_copy(run, tmp_path / "partial", keep_controllers=True)
    shutil.rmtree(temperature_dir(partial, 1.5))
    with pytest.raises(MissingInputError, match="temperatures/tau_1.5/controller_best.pt.*--stage controller"):
        run_pipeline(tiny(), partial, ["eval"])


def episode_by_episode_features(model, latents, spec):
    """The raw features of every step, one episode and one step at a time (the reference)."""
    rows = []
    for frame0, step0, length in zip(latents["frame_starts"], latents["step_starts"], latents["lengths"]):
        state = model.initial_state(1)
        for t in range(length):
            z = torch.from_numpy(latents["mu"][frame0 + t][None]).float()
            rows.append(spec.features(z, state))
            state = model.step(z, torch.from_numpy(latents["action"][step0 + t][None]).float(), state)
    return torch.cat(rows)


def test_standardized_features_have_mean_0_and_std_1_on_the_episodes_they_came_from(tau_run, monkeypatch):
    run, _ = tau_run
    model, latents, spec = load_mdnrnn(run, CPU), load_npz(run / "latents.npz"), resolve_env("tiny").controller
    scale = measure_scale(model, latents, spec, CPU)
    with torch.no_grad():
        features = episode_by_episode_features(model, latents, spec)
    assert len(features) == latents["lengths"].sum() and scale.mean.shape == (features.shape[1],)
    scaled = scale(features)
    torch.testing.assert_close(scaled.mean(0), torch.zeros(features.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaled.std(0, unbiased=False), torch.ones(features.shape[1]), atol=1e-4, rtol=0)
    monkeypatch.setattr(feature_scale, "EPISODE_BATCH", 3)            # merged over several batches: the same
    merged = measure_scale(model, latents, spec, CPU)
    torch.testing.assert_close(merged.mean, scale.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.std, scale.std, atol=1e-5, rtol=1e-5)


def test_the_scale_is_saved_in_the_checkpoint_and_reloaded_identically_on_resume(tau_run, tmp_path, monkeypatch):
    run, _ = tau_run
    target = fresh_copy(run, tmp_path / "std")
    cfg = preset("tiny", env="tiny", controller_input="standardized", generations=1)
    run_pipeline(cfg, target, ["controller"])
    saved = load_checkpoint(target / "controller_best.pt")
    assert saved["controller_input"] == "standardized"
    measured = measure_scale(load_mdnrnn(run, CPU), load_npz(run / "latents.npz"), resolve_env("tiny").controller, CPU)
    assert torch.equal(saved["input_mean"], measured.mean) and torch.equal(saved["input_std"], measured.std)

    def never(*args):
        raise AssertionError("a resumed search reads its scale from the checkpoint")

    monkeypatch.setattr(c_stages, "measure_scale", never)
    evaluate = Evaluator(cfg, target, resolve_env("tiny"), CPU)
    assert torch.equal(evaluate.spec.scale.mean, saved["input_mean"]) and torch.equal(evaluate.spec.scale.std,
                                                                                      saved["input_std"])
    run_pipeline(dataclasses.replace(cfg, generations=2), target, ["controller", "eval"])
    again = load_checkpoint(target / "controller_best.pt")
    assert torch.equal(again["input_mean"], saved["input_mean"]) and torch.equal(again["input_std"], saved["input_std"])
    results = json.loads((target / "evaluation_results.json").read_text())
    assert results["controller_input"] == "standardized"
    with pytest.raises(PipelineConfigError, match="trained with controller_input='standardized', this run has 'raw'"):
        run_pipeline(preset("tiny", env="tiny", generations=3), target, ["controller"])


def folded(theta, scale, features, actions):
    """``theta`` on raw features that acts as ``theta`` on scaled ones: W / std, b - (W / std)^T mean."""
    weight = theta[:, :features * actions].view(-1, features, actions) / scale.std[:, None]
    bias = theta[:, features * actions:] - torch.einsum("pfa,f->pa", weight, scale.mean)
    return torch.cat([weight.flatten(1), bias], 1)


def test_the_dream_and_the_real_env_controllers_both_apply_the_scale(tau_run):
    run, _ = tau_run
    cfg, env = preset("tiny", env="tiny"), resolve_env("tiny")
    model, vae = load_mdnrnn(run, CPU), load_vae(run, CPU)
    features = cfg.latent_dim + cfg.hidden_size
    scale = FeatureScale(torch.linspace(-1, 1, features), torch.linspace(0.5, 2, features))
    scaled = dataclasses.replace(env.controller, scale=scale)
    theta = torch.randn(3, (features + 1) * env.action_dim, generator=torch.Generator().manual_seed(0))
    raw_theta, to_env = folded(theta, scale, features, env.action_dim), action_map(env.action_map)
    dreams = [dream_rollouts(model, t, dream_starts(run), dream_settings(cfg, env, 2, 1.0, s), 5, to_env)
              for t, s in ((theta, scaled), (raw_theta, env.controller), (theta, env.controller))]
    torch.testing.assert_close(dreams[0], dreams[1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(dreams[0], dreams[2], atol=1e-3)
    reals = [real_rollouts(make_batch(env, 3 * 2, 3, cfg.controller_steps), vae, model, t, 2, cfg.controller_steps,
                           to_env, spec=s)[0] for t, s in ((theta, scaled), (raw_theta, env.controller))]
    torch.testing.assert_close(reals[0], reals[1], atol=1e-4, rtol=1e-4)


def test_saturation_counts_the_steps_past_0_99_and_the_median_pre_activation():
    spec = resolve_env("doom").controller                      # [z, h, c], no bias
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    theta = torch.tensor([[0.1, 0.2], [3.0, -4.0]])              # pre-activations 0.1, 0.2, 0.6 and 3, -4, -2
    stats = saturation(theta, features, spec)
    assert stats["median_abs_preactivation"] == pytest.approx(0.6)   # torch's median: the lower of the middle two
    assert stats["saturated_fraction"] == pytest.approx(2 / 6)         # tanh(3), tanh(-4) past 0.99; tanh(2) not
    halved = dataclasses.replace(spec, scale=FeatureScale(torch.zeros(2), torch.full((2,), 2.0)))
    assert saturation(theta, features, halved)["median_abs_preactivation"] == pytest.approx(0.3)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train_temperatures": (0.5, -0.1)}, r"train_temperatures=\[0.5, -0.1\]: every tau must be >= 0"),
    ({"train_temperatures": (1.0, 1.0)}, "lists a tau twice"),
    ({"train_temperatures": (1.0,), "train_in_dream": False}, "add --train-in-dream"),
    ({"controller_input": "whitened"}, "controller_input='whitened' is not one of raw, standardized"),
])
def test_bad_settings_are_refused_in_one_line_naming_them(overrides, message):
    with pytest.raises(PipelineConfigError, match=message):
        preset("tiny", env="tiny", **overrides)


def test_the_flag_takes_commas_or_spaces_and_refuses_an_empty_or_wordy_list(tmp_path, capsys):
    assert parse_temperatures(["0.1,0.5", "1.15"]) == (0.1, 0.5, 1.15)
    for values, message in (([], "needs at least one tau"), ([","], "needs at least one tau"),
                            (["0.1,hot"], "every tau must be a number")):
        with pytest.raises(PipelineConfigError, match=message):
            parse_temperatures(values)
    assert main(["--env", "tiny", "--mode", "tiny", "--train-temperatures", "--run-dir", str(tmp_path)]) == 2
    assert main(["--env", "tiny", "--mode", "tiny", "--controller-input", "x", "--run-dir", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["error", "error"] and "--train-temperatures needs" in lines[0]


def test_hydra_keys_have_rules():
    exp = ["+exp=world_models_doom"]
    assert precheck([*exp, "algo.train_temperatures=[]"]).startswith("algo.train_temperatures=[] is not allowed")
    assert precheck([*exp, "algo.controller_input=x"]).startswith("algo.controller_input=x is not allowed")
    assert precheck([*exp, "algo.train_temperatures=[0.5,1.15]", "algo.controller_input=standardized"]) is None
