"""DreamerV3 online training: data collection, evaluation, the loop hooks and the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from worldmodels.algos.dreamerv3.collect import OnlineData, onehot, to_env_action
from worldmodels.algos.dreamerv3.evaluate import DreamerEvaluator, openloop_frames
from worldmodels.envs.factory import ActionSpace, EnvSpec, VectorEnv, make_env
from worldmodels.training.contract import Evaluator, TrainData
from worldmodels.training.loop import Factories, fit
from worldmodels.utils.config import dataclass_from_config

DREAMER_EXPS = ("dreamer_cartpole", "dreamer_atari100k", "dreamer_dmc", "dreamer_dmc_vision", "dreamer_crafter")
TINY_MODEL = ["model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4", "model.classes=4",
              "model.mlp_units=16", "model.head_units=16", "model.horizon=3", "model.reward_bins=17"]


class RandomAgent:
    """Stands in for DreamerAgent: uniform actions, counts its calls."""

    def __init__(self, act_space: ActionSpace, seed: int = 0):
        self.act_space, self.rng = act_space, np.random.default_rng(seed)
        self.calls: list[bool] = []

    def init_policy_state(self, num_envs: int) -> dict:
        return {"steps": np.zeros(num_envs, np.int64)}

    def policy(self, obs: dict, state: dict, mode: str = "explore", **kwargs):
        n = len(obs["is_first"])
        assert state["steps"].shape == (n,)
        self.calls.append(mode == "explore")
        if self.act_space.discrete:
            action = self.rng.integers(0, self.act_space.size, n)
        else:
            action = self.rng.uniform(-1, 1, (n, self.act_space.size)).astype(np.float32)
        return action, {"steps": state["steps"] + 1}


def cartpole_data(num_envs=1, *, batch_size=2, batch_length=8, train_ratio=8.0, prefill=40, seed=0) -> OnlineData:
    env = make_env(EnvSpec("classic", "cartpole", num_envs=num_envs, seed=seed))
    return OnlineData(env, batch_size=batch_size, batch_length=batch_length, train_ratio=train_ratio,
                      prefill=prefill, capacity=10_000, seed=seed)


def test_env_steps_per_update_follow_the_train_ratio_with_a_carried_fraction():
    data = cartpole_data(batch_length=5, train_ratio=4.0)  # 2 * 5 / 4 = 2.5 env steps per update
    data.bind_model(RandomAgent(data.act_space))
    data.next_batch()
    after_prefill = data.env_steps
    assert after_prefill >= 40 and data.replay.num_steps >= 5
    increments = []
    for _ in range(6):
        before = data.env_steps
        data.next_batch()
        increments.append(data.env_steps - before)
    assert increments == [2, 3, 2, 3, 2, 3]
    assert data.owed == pytest.approx(0.0)
    assert data.model.calls and all(data.model.calls)  # explore=True after the prefill

    two = cartpole_data(num_envs=2, batch_length=6, train_ratio=4.0)  # 3 env steps per update, 2 per call
    two.bind_model(RandomAgent(two.act_space))
    two.next_batch()
    steps = []
    for _ in range(4):
        before = two.env_steps
        two.next_batch()
        steps.append(two.env_steps - before)
    assert steps == [2, 4, 2, 4]


def test_paper_ratio_gives_two_env_steps_per_update():
    assert cartpole_data(batch_size=16, batch_length=64, train_ratio=512).steps_per_update == 2.0
    assert cartpole_data(batch_size=16, batch_length=64, train_ratio=1024).steps_per_update == 1.0


def test_batches_hold_one_hot_actions_and_episodes_are_saved(tmp_path):
    data = cartpole_data()
    data.bind_model(RandomAgent(data.act_space), tmp_path)
    for _ in range(20):
        batch = data.next_batch()
    assert batch["action"].dtype == torch.float32 and batch["action"].shape == (2, 8, 2)
    last = batch["is_last"]
    assert torch.all(batch["action"].sum(-1) == (~last).float())      # one-hot; zeros at last steps (never taken)
    assert torch.all((batch["action"] == 0) | (batch["action"] == 1))
    assert batch["vector"].shape == (2, 8, 4) and batch["is_first"][:, 0].all()
    files = sorted((tmp_path / "episodes").glob("*.npz"))
    assert data.episodes - data.num_envs <= len(files) <= data.episodes   # the last may end on this step
    assert len(files) <= data.replay.num_episodes                        # the replay also holds the open one
    assert sum(int(f.stem.split("-")[1]) for f in files) <= data.replay.num_steps
    saved = np.load(files[0])
    assert saved["is_first"][0] and saved["is_last"][-1] and saved["action"].dtype == np.float32


def test_log_metrics_report_finished_episodes_once():
    data = cartpole_data(prefill=100)
    data.bind_model(RandomAgent(data.act_space))
    data.next_batch()
    first = data.log_metrics()
    assert first["collect/episodes"] >= 1 and first["collect/env_steps"] == data.env_steps
    assert 8 <= first["collect/return_mean"] <= first["collect/return_max"] <= 500
    assert first["perf/env_steps_per_s"] > 0
    second = data.log_metrics()
    assert "collect/return_mean" not in second and "collect/return_max" not in second
    assert second["collect/episodes"] == first["collect/episodes"]


def test_state_dict_round_trip_reloads_the_replay_from_disk(tmp_path):
    data = cartpole_data()
    data.bind_model(RandomAgent(data.act_space), tmp_path)
    for _ in range(7):
        data.next_batch()
    state = data.state_dict()
    resumed = cartpole_data()
    resumed.bind_model(RandomAgent(resumed.act_space), tmp_path)
    resumed.load_state_dict(state)
    for key in ("env_steps", "episodes", "updates", "owed", "prefilled"):
        assert getattr(resumed, key) == getattr(data, key), key
    assert resumed.replay.num_steps == data.replay.num_steps
    expected, got = data.replay.sample(3, 8), resumed.replay.sample(3, 8)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert resumed.collector.restored          # the env replayed back into its episode
    np.testing.assert_array_equal(resumed.collector.last_obs["vector"], data.collector.last_obs["vector"])
    before = resumed.env_steps
    resumed.next_batch()  # no second prefill
    assert resumed.env_steps - before < 40


def test_continuous_actions_are_stored_in_agent_units_and_rescaled_for_the_env():
    space = ActionSpace(False, 2, np.array([-2.0, 0.0], np.float32), np.array([2.0, np.inf], np.float32))
    got = to_env_action(space, np.array([[1.0, 0.3], [-1.0, -5.0], [0.0, 2.0]], np.float32))
    np.testing.assert_allclose(got, [[2.0, 0.3], [-2.0, -5.0], [0.0, 2.0]])
    np.testing.assert_array_equal(onehot(np.array([1, 0]), 3), [[0, 1, 0], [1, 0, 0]])
    env = make_env(EnvSpec("classic", "pendulum"))
    data = OnlineData(env, batch_size=2, batch_length=8, train_ratio=8, prefill=200, capacity=10_000, seed=0)
    data.bind_model(RandomAgent(data.act_space))
    batch = data.next_batch()
    assert batch["action"].shape == (2, 8, 1) and batch["action"].abs().max() <= 1.0


def tiny_cfg(config_from, *overrides):
    return config_from(["+exp=dreamer_cartpole", "device=cpu", *TINY_MODEL, *overrides])


def test_evaluator_returns_finite_scores_of_a_random_policy(config_from, tmp_path):
    cfg = tiny_cfg(config_from, "algo.eval_episodes=3")
    evaluator = DreamerEvaluator(cfg, "cpu")
    assert evaluator.env.num_envs == 3
    metrics = evaluator.evaluate(RandomAgent(evaluator.env.act_space))
    assert set(metrics) >= {"eval/return_mean", "eval/return_std", "eval/return_min", "eval/return_max",
                            "eval/length_mean", "eval/neg_return"}
    assert all(np.isfinite(v) for v in metrics.values())
    assert 8 <= metrics["eval/return_min"] <= metrics["eval/return_mean"] <= metrics["eval/return_max"] <= 500
    assert metrics["eval/neg_return"] == -metrics["eval/return_mean"]
    assert metrics["eval/length_mean"] == metrics["eval/return_mean"]  # CartPole: reward 1 per step
    assert evaluator.write_media(RandomAgent(evaluator.env.act_space), tmp_path, 5) == []


class PictureEnv(VectorEnv):
    """Episodes of 7 agent steps whose 16x16 frames brighten with time; 3 discrete actions."""

    def __init__(self, num_envs: int):
        self.num_envs, self._t = num_envs, np.zeros(num_envs, np.int64)
        self._set_spaces({"image": ((16, 16, 3), np.dtype(np.uint8))}, type("Discrete", (), {"n": 3})())

    def _obs(self, first, last):
        image = np.broadcast_to((self._t * 30).astype(np.uint8)[:, None, None, None], (self.num_envs, 16, 16, 3))
        reward = np.where(first, 0.0, 1.0).astype(np.float32)
        return {"image": image.copy(), "reward": reward, "is_first": first, "is_last": last, "is_terminal": last}

    def reset(self):
        self._t[:] = 0
        return self._obs(np.ones(self.num_envs, bool), np.zeros(self.num_envs, bool))

    def step(self, action):
        first = self._t >= 7
        self._t = np.where(first, 0, self._t + 1)
        return self._obs(first, self._t >= 7)


def test_open_loop_gif_of_a_real_agent(config_from, tmp_path):
    from worldmodels.algos.dreamerv3.agent import DreamerAgent, DreamerConfig

    cfg = tiny_cfg(config_from, "algo.eval_episodes=2", "algo.openloop_context=2", "algo.openloop_length=5",
                   "model.cnn_depth=4")
    env = PictureEnv(2)
    agent = DreamerAgent(dataclass_from_config(DreamerConfig, cfg.model), env.obs_space, env.act_space).eval()
    evaluator = DreamerEvaluator(cfg, "cpu", env=env)
    metrics = evaluator.evaluate(agent)
    assert metrics["eval/return_mean"] == 7 and metrics["eval/length_mean"] == 7
    (path,) = evaluator.write_media(agent, tmp_path, 12)
    assert path.name == "openloop_step000012.gif"
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 5  # openloop_length steps of the first episode
    assert frames.shape[1] > 3 * 32 and frames.shape[2] > 2 * 32  # 3 rows x 2 sequences, scaled 2x
    assert frames[1, 0, 0, 1] > 150 and frames[2, 0, 0, 0] > 150  # context bar green, then red


def test_openloop_frames_default_error_is_grey_where_exact():
    truth = torch.full((1, 3, 4, 4, 3), 80, dtype=torch.uint8)
    frames = openloop_frames(truth, truth.clone(), None, context=1, scale=1, bar=1)
    assert frames.shape[0] == 3 and frames.dtype == np.uint8
    error_row = frames[0, 1 + 2 * (4 + 4):, :, :]  # below the bar and the truth/prediction rows
    assert np.abs(error_row[2:-2, 2:-2].astype(int) - 127).max() <= 1


class HookData(TrainData):
    """A TrainData with the optional hooks, recording the order of calls."""

    def __init__(self, calls: list):
        self.calls, self.count = calls, 0

    def bind_model(self, model, run_dir):
        self.calls.append(("bind_model", type(model).__name__, Path(run_dir)))

    def next_batch(self):
        self.count += 1
        return torch.ones(2, 3)

    def log_metrics(self):
        self.calls.append(("log_metrics", self.count))
        return {"collect/batches": float(self.count)}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.calls.append(("load_state_dict", state["count"]))
        self.count = state["count"]


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def compute_loss(self, batch):
        loss = self.layer(batch).pow(2).mean()
        return loss, {"loss": loss.detach()}


class NullEvaluator(Evaluator):
    def evaluate(self, model):
        return {"eval/loss": 0.0}

    def write_media(self, model, directory, step):
        return []


def test_fit_binds_the_model_before_resuming_and_logs_data_metrics(tiny_config, tmp_path):
    calls: list = []
    factories = Factories(model=lambda cfg: Linear(), data=lambda cfg, device: HookData(calls),
                          evaluator=lambda cfg, device: NullEvaluator())
    cfg = tiny_config("train.max_steps=4", "train.log_every=2", "train.stop_at=2", "train.best_metric=eval/loss")
    fit(cfg, factories, tmp_path)
    assert calls == [("bind_model", "Linear", tmp_path), ("log_metrics", 2)]
    calls.clear()
    fit(cfg, factories, tmp_path, resume=True)
    assert calls == [("bind_model", "Linear", tmp_path), ("load_state_dict", 2), ("log_metrics", 4)]
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("collect/batches")]
    assert [(r["step"], r["collect/batches"]) for r in rows] == [("2", "2.0"), ("4", "4.0")]


@pytest.mark.parametrize("exp", DREAMER_EXPS)
def test_dreamer_experiments_compose_into_agent_configs(config_from, exp):
    from worldmodels.algos.dreamerv3.config import DreamerConfig

    cfg = config_from([f"+exp={exp}"])
    config = dataclass_from_config(DreamerConfig, cfg.model)
    assert config.deter % config.blocks == 0
    assert cfg.algo.name == "dreamerv3" and cfg.train.best_metric == "eval/neg_return"
    per_update = cfg.train.batch_size * cfg.algo.batch_length / cfg.algo.train_ratio
    if exp == "dreamer_atari100k":
        assert cfg.env.action_repeat == 4 and tuple(cfg.env.size) == (64, 64) and cfg.algo.train_ratio == 1024
        assert cfg.algo.prefill + per_update * cfg.train.max_steps == 100_000  # agent steps (400k frames)


@pytest.mark.parametrize("size,deter", [("dreamer2024_1m", 512), ("dreamer2024_12m", 2048), ("dreamer2024_25m", 3072),
                                        ("dreamer2024_50m", 4096), ("dreamer2024_100m", 6144),
                                        ("dreamer2024_200m", 8192), ("dreamer2024_400m", 12288)])
def test_2024_size_presets_set_the_2024_code_widths(config_from, size, deter):
    from worldmodels.algos.dreamerv3.config import DreamerConfig

    cfg = config_from(["algo=dreamerv3", "model=dreamerv3", "env=gym", f"size={size}"])
    config = dataclass_from_config(DreamerConfig, cfg.model)
    assert (config.deter, config.stoch, config.blocks) == (deter, 32, 8)
    assert config.hidden == config.mlp_units == config.head_units == deter // 8
    assert config.classes == config.cnn_depth == deter // 128


# danijar/dreamerv3's configs.yaml of February 2023: rssm.deter, .*\.cnn_depth, .*\.units, .*\.layers
PAPER_2023 = {"small": (512, 32, 512, 2), "medium": (1024, 48, 640, 3), "large": (2048, 64, 768, 4),
              "xlarge": (4096, 96, 1024, 5)}


@pytest.mark.parametrize("name", list(PAPER_2023))
def test_2023_size_presets_set_the_2023_code_widths_everywhere(config_from, name):
    from worldmodels.algos.dreamerv3.config import DreamerConfig

    cfg = config_from(["algo=dreamerv3", "model=dreamerv3", "env=gym", f"size=dreamer2023_{name}"])
    config = dataclass_from_config(DreamerConfig, cfg.model)
    deter, depth, units, layers = PAPER_2023[name]
    assert (config.deter, config.blocks, config.stoch, config.classes, config.cnn_depth) == (deter, 1, 32, 32, depth)
    assert config.hidden == config.mlp_units == config.head_units == units
    assert config.mlp_layers == config.head_layers == config.actor_layers == config.critic_layers == layers
    # the 2023 optimiser and losses (configs/model/dreamerv3.yaml)
    assert (config.model_lr, config.actor_lr, config.critic_lr) == (1e-4, 3e-5, 3e-5)


@pytest.mark.parametrize("exp,size", [("dreamer_atari100k", "small"), ("dreamer_dmc", "small"), ("dreamer_dmc_vision", "small"),
                                      ("dreamer_crafter", "xlarge")])
def test_benchmark_experiments_use_the_2023_presets(config_from, exp, size):
    cfg = config_from([f"+exp={exp}"])
    deter, depth, units, layers = PAPER_2023[size]
    assert (cfg.model.deter, cfg.model.blocks, cfg.model.cnn_depth, cfg.model.mlp_units) == (deter, 1, depth, units)
    assert f"dreamer2023_{size}" in (Path(__file__).parents[2] / "configs" / "exp" / f"{exp}.yaml").read_text()


def test_unknown_algorithm_lists_every_algorithm():
    from worldmodels.algos.dreamerv3.experiment import FACTORIES
    from worldmodels.algos.registry import FAMILIES as ALGORITHMS
    from worldmodels.train import factories_for

    assert "dreamerv3" in ALGORITHMS and factories_for("dreamerv3") is FACTORIES
    with pytest.raises(ValueError) as error:
        factories_for("dreamer")
    for name in ALGORITHMS:
        assert name in str(error.value)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_trains_on_cartpole_then_resumes(tmp_path):
    overrides = ["+exp=dreamer_cartpole", *TINY_MODEL, "device=cpu", "train.max_steps=6", "train.stop_at=3",
                 "train.batch_size=2", "algo.batch_length=8", "algo.prefill=60", "algo.train_ratio=8", "algo.eval_episodes=2",
                 "train.log_every=3", "train.eval_every=3", "train.checkpoint_every=3", "train.progress=false",
                 f"run.root={tmp_path}"]
    run = subprocess.run([sys.executable, "-m", "worldmodels.train", *overrides],
                         check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (run_dir,) = [p for day in tmp_path.iterdir() if day.is_dir() for p in day.iterdir()]
    assert run_dir.name.endswith("_dreamer_cartpole")
    episodes = sorted((run_dir / "episodes").glob("*.npz"))
    assert episodes and (run_dir / "checkpoints" / "best.pt").is_file()
    resumed = subprocess.run([sys.executable, "-m", "worldmodels.train", f"+resume={run_dir}"],
                             check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_rows(run_dir / "metrics.csv")
    train = [r for r in rows if r.get("train/loss")]
    evals = [r for r in rows if r.get("eval/return_mean")]
    assert [r["step"] for r in train] == ["3", "6"] and [r["step"] for r in evals] == ["3", "6"]
    assert all(float(r["collect/return_mean"]) >= 8 for r in train if r.get("collect/return_mean"))
    assert any(r.get("collect/return_mean") for r in train)
    assert float(train[1]["collect/env_steps"]) > float(train[0]["collect/env_steps"])
    assert len(list((run_dir / "episodes").glob("*.npz"))) >= len(episodes)
    assert len(list((run_dir / "replay").glob("replay_*.npz"))) in (1, 2)   # exact replay snapshots
    saved = OmegaConf.load(run_dir / "resolved_config.yaml")
    assert saved.algo.name == "dreamerv3"
    assert f"env backend: {saved.env.backend_used} (classic cartpole)" in run.stdout
    assert saved.env.backend_used in ("envpool", "gymnasium")
    assert "best eval/return_mean " in resumed.stdout and "neg_return" not in resumed.stdout

    recorded = subprocess.run(
        [sys.executable, "-m", "worldmodels.record", "--suite", "classic", "--task", "cartpole", "--episodes", "2",
         "--out", str(tmp_path / "agent_episodes"), "--checkpoint", str(run_dir / "checkpoints" / "best.pt"),
         "--no-progress"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert recorded.returncode == 0, recorded.stderr
    assert "recorded 2 episodes" in recorded.stdout
    assert len(list((tmp_path / "agent_episodes").glob("*.npz"))) == 2

    mismatch = subprocess.run(
        [sys.executable, "-m", "worldmodels.record", "--suite", "classic", "--task", "acrobot", "--episodes", "1",
         "--out", str(tmp_path / "wrong_env"), "--checkpoint", str(run_dir / "checkpoints" / "best.pt")],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert mismatch.returncode == 2
    assert "the agent reads 'vector' of shape (4,), the env gives (6,)" in mismatch.stderr


def test_explore_without_a_checkpoint_is_refused(tmp_path, capsys):
    from worldmodels import record

    with pytest.raises(SystemExit):
        record.main(["--suite", "classic", "--task", "cartpole", "--episodes", "1", "--out", str(tmp_path),
                     "--explore"])
    assert "--explore needs --checkpoint" in capsys.readouterr().err


class ModeRecorder(RandomAgent):
    """A random agent that records the policy mode of every call."""

    def __init__(self, act_space: ActionSpace):
        super().__init__(act_space)
        self.modes: set[str] = set()

    def policy(self, obs: dict, state: dict, mode: str = "explore", **kwargs):
        self.modes.add(mode)
        return super().policy(obs, state, mode, **kwargs)


def test_evaluation_samples_by_default_over_the_configured_episodes(config_from):
    cfg = tiny_cfg(config_from, "algo.eval_episodes=5", "algo.eval_envs=2")
    assert cfg.algo.eval_mode == "sample"
    evaluator = DreamerEvaluator(cfg, "cpu")
    assert evaluator.env.num_envs == 2 and evaluator.mode == "sample"
    agent = ModeRecorder(evaluator.env.act_space)
    result = evaluator.runner.run(agent)
    assert agent.modes == {"sample"} and result.returns.shape == (5,)
    metrics = result.metrics()
    assert metrics["eval/return_std"] == pytest.approx(float(np.std(result.returns)))
    greedy = DreamerEvaluator(tiny_cfg(config_from, "algo.eval_episodes=2", "algo.eval_mode=greedy"), "cpu")
    agent = ModeRecorder(greedy.env.act_space)
    greedy.evaluate(agent)
    assert agent.modes == {"greedy"} and greedy.env.num_envs == 2
    cfg.algo.eval_mode = "argmax"
    with pytest.raises(ValueError, match="algo.eval_mode='argmax' is not one of"):
        DreamerEvaluator(cfg, "cpu", env=greedy.env)


def test_evaluation_defaults_follow_the_references(config_from):
    from worldmodels.evaluate import policy_settings

    atari = config_from(["+exp=dreamer_atari100k"])
    assert (atari.algo.eval_episodes, atari.algo.eval_mode) == (100, "sample")
    assert policy_settings("dreamerv3", atari, None) == ("sample", {}, 1.0)
    assert policy_settings("dreamerv3", atari, 0.0) == ("greedy", {}, 0.0)
    assert policy_settings("dreamerv3", atari, 1.0) == ("sample", {}, 1.0)
    with pytest.raises(ValueError, match="own temperature only; give --temperature 1 .* not 0.5"):
        policy_settings("dreamerv3", atari, 0.5)
    greedy = config_from(["+exp=dreamer_atari100k", "algo.eval_mode=greedy"])
    assert policy_settings("dreamerv3", greedy, None) == ("greedy", {}, 0.0)
