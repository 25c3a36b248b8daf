"""World Models' CMA-ES population split across torchrun ranks (issue 21): rank 0 asks
and tells, every rank scores its share of each generation in the dream, the returns are
all-gathered; the split run asks the generations of a single process with the same seed.

Two CPU processes on gloo, one thread each, a free port."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from worldmodels.algos.world_models import c_stages, vm_stages
from worldmodels.algos.world_models.cmaes import PopulationSearch
from worldmodels.algos.world_models.config import PipelineConfigError, from_json, preset, to_json
from worldmodels.algos.world_models.pipeline import run_pipeline
from worldmodels.algos.world_models.rundir import load_npz
from worldmodels.training import distributed

POPULATION = 5          # odd: the ranks' shares differ (2 and 3 candidates)
GENERATIONS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, Path]:
    """A tiny run with V and M trained (no controller yet) and the controller settings."""
    run = tmp_path_factory.mktemp("wm_split") / "run"
    cfg = preset("tiny", env="tiny", population=POPULATION, generations=GENERATIONS, device="cpu")
    run_pipeline(cfg, run, ["collect", "vae", "encode", "mdnrnn"])
    return to_json(cfg), run


def rank_worker(rank: int, world_size: int, port: int, settings: dict, run: str) -> None:
    """Run the controller stage as rank ``rank``; note the candidates this rank scored."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    scored = []
    evaluate = c_stages.Evaluator.__call__
    c_stages.Evaluator.__call__ = lambda self, theta, generation: (scored.append(theta.shape[0])
                                                                   or evaluate(self, theta, generation))
    try:
        run_pipeline(from_json(settings), Path(run), ["controller"], {"backend": "gloo", "timeout_s": 60})
        distributed.finish()
    finally:
        distributed.cleanup()
    Path(run, f"scored_rank{rank}.json").write_text(json.dumps(scored))


def test_a_two_rank_split_asks_the_generations_of_a_single_process(trained, tmp_path):
    settings, run = trained
    single, split = tmp_path / "single", tmp_path / "split"
    shutil.copytree(run, single), shutil.copytree(run, split)
    run_pipeline(from_json(settings), single, ["controller"])
    mp.spawn(rank_worker, args=(2, free_port(), settings, str(split)), nprocs=2, join=True)
    scored = [json.loads((split / f"scored_rank{rank}.json").read_text()) for rank in range(2)]
    assert scored == [[2] * GENERATIONS, [3] * GENERATIONS]     # each rank scored its share only
    one, two = load_npz(single / "cmaes_state.npz"), load_npz(split / "cmaes_state.npz")
    assert two["solutions"].shape == (GENERATIONS, POPULATION, int(two["settings"][0]))
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(two["solutions"], one["solutions"], rtol=0, atol=1e-9)
    dim = int(one["settings"][0])
    after_one = PopulationSearch.load(single / "cmaes_state.npz", dim, POPULATION, 0.1, 0)
    after_two = PopulationSearch.load(split / "cmaes_state.npz", dim, POPULATION, 0.1, 0)
    np.testing.assert_allclose(after_two.mean, after_one.mean, rtol=0, atol=1e-9)     # the CMA-ES mean
    np.testing.assert_allclose(after_two.ask(), after_one.ask(), rtol=0, atol=1e-9)   # the next generation
    assert (split / "controller_best.pt").is_file() and (split / "logs" / "controller" / "metrics.csv").is_file()


def vm_worker(rank: int, world_size: int, port: int, settings: dict, run: str, stage: str) -> None:
    """Train ``stage`` (vae or mdnrnn) as rank ``rank``; keep this rank's final weights
    and the frames of each of its VAE batches."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    batches, final = [], {}
    to_images, save = vm_stages.to_images, vm_stages._save
    vm_stages.to_images = lambda frames, device: (batches.append(len(frames)) or to_images(frames, device))
    vm_stages._save = lambda path, state: (final.update(state) or save(path, state))
    try:
        run_pipeline(from_json(settings), Path(run), [stage], {"backend": "gloo", "timeout_s": 60})
        distributed.finish()
    finally:
        distributed.cleanup()
    torch.save({"model": final["model"], "batches": batches}, Path(run) / f"{stage}_rank{rank}.pt")


@pytest.mark.parametrize("stage", ["vae", "mdnrnn"])
def test_v_and_m_train_data_parallel_with_the_same_weights_on_every_rank(trained, tmp_path, stage):
    settings, run = trained
    split = tmp_path / "split"
    shutil.copytree(run, split)
    (split / f"{stage}.pt").unlink()
    mp.spawn(vm_worker, args=(2, free_port(), settings, str(split), stage), nprocs=2, join=True)
    ranks = [torch.load(split / f"{stage}_rank{rank}.pt", weights_only=True) for rank in range(2)]
    for name, value in ranks[0]["model"].items():                    # the averaged gradients keep them equal
        torch.testing.assert_close(ranks[1]["model"][name], value, rtol=0, atol=0, msg=name)
    written = torch.load(split / f"{stage}.pt", weights_only=True)["model"]
    alone = torch.load(run / f"{stage}.pt", weights_only=True)["model"]
    assert all(torch.equal(written[k], v) for k, v in ranks[0]["model"].items())       # rank 0 wrote them
    assert any(not torch.equal(alone[k], v) for k, v in written.items())               # not one process's run
    if stage == "vae":
        epochs, frames = from_json(settings).vae_epochs, len(vm_stages.load_frames(run))
        first, second = (sum(r["batches"]) for r in ranks)
        assert len(ranks[0]["batches"]) == len(ranks[1]["batches"])                    # the same number of steps
        assert epochs * (frames - 1) <= first + second <= epochs * frames              # each frame once per epoch


@pytest.mark.parametrize(("overrides", "stages", "message"), [
    ({}, ["encode", "mdnrnn"], "only the vae, mdnrnn and controller stages (and eval, on rank 0) run: run encode in one "
                              "process"),
    ({"population": 2, "generations": 1}, ["controller"], None),
    ({"antithetic": True, "train_in_dream": False, "population": 4}, ["controller"],
     "antithetic pairs in the real env"),
])
def test_what_a_split_run_cannot_do_is_refused_before_it_starts(monkeypatch, trained, overrides, stages, message):
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("LOCAL_RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = preset("tiny", env="tiny", device="cpu", **overrides)
    expected = message or "population=2 is smaller than the 3 processes of torchrun"
    with pytest.raises(PipelineConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_pipeline(cfg, trained[1], stages)
