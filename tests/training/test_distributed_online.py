"""Online DreamerV3 under torchrun: env seeds and replay shards per rank, the train ratio
on global env steps, the same updates on every rank, exact resume at the same world size.

Two CPU processes on gloo, one thread each, a free port per test, a tiny agent on
CartPole (gymnasium backend)."""

import csv
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from worldmodels.train import precheck
from worldmodels.training import distributed
from worldmodels.training.loop import _own_rank_state

SEED, BATCH, LENGTH, RATIO, PREFILL, UPDATES = 3, 2, 8, 4, 30, 12
TINY_DREAMER = ["+exp=dreamer_cartpole", "model.deter=16", "model.hidden=16", "model.blocks=1", "model.stoch=4",
                "model.classes=4", "model.mlp_units=16", "model.head_units=16", "model.horizon=3",
                "model.reward_bins=17", "device=cpu", "env.backend=gymnasium", f"train.max_steps={UPDATES}",
                f"train.batch_size={BATCH}", f"algo.batch_length={LENGTH}", f"algo.prefill={PREFILL}",
                f"algo.train_ratio={RATIO}", "algo.eval_episodes=1", "algo.replay_capacity=1000",
                "train.log_every=1", "train.eval_every=5", "train.checkpoint_every=4", "train.progress=false",
                "train.distributed.timeout_s=120", f"seed={SEED}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("worldmodels.configs", version_base=None):
        return compose("config", list(overrides))


def under_torchrun(monkeypatch, rank: int, world_size: int = 2) -> None:
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world_size)):
        monkeypatch.setenv(name, str(value))


def test_each_rank_seeds_its_own_envs_and_splits_capacity_and_prefill(monkeypatch):
    from worldmodels.algos.dreamerv3.collect import build_online_data
    from worldmodels.envs.factory import make_env, spec_from_config

    cfg = compose_config([*TINY_DREAMER, "env.num_envs=2", "algo.replay_capacity=1001"])
    first_obs, shards = [], []
    for rank in (0, 1):
        under_torchrun(monkeypatch, rank)
        shards.append(distributed.env_shard(SEED, 2, 1001, PREFILL))
        data = build_online_data(cfg, torch.device("cpu"))
        try:
            assert data.replay.capacity == 500 and data.prefill == 15
            first_obs.append(data.collector.env.reset()["vector"])
        finally:
            data.close()
    assert [s.env_seed for s in shards] == [SEED, SEED + 2]       # seed + rank * num_envs (+ i per env)
    assert [s.rng_seed for s in shards] == [SEED, SEED + 2]       # replay seed; random actions take + 1
    single = make_env(spec_from_config(cfg.env, seed=SEED, num_envs=4))   # envs seeded SEED + 0..3
    try:
        every_env = single.reset()["vector"]
    finally:
        single.close()
    np.testing.assert_array_equal(np.concatenate(first_obs), every_env)   # the ranks' envs: disjoint seeds


def test_one_process_keeps_its_seed_capacity_and_prefill(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_shard(SEED, 4, 1001, PREFILL) == distributed.EnvShard(SEED, SEED, 1001, PREFILL)
    assert distributed.rank_dir(Path("run")) == Path("run")


def test_the_resolved_config_states_the_shard_and_a_capacity_too_small_is_refused(monkeypatch):
    from worldmodels.train import checked_config

    under_torchrun(monkeypatch, 1)
    cfg, problem = checked_config([*TINY_DREAMER, "algo.replay_capacity=1001"])
    assert problem is None
    assert (cfg.train.distributed.world_size, cfg.train.distributed.global_batch_size) == (2, 2 * BATCH)
    assert (cfg.train.distributed.replay_capacity_per_rank, cfg.train.distributed.prefill_per_rank) == (500, 15)
    assert precheck([*TINY_DREAMER, "algo.replay_capacity=1"]) == (
        "algo.replay_capacity=1 split across 2 processes leaves none to a process; raise it to at least 2 "
        "(each process keeps capacity // processes).")


def normaliser_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """This rank's half of a fixed set of returns folded into a return normaliser, twice."""
    from worldmodels.algos.dreamerv3.returns import ReturnNormalizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    distributed.init({"backend": "gloo", "timeout_s": 60}, torch.device("cpu"))
    try:
        norm = ReturnNormalizer(decay=0.5)
        for returns in normaliser_returns():
            norm.update(returns.chunk(world_size)[rank])
        torch.save({"low": norm.low, "high": norm.high}, Path(out) / f"norm{rank}.pt")
        distributed.barrier()
    finally:
        distributed.cleanup()


def normaliser_returns() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # skewed so that the quantiles of one half differ from those of the whole
    return [torch.cat([torch.randn(6, 5, generator=generator), 10 + torch.rand(6, 5, generator=generator)])
            for _ in range(2)]


def test_the_return_scale_comes_from_every_ranks_returns(tmp_path):
    from worldmodels.algos.dreamerv3.returns import ReturnNormalizer

    mp.spawn(normaliser_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    reference = ReturnNormalizer(decay=0.5)
    for returns in normaliser_returns():
        reference.update(returns)
    halves = ReturnNormalizer(decay=0.5)
    for returns in normaliser_returns():
        halves.update(returns.chunk(2)[0])
    assert not torch.allclose(halves.high - halves.low, reference.high - reference.low)   # the test can tell
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"norm{rank}.pt", weights_only=True)
        torch.testing.assert_close(saved["low"], reference.low)
        torch.testing.assert_close(saved["high"], reference.high)


def rank_worker(rank: int, world_size: int, port: int, run_dir: str) -> None:
    """``fit`` on this rank; its data's counters, replay contents and final parameters saved."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from worldmodels.algos.dreamerv3.experiment import FACTORIES
    from worldmodels.training.loop import fit

    built = {}

    def keep(name, factory):
        def make(*args):
            built[name] = factory(*args)
            return built[name]
        return make

    factories = replace(FACTORIES, model=keep("model", FACTORIES.model), data=keep("data", FACTORIES.data))
    try:
        fit(compose_config(TINY_DREAMER), factories, Path(run_dir))
        data, model = built["data"], built["model"]
        steps = data.replay.num_steps
        torch.save({"updates": data.updates, "env_steps": data.env_steps, "episodes": data.episodes,
                    "replay_steps": steps,
                    "vector": torch.from_numpy(np.array(data.replay._arrays["vector"][:steps])),
                    "params": {name: p.detach().clone() for name, p in model.named_parameters()}},
                   Path(run_dir) / f"rank{rank}_result.pt")
        built.clear()
        distributed.finish()
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_rank_fit(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("online")
    mp.spawn(rank_worker, args=(2, free_port(), str(run_dir)), nprocs=2, join=True)
    return run_dir, [torch.load(run_dir / f"rank{rank}_result.pt", weights_only=True) for rank in range(2)]


def test_every_rank_makes_the_same_updates_and_the_global_train_ratio_holds(two_rank_fit):
    _, ranks = two_rank_fit
    prefill = -(-PREFILL // 2)
    for saved in ranks:
        assert saved["updates"] == UPDATES
        # the first update follows the prefill, each later one B * L / ratio env steps
        assert saved["env_steps"] == prefill + (UPDATES - 1) * BATCH * LENGTH // RATIO
    global_env_steps = sum(saved["env_steps"] for saved in ranks)
    assert global_env_steps == 2 * ranks[0]["env_steps"]
    replayed = 2 * (UPDATES - 1) * BATCH * LENGTH   # every rank replays B x L steps per update
    assert replayed / (global_env_steps - 2 * prefill) == RATIO


def test_replay_shards_are_disjoint_and_kept_apart(two_rank_fit):
    run_dir, ranks = two_rank_fit
    rows = [{row.tobytes() for row in saved["vector"].numpy()} for saved in ranks]
    assert all(len(r) == saved["replay_steps"] > 0 for r, saved in zip(rows, ranks))
    assert not rows[0] & rows[1]   # no observation of one rank's envs is in the other's replay
    for shard in (run_dir, run_dir / "rank1"):
        assert list((shard / "replay").glob("replay_*.npz")) and list((shard / "episodes").glob("*.npz"))
    assert not (run_dir / "rank0").exists() and not (run_dir / "rank1" / "metrics.csv").exists()


def test_parameters_stay_identical_across_ranks(two_rank_fit):
    from worldmodels.algos.dreamerv3.experiment import build_model

    _, ranks = two_rank_fit
    first, second = (saved["params"] for saved in ranks)
    torch.manual_seed(SEED)
    initial = dict(build_model(compose_config(TINY_DREAMER)).named_parameters())
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    changed = [name for name, value in first.items() if not torch.equal(value, initial[name].detach())]
    assert any(name.startswith("world_model.") for name in changed)
    assert any(name.startswith("actor_critic.actor.") for name in changed)
    assert any(name.startswith("actor_critic.critic.") for name in changed)


def test_metrics_count_every_ranks_env_steps_episodes_and_replay(two_rank_fit):
    run_dir, ranks = two_rank_fit
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("collect/env_steps")]
    assert [int(r["step"]) for r in rows] == list(range(1, UPDATES + 1))   # one row per update, from rank 0
    assert float(rows[-1]["collect/env_steps"]) == sum(saved["env_steps"] for saved in ranks)
    assert float(rows[-1]["collect/replay_steps"]) == sum(saved["replay_steps"] for saved in ranks)
    assert float(rows[-1]["collect/episodes"]) == sum(saved["episodes"] for saved in ranks)
    assert all(saved["episodes"] > 0 for saved in ranks)


def torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in distributed.TORCHRUN_VARIABLES:
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "worldmodels.train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def train_losses(run_dir: Path) -> list[tuple[int, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]]


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    stopped = torchrun(*TINY_DREAMER, "train.max_steps=8", "train.stop_at=4", cwd=root)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run_dir,) = (root / "runs").glob("*/*")
    resumed = torchrun(f"+resume={run_dir}", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir


def test_resume_of_a_two_rank_online_run_reproduces_the_uninterrupted_run(stopped_and_resumed, tmp_path):
    done = torchrun(*TINY_DREAMER, "train.max_steps=8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (uninterrupted,) = (tmp_path / "runs").glob("*/*")
    expected = train_losses(uninterrupted)
    assert [step for step, _ in expected] == list(range(1, 9))
    assert train_losses(stopped_and_resumed) == expected   # every rank's envs, replay and RNGs restored
    state = torch.load(stopped_and_resumed / "checkpoints" / "last.pt", weights_only=True)
    assert [rank["data"]["updates"] for rank in state["ranks"]] == [8, 8]


def test_resume_of_a_two_rank_online_run_with_one_process_is_refused(stopped_and_resumed, monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert precheck([f"+resume={stopped_and_resumed}"]) == (
        "this run was trained with 2 process(es) and cannot resume with 1; resume it with "
        "torchrun --nproc_per_node=2 (or without torchrun for 1).")
    state = torch.load(stopped_and_resumed / "checkpoints" / "last.pt", weights_only=True)
    with pytest.raises(distributed.DistributedRunError, match="written by 2 processes and this run has 1"):
        _own_rank_state(state)
