"""``python -m worldmodels.compare_openloop`` end to end on small shards: every registered
family trained two updates, the table, the plot, the GIF and the summary; a family that
crashes is reported while the others run; an unknown family is a one-line error."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from worldmodels import compare_openloop
from worldmodels.algos import registry
from worldmodels.data.frames import MANIFEST, new_manifest, write_json_atomic, write_shard

SHAPE = (3, 64, 64)
ACTIONS = 5
MOVES = ((0, 0), (0, -4), (0, 4), (-4, 0), (4, 0))   # action -> (dy, dx) of the square


def write_square_shards(root, episodes=8, length=24, seed=0):
    """Two shards of episodes in which a bright square moves by each action."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    manifest = new_manifest("squares", {}, "random", SHAPE, ACTIONS)
    background = np.linspace(0, 80, SHAPE[2]).astype(np.uint8)[None, None, :].repeat(SHAPE[1], 1)
    for shard in range(2):
        frames, actions, done = [], [], []
        for _ in range(episodes // 2):
            position, moves = rng.integers(0, 64, 2), rng.integers(0, ACTIONS, length)
            for t in range(length):
                image = np.repeat(background, 3, 0).copy()
                rows, cols = (position[0] + np.arange(8)) % 64, (position[1] + np.arange(8)) % 64
                image[:, rows[:, None], cols[None, :]] = 255
                frames.append(image)
                position = position + MOVES[moves[t]]
            actions.append(moves)
            done.append(np.arange(length) == length - 1)
        manifest["shards"].append(write_shard(root, shard, np.stack(frames), np.concatenate(actions),
                                              np.concatenate(done)))
        manifest["steps"] += manifest["shards"][-1]["steps"]
        manifest["episodes"] += manifest["shards"][-1]["episodes"]
    manifest["complete"] = True
    write_json_atomic(root / MANIFEST, manifest)
    return root


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return write_square_shards(tmp_path_factory.mktemp("frames") / "squares")


def arguments(data, out, *extra):
    return ["--data", str(data), "--updates", "2", "--batch", "2", "--window", "6", "--context", "4", "--horizon", "5",
            "--sequences", "3", "--media", "2", "--val-ratio", "0.25", "--no-progress", "--out", str(out), *extra]


def read_table(out):
    with (out / "table.csv").open(newline="") as handle:
        return {row["family"]: row for row in csv.DictReader(handle)}


def test_every_registered_family_is_trained_scored_and_tabled(squares, tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_openloop.main(arguments(squares, out, "--families", "all")) == 0
    families = registry.openloop_names()
    assert {"dreamerv3", "world_models", "nextframe"} <= set(families)
    table = read_table(out)
    assert list(table) == [*families, "copy_last"]
    for name in families:
        row = table[name]
        assert row["status"] == "ok" and int(row["parameters"]) > 0 and row["updates"] == "2", row
        for column in ("psnr_h1", "psnr_h4", "psnr_h5", "ssim_h5", "delta_psnr_h1", "delta_psnr_h5"):
            assert np.isfinite(float(row[column])) and float(row[f"{column}_ci95"]) >= 0, column
    copy = table["copy_last"]
    assert copy["status"] == "baseline" and copy["delta_psnr_h1"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["sequences"] == 3 and summary["steps_ahead"] == [1, 2, 3, 4, 5]
    by_name = {row["family"]: row for row in summary["families"]}
    for name in families:   # the table's h1 cell is the summary's first step, rounded
        assert float(table[name]["psnr_h1"]) == pytest.approx(by_name[name]["scores"]["psnr"]["mean"][0], abs=1e-4)
    import imageio.v3 as iio

    gif = iio.imread(out / "rollouts.gif", index=None)
    assert gif.shape[0] == 4 + 5                                   # the given frames, then the horizon
    assert iio.imread(out / "openloop_vs_horizon.png").shape[-1] in (3, 4)
    markdown = (out / "table.md").read_text()
    assert "| copy_last |" in markdown and "ΔPSNR 5" in markdown
    assert "table.md" in capsys.readouterr().out


def test_a_crashing_family_is_reported_and_the_others_still_run(squares, tmp_path, monkeypatch, capsys):
    real = registry.openloop_builder

    class Broken:
        name, uses_actions = "broken", True

        def parameters(self):
            return iter(())

        def train_step(self, frames, actions):
            raise RuntimeError("the loss is NaN")

    def builder(name):
        return (lambda *args: Broken()) if name == "broken" else real(name)

    monkeypatch.setattr(registry, "openloop_builder", builder)
    monkeypatch.setattr(registry, "openloop_names", lambda: ["broken", "nextframe"])
    out = tmp_path / "compare"
    assert compare_openloop.main(arguments(squares, out, "--families", "all")) == 1
    table = read_table(out)
    assert table["broken"]["status"] == "crashed: RuntimeError: the loss is NaN"
    assert table["broken"]["psnr_h1"] == ""
    assert table["nextframe"]["status"] == "ok" and table["copy_last"]["status"] == "baseline"
    assert "crashed: broken" in capsys.readouterr().err


def test_an_unregistered_family_is_a_one_line_error_naming_the_registered_ones(squares, tmp_path, capsys):
    assert compare_openloop.main(arguments(squares, tmp_path / "x", "--families", "nextframe,vae")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: 'vae' has no open-loop model yet; the families registered for open loop are "
                   f"{', '.join(registry.openloop_names())}.")
    assert not (tmp_path / "x").exists()


def test_windows_longer_than_every_episode_name_the_option(squares, tmp_path, capsys):
    assert compare_openloop.main(arguments(squares, tmp_path / "x", "--families", "nextframe", "--window", "40")) == 2
    assert "no training episode holds 40 frames (the longest has 24); lower --window" in capsys.readouterr().err


def test_an_unknown_size_is_refused_before_any_family_runs(squares, tmp_path, capsys):
    assert compare_openloop.main(arguments(squares, tmp_path / "x", "--size", "huge")) == 2
    assert capsys.readouterr().err.strip() == "error: --size='huge' is not one of tiny, small."
    assert not (tmp_path / "x").exists()
