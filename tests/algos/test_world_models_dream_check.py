"""The dream check: real frames, V's reconstructions, M's one-step predictions and M's
free-running dream of the same recorded steps; Doom's fireball statistic; the files."""

from __future__ import annotations

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from worldmodels.algos.world_models.config import preset
from worldmodels.algos.world_models.dream_check import (
    VIEWS,
    block_rows,
    fireball_pixels,
    four_views,
    main,
    recorded_episodes,
    view_latents,
)
from worldmodels.algos.world_models.mdnrnn import sample_mixture
from worldmodels.algos.world_models.pipeline import run_pipeline
from worldmodels.algos.world_models.vm_stages import load_mdnrnn, load_vae, to_images


def test_fireball_pixels_are_the_bright_yellow_ones_only():
    frame = np.zeros((4, 5, 3), np.uint8)
    frame[0, 0] = (255, 230, 60)      # a fireball's core
    frame[1, 2] = (200, 150, 100)     # its rim
    frame[2, 3] = (150, 100, 60)      # the brown wall
    frame[3, 4] = (120, 120, 120)     # the grey floor
    frame[0, 4] = (255, 255, 255)     # white is not a fireball (blue too high)
    mask = fireball_pixels(frame[None])[0]
    assert mask.sum() == 2 and mask[0, 0] and mask[1, 2]


def test_block_rows_average_each_views_event_share_over_its_steps():
    views = {name: np.zeros((2, 5, 10, 10, 3), np.uint8) for name in VIEWS}
    views["real"][0, 1:3, 0, :5] = (255, 230, 60)      # 5 of 100 pixels at steps 1 and 2 of episode 0
    views["dream"][:, 4, :2, :] = (255, 230, 60)       # 20 of 100 pixels at step 4 of both episodes
    rows = block_rows(views, 2, "doom")
    assert [r["steps"] for r in rows] == ["1-2", "3-4"]
    assert rows[0]["real"] == pytest.approx(25.0) and rows[1]["real"] == 0.0     # (50 + 50 + 0 + 0) / 4 per 1000
    assert rows[1]["dream"] == pytest.approx(100.0) and rows[0]["dream"] == 0.0
    assert block_rows(views, 2, "tiny") == []


@pytest.fixture(scope="module")
def vm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dream_check") / "run"
    run_pipeline(preset("tiny", env="tiny", collect_envs=4), run, ["collect", "vae", "encode", "mdnrnn"])
    return run


def test_the_views_start_at_vs_reconstruction_and_follow_m_as_defined(vm_run):
    vae, model = load_vae(vm_run, torch.device("cpu")), load_mdnrnn(vm_run, torch.device("cpu"))
    frames, actions = recorded_episodes(vm_run, 3, 6)
    assert frames.shape[:2] == (3, 7) and actions.shape[:2] == (3, 6)
    views = four_views(vae, model, frames, actions, tau=1.0, seed=0)
    assert set(views) == set(VIEWS) and all(v.shape == frames.shape and v.dtype == np.uint8 for v in views.values())
    np.testing.assert_array_equal(views["real"], frames)
    latents = view_latents(vae, model, frames, actions, tau=0.0, seed=0)
    with torch.no_grad():
        mu = vae.encode(to_images(torch.from_numpy(frames.reshape(21, *frames.shape[2:])), torch.device("cpu")))[0]
        mu = mu.view(3, 7, -1)
        torch.testing.assert_close(latents["recon"], mu)
        for name in ("one-step", "dream"):
            torch.testing.assert_close(latents[name][:, 0], mu[:, 0])
        act = torch.from_numpy(actions)
        mode = lambda out: sample_mixture(out["logit_pi"], out["mu"], out["log_sigma"], 0.0, None, None)
        for t in (1, 4, 6):                                          # M given the real latents before t
            torch.testing.assert_close(latents["one-step"][:, t], mode(model(mu[:, :t], act[:, :t]))[:, -1])
        z, state = mu[:, 0], model.initial_state(3)
        for t in range(6):                                           # the dream feeds M its own modes
            state = model.step(z, act[:, t], state)
            z = mode(model.heads(state[0]))
            torch.testing.assert_close(latents["dream"][:, t + 1], z)
    assert not torch.allclose(latents["dream"][:, 6], latents["one-step"][:, 6])
    drawn = view_latents(vae, model, frames, actions, tau=1.0, seed=5)
    torch.testing.assert_close(drawn["dream"], view_latents(vae, model, frames, actions, tau=1.0, seed=5)["dream"])
    assert not torch.equal(drawn["dream"], view_latents(vae, model, frames, actions, tau=1.0, seed=6)["dream"])


def test_the_command_writes_the_table_the_csv_and_the_picture(vm_run, capsys):
    assert main(["--run", str(vm_run), "--episodes", "2", "--steps", "6", "--block", "3"]) == 0
    assert "no event statistic for this env" in capsys.readouterr().out
    summary = json.loads((vm_run / "dream_check.json").read_text())
    assert summary["episodes"] == 2 and summary["steps"] == 6 and summary["blocks"] == []
    with open(vm_run / "dream_check.csv", newline="") as f:
        assert next(csv.reader(f)) == ["steps", *VIEWS]
    picture = iio.imread(vm_run / "dream_check.png")
    size = load_vae(vm_run, torch.device("cpu")).config.image_size
    assert picture.shape == (4 * size, 3 * size, 3)     # a row per view, columns at steps 0, 3, 6


def test_the_command_names_what_is_wrong_in_one_line(vm_run, tmp_path, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    assert "no config.json there" in capsys.readouterr().err
    assert main(["--run", str(vm_run), "--steps", "500"]) == 2
    assert "no collected episode lasts 500 steps" in capsys.readouterr().err
    assert main(["--run", str(vm_run), "--block", "0"]) == 2
    assert "--block 0: needs at least 1" in capsys.readouterr().err
