"""``python -m worldmodels.play``: the four modes on tiny IRIS and Δ-IRIS runs, recordings, errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import gymnasium
import imageio.v3 as iio
import numpy as np
import pytest
from omegaconf import OmegaConf

from worldmodels import play, play_view
from worldmodels.play_modes import parse_command
from worldmodels.play_view import ansi_frame, side_by_side

TOY_ID = "WMPlayToy-v0"
SIZE, SCALE = 16, 2


class PlayToyEnv(gymnasium.Env):
    """16x16 RGB frames, a bright column at the last action over a background brightening
    with time; 3 named actions; reward 1 for action 1; ends after 6 steps."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, render_mode=None):
        self.observation_space = gymnasium.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.t, self.action = 0, 0

    def get_action_meanings(self):
        return ["NOOP", "LEFT", "RIGHT"]

    def _frame(self):
        frame = np.full((SIZE, SIZE, 3), 30 * self.t, np.uint8)
        frame[:, 4 * self.action:4 * self.action + 4] = 255
        return frame

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.action = 0, 0
        return self._frame(), {}

    def step(self, action):
        self.t, self.action = self.t + 1, int(action)
        return self._frame(), float(action == 1), self.t >= 6, False, {}


if TOY_ID not in gymnasium.registry:
    gymnasium.register(TOY_ID, entry_point=PlayToyEnv)

TRAIN = ["+exp=iris_tiny", "env.suite=gym", f"env.task={TOY_ID}", f"env.size=[{SIZE},{SIZE}]",
         "env.render_image=false", "device=cpu", "model.tokenizer.ch=4", "model.tokenizer.z_channels=8",
         "model.tokenizer.vocab_size=16", "model.tokenizer.ch_mult=[1,1,1,1]", "model.tokenizer.num_res_blocks=1",
         "model.world_model.max_blocks=5", "model.world_model.num_layers=1", "model.world_model.num_heads=1",
         "model.world_model.embed_dim=16", "model.actor_critic.conv_channels=[4,4]",
         "model.actor_critic.lstm_dim=16", "model.actor_critic.imagine_horizon=4", "model.actor_critic.burn_in=2",
         "algo.batch_sizes={tokenizer:4,world_model:2,actor_critic:2}", "algo.sequence_length=4",
         "algo.collect_every=2", "algo.collect_steps=12", "algo.eval_episodes=1", "algo.media_length=4",
         "algo.starts={tokenizer:0,world_model:1,actor_critic:2}", "train.max_steps=2", "train.log_every=2",
         "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false"]

SCRIPT = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_play  # registers {TOY_ID}
from worldmodels.train import cli
cli()
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


DELTA_TRAIN = ["+exp=delta_iris_tiny", "env.suite=gym", f"env.task={TOY_ID}", f"env.size=[{SIZE},{SIZE}]",
               "env.render_image=false", "device=cpu", "model.tokenizer.channels=4",
               "model.tokenizer.frame_channels=4", "model.tokenizer.latent_dim=4", "model.tokenizer.code_dim=8",
               "model.tokenizer.vocab_size=16", "model.world_model.frame_channels=4",
               "model.world_model.max_blocks=4", "model.world_model.num_layers=1", "model.world_model.embed_dim=16",
               "model.actor_critic.frame_channels=4", "model.actor_critic.frame_latent_dim=2",
               "model.actor_critic.frame_mult=[1,1]", "model.actor_critic.frame_down=[1,1]",
               "model.actor_critic.lstm_dim=8", "model.actor_critic.imagine_horizon=2", "model.actor_critic.burn_in=1",
               "algo.batch_sizes={tokenizer:2,world_model:2,actor_critic:2}", "algo.sequence_length=4",
               "algo.tokenizer_sequence_length=3", "algo.collect_every=2", "algo.collect_steps=12",
               "algo.initial_collect_steps=12", "algo.eval_episodes=1", "algo.media_length=4",
               "algo.starts={tokenizer:0,world_model:1,actor_critic:2}", "train.max_steps=2", "train.log_every=2",
               "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false"]


def train_run(root: Path, overrides: list[str]) -> Path:
    """The run directory of ``overrides`` trained on the toy env under ``root``."""
    script = root / "train_toy.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), *overrides, f"run.root={root}"], check=False, cwd=root,
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    (run_dir,) = [p for day in root.iterdir() if day.is_dir() for p in day.iterdir()]
    return run_dir


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    """A tiny IRIS run directory trained for 2 updates on the toy env."""
    return train_run(tmp_path_factory.mktemp("iris_run"), TRAIN)


@pytest.fixture(scope="module")
def delta_run(tmp_path_factory) -> Path:
    """A tiny Δ-IRIS run directory (a 4-frame world-model context) trained for 2 updates."""
    return train_run(tmp_path_factory.mktemp("delta_run"), DELTA_TRAIN)


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def gif_frames(path: Path) -> np.ndarray:
    return iio.imread(path, index=None)


def frame_shape(panels: int) -> tuple[int, int, int]:
    """Recorded frame size: ``panels`` frames side by side (2-px gaps), enlarged, plus the time strip."""
    width = panels * SIZE + (panels - 1) * 2
    return (SIZE * SCALE + max(2, SCALE), width * SCALE, 3)


def test_agent_env_plays_an_episode_and_records_every_frame(iris_run, tmp_path, capsys):
    out = tmp_path / "env.gif"
    code = play.main([str(iris_run), "--mode", "agent-env", "--headless", "--record", str(out),
                      "--scale", str(SCALE)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    steps = int(re.search(r"episode 1: return [-\d.e+]+ in (\d+) steps \(ended\)", printed).group(1))
    assert steps == 6
    video = gif_frames(out)
    assert video.shape == (steps + 1, *frame_shape(1))
    assert f"recorded {steps + 1} frames" in printed


def test_agent_wm_shows_env_beside_world_model_past_its_context(iris_run, tmp_path, capsys):
    out = tmp_path / "wm.gif"
    code = play.main([str(iris_run / "checkpoints" / "last.pt"), "--mode", "agent-wm", "--max-steps", "6",
                      "--headless", "--record", str(out), "--scale", str(SCALE), "--temperature", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    steps = int(re.search(r"imagined return [-\d.e+]+ in (\d+) steps", printed).group(1))
    assert 1 <= steps <= 6 and printed.count("predicted reward") == steps
    assert gif_frames(out).shape == (steps + 1, *frame_shape(2))


def test_delta_iris_agent_plays_env_and_world_model_past_its_context(delta_run, tmp_path, capsys):
    out = tmp_path / "delta_wm.gif"
    code = play.main([str(delta_run), "--mode", "agent-wm", "--max-steps", "6", "--headless", "--record", str(out),
                      "--scale", str(SCALE), "--temperature", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    steps = int(re.search(r"imagined return [-\d.e+]+ in (\d+) steps", printed).group(1))
    assert 1 <= steps <= 6 and printed.count("predicted reward") == steps
    assert gif_frames(out).shape == (steps + 1, *frame_shape(2))
    assert play.main([str(delta_run), "--mode", "agent-env", "--headless"]) == 0
    assert re.search(r"episode 1: return [-\d.e+]+ in 6 steps \(ended\)", capsys.readouterr().out)


def test_delta_iris_human_wm_restarts_its_context_when_full(delta_run, capsys):
    keys = iter(["2"] * 7 + ["q"])  # 7 steps: the 4-frame context is full after 3 and restarts
    code = play.main([str(delta_run), "--mode", "human-wm", "--headless"], input_fn=lambda prompt: next(keys))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "step 7 action 2 (RIGHT)" in printed and "played 7 world-model steps" in printed


def test_human_wm_scripted_keys_in_the_terminal_never_open_a_window(iris_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")  # --headless must win over a display

    def no_window(*args, **kwargs):
        raise AssertionError("a window was opened")

    monkeypatch.setattr(play_view.PygameViewer, "__init__", no_window)
    keys = iter(["1", "0", "9", "r", "q"])
    out = tmp_path / "human.gif"
    code = play.main([str(iris_run), "--mode", "human-wm", "--headless", "--record", str(out),
                      "--scale", str(SCALE)], input_fn=lambda prompt: next(keys))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "0 NOOP, 1 LEFT, 2 RIGHT" in printed and "unknown command" in printed
    assert "step 1 action 1 (LEFT)" in printed and "step 2 action 0 (NOOP)" in printed
    assert printed.count("world model step") == 4  # start, two steps, reset
    assert gif_frames(out).shape == (4, *frame_shape(1))
    assert "played 2 world-model steps" in printed


def test_human_wm_quits_at_end_of_input(iris_run, capsys):
    def closed(prompt):
        raise EOFError

    assert play.main([str(iris_run), "--mode", "human-wm", "--headless"], input_fn=closed) == 0
    assert "played 0 world-model steps" in capsys.readouterr().out


def test_episode_mode_replays_saved_npz(iris_run, tmp_path, capsys):
    path = min((iris_run / "episodes").glob("*.npz"))
    length = np.load(path)["image"].shape[0]
    out = tmp_path / "episode.gif"
    assert play.main(["--episode", str(path), "--record", str(out), "--scale", str(SCALE)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reward") == length and f"replayed 1 episodes, {length} frames" in printed
    assert gif_frames(out).shape == (length, *frame_shape(1))
    assert play.main([str(iris_run), "--mode", "episode", "--episodes", "1", "--max-steps", "2"]) == 0
    assert "replayed 1 episodes, 3 frames" in capsys.readouterr().out


def non_iris_run(iris_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "dreamer_run"
    shutil.copytree(iris_run / "checkpoints", run / "checkpoints")
    cfg = OmegaConf.load(iris_run / "resolved_config.yaml")
    cfg.algo.name = "dreamerv3"
    OmegaConf.save(cfg, run / "resolved_config.yaml")
    return run


def error_cases(iris_run: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an episode")
    cases = [([str(tmp_path / "missing_run"), "--mode", "agent-env"], "does not exist"),
             ([str(non_iris_run(iris_run, tmp_path)), "--mode", "agent-env"], "algo.name='dreamerv3'"),
             (["--mode", "episode", "--episode", str(tmp_path / "nope.npz")], "nope.npz does not exist"),
             (["--episode", str(bad)], "bad.npz"),
             ([str(iris_run), "--mode", "agent-env", "--record", str(tmp_path / "x.avi")], ".gif or .mp4"),
             (["--mode", "agent-wm"], "needs an IRIS or Δ-IRIS run"),
             ([str(iris_run), "--mode", "human-wm", "--episode", str(bad)], "--episode is for --mode episode")]
    find_spec = play_view.importlib.util.find_spec
    if find_spec("imageio_ffmpeg") is None and find_spec("av") is None:
        cases.append(([str(iris_run), "--mode", "agent-env", "--record", str(tmp_path / "x.mp4")], ".gif instead"))
    return cases


def test_errors_exit_2_with_one_line(iris_run, tmp_path, capsys):
    for argv, message in error_cases(iris_run, tmp_path):
        assert play.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m worldmodels.play: error:"), err
        assert message in err, (argv, err)


def test_command_line_error_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "worldmodels.play", str(tmp_path / "missing"), "--headless"],
                          check=False, capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr


def test_text_rendering_commands_and_panels():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255
    text = ansi_frame(image, width=8, color=False)
    assert text.splitlines() == ["    @@@@"] * 4
    assert ansi_frame(image, width=4, color=True).count("\u2580") == 4 * 2
    assert [parse_command(t, 3) for t in ("2", " Q ", "r", "3", "x")] == [2, "q", "r", None, None]
    assert side_by_side([image, image[:4, :, :1]]).shape == (8, 18, 3)


def test_window_path_reads_keys(iris_run, tmp_path, capsys, monkeypatch):
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    events = iter([pygame.event.Event(pygame.KEYDOWN, key=pygame.K_2, unicode="2"),
                   pygame.event.Event(pygame.KEYDOWN, key=pygame.K_a, unicode="a"),
                   pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, unicode="")])
    monkeypatch.setattr(pygame.event, "wait", lambda *args: next(events))

    def no_terminal(prompt):
        raise AssertionError("the window path read the terminal")

    out = tmp_path / "window.gif"
    code = play.main([str(iris_run), "--mode", "human-wm", "--record", str(out), "--fps", "1000"],
                     input_fn=no_terminal)
    printed = capsys.readouterr().out
    assert code == 0 and "step 1 action 2 (RIGHT)" in printed and "played 1 world-model steps" in printed
    assert gif_frames(out).shape[0] == 2
