"""IRIS end to end: the actor-critic, the agent's losses and gradients, online data, the CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import gymnasium
import numpy as np
import pytest
import torch

from worldmodels.algos.iris.actor_critic import IrisActorCritic, IrisActorCriticConfig
from worldmodels.algos.iris.agent import COMPONENTS, IrisAgent
from worldmodels.algos.iris.world_model import IrisWorldModelConfig
from worldmodels.envs.factory import EnvSpec, make_env
from worldmodels.nn.tokenizer import TokenizerConfig
from worldmodels.rl.component_data import FRAME_KEYS, ComponentData, ComponentWindow, transitions
from worldmodels.rl.replay import Replay
from worldmodels.rl.selectors import Balanced

TOY_ID = "WMIrisToy-v0"


class ToyEnv(gymnasium.Env):
    """16x16 RGB frames brightening with time; 3 actions; reward 1 for action 1; ends after 6 steps."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, render_mode=None):
        self.observation_space = gymnasium.spaces.Box(0, 255, (16, 16, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.t = 0

    def _frame(self):
        return np.full((16, 16, 3), 30 * self.t, np.uint8)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), float(action == 1), self.t >= 6, False, {}


if TOY_ID not in gymnasium.registry:
    gymnasium.register(TOY_ID, entry_point=ToyEnv)

TINY = ["env.suite=gym", f"env.task={TOY_ID}", "env.size=[16,16]", "env.render_image=false", "device=cpu",
        "model.tokenizer.ch=4", "model.tokenizer.z_channels=8", "model.tokenizer.vocab_size=16",
        "model.tokenizer.ch_mult=[1,1,1,1]", "model.tokenizer.num_res_blocks=1",
        "model.world_model.max_blocks=5", "model.world_model.num_layers=1", "model.world_model.num_heads=1",
        "model.world_model.embed_dim=16", "model.actor_critic.conv_channels=[4,4]", "model.actor_critic.lstm_dim=16",
        "model.actor_critic.imagine_horizon=4", "model.actor_critic.burn_in=2",
        "algo.batch_sizes={tokenizer:4,world_model:2,actor_critic:2}", "algo.sequence_length=4",
        "algo.collect_every=2", "algo.collect_steps=12", "algo.eval_episodes=2", "algo.media_length=4"]


def tiny_agent(dead_threshold: float = 0.0) -> IrisAgent:
    tok = TokenizerConfig(resolution=16, z_channels=8, ch=4, ch_mult=(1, 1, 1, 1), num_res_blocks=1,
                          attn_resolutions=(), vocab_size=16, dead_threshold=dead_threshold)
    wm = IrisWorldModelConfig(num_actions=3, vocab_size=16, tokens_per_obs=tok.tokens_per_frame, max_blocks=5,
                              num_layers=1, num_heads=1, embed_dim=16)
    ac = IrisActorCriticConfig(num_actions=3, resolution=16, conv_channels=(4, 4), lstm_dim=16,
                               imagine_horizon=4, burn_in=2)
    return IrisAgent(tok, wm, ac)


def toy_data(starts=None, seed=0) -> ComponentData:
    env = make_env(EnvSpec("gym", TOY_ID, num_envs=2, seed=seed, size=(16, 16)))
    starts = starts or dict.fromkeys(COMPONENTS, 0)
    shapes = {"tokenizer": (4, 1, "start", ("observations", "mask_padding")),
              "world_model": (2, 4, "start", FRAME_KEYS),
              "actor_critic": (3, 3, "end", ("observations", "mask_padding"))}
    windows = {name: ComponentWindow(*shape, starts[name], Balanced()) for name, shape in shapes.items()}
    return ComponentData(env, windows, actor="actor_critic", collect_every=2, collect_steps=10,
                         max_env_steps=10_000, capacity=10_000, seed=seed, epsilon=0.0, temperature=1.0)


def grads_by_component(agent: IrisAgent) -> dict[str, bool]:
    return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(agent, name).parameters())
            for name in COMPONENTS}


def test_actor_critic_carries_and_masks_its_lstm_state():
    ac = IrisActorCritic(IrisActorCriticConfig(num_actions=3, resolution=16, conv_channels=(4, 4), lstm_dim=8))
    frames = torch.rand(2, 3, 16, 16)
    logits, value = ac.act(frames)
    assert logits.shape == (2, 3) and value.shape == (2,) and ac.hx.shape == (2, 8)
    before = ac.hx.clone()
    ac.act(frames, mask=torch.tensor([True, False]))
    assert not torch.equal(ac.hx[0], before[0]) and torch.equal(ac.hx[1], before[1])
    with pytest.raises(ValueError, match="frames must be"):
        ac.act(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="imagine_horizon"):
        IrisActorCriticConfig(num_actions=2, imagine_horizon=1)


def test_each_component_loss_is_finite_with_gradients_only_in_that_component():
    torch.manual_seed(0)
    agent, data = tiny_agent(), toy_data()
    data.bind_model(agent)
    batch = data.next_batch()
    assert batch["tokenizer"]["observations"].shape == (4, 1, 3, 16, 16)
    assert batch["world_model"]["actions"].shape == (2, 4) and batch["actor_critic"]["mask_padding"][:, -1].all()
    for name in COMPONENTS:
        agent.zero_grad(set_to_none=True)
        loss, metrics = agent.compute_loss({name: batch[name]})
        assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
        loss.backward()
        assert grads_by_component(agent) == {n: n == name for n in COMPONENTS}, name
    agent.zero_grad(set_to_none=True)
    loss, metrics = agent.compute_loss(batch)
    loss.backward()
    assert all(grads_by_component(agent).values())
    assert {"tokenizer/psnr", "world_model/loss_obs", "actor_critic/imagined_return", "actor_critic/entropy",
            "actor_critic/loss_values"} <= set(metrics)
    assert agent.world_model.training and agent.tokenizer.training  # restored after imagination


def test_imagination_shapes_and_frozen_world_model():
    torch.manual_seed(0)
    agent, data = tiny_agent(), toy_data()
    traj = agent.actor_critic.imagine(data.next_batch()["actor_critic"], agent.dream())
    assert traj.logits.shape == (3, 4, 3) and traj.values.shape == (3, 4) and traj.actions.shape == (3, 4)
    assert traj.rewards.shape == (3, 3) and traj.ends.dtype == torch.bool and traj.frames.shape == (3, 4, 3, 16, 16)
    assert traj.logits.requires_grad and not traj.frames.requires_grad
    with pytest.raises(ValueError, match="max_blocks"):
        IrisAgent(agent.tokenizer.config, agent.world_model.config,
                  IrisActorCriticConfig(num_actions=3, resolution=16, conv_channels=(4, 4), imagine_horizon=6))


def test_start_schedule_trains_only_started_components_and_collects_randomly_first():
    torch.manual_seed(0)
    agent = tiny_agent()
    data = toy_data(starts={"tokenizer": 1, "world_model": 2, "actor_critic": 3})
    data.bind_model(agent)
    calls = []
    policy = agent.policy
    agent.policy = lambda *a, **k: calls.append(1) or policy(*a, **k)
    expected = [set(), {"tokenizer"}, {"tokenizer", "world_model"}, set(COMPONENTS)]
    for update, started in enumerate(expected):
        if update == 3:
            assert not calls  # random actions until the actor-critic starts
        batch = data.next_batch()
        assert {k for k, v in batch.items() if v is not None} == started
        agent.zero_grad(set_to_none=True)
        loss, metrics = agent.compute_loss(batch)
        loss.backward()
        assert {k for k, v in grads_by_component(agent).items() if v} == started
        assert metrics["active/tokenizer"] == float("tokenizer" in started)
    data.next_batch()  # update 4 collects with the agent
    assert calls


def test_policy_shapes_state_reset_and_uniform_epsilon():
    torch.manual_seed(0)
    agent = tiny_agent().eval()
    with torch.no_grad():
        agent.actor_critic.actor.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    n = 3000
    obs = {"image": np.zeros((n, 16, 16, 3), np.uint8), "is_first": np.ones(n, bool)}
    greedy, state = agent.policy(obs, None, "greedy")
    assert greedy.shape == (n,) and greedy.dtype == np.int64 and (greedy == 0).all()
    assert state[0].shape == (n, 16)
    random, _ = agent.policy(obs, state, "explore", epsilon=1.0)
    assert (agent.policy(obs, state, "sample", epsilon=1.0)[0] == 0).all()   # epsilon only explores
    counts = np.bincount(random, minlength=3) / n
    assert np.abs(counts - 1 / 3).max() < 0.04
    obs2 = {"image": np.zeros((2, 16, 16, 3), np.uint8), "is_first": np.array([True, False])}
    _, s1 = agent.policy(obs2, (torch.ones(2, 16), torch.ones(2, 16)))
    _, s0 = agent.policy(obs2, (torch.zeros(2, 16), torch.zeros(2, 16)))
    assert torch.allclose(s1[0][0], s0[0][0]) and not torch.allclose(s1[0][1], s0[0][1])


def test_layout_and_balanced_sampling():
    def episode(length):
        t = np.arange(length)
        return {"image": np.repeat(t[:, None, None, None], 4, 1).repeat(4, 2).repeat(3, 3).astype(np.uint8),
                "action": np.eye(2, dtype=np.float32)[t % 2], "reward": (t > 0).astype(np.float32),
                "is_first": t == 0, "is_terminal": t == length - 1, "is_last": t == length - 1}

    replay = Replay(10_000, seed=0, selectors={"balanced": Balanced()})
    replay.add_episode(episode(4))
    layout = transitions(replay.sample(1, 4, selector="balanced", align="start", margin=1), 3)
    layout = {k: v[0][layout["mask_padding"][0]] for k, v in layout.items()}
    first = int(layout["observations"][0, 0, 0, 0])
    assert layout["observations"].shape[1:] == (3, 4, 4)
    assert list(layout["actions"]) == [t % 2 for t in range(first, 3)]
    assert list(layout["ends"]) == [t == 2 for t in range(first, 3)] and (layout["rewards"] == 1).all()
    replay.add_episode(episode(201))
    replay.add_episode(episode(3))
    batch = transitions(replay.sample(400, 5, selector="balanced", align="end"), 5)
    assert batch["mask_padding"][:, -1].all()
    # balanced: each episode a third of the rows; the 3-step episode's windows are all
    # short, 3 of the 4 anchors of the 4-step one too: 1/3 + 1/4 = 0.58 (uniform over
    # steps would give 7/208)
    short = batch["mask_padding"].sum(1) <= 3
    assert 0.48 < short.mean() < 0.68
    ahead = transitions(replay.sample(50, 6, selector="balanced", align="start", margin=1), 5)
    assert ahead["mask_padding"][:, 0].all()


def test_data_state_dict_round_trip(tmp_path):
    agent = tiny_agent()
    data = toy_data()
    data.bind_model(agent, tmp_path)
    for _ in range(3):
        data.next_batch()
    state = data.state_dict()
    resumed = toy_data()
    resumed.bind_model(agent, tmp_path)
    resumed.load_state_dict(state)
    assert resumed.collector.env_steps == data.collector.env_steps and resumed.updates == data.updates
    assert resumed.replay.num_steps == data.replay.num_steps > 0
    expected, got = data.next_batch(), resumed.next_batch()
    for name in COMPONENTS:
        for key in expected[name]:
            torch.testing.assert_close(got[name][key], expected[name][key])
    metrics = data.log_metrics()
    assert metrics["collect/return_min"] <= metrics["collect/return_mean"] <= metrics["collect/return_max"] <= 6


def test_iris_experiments_compose_into_agent_configs(config_from):
    from worldmodels.algos.iris.experiment import agent_configs

    cfg = config_from(["+exp=iris_atari"])
    assert cfg.algo.name == "iris" and cfg.env.action_repeat == 4 and tuple(cfg.env.size) == (64, 64)
    tok, wm, ac = agent_configs(cfg, (64, 64, 3), 6)
    assert (tok.tokens_per_frame, tok.vocab_size, tok.z_channels) == (16, 512, 512)
    assert (wm.max_blocks, wm.num_layers, wm.embed_dim, wm.num_actions) == (20, 10, 256, 6)
    assert (ac.imagine_horizon, ac.burn_in, ac.lstm_dim, ac.features) == (20, 20, 512, 1024)
    assert cfg.algo.max_env_steps == 100_000 and cfg.train.max_steps == 120_000
    assert dict(cfg.algo.starts) == {"tokenizer": 1000, "world_model": 5000, "actor_critic": 10000}
    tiny = config_from(["+exp=iris_tiny"])
    assert agent_configs(tiny, (32, 32, 3), 2)[0].tokens_per_frame == 16


SCRIPT = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_iris_agent  # registers {TOY_ID}
from worldmodels.train import cli
cli()
"""


def train_stop_resume(tmp_path, exp: str, tiny: list[str]) -> tuple[Path, list[dict[str, str]]]:
    """Train ``exp`` with the ``tiny`` overrides on the toy env to step 3 of 6 in one process,
    resume to step 6 in another; the run dir and its CSV rows."""
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT)
    overrides = [f"+exp={exp}", *tiny, "train.max_steps=6", "train.stop_at=3", "train.log_every=3",
                 "train.eval_every=3", "train.checkpoint_every=3", "train.progress=false",
                 "algo.starts={tokenizer:0,world_model:1,actor_critic:2}", f"run.root={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, str(script), *overrides], check=False, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    (run_dir,) = [p for day in tmp_path.iterdir() if day.is_dir() for p in day.iterdir()]
    assert (run_dir / "checkpoints" / "last.pt").is_file() and list((run_dir / "replay").glob("*.npz"))
    second = subprocess.run([sys.executable, str(script), f"+resume={run_dir}"], check=False, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == 0, second.stderr
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r.get("train/loss")]
    assert [r["step"] for r in train] == ["3", "6"]
    assert all(float(r["train/active/actor_critic"]) == 1.0 for r in train)
    media = {p.name for p in (run_dir / "media").iterdir()}
    assert {"reconstruction_step000006.png", "imagination_step000006.gif"} <= media
    return run_dir, rows


def test_cli_trains_stops_and_resumes(tmp_path):
    run_dir, rows = train_stop_resume(tmp_path, "iris_tiny", TINY)
    assert [r["step"] for r in rows if r.get("eval/return_mean")] == ["3", "6"]
    check_evaluation_protocol(run_dir, "iris", 0.5)


def check_evaluation_protocol(run_dir: Path, algo: str, temperature: float) -> None:
    """``python -m worldmodels.evaluate`` on a finished run: the final checkpoint, the
    family's test temperature, per-episode returns in JSON; ``--random`` on the same env."""
    import json

    from worldmodels.evaluate import main

    result = main([str(run_dir), "--episodes", "5", "--num-envs", "2"])
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved["algo"] == algo and saved["step"] == 6 and saved["temperature"] == temperature
    assert saved["checkpoint"].endswith("checkpoints/last.pt") and len(saved["returns"]) == 5
    assert saved["returns"] == result["returns"] and saved["lengths"] == [6] * 5   # the toy episodes last 6 steps
    assert saved["return_mean"] == pytest.approx(np.mean(saved["returns"]))
    random = main([str(run_dir), "--episodes", "4", "--random", "--out", str(run_dir / "random.json")])
    assert random["policy"] == "random" and random["temperature"] is None and len(random["returns"]) == 4


def test_evaluator_scores_the_models_on_a_held_out_episode(config_from):
    from worldmodels.algos.iris.experiment import IrisEvaluator

    cfg = config_from(["+exp=iris_tiny", *TINY, "algo.held_out_frames=7", "algo.eval_episodes=1"])
    torch.manual_seed(0)
    agent = tiny_agent().eval()
    evaluator = IrisEvaluator(cfg, "cpu")
    metrics = evaluator.evaluate(agent)
    episode = evaluator.episode
    assert len(episode["image"]) == 6 == metrics["eval/length_mean"]  # the toy episode ends after 6 steps
    assert episode["end"].tolist() == [False] * 5 + [True]
    assert episode["reward"].tolist() == [float(a == 1) for a in episode["action"]]
    with torch.no_grad():
        tokens = agent.tokenizer.encode(torch.from_numpy(episode["image"]).movedim(-1, 1)).tokens
        recon = agent.tokenizer.encode_decode(torch.from_numpy(episode["image"]).movedim(-1, 1))
    truth = torch.from_numpy(episode["image"]).movedim(-1, 1).float() / 255
    mse = (recon - truth).square().flatten(1).mean(1)
    assert metrics["eval/tokenizer_psnr"] == pytest.approx(float((-10 * torch.log10(mse)).mean()), rel=1e-5)
    # windows of max_blocks = 5 frames: frames 0-4 and 5 (+ 4 padding); the copy baseline
    # compares each frame's tokens with the previous frame's inside a window
    same = tokens[1:5] == tokens[0:4]
    assert metrics["eval/wm_copy_token_accuracy"] == pytest.approx(float(same.float().mean()), rel=1e-6)
    for name in ("next_frame_token_accuracy", "reward_accuracy", "end_accuracy"):
        assert 0.0 <= metrics[f"eval/wm_{name}"] <= 1.0
    evaluator.close()


def test_param_groups_decay_only_layer_weights_and_clip_per_component():
    agent = tiny_agent()
    groups = agent.param_groups()
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"tokenizer", "world_model", "world_model/no_decay", "actor_critic"}
    assert by_name["world_model"]["weight_decay"] == 0.01 and by_name["world_model/no_decay"]["weight_decay"] == 0.0
    decayed = {id(p) for p in by_name["world_model"]["params"]}
    wm = agent.world_model
    embeddings = [m.weight for m in wm.modules() if isinstance(m, torch.nn.Embedding)]
    norms = [p for m in wm.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()]
    linears = [m.weight for m in wm.modules() if isinstance(m, torch.nn.Linear)]
    assert embeddings and norms and linears
    assert not decayed & {id(p) for p in embeddings + norms}
    assert {id(p) for p in linears} <= decayed
    every = [p for g in groups for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(agent.parameters()))
    assert {g["clip_group"] for g in groups if g["name"].startswith("world_model")} == {"world_model"}


def test_component_checkpoints_and_a_warm_start_from_the_tokenizer_only(config_from, tmp_path):
    from worldmodels.algos.iris.experiment import FACTORIES, build_model
    from worldmodels.training.checkpoint import load_checkpoint
    from worldmodels.training.loop import fit
    from worldmodels.utils.seeding import seed_everything

    base = ["+exp=iris_tiny", *TINY, "train.max_steps=4", "train.eval_every=4", "train.checkpoint_every=2",
            "train.log_every=2", "train.progress=false", "algo.starts={tokenizer:0,world_model:1,actor_critic:2}"]
    fit(config_from([*base, "train.snapshot_every=4"]), FACTORIES, tmp_path / "first")
    ckpt = tmp_path / "first" / "checkpoints"
    for name in COMPONENTS:
        assert (ckpt / name / "last.pt").is_file() and (ckpt / name / "step_0000004.pt").is_file()
        assert not (ckpt / name / "step_0000002.pt").exists()
    saved = load_checkpoint(ckpt / "tokenizer" / "last.pt")
    assert saved["component"] == "tokenizer" and saved["step"] == 4

    # a new run takes the tokenizer and nothing else, and (not started) keeps it as loaded
    second = config_from([*base, "train.max_steps=2", f"init.path={tmp_path / 'first'}",
                          "init.components=[tokenizer]", "algo.starts={tokenizer:100,world_model:0,actor_critic:100}"])
    fit(second, FACTORIES, tmp_path / "second")
    seed_everything(int(second.seed))
    fresh = build_model(second)           # the second run's initial weights
    first_model, second_model = build_model(second), build_model(second)
    first_model.load_state_dict(load_checkpoint(ckpt / "last.pt")["model"])
    second_model.load_state_dict(load_checkpoint(tmp_path / "second" / "checkpoints" / "last.pt")["model"])
    for key, value in first_model.tokenizer.state_dict().items():
        assert torch.equal(second_model.tokenizer.state_dict()[key], value), key
    untouched = fresh.actor_critic.state_dict()
    assert all(torch.equal(second_model.actor_critic.state_dict()[k], v) for k, v in untouched.items())
    assert not all(torch.equal(second_model.actor_critic.state_dict()[k], v)
                   for k, v in first_model.actor_critic.state_dict().items())


def test_world_model_batches_leave_the_tokenizer_statistics_alone():
    agent = tiny_agent(dead_threshold=0.5)  # code usage counted in training mode
    agent.train()
    before = agent.tokenizer.quantizer.ema_count.clone()
    batch = {"world_model": {"observations": torch.randint(0, 256, (2, 4, 3, 16, 16), dtype=torch.uint8),
                             "actions": torch.zeros(2, 4, dtype=torch.long), "rewards": torch.zeros(2, 4),
                             "ends": torch.zeros(2, 4, dtype=torch.bool),
                             "mask_padding": torch.ones(2, 4, dtype=torch.bool)}}
    agent.compute_loss(batch)
    assert torch.equal(agent.tokenizer.quantizer.ema_count, before) and agent.tokenizer.training
