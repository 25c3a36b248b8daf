"""VTA through the trainer and the visualisation command."""

import csv
import subprocess
import sys

from worldmodels.algos.vta.experiment import FACTORIES
from worldmodels.training.loop import fit

VTA_TINY = [
    "+exp=vta_balls", "model.feat_size=16", "model.belief_size=16", "model.state_size=4",
    "model.widths=[8,8,8]", "model.seq_size=8", "model.init_size=2", "model.seg_len=4", "model.seg_num=3",
    "train.max_steps=4", "train.eval_every=2", "train.batch_size=2", "env.eval_sequences=2",
]


def test_vta_trains_logs_boundary_scores_and_visualises(tiny_config, tmp_path):
    cfg = tiny_config(*VTA_TINY)
    fit(cfg, FACTORIES, tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    evals = [r for r in rows if r.get("eval/boundary_f1")]
    assert len(evals) == 2
    for key in ["eval/boundary_precision", "eval/boundary_recall", "eval/random_f1", "eval/kl_mask"]:
        assert evals[-1][key] != ""
    train = [r for r in rows if r.get("train/mask_beta")]
    assert float(train[-1]["train/mask_beta"]) == 1.0
    assert (tmp_path / "media" / "vis_seq_0_step000004.png").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "worldmodels.visualize", str(tmp_path / "checkpoints" / "best.pt"),
         "--idx", "1", "--num_samples", "2", "--out", str(tmp_path / "vis")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vis" / "vis_seq_1.png").is_file() and (tmp_path / "vis" / "jumpy_1.png").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "worldmodels.visualize", str(tmp_path / "checkpoints" / "best.pt"), "--idx", "9"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode != 0 and "--idx 9 is outside the 2 held-out sequences" in bad.stderr
