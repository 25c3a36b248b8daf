"""The World Models pipeline end to end on the tiny env: every output exists and opens,
stages refuse to start without their inputs, the controller stage resumes to the same
generations, retired env ids are answered with the current one."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from worldmodels.algos.world_models import c_stages
from worldmodels.algos.world_models.controller import parameter_count
from worldmodels.algos.world_models.config import PipelineConfigError, preset, to_json
from worldmodels.algos.world_models.envs import EnvIdError, resolve_env
from worldmodels.algos.world_models.pipeline import main, parse_stages, run_pipeline
from worldmodels.algos.world_models.rundir import STAGES, MissingInputError, load_npz
from worldmodels.algos.world_models.vm_stages import episode_paths, load_mdnrnn, load_vae, sequence_batch, to_images
from worldmodels.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One complete tiny run (all stages, videos on)."""
    run = tmp_path_factory.mktemp("wm") / "run"
    cfg = preset("tiny", env="tiny", save_videos=True, generations=3)
    outcomes = run_pipeline(cfg, run, list(STAGES))
    return cfg, run, outcomes


def test_the_tiny_pipeline_writes_every_output_and_each_opens(tiny_run):
    cfg, run, outcomes = tiny_run
    assert list(outcomes) == list(STAGES) and all(o.startswith("done") for o in outcomes.values())
    episodes = sorted((run / "episodes").glob("episode_*.npz"))
    assert len(episodes) == cfg.rollouts
    episode = load_npz(episodes[0])
    assert episode["frames"].dtype == np.uint8 and episode["frames"].shape[1:] == (16, 16, 3)
    assert len(episode["frames"]) == len(episode["action"]) + 1
    for name in ("vae.pt", "mdnrnn.pt", "controller_best.pt"):
        assert load_checkpoint(run / name)
    latents, meta = load_npz(run / "latents.npz"), json.loads((run / "latents.json").read_text())
    assert latents["mu"].shape == (meta["frames"], cfg.latent_dim) and meta["episodes"] == cfg.rollouts
    best = load_checkpoint(run / "controller_best.pt")
    assert best["theta"].shape == ((cfg.latent_dim + cfg.hidden_size + 1) * 2,)
    results = json.loads((run / "evaluation_results.json").read_text())
    assert len(results["real_returns"]) == cfg.eval_episodes and np.isfinite(results["real_mean"])
    assert np.isfinite(results["dream_mean"]) and np.isfinite(results["random_policy_mean"])
    with (run / "pipeline_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["stage"] for row in rows] == list(STAGES) and all(float(row["seconds"]) >= 0 for row in rows)
    curve = np.loadtxt(run / "cmaes_curve.csv", delimiter=",", skiprows=1)
    assert curve.shape == (3, 4) and (curve[:, 1] >= curve[:, 2]).all() and (curve[:, 2] >= curve[:, 3]).all()
    assert (run / "cmaes_curve.png").stat().st_size > 0 and (run / "videos" / "rollout.gif").stat().st_size > 0


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard events under ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_stage_writes_its_scalars_to_tensorboard_and_csv(tiny_run):
    cfg, run, _ = tiny_run
    logs = {stage: scalars(run / "logs" / stage / "tensorboard") for stage in STAGES}
    assert [step for step, _ in logs["collect"]["collect/mean_return"]] == [4, 8]     # two rounds of 4 envs
    assert logs["encode"]["encode/frames"] == [(0, float(len(load_npz(run / "latents.npz")["mu"])))]
    vae = {tag: values for tag, values in logs["vae"].items()}
    assert [step for step, _ in vae["vae/loss"]] == list(range(1, cfg.vae_epochs + 1))
    assert all(loss >= recon for (_, loss), (_, recon) in zip(vae["vae/loss"], vae["vae/recon"]))
    mdn = logs["mdnrnn"]
    assert {"mdnrnn/loss", "mdnrnn/nll_per_dim", "mdnrnn/reward_mse"} <= set(mdn)
    assert [step for step, _ in mdn["mdnrnn/loss"]] == [1, 2]
    with (run / "logs" / "mdnrnn" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["mdnrnn/loss"]) for r in rows], [v for _, v in mdn["mdnrnn/loss"]], rtol=1e-6)
    curve = np.loadtxt(run / "cmaes_curve.csv", delimiter=",", skiprows=1)
    for column, tag in ((1, "cmaes/best"), (2, "cmaes/mean"), (3, "cmaes/worst")):
        steps, values = zip(*logs["controller"][tag])
        assert list(steps) == [0, 1, 2]
        np.testing.assert_allclose(values, curve[:, column], atol=1e-4)
    results = json.loads((run / "evaluation_results.json").read_text())
    for key in ("real_mean", "dream_mean", "random_policy_mean"):
        (step, value), = logs["eval"][f"eval/{key}"]
        assert step == results["controller_generation"] and value == pytest.approx(results[key], rel=1e-6)


def test_a_finished_stage_is_skipped_when_run_again(tiny_run):
    cfg, run, _ = tiny_run
    outcomes = run_pipeline(cfg, run, ["vae", "mdnrnn", "controller"])
    assert all(outcome.startswith("skipped") for outcome in outcomes.values())


def test_the_controller_stage_resumes_to_the_generations_of_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    cfg, run, _ = tiny_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for name in ("cmaes_state.npz", "controller_best.pt"):
        (resumed / name).unlink()
    short = preset("tiny", env="tiny", generations=2)
    run_pipeline(short, resumed, ["controller"])            # stopped after two generations
    evaluated = []
    evaluate = c_stages.Evaluator.__call__
    monkeypatch.setattr(c_stages.Evaluator, "__call__",
                        lambda self, theta, generation: evaluated.append(generation) or evaluate(self, theta, generation))
    run_pipeline(preset("tiny", env="tiny", generations=3), resumed, ["controller"])
    assert evaluated == [2]                                  # only the missing generation ran
    with (resumed / "logs" / "controller" / "metrics.csv").open() as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["0", "1", "2"]   # one row per generation
    whole, again = load_npz(run / "cmaes_state.npz"), load_npz(resumed / "cmaes_state.npz")
    assert again["solutions"].shape[0] == 3
    np.testing.assert_array_equal(again["solutions"], whole["solutions"])
    np.testing.assert_allclose(again["losses"], whole["losses"], rtol=1e-6)


@pytest.mark.parametrize(("stage", "missing", "maker"), [
    ("vae", "episodes", "collect"), ("encode", "episodes", "collect"), ("mdnrnn", "latents.npz", "encode"),
    ("controller", "vae.pt", "vae"), ("eval", "vae.pt", "vae"),
])
def test_a_stage_without_its_inputs_names_them_and_the_command_that_makes_them(tmp_path, stage, missing, maker):
    with pytest.raises(MissingInputError) as error:
        run_pipeline(preset("tiny", env="tiny"), tmp_path, [stage])
    message = str(error.value)
    assert "\n" not in message
    assert f"stage {stage!r} needs {tmp_path / missing}" in message
    assert message.endswith(f"python -m worldmodels.world_models --env tiny --stage {maker} --resume {tmp_path}")


def test_the_command_line_prints_one_error_line_for_a_missing_input(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(to_json(preset("tiny", env="tiny"))))
    assert main(["--stage", "controller", "--resume", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage 'controller' needs ")


@pytest.mark.parametrize(("old", "current"), [
    ("CarRacing-v2", "CarRacing-v3"), ("LunarLander-v2", "LunarLander-v3"), ("PongNoFrameskip-v5", "ALE/Pong-v5"),
])
def test_retired_env_ids_are_answered_with_one_line_naming_the_current_id(old, current, capsys):
    with pytest.raises(EnvIdError) as error:
        resolve_env(old)
    assert "\n" not in str(error.value) and f"the current id is {current}" in str(error.value)
    assert main(["--env", old, "--run-dir", "unused"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_current_ids_and_short_names_resolve():
    assert resolve_env("CarRacing-v3") is resolve_env("carracing")
    assert resolve_env("carracing").image_size == 64 and resolve_env("carracing").action_dim == 3


def test_bad_settings_and_stage_lists_are_refused_naming_them():
    with pytest.raises(PipelineConfigError, match="mean_eval_every=-1 must be an integer >= 0"):
        preset("quick", mean_eval_every=-1)
    with pytest.raises(PipelineConfigError, match="population=1"):
        preset("quick", population=1)
    with pytest.raises(PipelineConfigError, match="mdn_seq_len=100 must be < rollout_steps=100"):
        preset("quick", mdn_seq_len=100)
    with pytest.raises(PipelineConfigError, match="unknown settings"):
        preset("quick", populaton=4)
    with pytest.raises(PipelineConfigError, match="stages are collect, vae"):
        parse_stages("controler")
    assert parse_stages("eval,controller") == ["controller", "eval"]


def test_full_mode_has_the_papers_settings():
    full = preset("full")
    assert (full.rollouts, full.vae_epochs, full.mdn_epochs) == (10000, 10, 20)
    assert (full.population, full.rollouts_per_candidate, full.generations) == (64, 16, 800)
    assert (full.latent_dim, full.hidden_size, full.num_mixtures, full.sigma0) == (32, 256, 5, 0.1)


def test_the_controller_stage_trains_in_the_real_env_batched_over_candidates(tiny_run, tmp_path):
    _, run, _ = tiny_run
    real = tmp_path / "real"
    shutil.copytree(run, real)
    for name in ("cmaes_state.npz", "controller_best.pt"):
        (real / name).unlink()
    cfg = preset("tiny", env="tiny", train_in_dream=False, generations=2, mean_eval_every=1)
    outcome = run_pipeline(cfg, real, ["controller", "eval"])
    probes = np.loadtxt(real / "cmaes_mean_eval.csv", delimiter=",", skiprows=1)
    assert probes.shape == (2, 3) and (probes[:, 0] == [0, 1]).all()
    assert outcome["controller"].startswith("done: 2 generations in the real env")
    state = load_npz(real / "cmaes_state.npz")
    assert state["losses"].shape == (2, cfg.population) and np.isfinite(state["losses"]).all()
    # the tiny env's reward is minus the distance to the centre over 8: at most 0, above -1.4 a step
    returns = json.loads((real / "evaluation_results.json").read_text())["real_returns"]
    assert all(-1.4 * cfg.controller_steps < r <= 0 for r in returns)


@pytest.mark.parametrize("antithetic", [True, False])
def test_antithetic_pairs_meet_the_same_real_env_seeds(tiny_run, antithetic):
    _, run, env = tiny_run
    cfg = preset("tiny", env="tiny", train_in_dream=False, antithetic=antithetic, population=4)
    evaluate = c_stages.Evaluator(cfg, run, resolve_env("tiny"), torch.device("cpu"))
    half = torch.randn(2, parameter_count(cfg.latent_dim + cfg.hidden_size, 2)) * 0.5
    returns = evaluate(torch.cat([half, half]), generation=0).numpy()   # pair members act alike
    evaluate.close()
    # twins on the same seeds score alike; apart, the same controllers start elsewhere
    assert np.allclose(returns[:2], returns[2:], rtol=0, atol=1e-5) == antithetic


def test_antithetic_from_the_command_line_trains_on_mirrored_pairs(tiny_run, tmp_path):
    _, run, _ = tiny_run
    mirrored = tmp_path / "antithetic"
    shutil.copytree(run, mirrored)
    for name in ("cmaes_state.npz", "controller_best.pt"):
        (mirrored / name).unlink()
    assert main(["--resume", str(mirrored), "--stage", "controller", "--antithetic", "--real-env",
                 "--generations", "2"]) == 0
    state = load_npz(mirrored / "cmaes_state.npz")
    assert bool(state["antithetic"]) and state["solutions"].shape == (2, 4, state["settings"][0])
    first = state["solutions"][0]
    np.testing.assert_allclose(first[:2] + first[2:], 0.0, atol=1e-15)   # mirrored about the initial mean 0
    assert main(["--resume", str(mirrored), "--stage", "controller", "--population", "5"]) == 2


def test_resume_from_the_command_line_reads_the_runs_settings_under_the_flags_given(tiny_run, tmp_path):
    _, run, _ = tiny_run
    resumed = tmp_path / "cli"
    shutil.copytree(run, resumed)
    assert main(["--resume", str(resumed), "--stage", "controller", "--generations", "4"]) == 0
    settings = json.loads((resumed / "config.json").read_text())
    assert settings["generations"] == 4 and settings["mode"] == "tiny" and settings["env"] == "tiny"
    state = load_npz(resumed / "cmaes_state.npz")
    assert state["solutions"].shape[0] == 4
    np.testing.assert_array_equal(state["solutions"][:3], load_npz(run / "cmaes_state.npz")["solutions"])


def test_the_vae_and_mdnrnn_stages_resume_to_the_weights_of_an_uninterrupted_run(tiny_run, tmp_path):
    _, run, _ = tiny_run
    folders = {}
    for name in ("whole", "split"):
        (tmp_path / name / "episodes").mkdir(parents=True)
        for path in (run / "episodes").glob("episode_*.npz"):
            shutil.copy(path, tmp_path / name / "episodes")
        folders[name] = tmp_path / name
    run_pipeline(preset("tiny", env="tiny", vae_epochs=2, mdn_epochs=2), folders["whole"], ["vae", "encode", "mdnrnn"])
    run_pipeline(preset("tiny", env="tiny", vae_epochs=1), folders["split"], ["vae"])
    run_pipeline(preset("tiny", env="tiny", vae_epochs=2, mdn_epochs=1), folders["split"], ["vae", "encode", "mdnrnn"])
    outcome = run_pipeline(preset("tiny", env="tiny", vae_epochs=2, mdn_epochs=2), folders["split"], ["mdnrnn"])
    assert outcome["mdnrnn"].startswith("done: 2 epochs")
    for stage in ("vae", "mdnrnn"):        # the logs of the split run read as one run
        with (folders["split"] / "logs" / stage / "metrics.csv").open() as handle:
            assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2"]
        whole_log = scalars(folders["whole"] / "logs" / stage / "tensorboard")
        split_log = scalars(folders["split"] / "logs" / stage / "tensorboard")
        assert split_log.keys() == whole_log.keys()
        for tag, values in whole_log.items():
            assert [step for step, _ in split_log[tag]] == [1, 2]
            np.testing.assert_allclose([v for _, v in split_log[tag]], [v for _, v in values], rtol=1e-5)
    for name in ("vae.pt", "mdnrnn.pt"):
        whole, split = load_checkpoint(folders["whole"] / name), load_checkpoint(folders["split"] / name)
        assert whole["epoch"] == split["epoch"] == 2
        for key, value in whole["model"].items():
            torch.testing.assert_close(split["model"][key], value, atol=1e-6, rtol=1e-6)


def test_carracing_twins_drive_the_same_tracks_and_a_rank_share_keeps_its_seeds():
    pytest.importorskip("envpool")
    from worldmodels.algos.world_models.envs import TwinBatch, make_batch

    env, gas = resolve_env("carracing"), np.array([[0.0, 0.5, 0.0]], np.float32)
    twins, whole, share = TwinBatch(env, 4, 3, 20), make_batch(env, 4, 5, 20), make_batch(env, 2, 7, 20)
    for batch in (twins, whole, share):
        batch.reset()
    for _ in range(10):
        frames, reward, _ = twins.step(np.repeat(gas, 4, 0))
        whole_frames, whole_reward, _ = whole.step(np.repeat(gas, 4, 0))
        share_frames, share_reward, _ = share.step(np.repeat(gas, 2, 0))
    np.testing.assert_array_equal(frames[:2], frames[2:])            # twin i and i + 2 on one track
    assert not np.array_equal(frames[0], frames[1])                   # the envs of a half differ
    np.testing.assert_array_equal(whole_frames[2:], share_frames)     # env i of seed s = env 0 of seed s + i
    np.testing.assert_array_equal(whole_reward[2:], share_reward)
    for batch in (twins, whole, share):
        batch.close()


def test_lunarlander_batches_give_64px_renders_the_same_for_the_same_seed():
    pytest.importorskip("envpool")
    from worldmodels.algos.world_models.envs import make_batch

    env = resolve_env("lunarlander")
    assert resolve_env("LunarLanderContinuous-v3") is env and (env.image_size, env.action_dim) == (64, 2)
    first, again = make_batch(env, 3, 11, 50), make_batch(env, 3, 11, 50)
    frames = first.reset()
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, again.reset())
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 2)).astype(np.float32)
    start = frames
    for _ in range(20):
        frames, reward, done = first.step(actions)
        frames_again, reward_again, _ = again.step(actions)
    np.testing.assert_array_equal(frames, frames_again)
    np.testing.assert_array_equal(reward, reward_again)
    assert not np.array_equal(frames, start) and frames.max() == 255 and frames.min() == 0   # the lander moved
    first.close(), again.close()


def test_the_pipeline_runs_end_to_end_on_lunarlander_from_pixels(tmp_path):
    pytest.importorskip("envpool")
    cfg = preset("tiny", env="lunarlander", train_in_dream=False, rollout_steps=20, controller_steps=15,
                 vae_widths=(4, 8, 8, 16), generations=1, eval_episodes=2, save_videos=True)
    outcomes = run_pipeline(cfg, tmp_path, list(STAGES))
    assert all(outcome.startswith("done") for outcome in outcomes.values())
    episode = load_npz(sorted((tmp_path / "episodes").glob("episode_*.npz"))[0])
    assert episode["frames"].shape[1:] == (64, 64, 3) and episode["action"].shape[1] == 2
    results = json.loads((tmp_path / "evaluation_results.json").read_text())
    assert results["env"] == "LunarLanderContinuous-v3" and np.isfinite(results["real_mean"])
    assert (tmp_path / "videos" / "rollout.gif").stat().st_size > 0


def test_mdnrnn_chunks_pad_short_episodes_from_their_first_frame_and_mask_the_padding():
    """Episodes of 3 and 12 steps, chunks of 6: the short one comes whole from its first
    frame with 3 masked steps; the long one gives 6 consecutive steps; z is the posterior
    mean when the posterior's variance is 0; episodes are drawn in proportion to length."""
    lengths = np.array([3, 12])
    steps = int(lengths.sum())
    latents = {"lengths": lengths, "step_starts": np.array([0, 3]), "frame_starts": np.array([0, 4]),
               "mu": np.arange(steps + 2, dtype=np.float32)[:, None].repeat(2, 1),
               "logvar": np.full((steps + 2, 2), -1000.0, np.float32),
               "action": np.arange(steps, dtype=np.float32)[:, None], "reward": np.zeros(steps, np.float32),
               "done": np.isin(np.arange(steps), [2, 14])}
    batch = sequence_batch(latents, 6, 400, np.random.default_rng(0), torch.device("cpu"))
    first = batch["z"][:, 0, 0]
    short = first == 0
    assert 0.1 < short.float().mean().item() < 0.3          # 3 / 15 of the steps
    assert torch.equal(batch["mask"][short], torch.tensor([1.0, 1, 1, 0, 0, 0]).expand(int(short.sum()), 6))
    assert torch.equal(batch["z"][short][0, :, 0], torch.tensor([0.0, 1, 2, 3, 3, 3, 3]))
    assert torch.equal(batch["action"][short][0, :3, 0], torch.tensor([0.0, 1, 2]))
    assert torch.equal(batch["done"][short][0, :3], torch.tensor([0.0, 0, 1]))
    long = ~short
    assert bool((batch["mask"][long] == 1).all())
    start = first[long]
    assert bool(((start >= 4) & (start <= 4 + 12 - 6)).all())
    assert torch.equal(batch["z"][long][:, :, 0] - start[:, None], torch.arange(7.0).expand(int(long.sum()), 7))
    assert torch.equal(batch["action"][long][:, :, 0] - (start[:, None] - 1), torch.arange(6.0).expand(int(long.sum()), 6))
    latents["logvar"][:] = 0.0                                # wide posteriors: draws differ from the means
    drawn = sequence_batch(latents, 6, 8, np.random.default_rng(1), torch.device("cpu"))
    means = sequence_batch(latents, 6, 8, np.random.default_rng(1), torch.device("cpu"), sample=False)
    assert torch.equal(means["z"][:, :, 0], means["z"][:, :, 1])       # the means themselves
    assert (drawn["z"] - means["z"]).abs().mean() > 0.5
    torch.testing.assert_close(means["mask"], drawn["mask"])           # the same chunks


def test_the_real_env_reads_the_posterior_mean_or_a_seeded_draw_from_it(tiny_run):
    cfg, run, _ = tiny_run
    cpu = torch.device("cpu")
    vae, model = load_vae(run, cpu), load_mdnrnn(run, cpu)
    images = to_images(torch.from_numpy(load_npz(episode_paths(run)[0])["frames"][:5]), cpu)
    with torch.no_grad():
        mu, logvar = vae.encode(images)
        torch.testing.assert_close(c_stages.encode_latent(vae, images, None), mu)
        drawn = c_stages.encode_latent(vae, images, torch.Generator().manual_seed(3))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn, mu + (0.5 * logvar).exp() * eps)
    assert c_stages.latent_noise(cfg, 3) is None
    sampled = preset("tiny", env="tiny", latent="sample")
    theta = torch.randn(1, c_stages.controller_dim(sampled, resolve_env("tiny"), model.config.hidden_size)[1])
    score = lambda c: c_stages.real_scores(c, resolve_env("tiny"), vae, model, theta, record=False)[0]
    np.testing.assert_array_equal(score(sampled), score(sampled))       # seeded by the episodes' seeds
    assert not np.array_equal(score(sampled), score(cfg))
    with pytest.raises(PipelineConfigError, match="latent='noisy' is not one of mean, sample"):
        preset("tiny", latent="noisy")
