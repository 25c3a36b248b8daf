"""DreamerV3 offline (world model from episode folders) and behaviour cloning on its encoder."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from worldmodels.algos.dreamerv3 import bc, offline
from worldmodels.algos.dreamerv3.agent import DreamerAgent, DreamerConfig
from worldmodels.data.episodes import EpisodeError, episode_name, save_episode
from worldmodels.envs.factory import EnvSpec, make_env, random_actions
from worldmodels.record import record_episodes
from worldmodels.training.checkpoint import CheckpointError, load_checkpoint
from worldmodels.training.components import load_initial_weights
from worldmodels.training.loop import fit

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = ["model.deter=16", "model.hidden=16", "model.blocks=2", "model.stoch=4", "model.classes=4",
              "model.mlp_units=16", "model.mlp_layers=1", "model.head_units=16", "model.head_layers=1",
              "model.cnn_depth=4", "model.reward_bins=31"]
RUN = ["device=cpu", "train.progress=false", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2",
       "train.max_steps=4", "train.batch_size=2", "algo.batch_length=8"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is much faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("worldmodels.configs", version_base=None):
        return compose("config", list(overrides))


def offline_config(train_dir, eval_dir, *overrides):
    return make_config("+exp=dreamer_offline", f"data.train_dir={train_dir}", f"data.eval_dir={eval_dir}",
                       *TINY_MODEL, *RUN, *overrides)


def write_episode(directory, index, length, *, seed=0, key="vector", dim=4, actions=2, image=None,
                  continuous=False):
    """A synthetic episode: normal vectors, one-hot (or uniform) actions, zero action at the end."""
    rng = np.random.default_rng(seed)
    episode = {key: rng.normal(size=(length, dim)).astype(np.float32),
               "reward": rng.normal(size=length).astype(np.float32),
               "is_first": np.arange(length) == 0, "is_terminal": np.arange(length) == length - 1}
    if continuous:
        episode["action"] = rng.uniform(-1, 1, (length, actions)).astype(np.float32)
    else:
        episode["action"] = np.eye(actions, dtype=np.float32)[rng.integers(0, actions, length)]
    episode["action"][-1] = 0.0
    episode["reward"][0] = 0.0
    if image is not None:
        episode["image"] = rng.integers(0, 256, (length, image, image, 3), dtype=np.uint8)
    return save_episode(Path(directory) / episode_name(index, length), episode)


def pole_policy(obs):
    """Push the cart toward where the pole falls: ``angle + 0.5 angular velocity > 0``."""
    vector = obs["vector"]
    return (vector[:, 2] + 0.5 * vector[:, 3] > 0).astype(np.int64)


def record(directory, episodes, seed, policy=None, max_steps=None):
    spec = EnvSpec("classic", "cartpole", num_envs=1, seed=seed, max_episode_steps=max_steps)
    with make_env(spec) as env:
        rng = np.random.default_rng(seed)
        act = policy or (lambda obs: random_actions(env.act_space, 1, rng))
        record_episodes(env, act, episodes, directory, progress=False)
    return directory


def read_metrics(run_dir):
    with open(Path(run_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def last_value(rows, key):
    return [float(r[key]) for r in rows if r.get(key)][-1]


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    root = tmp_path_factory.mktemp("cartpole")
    return SimpleNamespace(train=record(root / "train", 5, seed=0), eval=record(root / "eval", 2, seed=1),
                           expert=record(root / "expert", 2, seed=2, policy=pole_policy, max_steps=60))


@pytest.fixture(scope="module")
def offline_run(cartpole, tmp_path_factory):
    cfg = offline_config(cartpole.train, cartpole.eval)
    run_dir = tmp_path_factory.mktemp("offline_run")
    summary = fit(cfg, offline.FACTORIES, run_dir)
    return SimpleNamespace(cfg=cfg, dir=run_dir, summary=summary, rows=read_metrics(run_dir))


@pytest.fixture
def synthetic(tmp_path):
    """Two episodes of 3 and 5 steps (vector 4, two actions)."""
    for index, length in enumerate((3, 5)):
        write_episode(tmp_path / "ep", index, length, seed=index)
    return tmp_path / "ep"


# --- offline world model --------------------------------------------------------------------------------------


def test_offline_fit_logs_both_evaluations_and_saves_spaces(offline_run):
    rows = offline_run.rows
    for key in ("eval/loss", "eval/episode_loss", "eval/vector", "eval/reward", "eval/cont", "eval/kl"):
        assert math.isfinite(last_value(rows, key)), key
    assert offline_run.summary["step"] == 4
    assert offline_run.summary["best"] == min(float(r["eval/loss"]) for r in rows if r.get("eval/loss"))
    state = load_checkpoint(offline_run.dir / "checkpoints" / "best.pt")
    spaces = state["data"]["spaces"]
    assert spaces["action"] == {"discrete": True, "size": 2}
    assert spaces["obs"] == {"vector": {"shape": [4], "dtype": "float32"}} and spaces["keys"] == ["vector"]
    assert state["config"]["model"]["train_actor"] is False


def test_step_losses_match_the_world_model_loss(synthetic):
    cfg = offline_config(synthetic, synthetic)
    agent = offline.build_model(cfg)
    batch = offline.batch_to_torch(offline.build_data(cfg, CPU).dataset.sample(3), CPU)
    torch.manual_seed(5)
    reference, _, _ = agent.world_model.loss(batch)
    torch.manual_seed(5)
    terms, _ = offline.step_losses(agent.world_model, batch)
    assert set(terms) == set(reference)
    for name, value in terms.items():
        assert value.shape == (3, 8)
        torch.testing.assert_close(value.mean(), reference[name], msg=name)


def _manual_padded(evaluator, agent, length, episodes):
    """Every real chunk unpadded through ``step_losses`` with the evaluator's noise draws."""
    wm, c = agent.world_model, agent.world_model.config
    generator = torch.Generator().manual_seed(evaluator.seed)
    chunks = [(e, start, min(length, n - start)) for e, n in enumerate(evaluator.dataset.lengths[:episodes])
              for start in range(0, n, length)]
    stream = list(evaluator.dataset.episodes())
    total, reward, count = 0.0, 0.0, 0
    for first in range(0, len(chunks), evaluator.batch_size):
        rows = chunks[first:first + evaluator.batch_size]
        noise = torch.rand((len(rows), length, c.stoch, c.classes), generator=generator)
        for row, (e, start, n) in enumerate(rows):
            part = {k: torch.from_numpy(v[:, start:start + n].copy()) for k, v in stream[e].items()}
            part["is_first"][:, 0] = True
            terms, _ = offline.step_losses(wm, part, noise=noise[row:row + 1, :n])
            total, reward = total + float(terms["total"].sum()), reward + float(terms["reward"].sum())
            count += n
    return total / count, reward / count


@pytest.mark.parametrize("max_episodes", [None, 1])
def test_padded_evaluation_weights_only_real_steps(synthetic, max_episodes):
    cfg = offline_config(synthetic, synthetic, "algo.batch_length=4", "algo.eval_batch_size=2",
                         f"algo.eval_max_episodes={'null' if max_episodes is None else max_episodes}")
    agent, evaluator = offline.build_model(cfg), offline.build_evaluator(cfg, CPU)
    with torch.no_grad():
        metrics = evaluator.padded_loss(agent)
        loss, reward = _manual_padded(evaluator, agent, 4, max_episodes or 2)
        again = evaluator.padded_loss(agent)
    assert metrics["eval/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["eval/reward"] == pytest.approx(reward, rel=1e-5)
    assert again == metrics  # the same latent samples at every evaluation


def test_episode_loss_carries_state_across_chunks(synthetic):
    cfg = offline_config(synthetic, synthetic, "algo.eval_chunk=2")
    agent, evaluator = offline.build_model(cfg), offline.build_evaluator(cfg, CPU)
    wm, c = agent.world_model, agent.world_model.config
    with torch.no_grad():
        chunked = evaluator.episode_loss(agent)
        generator, total = torch.Generator().manual_seed(evaluator.seed), 0.0
        for episode in evaluator.dataset.episodes():
            tensors = {k: torch.from_numpy(v) for k, v in episode.items()}
            noise = torch.rand((1, tensors["is_first"].shape[1], c.stoch, c.classes), generator=generator)
            total += float(offline.step_losses(wm, tensors, noise=noise)[0]["total"].sum())
    assert chunked["eval/episode_steps"] == 8
    assert chunked["eval/episode_loss"] == pytest.approx(total / 8, rel=1e-5)


def test_resume_matches_an_uninterrupted_run(synthetic, tmp_path):
    cfg = offline_config(synthetic, synthetic)
    fit(cfg, offline.FACTORIES, tmp_path / "whole")
    fit(offline_config(synthetic, synthetic, "train.stop_at=2"), offline.FACTORIES, tmp_path / "resumed")
    fit(cfg, offline.FACTORIES, tmp_path / "resumed", resume=True)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert resumed["step"] == whole["step"] == 4
    assert resumed["data"]["dataset"] == whole["data"]["dataset"]
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)


def test_offline_data_state_restores_sampling(synthetic):
    data = offline.build_data(offline_config(synthetic, synthetic), CPU)
    state = data.state_dict()
    first = data.next_batch()
    data.load_state_dict(state)
    again = data.next_batch()
    for key, value in first.items():
        assert torch.equal(value, again[key]), key


def test_images_are_cropped_kept_uint8_and_give_an_openloop_gif(tmp_path):
    for index, length in enumerate((6, 7)):
        write_episode(tmp_path / "img", index, length, seed=index, image=20)
    cfg = offline_config(tmp_path / "img", tmp_path / "img", "data.crop=16", "data.crop_mode=random",
                         "algo.batch_length=4", "algo.openloop_context=2", "algo.openloop_sequences=2")
    agent, data = offline.build_model(cfg), offline.build_data(cfg, CPU)
    assert agent.world_model.encoder.cnn_keys == ["image"] and agent.obs_space["image"][0] == (16, 16, 3)
    batch = data.next_batch()
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 4, 16, 16, 3)
    evaluator = offline.build_evaluator(cfg, CPU)
    with torch.no_grad():
        assert math.isfinite(evaluator.evaluate(agent)["eval/image"])
        paths = evaluator.write_media(agent, tmp_path / "media", 3)
    import imageio.v3 as iio

    assert [p.name for p in paths] == ["openloop_step000003.gif"]
    assert iio.imread(paths[0], index=None).shape[0] == 6  # min(episode lengths, openloop_length) frames


def test_standardize_is_refused_with_the_reason(synthetic):
    cfg = offline_config(synthetic, synthetic, "data.standardize=image")
    with pytest.raises(ValueError, match=r"data.standardize='image'.*uint8"):
        offline.build_data(cfg, CPU)


@pytest.mark.parametrize("which", ["train", "eval"])
def test_missing_or_empty_dirs_name_the_record_command(synthetic, tmp_path, which):
    (tmp_path / "empty").mkdir()
    for bad, problem in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "no episode files")):
        dirs = {"train": synthetic, "eval": synthetic, which: bad}
        cfg = offline_config(dirs["train"], dirs["eval"])
        with pytest.raises(FileNotFoundError) as error:
            offline.build_evaluator(cfg, CPU)
        message = str(error.value)
        assert f"data.{which}_dir={bad}" in message and problem in message
        assert f"python -m worldmodels.record --suite classic --task cartpole --episodes 50 --out {bad}" in message


def test_eval_dir_that_disagrees_names_file_and_key(synthetic, tmp_path):
    wide = write_episode(tmp_path / "wide", 0, 4, dim=5)
    with pytest.raises(EpisodeError, match=rf"{wide}: key 'vector': step shape/dtype \(5,\)"):
        offline.build_evaluator(offline_config(synthetic, tmp_path / "wide"), CPU)
    renamed = write_episode(tmp_path / "renamed", 0, 4, key="state")
    with pytest.raises(EpisodeError, match=rf"{renamed}: key 'vector': missing"):
        offline.build_evaluator(offline_config(synthetic, tmp_path / "renamed"), CPU)
    three = write_episode(tmp_path / "three", 0, 4, actions=3)
    with pytest.raises(EpisodeError, match=rf"{three}: key 'action': has 3 dimensions"):
        offline.build_evaluator(offline_config(synthetic, tmp_path / "three"), CPU)


@pytest.mark.parametrize("where", ["train", "eval"])
def test_on_error_skip_passes_over_a_bad_file_that_sorts_first(tmp_path, where):
    """The spaces are read from the first readable episode, honouring data.on_error."""
    dirs = {name: tmp_path / name for name in ("train", "eval")}
    for directory in dirs.values():
        for index, length in ((1, 6), (2, 7)):
            write_episode(directory, index, length, seed=index)
    bad = dirs[where] / episode_name(0, 5)
    bad.write_bytes(b"not an npz")
    with pytest.raises(EpisodeError, match=re.escape(str(bad))):
        offline.build_evaluator(offline_config(dirs["train"], dirs["eval"]), CPU)
    cfg = offline_config(dirs["train"], dirs["eval"], "data.on_error=skip")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data, evaluator = offline.build_data(cfg, CPU), offline.build_evaluator(cfg, CPU)
    assert offline.build_model(cfg) is not None and data is not None and evaluator is not None
    if where == "train":
        with pytest.warns(UserWarning, match="skipped 1 unreadable"):
            steps = bc.StepData(dirs["train"], *offline.offline_spaces(cfg), ["vector"], on_error="skip")
        assert len(steps) == 5 + 6


def test_discrete_is_decided_from_one_hot_rows(tmp_path):
    onehot = {"action": np.array([[0, 1], [1, 0], [0, 0]], np.float32), "is_last": np.array([0, 0, 1], bool)}
    assert offline.decide_discrete(onehot, "auto", "x") is True
    assert offline.decide_discrete(onehot, False, "x") is False
    continuous = {"action": np.array([[0.3, -1], [1, 0], [0, 0]], np.float32), "is_last": np.array([0, 0, 1], bool)}
    assert offline.decide_discrete(continuous, "auto", "x") is False
    zero_mid = {"action": np.array([[0, 1], [0, 0], [0, 0]], np.float32), "is_last": np.array([0, 0, 1], bool)}
    assert offline.decide_discrete(zero_mid, "auto", "x") is False
    with pytest.raises(EpisodeError, match="x: key 'action': data.discrete=true"):
        offline.decide_discrete(continuous, True, "x")
    write_episode(tmp_path / "cont", 0, 5, continuous=True, actions=3)
    obs_space, act_space = offline.offline_spaces(offline_config(tmp_path / "cont", tmp_path / "cont"))
    assert (act_space.discrete, act_space.size) == (False, 3) and obs_space == {"vector": ((4,), np.float32)}


# --- behaviour cloning ----------------------------------------------------------------------------------------


def bc_config(checkpoint, train_dir, *overrides):
    return make_config("+exp=dreamer_bc", f"checkpoint={checkpoint}", f"data.train_dir={train_dir}",
                       "device=cpu", "train.progress=false", "train.log_every=1", "train.eval_every=2",
                       "train.max_steps=4", "train.batch_size=8", "algo.eval_episodes=2",
                       "env.max_episode_steps=30", "bc.units=16", "bc.layers=1", *overrides)


def test_bc_trains_the_head_and_leaves_the_encoder_frozen(offline_run, cartpole, tmp_path):
    checkpoint = offline_run.dir / "checkpoints" / "best.pt"
    cfg = bc_config(checkpoint, cartpole.expert, f"data.eval_dir={cartpole.eval}")
    fit(cfg, bc.FACTORIES, tmp_path)
    world, policy = load_checkpoint(checkpoint)["model"], load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    encoder = {k: v for k, v in policy["model"].items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(v, world[f"world_model.{k}"]) for k, v in encoder.items())
    rows = read_metrics(tmp_path)
    for key in ("eval/return_mean", "eval/return_std", "eval/random_return_mean", "eval/nll"):
        assert math.isfinite(last_value(rows, key)), key
    assert last_value(rows, "eval/neg_return") == -last_value(rows, "eval/return_mean")
    assert 0.0 <= last_value(rows, "eval/accuracy") <= 1.0
    assert last_value(rows, "eval/random_return_mean") >= 1.0
    model = bc.build_model(cfg)
    model.train()
    assert not model.encoder.training and not any(p.requires_grad for p in model.encoder.parameters())


def bc_rank_worker(rank: int, world_size: int, port: int, checkpoint: str, train_dir: str, run_dir: str) -> None:
    """``fit`` of behaviour cloning on this rank (under torchrun's variables); its policy's
    parameters saved."""
    import os
    from dataclasses import replace

    from worldmodels.training import distributed

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    built = {}

    def keep(cfg):
        built["model"] = bc.build_model(cfg)
        return built["model"]

    try:
        fit(bc_config(checkpoint, train_dir, "train.distributed.timeout_s=120"), replace(bc.FACTORIES, model=keep),
            Path(run_dir))
        torch.save({name: p.detach().clone() for name, p in built.pop("model").named_parameters()},
                   Path(run_dir) / f"rank{rank}_params.pt")
        distributed.finish()
    finally:
        distributed.cleanup()


def test_bc_runs_data_parallel_with_the_same_head_on_every_rank(offline_run, cartpole, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checkpoint = offline_run.dir / "checkpoints" / "best.pt"
    mp.spawn(bc_rank_worker, args=(2, port, str(checkpoint), str(cartpole.expert), str(tmp_path)), nprocs=2,
             join=True)
    first, second = (torch.load(tmp_path / f"rank{rank}_params.pt", weights_only=True) for rank in range(2))
    cfg = bc_config(checkpoint, cartpole.expert)
    torch.manual_seed(int(cfg.seed))
    initial = dict(bc.build_model(cfg).named_parameters())
    world = load_checkpoint(checkpoint)["model"]
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
        if name.startswith("encoder."):
            assert torch.equal(value, world[f"world_model.{name}"]), name   # frozen
        else:
            assert not torch.equal(value, initial[name].detach()), f"{name} was never updated"
    steps = [int(r["step"]) for r in read_metrics(tmp_path) if r.get("train/loss")]
    assert steps == [1, 2, 3, 4]   # one row per step, from rank 0


def test_bc_loss_and_actions():
    encoder = DreamerAgent(DreamerConfig(deter=16, hidden=16, stoch=4, classes=4, mlp_units=8, mlp_layers=1),
                           {"vector": ((4,), np.float32)}, SimpleNamespace(discrete=False, size=2)).world_model.encoder
    obs = {"vector": torch.randn(5, 4), "action": torch.rand(5, 2) * 2 - 1}
    for kind in ("nll", "mse"):
        policy = bc.BCPolicy(encoder, SimpleNamespace(discrete=False, size=2), ["vector"], units=8, layers=1,
                             continuous_loss=kind)
        loss, metrics = policy.compute_loss(obs)
        assert metrics["bc/nll"] == loss
        out = policy(obs)
        if kind == "nll":
            dist = bc.BoundedNormal(*out.chunk(2, -1), 0.1, 1.0)
            torch.testing.assert_close(loss, -dist.log_prob(obs["action"]).mean())
        else:
            torch.testing.assert_close(loss, (out - obs["action"]).square().mean())
        action = policy.act({"vector": obs["vector"].numpy()})
        assert action.shape == (5, 2) and action.dtype == np.float32
        assert kind == "mse" or np.abs(action).max() <= 1.0
    with pytest.raises(ValueError, match="continuous_loss must be nll or mse"):
        bc.BCPolicy(encoder, SimpleNamespace(discrete=False, size=2), ["vector"], continuous_loss="l1")


def test_bc_key_order_is_checked_against_the_encoder():
    assert bc.resolve_key_order(["image"], ["a", "b"], None) == ["image", "a", "b"]
    assert bc.resolve_key_order(["image"], ["a", "b"], ["a", "image", "b"]) == ["image", "a", "b"]
    with pytest.raises(ValueError, match="bc.key_order puts 'b' where the checkpoint's encoder reads 'a'"):
        bc.resolve_key_order(["image"], ["a", "b"], ["image", "b", "a"])
    with pytest.raises(ValueError, match="bc.key_order names 'c', which the checkpoint's encoder does not read"):
        bc.resolve_key_order(["image"], ["a", "b"], ["image", "a", "b", "c"])
    with pytest.raises(ValueError, match="bc.key_order leaves out 'image'"):
        bc.resolve_key_order(["image"], ["a", "b"], ["a", "b"])


def test_bc_mismatched_keys_raise_naming_the_key(offline_run, cartpole, tmp_path):
    checkpoint = offline_run.dir / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match="bc.key_order names 'state'"):
        bc.build_model(bc_config(checkpoint, cartpole.expert, "bc.key_order=[state]"))
    renamed = write_episode(tmp_path / "renamed", 0, 4, key="state")
    with pytest.raises(EpisodeError, match=rf"{renamed}: key 'vector': missing; the checkpoint's encoder reads it"):
        bc.build_data(bc_config(checkpoint, tmp_path / "renamed"), CPU)
    wide = write_episode(tmp_path / "wide", 0, 4, dim=5)
    with pytest.raises(EpisodeError, match=rf"{wide}: key 'vector': step shape/dtype \(5,\)"):
        bc.build_data(bc_config(checkpoint, tmp_path / "wide"), CPU)


def test_bc_checkpoint_errors_and_online_spaces(cartpole, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint is not set"):
        bc.build_model(make_config("+exp=dreamer_bc"))
    with pytest.raises(CheckpointError, match="does not exist"):
        bc.build_model(bc_config(tmp_path / "none.pt", cartpole.expert))
    online = make_config("+exp=dreamer_cartpole")  # no spaces in the data state: they come from the env
    obs_space, act_space = bc.checkpoint_spaces({"data": {}}, online)
    assert obs_space["vector"][0] == (4,) and (act_space.discrete, act_space.size) == (True, 2)


def test_cli_offline_then_bc(cartpole, tmp_path):
    """The entry point finds both algorithms; BC reads the run's resolved_config.yaml."""
    def train(*args):
        result = subprocess.run([sys.executable, "-m", "worldmodels.train", *args, f"run.root={tmp_path}",
                                 "device=cpu", "train.progress=false", "train.max_steps=2", "train.eval_every=2"],
                                cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return Path(result.stdout.split("run directory: ")[1].split("\n")[0])

    run = train("+exp=dreamer_offline", f"data.train_dir={cartpole.train}", f"data.eval_dir={cartpole.eval}",
                *TINY_MODEL, "train.batch_size=2", "algo.batch_length=8")
    assert (run / "resolved_config.yaml").is_file()
    bc_run = train("+exp=dreamer_bc", f"checkpoint={run}/checkpoints/best.pt", f"data.train_dir={cartpole.expert}",
                   "algo.eval_episodes=1", "env.max_episode_steps=20", "bc.units=8", "bc.layers=1")
    assert math.isfinite(last_value(read_metrics(bc_run), "eval/random_return_mean"))


def test_an_actor_cloned_offline_starts_an_online_run_for_fine_tuning(cartpole, tmp_path):
    from worldmodels.algos.dreamerv3 import experiment as online

    cfg = offline_config(cartpole.expert, cartpole.eval, "model.bc_scale=1.0")
    fit(cfg, offline.FACTORIES, tmp_path / "offline")
    rows = read_metrics(tmp_path / "offline")
    nll = [float(r["train/ac/bc_nll"]) for r in rows if r.get("train/ac/bc_nll")]
    assert len(nll) == 4 and all(0 < v < 5 for v in nll)                      # the actor cloned the expert
    saved = load_checkpoint(tmp_path / "offline" / "checkpoints" / "last.pt")["model"]
    online_cfg = make_config("+exp=dreamer_cartpole", *TINY_MODEL, *RUN, f"init.path={tmp_path / 'offline'}",
                             "algo.prefill=40", "algo.batch_length=8", "algo.eval_episodes=1", "train.max_steps=1",
                             "train.eval_every=1", "train.checkpoint_every=1")
    model = online.FACTORIES.model(online_cfg)
    load_initial_weights(model, str(online_cfg.init.path), None)                 # what fit does with init.path
    for name, value in model.state_dict().items():                               # world model and actor both
        torch.testing.assert_close(value, saved[name], msg=name)
