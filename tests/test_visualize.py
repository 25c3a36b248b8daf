"""``python -m worldmodels.visualize`` on what it cannot draw: one line, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from worldmodels.train import factories_for
from worldmodels.training.checkpoint import save_checkpoint

TINY_DREAMER = ["+exp=dreamer_cartpole", "device=cpu", "model.deter=16", "model.hidden=16", "model.blocks=2",
                "model.stoch=4", "model.classes=4", "model.mlp_units=16", "model.mlp_layers=1",
                "model.head_units=16", "algo.eval_episodes=1"]


def visualize(*args, cwd):
    return subprocess.run([sys.executable, "-m", "worldmodels.visualize", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_a_run_with_nothing_to_draw_says_so(config_from, tmp_path):
    cfg = config_from(TINY_DREAMER)
    model = factories_for("dreamerv3").model(cfg)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt",
                           {"step": 0, "model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)})
    result = visualize(path, "--out", tmp_path / "pictures", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path} is a dreamerv3 run with nothing to draw")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "pictures").exists()


@pytest.mark.parametrize("content,message", [(b"garbage", "could not be read"), (None, "does not exist")])
def test_a_bad_or_missing_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "last.pt"
    if content is not None:
        path.write_bytes(content)
    result = visualize(path, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: checkpoint {path} ") and message in result.stderr
    assert result.stderr.count("\n") == 1
