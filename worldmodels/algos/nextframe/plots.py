"""The picture of an open-loop evaluation: PSNR and SSIM against the steps ahead, the
model beside copy-last-frame and the model fed shuffled actions, each with its 95%
confidence interval shaded (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# label and colour of each series; the key is the prefix of its names in the summary
CURVES = (("", "model", "tab:blue"), ("copy_last_", "copy last frame", "tab:gray"),
          ("shuffled_", "model, shuffled actions", "tab:orange"))
PANELS = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"))


def rollout_figure(summary: dict[str, dict[str, list[float]]], title: str = "") -> Any:
    """A matplotlib figure of two panels (PSNR, SSIM vs steps ahead); ``summary`` holds,
    per series name (``psnr``, ``copy_last_ssim``, ...), ``mean`` and ``ci95`` lists over
    the steps ahead. Each curve is its mean; the band is mean ± ci95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, (metric, label) in zip(axes, PANELS):
        for prefix, name, colour in CURVES:
            series = summary[f"{prefix}{metric}"]
            mean, ci = series["mean"], series["ci95"]
            steps = list(range(1, len(mean) + 1))
            axis.plot(steps, mean, color=colour, label=name, marker="o" if len(steps) <= 8 else None, ms=3)
            axis.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                              color=colour, alpha=0.2, linewidth=0)
        axis.set_xlabel("steps ahead (open loop)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    if title:
        figure.suptitle(title)
    return figure


def save_rollout_plot(path: str | Path, summary: dict[str, dict[str, list[float]]], title: str = "") -> Path:
    """:func:`rollout_figure` written as a PNG at ``path`` (folders created)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = rollout_figure(summary, title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["CURVES", "PANELS", "rollout_figure", "save_rollout_plot"]
