"""onehot_linear: the C++ gather/scatter against the dense product, same process.

Rows at DreamerV3's shapes (``D = 512`` recurrent features, ``S x K = 32 x 32`` latents,
``U = 512`` units): ``N = 1024`` rows is one imagination step of a 16 x 64 batch,
``N = 15360`` the heads over its 15 imagined steps. ``fwd`` times the forward alone
(imagination and the no-gradient heads), ``fwd+bwd`` adds the gradients of the weight
(the actor and the critic, whose inputs are detached). The anchor is the dense layer
the networks would otherwise run: ``F.linear`` on the concatenated features
``[x, flat(one_hot(index))]`` (the features already built, as they are in training).
Each row stores ``dense_s`` and ``speedup_vs_dense``.

    pytest benchmarks/bench_onehot_linear.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worldmodels import _ext
from worldmodels.ops.onehot_linear import onehot_linear

from conftest import finish_row, median_seconds

needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
DIMS, GROUPS, CLASSES, UNITS = 512, 32, 32, 512
ROWS = [1024, 15360]


def _inputs(rows: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, DIMS, generator=gen)
    index = torch.randint(CLASSES, (rows, GROUPS), generator=gen)
    features = torch.cat([x, F.one_hot(index, CLASSES).flatten(1).float()], 1)
    weight = torch.randn(UNITS, DIMS + GROUPS * CLASSES, generator=gen).mul_(0.02).requires_grad_()
    grad = torch.randn(rows, UNITS, generator=gen)
    return x, index, features, weight, grad


def _step(fn, weight, grad, backward: bool):
    if not backward:
        with torch.no_grad():
            return fn()
    out = fn()
    weight.grad = None
    out.backward(grad)
    return out


@needs_cpp
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("rows", ROWS)
def test_onehot_linear_cpu(record_env, rows, mode):
    benchmark = record_env
    x, index, features, weight, grad = _inputs(rows)
    backward = mode == "fwd+bwd"

    def dense():
        return _step(lambda: F.linear(features, weight), weight, grad, backward)

    def gathered():
        return _step(lambda: onehot_linear(x, index, weight[:, :DIMS], weight[:, DIMS:], impl="cpp"), weight, grad,
                     backward)

    anchor = median_seconds(dense, "cpu", repeats=20)
    benchmark.group = f"onehot_linear {mode} cpu N={rows}"
    benchmark.extra_info.update(rows=rows, dims=DIMS, groups=GROUPS, classes=CLASSES, units=UNITS, mode=mode,
                                dtype="float32", impl="cpp")
    benchmark(gathered)
    finish_row(benchmark, "dense", anchor)
