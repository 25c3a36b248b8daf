import math
import warnings

import pytest
import torch
from torch import nn

import worldmodels.training.precision as precision_module
from worldmodels.training.precision import Precision, resolve_device, resolve_precision
from worldmodels.training.step import train_step

FP32 = Precision("cpu", None)


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def compute_loss(self, batch):
        error = self.linear(batch["x"]) - batch["y"]
        loss = error.square().mean()
        return loss, {"mae": error.abs().mean()}


def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, generator=g), "y": torch.randn(n, 1, generator=g)}


def fresh(seed=0):
    torch.manual_seed(seed)
    model = Regression()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_accumulation_equals_one_large_batch():
    whole = batch(8, 1)
    halves = [{k: v[:4] for k, v in whole.items()}, {k: v[4:] for k, v in whole.items()}]
    a, opt_a = fresh()
    b, opt_b = fresh()
    ra = train_step(a, opt_a, [whole], precision=FP32, scaler=FP32.grad_scaler())
    rb = train_step(b, opt_b, halves, precision=FP32, scaler=FP32.grad_scaler())
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-6)
    assert set(rb.metrics) == {"mae"}


def test_clipping_bounds_the_update_and_reports_the_unclipped_norm():
    model, opt = fresh()
    big = {"x": torch.full((4, 3), 100.0), "y": torch.zeros(4, 1)}
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, opt, [big], precision=FP32, scaler=FP32.grad_scaler(), grad_clip=1.0)
    assert result.grad_norm > 1.0
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(0.1 * 1.0, rel=1e-4)  # lr * clipped norm


def test_param_groups_with_max_grad_norm_are_clipped_separately():
    model, _ = fresh()
    weight, bias = model.linear.weight, model.linear.bias
    opt = torch.optim.SGD([{"params": [weight], "max_grad_norm": 0.5}, {"params": [bias]}], lr=0.1)
    big = {"x": torch.full((4, 3), 100.0), "y": torch.zeros(4, 1)}
    model.zero_grad()
    model.compute_loss(big)[0].backward()
    raw_bias_grad = bias.grad.detach().clone()
    before = [weight.detach().clone(), bias.detach().clone()]
    result = train_step(model, opt, [big], precision=FP32, scaler=FP32.grad_scaler())
    assert (weight.detach() - before[0]).norm().item() == pytest.approx(0.1 * 0.5, rel=1e-4)
    torch.testing.assert_close(bias.detach() - before[1], -0.1 * raw_bias_grad)  # no max_grad_norm: untouched
    assert result.grad_norm == pytest.approx(math.hypot(0.5, raw_bias_grad.norm().item()), rel=1e-4)


def test_groups_sharing_a_clip_group_are_clipped_together():
    model, _ = fresh()
    weight, bias = model.linear.weight, model.linear.bias
    opt = torch.optim.SGD([{"params": [weight], "max_grad_norm": 0.5, "clip_group": "linear"},
                           {"params": [bias], "max_grad_norm": 0.5, "clip_group": "linear"}], lr=0.1)
    big = {"x": torch.full((4, 3), 100.0), "y": torch.zeros(4, 1)}
    before = torch.cat([weight.detach().flatten(), bias.detach().flatten()])
    train_step(model, opt, [big], precision=FP32, scaler=FP32.grad_scaler())
    after = torch.cat([weight.detach().flatten(), bias.detach().flatten()])
    assert (after - before).norm().item() == pytest.approx(0.1 * 0.5, rel=1e-4)  # one joint norm, not two


def test_non_finite_loss_skips_the_update():
    model, opt = fresh()
    before = [p.detach().clone() for p in model.parameters()]
    bad = {"x": torch.full((2, 3), float("nan")), "y": torch.zeros(2, 1)}
    result = train_step(model, opt, [bad], precision=FP32, scaler=FP32.grad_scaler())
    assert not result.finite and math.isnan(result.loss)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_empty_micro_batches_is_an_error():
    model, opt = fresh()
    with pytest.raises(ValueError, match="at least one micro-batch"):
        train_step(model, opt, [], precision=FP32, scaler=FP32.grad_scaler())


def test_bf16_autocast_on_cpu_trains():
    model, opt = fresh()
    precision = resolve_precision("bf16", torch.device("cpu"))
    result = train_step(model, opt, [batch(4, 2)], precision=precision, scaler=precision.grad_scaler())
    assert result.finite and model.linear.weight.dtype == torch.float32


def test_precision_choices_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).autocast_dtype is None
    assert str(resolve_precision("fp32", cpu)) == "fp32 on cpu"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision='fp8'"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize("flags, units", [("fpu avx512f amx_bf16 amx_tile avx512_bf16", "amx"),
                                          ("fpu avx512f avx512_bf16", "avx512_bf16"), ("fpu avx2 avx512f", None)])
def test_cpu_bf16_units_reads_the_cpu_flags(monkeypatch, tmp_path, flags, units):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    precision_module.cpu_bf16_units.cache_clear()
    precision_module._warn_emulated_bf16.cache_clear()
    try:
        assert precision_module.cpu_bf16_units() == units
        if units is None:
            with pytest.warns(UserWarning, match="without AMX or AVX512-BF16 runs bf16 emulated"):
                resolve_precision("bf16", torch.device("cpu"))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                resolve_precision("bf16", torch.device("cpu"))   # once a process
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert resolve_precision("bf16", torch.device("cpu")).autocast_dtype == torch.bfloat16
    finally:
        precision_module.cpu_bf16_units.cache_clear()
        precision_module._warn_emulated_bf16.cache_clear()


def test_device_choices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
