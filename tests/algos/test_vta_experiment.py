"""VTA through the trainer and the visualisation command."""

import csv
import math
import subprocess
import sys

import pytest
import torch

from worldmodels.algos.vta.experiment import FACTORIES
from worldmodels.training.loop import fit

VTA_TINY = [
    "model.feat_size=16", "model.belief_size=16", "model.state_size=4",
    "model.widths=[8,8,8]", "model.seq_size=8", "model.init_size=2", "model.seg_len=4", "model.seg_num=3",
    "train.max_steps=4", "train.eval_every=2", "train.batch_size=2", "env.eval_sequences=2",
]


BALLS = "+exp=vta_balls"


def test_default_experiment_is_vta_on_the_maze(config_from):
    cfg = config_from([])
    assert (cfg.algo.name, cfg.model.name, cfg.env.name, cfg.run.name) == ("vta", "vta", "maze", "vta_maze")
    assert cfg.env.events == "turn" and cfg.algo.tolerance == 0 and cfg.env.generate_if_missing
    assert cfg.model.boundary_grad == "disarm" and cfg.model.boundary_warmup < cfg.train.max_steps
    longer = config_from(["+exp=vta_maze"])
    assert longer.model == cfg.model and longer.train.max_steps > cfg.train.max_steps


def test_the_default_experiment_writes_its_maze_and_trains(config_from, smoke_overrides, tmp_path):
    root = tmp_path / "maze"
    model = [o for o in VTA_TINY if o.startswith(("model.", "train."))]
    cfg = config_from([*smoke_overrides, *model, f"env.root={root}"])
    summary = fit(cfg, FACTORIES, tmp_path / "run")
    assert summary["step"] == 4 and (root / "meta.json").is_file()


def test_vta_trains_logs_boundary_scores_and_visualises(config_from, smoke_overrides, tmp_path):
    cfg = config_from([BALLS, *smoke_overrides, *VTA_TINY])
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


def test_missing_maze_data_names_the_generator_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worldmodels.train", "+exp=vta_maze", f"env.root={tmp_path / 'nowhere'}",
         "env.generate_if_missing=false"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "python -m worldmodels.data.generate_maze --out" in result.stderr
    assert "Traceback" not in result.stderr


def test_vta_trains_on_generated_maze_episodes(config_from, tmp_path):
    from worldmodels.data.generate_maze import main as generate

    root = tmp_path / "maze"
    generate(["--out", str(root), "--train", "4", "--test", "2", "--length", "24", "--no-progress"])
    model = [o for o in VTA_TINY if o.startswith(("model.", "train."))]
    cfg = config_from(["+exp=vta_maze", "device=cpu", "train.progress=false", "train.log_every=1", *model,
                   f"env.root={root}", "env.eval_sequences=2"])
    summary = fit(cfg, FACTORIES, tmp_path / "run")
    assert summary["step"] == 4
    with (tmp_path / "run" / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("eval/boundary_f1")]
    assert rows and float(rows[-1]["eval/event_rate"]) > 0


def test_control_run_trains_on_the_true_events(config_from, smoke_overrides, tmp_path):
    from worldmodels.algos.vta.experiment import build_data, build_model, sequence_length

    cfg = config_from([BALLS, *smoke_overrides, *VTA_TINY, "model.boundary_source=events"])
    data = build_data(cfg, "cpu")
    batch = data.next_batch()
    assert batch["events"].shape == (2, sequence_length(cfg)) and batch["events"].dtype == torch.bool
    torch.testing.assert_close(batch["events"], batch["wall_collisions"])
    assert data.state_dict() == {"step": 1}
    loss, metrics = build_model(cfg).compute_loss(batch)
    assert torch.isfinite(loss)
    fit(cfg, FACTORIES, tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        evals = [r for r in csv.DictReader(handle) if r.get("eval/boundary_f1")]
    assert len(evals) == 2 and all(math.isfinite(float(r["eval/loss"])) for r in evals)  # a Gaussian NLL may be < 0
    assert all(float(r["eval/boundary_rate"]) > 0 for r in evals)


@pytest.mark.parametrize("grad", ["st", "disarm"])
def test_the_boundary_detector_stays_alive_on_the_balls(config_from, grad):
    """Regression test of the detector's health: an un-normalised detector, whose
    boundaries cost nothing at the segment limits, saturates within ~20 updates here
    (log-odds below -40, gradient below 1e-15, measured); the default must keep
    choosing and keep learning."""
    from worldmodels.algos.vta.evaluate import VTAEvaluator
    from worldmodels.algos.vta.experiment import build_data, build_model, held_out_set

    cfg = config_from([BALLS, "device=cpu", "train.batch_size=8", "env.eval_sequences=16",
                       f"model.boundary_grad={grad}", "model.boundary_warmup=0"])  # the detector trains from step 1
    torch.manual_seed(0)
    model, data = build_model(cfg), build_data(cfg, torch.device("cpu"))
    evaluator = VTAEvaluator(held_out_set(cfg, torch.device("cpu")))
    optimizer = torch.optim.Adam(model.parameters(), float(cfg.train.lr))
    for step in range(1, 41):
        model.train()
        loss, _ = model.compute_loss(data.next_batch())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.grad_clip))
        optimizer.step()
        if step % 20 == 0:
            model.eval()
            health = evaluator.evaluate(model)
            assert health["eval/boundary_entropy"] > 0.1, (step, health)     # nats, on free steps
            assert health["eval/boundary_logit_grad"] > 0.1, (step, health)
            assert health["eval/boundary_logit_std"] > 0.1, (step, health)   # it tells frames apart


def test_the_detector_learns_at_its_own_rate(config_from):
    from worldmodels.algos.vta.experiment import build_model, build_optimizer

    cfg = config_from([BALLS, *VTA_TINY, "train.lr=2e-4", "algo.detector_lr_scale=3"])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    model_group, detector_group = optimizer.param_groups
    assert (model_group["lr"], detector_group["lr"]) == (2e-4, pytest.approx(6e-4))
    detector = set(map(id, model.hrssm.post_boundary.parameters()))
    assert set(map(id, detector_group["params"])) == detector
    assert len(model_group["params"]) + len(detector_group["params"]) == len(list(model.parameters()))
    assert not detector & set(map(id, model_group["params"]))
