"""Rendering classic-control frames without a display prints nothing from pygame/SDL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("pygame")

SCRIPT = """
import numpy as np
from worldmodels.envs.factory import EnvSpec, make_env
with make_env(EnvSpec("classic", "cartpole", render_image=True, size=(16, 16), backend="gymnasium")) as env:
    env.reset()
    out = env.step(np.zeros(1, np.int64))
print("frames", out["image"].shape)
"""


def test_no_xdg_runtime_dir_error_without_a_display():
    hidden = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "SDL_VIDEODRIVER")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "frames (1, 16, 16, 3)" in result.stdout
    assert "XDG_RUNTIME_DIR" not in result.stdout + result.stderr
