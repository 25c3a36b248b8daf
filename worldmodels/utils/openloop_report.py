"""The outputs of ``python -m worldmodels.compare_openloop``: the cross-family table (CSV
and Markdown), PSNR/SSIM against the steps ahead, and a GIF of the rollouts.

Each result is a dict with ``family``, ``status`` (``ok``, ``baseline`` or ``crashed:
...``), ``parameters``, ``updates``, ``train_seconds``, ``uses_actions`` and, unless it
crashed, ``scores``: per series of :data:`worldmodels.training.openloop.SCORES`, the
``mean`` and ``ci95`` lists over the steps ahead (the copy-last row holds ``psnr`` and
``ssim`` only); a trained family also holds ``media``, its first rollouts
``[M, H, C, H_img, W_img]``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .images import annotate_grid, image_grid
from .images import write_gif as write_frames_gif

STEPS_AHEAD = (1, 4, 8, 16)
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def table_horizons(horizon: int) -> tuple[list[int], list[int]]:
    """The steps ahead of the PSNR/SSIM columns (1, 4, 8, 16 where the rollout reaches,
    and the last step) and of the ΔPSNR columns (the first and the last)."""
    steps = sorted({h for h in STEPS_AHEAD if h <= horizon} | {horizon})
    return steps, sorted({1, horizon})


def _value(result: dict[str, Any], series: str, step: int) -> tuple[float, float] | None:
    scores = result.get("scores") or {}
    if series not in scores:
        return None
    return scores[series]["mean"][step - 1], scores[series]["ci95"][step - 1]


def table_rows(results: list[dict[str, Any]], horizon: int) -> list[dict[str, Any]]:
    """One flat row per result: the CSV's columns (missing values empty)."""
    steps, deltas = table_horizons(horizon)
    columns = [(f"{metric}_h{h}", metric, h) for metric in ("psnr", "ssim") for h in steps]
    columns += [(f"delta_psnr_h{h}", "delta_psnr", h) for h in deltas]
    rows = []
    for result in results:
        row = {"family": result["family"], "parameters": result.get("parameters", ""),
               "updates": result.get("updates", ""), "train_seconds": _round(result.get("train_seconds"), 1),
               "uses_actions": {True: "yes", False: "no"}.get(result.get("uses_actions"), "")}
        for name, series, step in columns:
            value = _value(result, series, step)
            row[name], row[f"{name}_ci95"] = ("", "") if value is None else (round(value[0], 4), round(value[1], 4))
        row["status"] = result["status"]
        rows.append(row)
    return rows


def _round(value: Any, digits: int) -> Any:
    return "" if value is None else round(float(value), digits)


def _cell(row: dict[str, Any], name: str, digits: int) -> str:
    if row[name] == "":
        return "-"
    sign = "+" if name.startswith("delta") else ""
    return f"{row[name]:{sign}.{digits}f} ± {row[f'{name}_ci95']:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], horizon: int, title: str) -> str:
    """The table as Markdown: mean ± 95% interval per cell."""
    steps, deltas = table_horizons(horizon)
    head = (["family", "parameters", "updates", "train s", "actions"] + [f"PSNR {h}" for h in steps]
            + [f"SSIM {h}" for h in steps] + [f"ΔPSNR {h}" for h in deltas] + ["status"])
    lines = [f"{title}", "", "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 2)
                                                                                  + ["---"]) + " |"]
    for row in rows:
        parameters = f"{row['parameters']:,}" if isinstance(row["parameters"], int) else "-"
        cells = [row["family"], parameters, str(row["updates"] or "-"), str(row["train_seconds"] or "-"),
                 row["uses_actions"] or "-"]
        cells += [_cell(row, f"psnr_h{h}", 2) for h in steps] + [_cell(row, f"ssim_h{h}", 3) for h in steps]
        cells += [_cell(row, f"delta_psnr_h{h}", 2) for h in deltas] + [row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "PSNR in dB and SSIM at each step ahead, mean ± 95% interval over the held-out sequences; "
              "ΔPSNR = PSNR with the recorded actions minus PSNR with shuffled actions."]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, results: list[dict[str, Any]], horizon: int, title: str) -> list[Path]:
    """``out/table.csv`` and ``out/table.md``."""
    rows = table_rows(results, horizon)
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.md").write_text(markdown_table(rows, horizon, title))
    return [out / "table.csv", out / "table.md"]


def write_plot(path: Path, results: list[dict[str, Any]], title: str = "") -> Path:
    """PSNR and SSIM against the steps ahead: one line per family that ran (95% band
    shaded), copy-last-frame dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for axis, (metric, label) in zip(axes, (("psnr", "PSNR (dB)"), ("ssim", "SSIM"))):
        drawn = [r for r in results if metric in (r.get("scores") or {})]
        for index, result in enumerate(drawn):
            series = result["scores"][metric]
            mean, ci = np.asarray(series["mean"]), np.asarray(series["ci95"])
            steps = np.arange(1, len(mean) + 1)
            baseline = result["status"] == "baseline"
            colour = "black" if baseline else COLOURS[index % len(COLOURS)]
            axis.plot(steps, mean, color=colour, linestyle="--" if baseline else "-", label=result["family"])
            axis.fill_between(steps, mean - ci, mean + ci, color=colour, alpha=0.15, linewidth=0)
        axis.set_xlabel("steps ahead (open loop)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def rollout_grid_frames(truth: torch.Tensor, rows: list[tuple[str, torch.Tensor]], context: int) -> np.ndarray:
    """``truth [M, K + H, C, h, w]`` and per family ``(label, prediction [M, H, C, h, w])``
    -> GIF frames ``[K + H, H', W', 3]`` uint8: row ``truth`` then one row per family
    (the given frames while ``t < K``), one column per sequence, titled by the step."""
    labels = ["truth", *(label for label, _ in rows)]
    frames = []
    for t in range(truth.shape[1]):
        tiles = [truth[:, t]] + [truth[:, t] if t < context else prediction[:, t - context] for _, prediction in rows]
        title = f"given frame {t + 1}/{context}" if t < context else f"{t - context + 1} step(s) ahead (open loop)"
        frames.append(annotate_grid(image_grid(tiles, scale=2), labels, title=title))
    return np.stack(frames)


def write_gif(path: Path, truth: torch.Tensor, results: list[dict[str, Any]], context: int) -> Path:
    """``rollouts.gif``: the truth, then each family that ran, for the first sequences."""
    rows = [(r["family"], r["media"][:len(truth)]) for r in results if r.get("media") is not None]
    return write_frames_gif(path, rollout_grid_frames(truth, rows, context), duration=250)


__all__ = ["STEPS_AHEAD", "markdown_table", "rollout_grid_frames", "table_horizons", "table_rows", "write_gif",
           "write_plot", "write_tables"]
