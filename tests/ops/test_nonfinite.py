"""NaN and inf inputs: every path of an op gives what its reference gives.

The ops check shapes and dtypes, not values (a value check would synchronise the GPU on
every call), so non-finite inputs propagate; what each op documents:

* GRU cells and scans (classic and block-diagonal, with or without LayerNorm): the
  reference's maths, NaN where it meets NaN, ``inf - inf`` or ``0 * inf``; the C++ path
  once turned ``sigmoid(-inf) * inf`` into ``inf`` where the reference gives NaN.
* ``st_categorical``: a row with a NaN or +inf logit gives NaN probabilities and a NaN
  sample for that row; a -inf logit is a class of probability ``unimix / K``.
* ``boundary_sample``: a NaN logit gives a NaN mask at its step (and NaN probs and
  log_probs there unless a segment limit fixed the step), its proposal counts as no
  boundary; +-inf logits are certain decisions. C++ and Triton once returned a clean 0/1
  mask there.

Each case compares the NaN positions, the +-inf positions and the finite values.
"""

from __future__ import annotations

import pytest
import torch

from worldmodels import _ext
from worldmodels.ops import _dispatch, block_gru_scan, boundary_sample, gru_cell, gru_scan, st_categorical

pytestmark = pytest.mark.filterwarnings("ignore:(divide by zero|overflow|invalid value) encountered:RuntimeWarning")

needs_triton = pytest.mark.skipif(not _dispatch.triton_runs_on(torch.device("cpu")),
                                  reason="triton (interpreter) not available")
needs_cpp = pytest.mark.skipif(not _ext.has_extension(), reason="worldmodels._C not built")
FAST = [pytest.param("cpp", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]
BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def assert_same_values(fast: torch.Tensor, ref: torch.Tensor) -> None:
    """Same NaN positions, same +-inf positions, close finite values."""
    assert torch.equal(fast.isnan(), ref.isnan()), (fast, ref)
    assert torch.equal(fast.isinf() & (fast > 0), ref.isinf() & (ref > 0)), (fast, ref)
    assert torch.equal(fast.isinf() & (fast < 0), ref.isinf() & (ref < 0)), (fast, ref)
    finite = ref.isfinite()
    torch.testing.assert_close(fast[finite], ref[finite], atol=2e-5, rtol=1e-4)


def classic(ln: bool) -> list:
    g = torch.Generator().manual_seed(0)
    rand = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    hidden = 5
    return [rand(2, 4, 3), rand(2, hidden), rand(3 * hidden, 3, scale=0.3), rand(3 * hidden, hidden, scale=0.3),
            rand(3 * hidden), rand(3 * hidden), 1 + rand(2, 3 * hidden, scale=0.1) if ln else None,
            rand(2, 3 * hidden, scale=0.1) if ln else None]


def block(ln: bool) -> list:
    g = torch.Generator().manual_seed(0)
    rand = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    return [rand(2, 4, 3), rand(2, 6), rand(2, 3 + 3, 9, scale=0.3), rand(2, 9),
            1 + rand(2, 9, scale=0.1) if ln else None, rand(2, 9, scale=0.1) if ln else None]


def poison(args: list, which: int, value: float) -> list:
    """``args`` with one element of argument ``which`` (0 inputs, 1 state, 2 weights) set to ``value``."""
    args = [None if a is None else a.clone() for a in args]
    args[which].view(-1)[1] = value
    return args


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("ln", [False, True], ids=["plain", "layernorm"])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["x", "h0", "weight"])
@pytest.mark.parametrize("bad", list(BAD))
def test_gru_scans_propagate_like_the_reference(impl, ln, which, bad):
    args = poison(classic(ln), which, BAD[bad])
    assert_same_values(gru_scan(*args, impl=impl), gru_scan(*args, impl="ref"))
    args = poison(block(ln), which, BAD[bad])
    assert_same_values(block_gru_scan(*args, impl=impl), block_gru_scan(*args, impl="ref"))


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("bad", list(BAD))
def test_gru_cell_propagates_like_the_reference(impl, bad):
    x, h, *weights = poison(classic(False), 1, BAD[bad])
    out = gru_cell(x[:, 0], h, *weights, impl=impl)
    assert_same_values(out, gru_cell(x[:, 0], h, *weights, impl="ref"))
    assert not out.isfinite().all()


@pytest.mark.parametrize("impl", [pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("bad", list(BAD))
def test_st_categorical_rows_with_nan_or_inf_logits(impl, bad):
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    logits[1, 2] = BAD[bad]
    noise = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
    sample, probs = st_categorical(logits, 0.01, noise=noise, impl=impl)
    ref_sample, ref_probs = st_categorical(logits, 0.01, noise=noise, impl="ref")
    assert_same_values(sample, ref_sample)
    assert_same_values(probs, ref_probs)
    if bad == "-inf":
        assert sample.isfinite().all() and probs[1, 2] == pytest.approx(0.01 / 5)
    else:
        assert sample[1].isnan().all() and probs[1].isnan().all()
        assert sample[[0, 2]].isfinite().all()


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("step", [0, 2], ids=["forced_step", "free_step"])
@pytest.mark.parametrize("bad", list(BAD))
def test_boundary_sample_with_nan_or_inf_logits(impl, step, bad):
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    logits[0, step] = BAD[bad]
    noise = torch.rand(2, 6, generator=torch.Generator().manual_seed(1))
    fast = boundary_sample(logits, 0.5, 3, 4, noise=noise, impl=impl)
    ref = boundary_sample(logits, 0.5, 3, 4, noise=noise, impl="ref")
    for got, want in zip(fast, ref):
        assert_same_values(got, want)
    assert fast.mask[0, step].isnan().item() == (bad == "nan")
    assert fast.mask[1].isfinite().all()
