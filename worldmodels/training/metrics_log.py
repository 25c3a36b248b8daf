"""Where metrics go: ``metrics.csv`` and TensorBoard always, wandb when turned on.

``metrics.csv`` is wide (one column per metric, one row per logging call); when a
new metric appears the file is rewritten with the wider header. On resume, rows
past the checkpoint's step are dropped so the file reads as one unbroken run.
"""

from __future__ import annotations

import csv
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WANDB_MODES = ("disabled", "online", "offline")
# Each row also goes to this logger: the train.log of a command-line run (see
# configs/hydra/job_logging/worldmodels.yaml), silent elsewhere.
FILE_LOG = logging.getLogger("worldmodels.file")


class CsvLog:
    """A growing wide CSV table keyed by ``step``."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or ["step"])
                self.rows = [row for row in reader if int(row["step"]) <= resume_step]
        self._rewrite()

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": str(step), **{k: _fmt(v) for k, v in metrics.items()}}
        self.rows.append(row)
        new = [key for key in metrics if key not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def _fmt(value: float) -> str:
    return repr(float(value))


class MetricsLogger:
    """Fan metrics out to CSV, TensorBoard and (optionally) wandb."""

    def __init__(self, run_dir: Path, logger_cfg: Mapping[str, Any], config: dict, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.csv = CsvLog(run_dir / "metrics.csv", resume_step)
        purge = None if resume_step is None else resume_step + 1
        self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        self.wandb = _start_wandb(run_dir, logger_cfg.get("wandb", {}), config)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.csv.write(step, metrics)
        FILE_LOG.info("step %d: %s", step, " ".join(f"{k}={float(v):.6g}" for k, v in metrics.items()))
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(dict(metrics), step=step)

    def log_image(self, step: int, tag: str, path: Path) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run_dir: Path, cfg: Mapping[str, Any], config: dict):
    """A wandb run when ``mode`` is online/offline; None (and no import) otherwise."""
    mode = cfg.get("mode", "disabled")
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is not one of {WANDB_MODES}.")
    if mode == "disabled":
        return None
    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(
        project=cfg.get("project", "worldmodels"),
        entity=cfg.get("entity"),
        name=cfg.get("name") or run_dir.name,
        group=cfg.get("group"),
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=config,
        tags=list(cfg.get("tags") or []),
    )
