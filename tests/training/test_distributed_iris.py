"""IRIS and Δ-IRIS under torchrun: each component's gradients and codebook statistics
averaged over the processes, the same updates on every process, a replay shard per
process, exact resume at the same world size.

Two CPU processes on gloo, one thread each, a free port per test, tiny agents on
CartPole frames (gymnasium backend)."""

import csv
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from worldmodels.train import checked_config, precheck
from worldmodels.training import distributed
from worldmodels.training.loop import _own_rank_state

SEED, UPDATES, STOP_AT = 3, 10, 5
TINY_IRIS = ["+exp=iris_tiny", "model.tokenizer.ch=4", "model.tokenizer.z_channels=8", "model.tokenizer.vocab_size=16",
             "model.tokenizer.num_res_blocks=1", "model.world_model.max_blocks=5", "model.world_model.num_layers=1",
             "model.world_model.num_heads=1", "model.world_model.embed_dim=16", "model.actor_critic.conv_channels=[4,4]",
             "model.actor_critic.lstm_dim=16", "model.actor_critic.imagine_horizon=4", "model.actor_critic.burn_in=2",
             "algo.batch_sizes={tokenizer:4,world_model:2,actor_critic:2}", "algo.sequence_length=4",
             "algo.starts={tokenizer:0,world_model:1,actor_critic:3}", "algo.collect_every=2", "algo.collect_steps=6",
             "algo.eval_episodes=1", "algo.media_length=4", "device=cpu", "env.backend=gymnasium",
             f"train.max_steps={UPDATES}", "train.log_every=1", f"train.eval_every={UPDATES}",
             "train.checkpoint_every=5", "train.progress=false", "train.distributed.timeout_s=120", f"seed={SEED}"]
TINY_DELTA = ["+exp=delta_iris_tiny", "env.size=[16,16]", "model.tokenizer.channels=4",
              "model.tokenizer.frame_channels=4", "model.tokenizer.latent_dim=4", "model.tokenizer.code_dim=8",
              "model.tokenizer.vocab_size=16", "model.world_model.frame_channels=4", "model.world_model.max_blocks=6",
              "model.world_model.num_layers=1", "model.world_model.embed_dim=16",
              "model.actor_critic.frame_channels=4", "model.actor_critic.frame_latent_dim=2",
              "model.actor_critic.frame_mult=[1,1]", "model.actor_critic.frame_down=[1,1]",
              "model.actor_critic.lstm_dim=8", "model.actor_critic.imagine_horizon=3", "model.actor_critic.burn_in=2",
              "algo.batch_sizes={tokenizer:2,world_model:2,actor_critic:2}", "algo.sequence_length=5",
              "algo.tokenizer_sequence_length=3", "algo.collect_every=2", "algo.collect_steps=6",
              "algo.initial_collect_steps=12", "algo.starts={tokenizer:0,world_model:1,actor_critic:3}",
              "algo.eval_episodes=1", "algo.media_length=4", "device=cpu", "env.backend=gymnasium",
              f"train.max_steps={UPDATES}", "train.log_every=1", f"train.eval_every={UPDATES}",
              "train.checkpoint_every=5", "train.progress=false", "train.distributed.timeout_s=120", f"seed={SEED}"]
FAMILIES = {"iris": (TINY_IRIS, "worldmodels.algos.iris.experiment"),
            "delta_iris": (TINY_DELTA, "worldmodels.algos.delta_iris.experiment")}
COMPONENT_NAMES = ("tokenizer", "world_model", "actor_critic")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("worldmodels.configs", version_base=None):
        return compose("config", list(overrides))


def join_group(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    distributed.init({"backend": "gloo", "timeout_s": 60}, torch.device("cpu"))


def factories_of(family: str):
    import importlib

    return importlib.import_module(FAMILIES[family][1]).FACTORIES


# ------------------------------------------------------------------ one tokenizer update

def tokenizer_batch(family: str, rows: slice | None = None) -> dict[str, torch.Tensor]:
    """A fixed batch of 4 tokenizer windows (rows ``rows`` of it): IRIS single frames
    ``[4, 1, 3, 32, 32]``; Δ-IRIS sequences of 3 frames ``[4, 3, 3, 16, 16]`` with actions."""
    generator = torch.Generator().manual_seed(11)
    frames, size = (1, 32) if family == "iris" else (3, 16)
    batch = {"observations": torch.randint(0, 256, (4, frames, 3, size, size), generator=generator,
                                           dtype=torch.uint8),
             "actions": torch.randint(0, 2, (4, frames), generator=generator),
             "mask_padding": torch.ones(4, frames, dtype=torch.bool)}
    return {key: value[rows or slice(None)] for key, value in batch.items()}


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the gradients it steps with (after clipping), by parameter name."""

    def step(self, closure=None):
        self.seen = {id(p): p.grad.detach().clone() for group in self.param_groups for p in group["params"]
                     if p.grad is not None}
        return super().step(closure)


class TokenizerOnly:
    """Data whose every update trains the tokenizer on one fixed batch."""

    def __init__(self, batch):
        self.batch = batch

    def begin_update(self):
        return ["tokenizer"]

    def sample(self, name):
        return self.batch


def tokenizer_update(family: str, rows: slice | None) -> dict:
    """One :func:`component_step` of the tokenizer on ``rows`` of the fixed batch: the
    gradients it stepped with, its loss and the quantiser's state after it."""
    from worldmodels.rl.imagination_agent import component_step
    from worldmodels.training.precision import resolve_precision

    torch.manual_seed(0)
    model = factories_of(family).model(compose_config(FAMILIES[family][0]))
    optimizer = RecordingSGD(model.param_groups(), lr=1e-3)
    precision = resolve_precision("fp32", torch.device("cpu"))
    run = SimpleNamespace(data=TokenizerOnly(tokenizer_batch(family, rows)), model=model, optimizer=optimizer,
                          scaler=precision.grad_scaler(), precision=precision, accum_steps=1, grad_clip=None)
    result = component_step(run)
    names = {id(p): name for name, p in model.named_parameters()}
    quantizer = model.tokenizer.quantizer
    return {"grads": {names[key]: grad for key, grad in optimizer.seen.items()}, "loss": result.loss,
            "vq": {name: value.detach().clone() for name, value in [*quantizer.named_buffers(),
                                                                     ("codebook", quantizer.codebook)]}}


def gradient_worker(rank: int, world_size: int, port: int, out: str) -> None:
    join_group(rank, world_size, port)
    try:
        share = 4 // world_size
        for family in FAMILIES:
            saved = tokenizer_update(family, slice(rank * share, (rank + 1) * share))
            torch.save(saved, Path(out) / f"{family}_rank{rank}.pt")
        torch.save(restarted_codebook(rank), Path(out) / f"restart_rank{rank}.pt")
        distributed.barrier()
    finally:
        distributed.cleanup()


def restarted_codebook(rank: int) -> dict[str, torch.Tensor]:
    """The state of an EMA quantiser whose every code is restarted by one training forward
    on this rank's own vectors, under :func:`synced_statistics`."""
    from worldmodels.nn.vq import VectorQuantizer, VQConfig, synced_statistics

    torch.manual_seed(0)
    quantizer = VectorQuantizer(VQConfig(num_codes=8, dim=4, ema=True, dead_threshold=100.0)).train()
    torch.manual_seed(10 + rank)   # each rank draws its restart rows differently
    with synced_statistics(quantizer):
        quantizer(torch.randn(16, 4, generator=torch.Generator().manual_seed(rank)), channels_last=True)
    return {"codebook": quantizer.codebook.detach().clone(), "ema_count": quantizer.ema_count.clone(),
            "ema_sum": quantizer.ema_sum.clone()}


@pytest.fixture(scope="module")
def two_rank_tokenizer_updates(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    mp.spawn(gradient_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    updates = {family: [torch.load(out / f"{family}_rank{rank}.pt", weights_only=True) for rank in range(2)]
               for family in FAMILIES}
    updates["restart"] = [torch.load(out / f"restart_rank{rank}.pt", weights_only=True) for rank in range(2)]
    return updates


def test_restarted_codes_are_process_zeros_on_every_process(two_rank_tokenizer_updates):
    first, second = two_rank_tokenizer_updates["restart"]
    alone = restarted_codebook(0)   # one process, no group: every code restarted too
    rank0_vectors = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    rows = {tuple(row.tolist()) for row in rank0_vectors}
    assert all(tuple(code.tolist()) in rows for code in first["codebook"])   # drawn from process 0's batch
    assert alone["ema_count"].tolist() == first["ema_count"].tolist() == [100.0] * 8


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_rank_tokenizer_gradients_equal_one_update_on_the_concatenated_batch(
        two_rank_tokenizer_updates, one_thread, family):
    reference = tokenizer_update(family, None)
    half = tokenizer_update(family, slice(0, 2))
    assert any(not torch.allclose(half["grads"][name], grad, rtol=1e-3, atol=1e-6)
               for name, grad in reference["grads"].items())   # the test can tell a rank's half from the whole
    for saved in two_rank_tokenizer_updates[family]:
        assert saved["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert sorted(saved["grads"]) == sorted(reference["grads"])
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(saved["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_codebook_statistics_are_those_of_the_concatenated_batch(two_rank_tokenizer_updates, one_thread, family):
    """IRIS's code-usage counts (for restarts) and Δ-IRIS's EMA codebook follow every
    process's batch, as one process's follow the whole batch."""
    reference = tokenizer_update(family, None)
    half = tokenizer_update(family, slice(0, 2))
    assert "ema_count" in reference["vq"]
    assert not torch.allclose(half["vq"]["ema_count"], reference["vq"]["ema_count"])
    for saved in two_rank_tokenizer_updates[family]:
        for name, value in reference["vq"].items():
            torch.testing.assert_close(saved["vq"][name], value, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ a two-process run

def fit_worker(rank: int, world_size: int, port: int, family: str, run_dir: str) -> None:
    """``fit`` on this rank: an uninterrupted run of :data:`UPDATES` updates in
    ``run_dir/whole`` and one stopped at :data:`STOP_AT` then resumed in ``run_dir/resumed``;
    the data's counters, replay actions and final parameters of the whole run saved."""
    join_group(rank, world_size, port)
    from dataclasses import replace

    from worldmodels.training.loop import fit

    built = {}

    def keep(name, factory):
        def make(*args):
            built[name] = factory(*args)
            return built[name]
        return make

    factories = factories_of(family)
    factories = replace(factories, model=keep("model", factories.model), data=keep("data", factories.data))
    overrides = FAMILIES[family][0]
    try:
        whole = Path(run_dir) / "whole"
        fit(compose_config(overrides), factories, whole)
        data, model = built["data"], built["model"]
        steps = data.replay.num_steps
        torch.save({"updates": data.updates, "env_steps": data.collector.env_steps,
                    "episodes": data.collector.episodes, "replay_steps": steps,
                    "replay_capacity": data.replay.capacity,
                    "actions": torch.from_numpy(np.array(data.replay._arrays["action"][:steps])),
                    "params": {name: p.detach().clone() for name, p in model.named_parameters()},
                    "vq": {name: b.detach().clone() for name, b in model.tokenizer.quantizer.named_buffers()}},
                   whole / f"rank{rank}_result.pt")
        built.clear()
        resumed = Path(run_dir) / "resumed"
        fit(compose_config([*overrides, f"train.stop_at={STOP_AT}"]), factories, resumed)
        fit(compose_config(overrides), factories, resumed, resume=True)
        built.clear()
        distributed.finish()
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module", params=list(FAMILIES))
def two_rank_fit(request, tmp_path_factory):
    family = request.param
    run_dir = tmp_path_factory.mktemp(family)
    mp.spawn(fit_worker, args=(2, free_port(), family, str(run_dir)), nprocs=2, join=True)
    whole = run_dir / "whole"
    return family, run_dir, [torch.load(whole / f"rank{rank}_result.pt", weights_only=True) for rank in range(2)]


def test_every_component_stays_identical_across_ranks(two_rank_fit):
    family, _, ranks = two_rank_fit
    first, second = (saved["params"] for saved in ranks)
    torch.manual_seed(SEED)
    initial = dict(factories_of(family).model(compose_config(FAMILIES[family][0])).named_parameters())
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    changed = {name.split(".")[0] for name, value in first.items() if not torch.equal(value, initial[name].detach())}
    assert changed == set(COMPONENT_NAMES)
    for name, value in ranks[0]["vq"].items():
        assert torch.equal(value, ranks[1]["vq"][name]), name


def test_each_rank_collects_into_its_own_replay_shard(two_rank_fit):
    family, run_dir, ranks = two_rank_fit
    cfg = compose_config(FAMILIES[family][0])
    for saved in ranks:
        assert saved["updates"] == UPDATES
        assert saved["replay_capacity"] == int(cfg.algo.capacity) // 2
        assert saved["replay_steps"] == saved["env_steps"] > 0   # the shard holds this rank's env steps only
    assert ranks[0]["env_steps"] == ranks[1]["env_steps"]          # the same collection schedule
    assert not torch.equal(ranks[0]["actions"], ranks[1]["actions"])   # two streams (random actions seeded apart)
    whole = run_dir / "whole"
    for shard, saved in zip((whole, whole / "rank1"), ranks):
        assert list((shard / "replay").glob("replay_*.npz"))
        assert len(list((shard / "episodes").glob("*.npz"))) == saved["episodes"]   # each rank's own episodes
    assert not (whole / "rank0").exists() and not (whole / "rank1" / "metrics.csv").exists()
    with (whole / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("collect/env_steps")]
    assert [int(r["step"]) for r in rows] == list(range(1, UPDATES + 1))   # one row per update, from rank 0
    assert float(rows[-1]["collect/env_steps"]) == sum(saved["env_steps"] for saved in ranks)
    assert float(rows[-1]["collect/replay_steps"]) == sum(saved["replay_steps"] for saved in ranks)


def train_losses(run_dir: Path) -> list[tuple[int, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]]


def test_resume_of_a_two_rank_run_reproduces_the_uninterrupted_run(two_rank_fit):
    _, run_dir, _ = two_rank_fit
    expected = train_losses(run_dir / "whole")
    assert [step for step, _ in expected] == list(range(1, UPDATES + 1))
    assert train_losses(run_dir / "resumed") == expected   # every rank's envs, replay, RNGs and codebook restored
    state = torch.load(run_dir / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and [rank["data"]["updates"] for rank in state["ranks"]] == [UPDATES] * 2


def test_resume_with_another_number_of_processes_is_refused(two_rank_fit, monkeypatch):
    _, run_dir, _ = two_rank_fit
    state = torch.load(run_dir / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedRunError, match="written by 2 processes and this run has 1"):
        _own_rank_state(state)
    for name, value in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 3)):
        monkeypatch.setenv(name, str(value))
    with pytest.raises(distributed.DistributedRunError, match="written by 2 processes and this run has 3"):
        _own_rank_state(state)


# ------------------------------------------------------------------ shards and the resolved config

def under_torchrun(monkeypatch, rank: int, world_size: int = 2) -> None:
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world_size)):
        monkeypatch.setenv(name, str(value))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_rank_seeds_its_own_envs_and_splits_capacity_budget_and_first_collection(monkeypatch, family):
    from worldmodels.rl import component_data

    first_collection = [] if family == "iris" else ["algo.initial_collect_steps=13"]
    cfg = compose_config([*FAMILIES[family][0], "env.num_envs=2", "algo.capacity=1001", "algo.max_env_steps=1001",
                          *first_collection])
    opened = []

    def recording_make_env(spec):
        opened.append((spec.seed, spec.num_envs))
        return make_env(spec)

    make_env = component_data.make_env
    monkeypatch.setattr(component_data, "make_env", recording_make_env)
    shards = []
    for rank in (0, 1):
        under_torchrun(monkeypatch, rank)
        data = factories_of(family).data(distributed.same_config(cfg), torch.device("cpu"))
        try:
            shards.append((data.replay.capacity, data.max_env_steps, data.initial_steps))
        finally:
            data.close()
    assert opened == [(SEED, 2), (SEED + 2, 2)]   # env i of rank r: seed + r * num_envs + i, disjoint
    first = 6 if family == "iris" else 7          # IRIS: an epoch's collect_steps (6); Δ-IRIS: ceil(13 / 2)
    assert shards == [(500, 501, first)] * 2


def test_the_resolved_config_states_the_shard_and_the_global_batches(monkeypatch):
    under_torchrun(monkeypatch, 1)
    cfg, problem = checked_config([*TINY_DELTA, "algo.capacity=1001", "train.accum_steps=2"])
    assert problem is None
    recorded = cfg.train.distributed
    assert (recorded.world_size, recorded.replay_capacity_per_rank, recorded.prefill_per_rank,
            recorded.max_env_steps_per_rank) == (2, 500, 6, 50000)
    assert dict(recorded.global_batch_sizes) == {"tokenizer": 8, "world_model": 8, "actor_critic": 8}
    assert precheck([*TINY_IRIS, "algo.capacity=1"]) == (
        "algo.capacity=1 split across 2 processes leaves none to a process; raise it to at least 2 "
        "(each process keeps capacity // processes).")
