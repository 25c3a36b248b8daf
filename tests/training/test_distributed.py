"""Data parallelism under torchrun: gradients, parameters, a run end to end, refusals.

Two CPU processes on gloo, one thread each, a free port per test."""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from worldmodels.nn.vae import ConvVAE, ConvVAEConfig
from worldmodels.train import precheck
from worldmodels.training import distributed
from worldmodels.training.loop import _own_rank_state
from worldmodels.training.precision import resolve_precision
from worldmodels.training.step import train_step

TINY_VAE = ConvVAEConfig(image_size=16, channels=1, latent_dim=3, widths=[4, 8])
GLOBAL_BATCH = 4
UPDATES = 3
# tests/conftest.py's TINY: a small VAE on 4-frame bouncing-balls sequences
TINY_RUN = ["+exp=vae_balls", "size=tiny", "device=cpu", "train.batch_size=2", "env.eval_sequences=2",
            "train.log_every=1", "train.eval_every=4", "train.checkpoint_every=4", "train.progress=false",
            "env.seq_len=4", "env.chunk_sequences=8", "env.refresh_steps=3"]


class NoiseInBatchVAE(ConvVAE):
    """The VAE with its reparameterisation noise taken from the batch, so that a rank's
    half of a batch sees the noise the single process gives those rows."""

    def compute_loss(self, batch):
        mu, logvar = self.encode(batch["image"])
        parts = self.losses(batch["image"], mu + batch["noise"] * (0.5 * logvar).exp(), mu, logvar)
        return parts["loss"], {"kl": parts["kl"]}


def global_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(GLOBAL_BATCH, 1, 16, 16, generator=generator),
            "noise": torch.randn(GLOBAL_BATCH, TINY_VAE.latent_dim, generator=generator)}


def rows(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    share = len(batch["image"]) // world_size
    return {key: value[rank * share:(rank + 1) * share] for key, value in batch.items()}


def new_model_and_optimizer() -> tuple[ConvVAE, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = NoiseInBatchVAE(TINY_VAE)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def one_step(trainable, model, optimizer, batch, reduce_values=None, micro_batches=1):
    precision = resolve_precision("fp32", torch.device("cpu"))
    batches = [rows(batch, index, micro_batches) if micro_batches > 1 else batch for index in range(micro_batches)]
    defer_sync = trainable.no_sync if isinstance(trainable, distributed.DataParallel) else None
    return train_step(trainable, optimizer, batches, precision=precision, scaler=precision.grad_scaler(),
                      reduce_values=reduce_values, defer_sync=defer_sync)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One step on this rank's half of a fixed batch (its gradients and the step's loss
    saved), the same with the half split into two accumulated micro-batches, then
    :data:`UPDATES` more on data only this rank sees (its parameters saved)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    distributed.init({"backend": "gloo", "timeout_s": 60}, torch.device("cpu"))
    try:
        model, optimizer = new_model_and_optimizer()
        trainable = distributed.wrap(model, {"find_unused_parameters": False})
        result = one_step(trainable, model, optimizer, rows(global_batch(1), rank, world_size), distributed.average)
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        accum_model, accum_optimizer = new_model_and_optimizer()
        one_step(distributed.wrap(accum_model, {}), accum_model, accum_optimizer,
                 rows(global_batch(1), rank, world_size), distributed.average, micro_batches=2)
        accum_grads = {name: p.grad.clone() for name, p in accum_model.named_parameters()}
        for update in range(UPDATES):
            one_step(trainable, model, optimizer, rows(global_batch(100 + 10 * update + rank), 0, 1),
                     distributed.average)
        torch.save({"grads": grads, "accum_grads": accum_grads, "loss": result.loss, "grad_norm": result.grad_norm,
                    "params": {name: p.detach().clone() for name, p in model.named_parameters()}},
                   Path(out) / f"rank{rank}.pt")
        del trainable, model, optimizer, accum_model, accum_optimizer   # the DDP reducers go before the group
        distributed.barrier()                                            # neither rank leaves while one still works
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.fixture
def one_thread():
    """One thread, as the ranks run, for this test only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_rank_gradients_equal_one_step_on_the_concatenated_batch(two_ranks, one_thread):
    model, optimizer = new_model_and_optimizer()
    reference = one_step(model, model, optimizer, global_batch(1))
    for saved in two_ranks:
        assert saved["loss"] == pytest.approx(reference.loss, rel=1e-5)
        assert saved["grad_norm"] == pytest.approx(reference.grad_norm, rel=1e-4)
        for name, param in model.named_parameters():
            torch.testing.assert_close(saved["grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
            # two micro-batches per rank, all-reduced once (no_sync on the first): the same update
            torch.testing.assert_close(saved["accum_grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_parameters_stay_identical_across_ranks(two_ranks):
    first, second = (saved["params"] for saved in two_ranks)
    model, _ = new_model_and_optimizer()
    for name, initial in model.named_parameters():
        assert torch.equal(first[name], second[name]), name
        assert not torch.equal(first[name], initial.detach()), f"{name} was never updated"


def torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "worldmodels.train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    done = torchrun(*TINY_RUN, "train.max_steps=4", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_torchrun_writes_one_run_directory_and_one_metrics_file(torchrun_run):
    root, done = torchrun_run
    (day,) = (root / "runs").iterdir()
    (run_dir,) = day.iterdir()
    assert [p.name for p in run_dir.rglob("metrics.csv")] == ["metrics.csv"]
    with (run_dir / "metrics.csv").open(newline="") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r["train/loss"]]
    assert steps == [1, 2, 3, 4]  # one row per step, not one per rank
    resolved = (run_dir / "resolved_config.yaml").read_text()
    assert "world_size: 2" in resolved and "global_batch_size: 4" in resolved
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert done.stdout.count("done: step 4") == 1


def train_losses(run_dir: Path) -> list[tuple[int, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]]


def test_resume_at_the_same_world_size_continues_exactly(torchrun_run, tmp_path):
    root, _ = torchrun_run
    (uninterrupted,) = (root / "runs").glob("*/*")
    stopped = torchrun(*TINY_RUN, "train.max_steps=4", "train.stop_at=2", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert stopped.stdout.count("stopped at step 2") + stopped.stderr.count("stopped at step 2") == 1
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    resumed = torchrun(f"+resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_losses(run_dir) == train_losses(uninterrupted)  # every rank's data and RNGs restored


def test_resume_at_another_world_size_is_refused(torchrun_run, monkeypatch):
    root, _ = torchrun_run
    (run_dir,) = (root / "runs").glob("*/*")
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert precheck([f"+resume={run_dir}"]) == (
        "this run was trained with 2 process(es) and cannot resume with 1; resume it with "
        "torchrun --nproc_per_node=2 (or without torchrun for 1).")
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    with pytest.raises(distributed.DistributedRunError, match="written by 2 processes and this run has 1"):
        _own_rank_state(state)


def under_torchrun(monkeypatch, world_size=2):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))


def test_a_family_that_is_not_data_parallel_is_refused_under_torchrun(monkeypatch):
    from worldmodels.algos import registry

    under_torchrun(monkeypatch)
    monkeypatch.setitem(registry.FAMILIES, "vae", registry.Family("worldmodels.algos.vae:FACTORIES"))
    assert precheck(["+exp=vae_balls"]) == (
        "torchrun: algo.name=vae does not run data-parallel yet; supported: delta_iris, dreamer_bc, dreamer_offline, "
        "dreamerv3, iris, nextframe, vta, world_models.")


@pytest.mark.parametrize("exp", ["vae_balls", "vta_balls", "dreamer_offline", "nextframe_coinrun", "dreamer_cartpole",
                                 "dreamer_bc", "iris_tiny", "delta_iris_tiny", "world_models_carracing"])
def test_data_parallel_families_pass_the_torchrun_check(monkeypatch, exp):
    under_torchrun(monkeypatch)
    problem = precheck([f"+exp={exp}"])
    assert problem is None or "torchrun" not in problem


def test_backend_is_nccl_on_cuda_and_gloo_on_cpu():
    assert distributed.backend_for("auto", torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for("auto", torch.device("cpu")) == "gloo"
    assert distributed.backend_for("gloo", torch.device("cuda", 0)) == "gloo"


def test_each_rank_draws_its_own_data_stream(monkeypatch, tiny_config):
    from worldmodels.algos.vae.experiment import build_data

    cfg = tiny_config("seed=3")
    batches = []
    for rank in (0, 1):
        under_torchrun(monkeypatch)
        monkeypatch.setenv("RANK", str(rank))
        rank_cfg = distributed.data_config(cfg)
        assert rank_cfg.seed == 3 + rank and cfg.seed == 3  # the model and evaluator keep the seed
        batches.append(build_data(rank_cfg, torch.device("cpu")).next_batch()["image"])
    assert batches[0].shape == batches[1].shape and not torch.equal(batches[0], batches[1])


def test_leaving_the_group_frees_the_ddp_wrapper_first(tmp_path):
    """DDP sits in a reference cycle and its reducer holds the process group: left to the
    interpreter's shutdown, gloo aborts the process ("terminate called without an active
    exception"). Leaving the group frees the unreferenced wrapper before the group goes."""
    import gc
    import weakref

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    collecting = gc.isenabled()
    gc.disable()  # only an explicit collection can free the cycle
    try:
        model = ConvVAE(TINY_VAE)
        trainable = distributed.wrap(model, {"find_unused_parameters": False})
        loss, _ = trainable.compute_loss({"image": torch.rand(2, 1, 16, 16)})
        loss.backward()
        trainable.ddp.cycle = trainable   # DDP's own cycle comes and goes with torch's hooks: make one for sure
        wrapper = weakref.ref(trainable.ddp)
        del trainable
        assert wrapper() is not None  # still alive: the cycle
        distributed.finish()
        assert wrapper() is None
    finally:
        distributed.cleanup()
        if collecting:
            gc.enable()
    assert not dist.is_initialized()


def test_ddp_searches_for_unused_parameters_unless_the_model_uses_them_all():
    import torch.distributed as dist
    from types import SimpleNamespace

    from worldmodels.algos.dreamerv3.agent import DreamerAgent, DreamerConfig

    tiny = dict(deter=16, stoch=4, classes=4, hidden=16, blocks=1, mlp_units=16, head_units=16, head_layers=1,
                actor_layers=1, critic_layers=1, horizon=3)
    space, act = {"vector": ((3,), "float32")}, SimpleNamespace(discrete=True, size=2)
    online, offline = (DreamerAgent(DreamerConfig(train_actor=on, **tiny), space, act) for on in (True, False))
    assert online.uses_every_parameter and not offline.uses_every_parameter
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        decided = [distributed.wrap(m, {"find_unused_parameters": None}).ddp.find_unused_parameters
                   for m in (online, offline, ConvVAE(ConvVAEConfig(image_size=16, latent_dim=4)))]
        forced = distributed.wrap(online, {"find_unused_parameters": True}).ddp.find_unused_parameters
    finally:
        dist.destroy_process_group()
    assert decided == [False, True, True] and forced    # a model that does not say keeps the safe search
