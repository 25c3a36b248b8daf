"""What a person looks at after a next-frame evaluation: the metrics-vs-horizon plot and
the truth | prediction videos (MP4 through imageio-ffmpeg, GIF always)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels.algos.nextframe.plots import CURVES, rollout_figure, save_rollout_plot
from worldmodels.utils import images
from worldmodels.utils.images import side_by_side_frames, write_videos


def summary(horizon=5):
    rng = np.random.default_rng(0)
    table = {}
    for prefix, _, _ in CURVES:
        for metric, scale in (("psnr", 30.0), ("ssim", 1.0)):
            table[f"{prefix}{metric}"] = {"mean": (scale * rng.random(horizon)).tolist(),
                                          "ci95": (0.1 * scale * rng.random(horizon)).tolist()}
    return table


def test_the_plot_draws_each_series_mean_with_its_interval_shaded():
    import matplotlib.pyplot as plt

    table = summary()
    figure = rollout_figure(table)
    try:
        for axis, metric in zip(figure.axes, ("psnr", "ssim")):
            lines = {line.get_label(): line for line in axis.get_lines()}
            assert set(lines) == {name for _, name, _ in CURVES}
            for (prefix, name, _), band in zip(CURVES, axis.collections):
                series = table[f"{prefix}{metric}"]
                np.testing.assert_allclose(lines[name].get_xdata(), [1, 2, 3, 4, 5])
                np.testing.assert_allclose(lines[name].get_ydata(), series["mean"])
                vertices = band.get_paths()[0].vertices
                low = np.array(series["mean"]) - series["ci95"]
                high = np.array(series["mean"]) + series["ci95"]
                np.testing.assert_allclose(vertices[:, 1].min(), low.min(), rtol=1e-6)
                np.testing.assert_allclose(vertices[:, 1].max(), high.max(), rtol=1e-6)
    finally:
        plt.close(figure)


def test_the_plot_is_a_png_file(tmp_path):
    import imageio.v3 as iio

    path = save_rollout_plot(tmp_path / "plots" / "rollout_metrics_vs_horizon.png", summary(3), "title")
    image = iio.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 2 * image.shape[0] / 1.5
    assert image[..., :3].std() > 5   # not blank


def flat_videos(batch=2, steps=5, size=8):
    """Truth frames of one flat colour per sequence and step, predictions of another."""
    truth = torch.zeros(batch, steps, 3, size, size)
    prediction = torch.zeros_like(truth)
    for b in range(batch):
        for t in range(steps):
            truth[b, t] = torch.tensor([0.8, 0.1 * t, 0.2 * b])[:, None, None]
            prediction[b, t] = torch.tensor([0.1, 0.7, 0.1 * t])[:, None, None]
    return truth, prediction


def test_videos_show_the_truth_left_and_the_prediction_right():
    truth, prediction = flat_videos()
    frames = side_by_side_frames(truth, prediction, context=2, scale=3, bar=3)
    assert frames.dtype == np.uint8 and frames.shape[0] == 5 and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    tile, gap = 8 * 3, 2
    for t in range(5):
        for b in range(2):
            top = 3 + b * (tile + 2 * gap) + gap
            left = frames[t, top + 5, gap + 5]
            right = frames[t, top + 5, tile + 3 * gap + 5]
            np.testing.assert_array_equal(left, (truth[b, t, :, 0, 0] * 255).round().byte().numpy())
            np.testing.assert_array_equal(right, (prediction[b, t, :, 0, 0] * 255).round().byte().numpy())
    assert frames[1, 0, 0].tolist() == [0, 200, 0] and frames[2, 0, 0].tolist() == [220, 0, 0]
    with pytest.raises(ValueError, match=r"must both be \[B, T, C, H, W\]"):
        side_by_side_frames(truth, prediction[:, :3], context=2)


def test_the_mp4_and_the_gif_hold_every_frame(tmp_path):
    import imageio.v3 as iio

    if not images.ffmpeg_available():
        pytest.fail("imageio-ffmpeg is a dev dependency; pip install -e '.[dev]'")
    truth, prediction = flat_videos()
    frames = side_by_side_frames(truth, prediction, context=2)
    written = write_videos(tmp_path / "rollout", frames, fps=4)
    assert [p.name for p in written] == ["rollout.gif", "rollout.mp4"]
    for path, tolerance in ((written[0], 8), (written[1], 12)):
        video = np.stack(list(iio.imiter(path)))[..., :3]
        assert video.shape == frames.shape, path
        centre = (slice(None), slice(10, 20), slice(10, 20))
        assert np.abs(video[centre].astype(int) - frames[centre].astype(int)).max() <= tolerance, path


def test_without_ffmpeg_the_gif_is_written_and_one_line_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(images, "ffmpeg_available", lambda: False)
    truth, prediction = flat_videos()
    written = write_videos(tmp_path / "rollout", side_by_side_frames(truth, prediction, context=2))
    assert [p.name for p in written] == ["rollout.gif"] and not (tmp_path / "rollout.mp4").exists()
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "pip install imageio-ffmpeg" in warning and warning.startswith("warning:")
