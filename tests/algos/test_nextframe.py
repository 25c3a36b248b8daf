"""The next-frame predictor: action conditioning, the rollout baselines, config checks,
and a few-step training, evaluation and resume on Procgen CoinRun frames."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from worldmodels.algos.nextframe import FACTORIES, NextFrameConfig, NextFramePredictor
from worldmodels.algos.nextframe.experiment import ROLLOUT_CSV, open_shards
from worldmodels.algos.nextframe.rollout import COLUMNS, open_loop, rollout_table, shuffle_actions
from worldmodels.data.frames import FrameDataError, split_episodes
from worldmodels.ops import psnr_ref, ssim_ref
from worldmodels.training.config_check import check_config
from worldmodels.training.loop import fit
from worldmodels.training.validation import ConfigError

HORIZON = 3
SMOKE = ["+exp=nextframe_coinrun", "size=tiny", "device=cpu", "train.progress=false", "train.batch_size=2",
         "train.max_steps=4", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2",
         "algo.val_samples=4", "algo.val_rollouts=2", "algo.media_count=2", f"algo.val_rollout_horizon={HORIZON}"]


@pytest.fixture(scope="module")
def coinrun(tmp_path_factory):
    """A small CoinRun dataset from envpool (4 envs; episodes still running at the end are kept truncated)."""
    out = tmp_path_factory.mktemp("frames") / "coinrun"
    result = subprocess.run([sys.executable, "-m", "worldmodels.data.generate_frames", "--game", "coinrun", "--steps",
                             "800", "--num-envs", "4", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def tiny_model(**overrides) -> NextFramePredictor:
    return NextFramePredictor(NextFrameConfig(image_size=16, widths=[8, 8], action_embed=4, num_actions=5, **overrides))


def test_the_prediction_depends_on_the_action_through_film():
    torch.manual_seed(0)
    model = tiny_model()
    frames = torch.rand(2, 4, 3, 16, 16)
    same = model(frames, torch.tensor([0, 0])), model(frames, torch.tensor([3, 3]))
    torch.testing.assert_close(same[0], frames[:, -1])   # the head starts at zero: copy-last-frame
    torch.testing.assert_close(*same)
    nn.init.normal_(model.head.weight, std=0.1)
    torch.testing.assert_close(model(frames, torch.tensor([0, 0])), model(frames, torch.tensor([3, 3])))  # FiLM: identity
    for film in [model.bottleneck_film, *model.films]:
        nn.init.normal_(film.linear.weight)
    assert (model(frames, torch.tensor([0, 0])) - model(frames, torch.tensor([3, 3]))).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"frames must be \[B, 4, 3, 16, 16\]"):
        model(frames[:, :3], torch.tensor([0, 0]))


def test_the_loss_combines_l1_and_ssim_and_trains_toward_the_target():
    torch.manual_seed(0)
    model = tiny_model(l1_weight=1.0, l2_weight=0.5, ssim_weight=0.2)
    batch = {"frames": torch.rand(3, 4, 3, 16, 16), "actions": torch.tensor([0, 1, 2]), "target": torch.rand(3, 3, 16, 16)}
    loss, metrics = model.compute_loss(batch)
    prediction = model(batch["frames"], batch["actions"])
    expected = metrics["l1"] + 0.5 * metrics["mse"] + 0.2 * (1 - ssim_ref(prediction.clamp(0, 1), batch["target"]).mean())
    torch.testing.assert_close(loss, expected)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model.compute_loss(batch)[0].backward()
        optimizer.step()
    assert model.compute_loss(batch)[0] < 0.8 * loss


class ShiftWorld(nn.Module):
    """A predictor that knows the dynamics: the next frame is the last one rolled right by
    the action's number of pixels."""

    def predict(self, frames, actions):
        return torch.stack([torch.roll(f[-1], int(a), dims=-1) for f, a in zip(frames, actions)])


class CopyLast(nn.Module):
    def predict(self, frames, actions):
        return frames[:, -1]


def shift_sequences(count=6, stack=2, horizon=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 4, (count, horizon), generator=generator)
    frame = torch.rand(count, 3, 12, 12, generator=generator)
    frames = [frame] * stack
    for step in range(horizon):
        frames.append(torch.stack([torch.roll(f, int(a), dims=-1) for f, a in zip(frames[-1], actions[:, step])]))
    return torch.stack(frames, 1), actions


def test_the_rollout_table_reports_copy_last_and_shuffled_actions_beside_the_model():
    frames, actions = shift_sequences()
    table, prediction = rollout_table(ShiftWorld(), frames, actions, stack=2, seed=0)
    assert set(table) == set(COLUMNS[2:]) and all(v.shape == (4,) for v in table.values())
    truth = frames[:, 2:]
    torch.testing.assert_close(prediction, truth)
    torch.testing.assert_close(table["copy_last_psnr"], psnr_ref(frames[:, 1:2].expand_as(truth), truth).mean(0))
    torch.testing.assert_close(table["copy_last_ssim"], ssim_ref(frames[:, 1:2].expand_as(truth), truth).mean(0))
    assert (table["psnr"] > 90).all()                       # exact dynamics (PSNR capped by the 1e-10 MSE floor)
    assert (table["delta_psnr"] > 20).all()                 # wrong actions cost the exact model dearly
    torch.testing.assert_close(table["delta_psnr"], table["psnr"] - table["shuffled_psnr"])

    ignoring, _ = rollout_table(CopyLast(), frames, actions, stack=2, seed=0)
    torch.testing.assert_close(ignoring["delta_psnr"], torch.zeros(4))   # an action-blind model gains nothing
    torch.testing.assert_close(ignoring["psnr"], ignoring["copy_last_psnr"])


def test_open_loop_feeds_back_its_own_predictions_and_shuffling_is_a_permutation():
    frames, actions = shift_sequences(stack=3)
    steps = []

    class Recorder(ShiftWorld):
        def predict(self, frames, actions):
            steps.append(frames.clone())
            return super().predict(frames, actions) + 0.5

    predicted = open_loop(Recorder(), frames[:, :3], actions)
    torch.testing.assert_close(steps[1][:, -1], predicted[:, 0])   # the second step sees the first prediction
    torch.testing.assert_close(steps[2][:, -2:], predicted[:, :2])
    shuffled = shuffle_actions(actions, seed=1)
    assert sorted(shuffled.flatten().tolist()) == sorted(actions.flatten().tolist())
    assert not torch.equal(shuffled, actions) and torch.equal(shuffled, shuffle_actions(actions, seed=1))


def test_few_steps_of_training_evaluate_log_rollouts_media_and_resume(config_from, coinrun, tmp_path):
    cfg = config_from([*SMOKE, f"data.root={coinrun}", "train.stop_at=2"])
    check_config(cfg)
    run = tmp_path / "run"
    assert fit(cfg, FACTORIES, run)["step"] == 2
    resumed = config_from([*SMOKE, f"data.root={coinrun}"])
    assert fit(resumed, FACTORIES, run, resume=True)["step"] == 4
    with (run / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("eval/psnr")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for key in ["eval/loss", "eval/mse", "eval/ssim", "eval/psnr_copy_last", "eval/ssim_copy_last",
                f"eval/rollout_psnr_h{HORIZON}", "eval/rollout_shuffled_psnr_h1", "eval/rollout_delta_psnr_mean", "eval/psnr_shuffled"]:
        assert np.isfinite(float(rows[-1][key])), key
    assert 0 < float(rows[-1]["eval/ssim"]) <= 1 and float(rows[-1]["eval/psnr_copy_last"]) > 10
    last = rows[-1]
    assert float(last["eval/delta_psnr_shuffled"]) == pytest.approx(
        float(last["eval/psnr"]) - float(last["eval/psnr_shuffled"]), abs=1e-9)
    with (run / ROLLOUT_CSV).open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(int(r["step"]), int(r["horizon"])) for r in table] == [(s, h) for s in (2, 4) for h in (1, 2, 3)]
    assert list(table[0]) == list(COLUMNS)
    for name in ("strip_step000004.png", "rollout_step000004.gif"):
        assert (run / "media" / name).stat().st_size > 0
    import imageio.v3 as iio

    video = np.stack(list(iio.imiter(run / "media" / "rollout_step000004.mp4")))
    assert video.shape[0] == 4 + HORIZON and video.shape[2] > video.shape[1] / 2    # two sequences, truth | prediction
    assert (run / "checkpoints" / "best.pt").is_file()

    from worldmodels.algos.nextframe.eval_frames import SERIES, main as eval_frames

    assert eval_frames([str(run / "checkpoints" / "best.pt"), "--sequences", "3", "--horizon", "2",
                        "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "rollout_metrics.json").read_text())
    assert result["sequences"] == 3 and result["steps_ahead"] == [1, 2]
    for name in SERIES:
        assert len(result[name]["mean"]) == 2 and all(ci >= 0 for ci in result[name]["ci95"])
    assert result["delta_psnr"]["mean"] == pytest.approx(
        [m - s for m, s in zip(result["psnr"]["mean"], result["shuffled_psnr"]["mean"])])
    with (tmp_path / "eval" / "rollout_metrics_vs_horizon.csv").open(newline="") as handle:
        assert [row["horizon"] for row in csv.DictReader(handle)] == ["1", "2"]
    for name in ("rollout.gif", "rollout.mp4", "plots/rollout_metrics_vs_horizon.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name


def test_the_data_config_is_checked_naming_the_key(config_from, coinrun):
    for override, message in [
        ("data.val_ratio=0", "data.val_ratio=0 is not allowed: expected a number > 0 and < 1."),
        ("data.stack=0", "data.stack=0 is not allowed: expected an integer >= 1."),
        ("train.best_metric=eval/psnr", "train.best_metric=eval/psnr is not allowed: expected one of eval/loss, eval/mse"),
        ("model.ssim_weight=-1", "model.ssim_weight=-1 is not allowed: expected a number >= 0."),
    ]:
        with pytest.raises(ConfigError) as error:
            check_config(config_from([*SMOKE, f"data.root={coinrun}", override]))
        assert str(error.value).startswith(message)
    with pytest.raises(FrameDataError, match=r"manifest.json: key 'num_actions' is 15 but model.num_actions=6; set"):
        open_shards(config_from([*SMOKE, f"data.root={coinrun}", "model.num_actions=6"]))
    with pytest.raises(FrameDataError, match=r"manifest.json: key 'frame_shape' is \[3, 64, 64\] but model.channels"):
        open_shards(config_from([*SMOKE, f"data.root={coinrun}", "model.image_size=32"]))
    with pytest.raises(FrameDataError, match="no validation episode holds 4 \\+ 5000 frames"):
        FACTORIES.evaluator(config_from([*SMOKE, f"data.root={coinrun}", "algo.val_rollout_horizon=5000"]), "cpu")


def test_the_split_does_not_follow_the_seed(config_from, coinrun):
    from worldmodels.algos.nextframe.experiment import split

    def held_out(*overrides):
        cfg = config_from([*SMOKE, f"data.root={coinrun}", *overrides])
        return split(cfg, open_shards(cfg))[1]

    cfg = config_from([*SMOKE, f"data.root={coinrun}"])
    episodes = open_shards(cfg).episodes
    assert split_episodes(episodes, 0.1, 0)[1] != split_episodes(episodes, 0.1, 5)[1]   # the seeds would differ
    assert held_out("seed=0") == held_out("seed=5")   # ranks of a data-parallel run see seed + rank
    assert held_out("data.split_seed=0") != held_out("data.split_seed=5")


def test_a_missing_dataset_stops_the_run_with_the_generator_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "worldmodels.train", *SMOKE, f"data.root={tmp_path / 'none'}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "python -m worldmodels.data.generate_frames --game coinrun" in result.stderr


def test_the_autoencoder_variant_trains_validates_and_evaluates_a_few_steps(config_from, coinrun, tmp_path):
    from worldmodels.algos.nextframe.eval_frames import main as eval_frames
    from worldmodels.algos.nextframe.latent import AutoencoderNextFrame

    overrides = ["+exp=nextframe_coinrun_ae", *SMOKE[1:], f"data.root={coinrun}", "model.widths=[8,8,8]",
                 "model.latent_channels=4", "model.predictor_width=8", "model.action_embed=4"]
    cfg = config_from(overrides)
    check_config(cfg)
    model = FACTORIES.model(cfg)
    assert isinstance(model, AutoencoderNextFrame) and model.config.channels == 3 and model.config.image_size == 64
    run = tmp_path / "run"
    assert fit(cfg, FACTORIES, run)["step"] == 4
    with (run / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("eval/psnr")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(np.isfinite(float(rows[-1][key])) for key in ("eval/loss", "eval/psnr", "eval/ssim",
                                                             f"eval/rollout_psnr_h{HORIZON}"))
    with (run / ROLLOUT_CSV).open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * HORIZON
    assert eval_frames([str(run / "checkpoints" / "best.pt"), "--sequences", "2", "--horizon", "2",
                        "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "rollout_metrics.json").read_text())["steps_ahead"] == [1, 2]


def test_84x84_gray_frames_train_with_the_shapes_taken_from_the_manifest(config_from, tmp_path):
    out = tmp_path / "gray"
    result = subprocess.run([sys.executable, "-m", "worldmodels.data.generate_frames", "--game", "coinrun", "--steps",
                             "500", "--num-envs", "4", "--size", "84", "--gray", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    cfg = config_from([*SMOKE, f"data.root={out}", "train.max_steps=2", "algo.val_rollout_horizon=2"])
    check_config(cfg)
    model = FACTORIES.model(cfg)
    assert (model.config.channels, model.config.image_size) == (1, 84)
    run = tmp_path / "run"
    assert fit(cfg, FACTORIES, run)["step"] == 2
    with (run / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("eval/psnr")]
    assert np.isfinite(float(rows[-1]["eval/psnr"])) and 0 < float(rows[-1]["eval/ssim"]) <= 1
    with pytest.raises(FrameDataError, match=r"key 'frame_shape' is \[1, 84, 84\] but model.channels and "
                                             r"model.image_size ask for \[3, 84, 84\]"):
        open_shards(config_from([*SMOKE, f"data.root={out}", "model.channels=3"]))
