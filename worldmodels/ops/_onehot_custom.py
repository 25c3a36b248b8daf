"""The C++ gather and scatter of :func:`worldmodels.ops.onehot_linear.onehot_linear` as
``torch.library`` custom ops, so that ``torch.compile`` traces through them
(``register_fake``). Their gradients are :class:`~worldmodels.ops.onehot_linear._OneHotLinear`'s,
which calls them (the scatter is the gather's weight gradient).

* ``onehot_gather_sum(table [S*K, U], index [N, S], classes) -> [N, U]``:
  ``out[n] = sum_s table[s*K + index[n, s]]``.
* ``onehot_scatter_sum(grad [N, U], index [N, S], classes) -> [S*K, U]``:
  ``out[s*K + index[n, s]] += grad[n]``.

Float32 and float64 CPU tensors.

No ``from __future__ import annotations`` here: ``custom_op`` reads the annotations.
"""

import torch
from torch import Tensor

from .._ext import require_extension

_LIB = "worldmodels"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _run(name: str, values: Tensor, index: Tensor, classes: int) -> Tensor:
    """``worldmodels._C.<name>_<dtype>`` on the NumPy views of ``values`` and ``index``."""
    if values.dtype not in _SUFFIX:
        raise TypeError(f"onehot_linear(impl='cpp') needs float32 or float64, got {values.dtype}.")
    kernel = getattr(require_extension("onehot_linear(impl='cpp')"), f"{name}_{_SUFFIX[values.dtype]}")
    out = kernel(values.detach().contiguous().numpy(), index.contiguous().numpy(), classes, torch.get_num_threads())
    return torch.from_numpy(out)


@torch.library.custom_op(f"{_LIB}::onehot_gather_sum", mutates_args=())
def onehot_gather_sum(table: Tensor, index: Tensor, classes: int) -> Tensor:
    """``out[n] = sum_s table[s*K + index[n, s]]`` (C++)."""
    return _run("onehot_gather_sum", table, index, classes)


@onehot_gather_sum.register_fake
def _gather_fake(table, index, classes):
    return table.new_empty(index.shape[0], table.shape[1])


@torch.library.custom_op(f"{_LIB}::onehot_scatter_sum", mutates_args=())
def onehot_scatter_sum(grad: Tensor, index: Tensor, classes: int) -> Tensor:
    """``out[s*K + index[n, s]] += grad[n]`` over all ``n, s`` (C++)."""
    return _run("onehot_scatter_sum", grad, index, classes)


@onehot_scatter_sum.register_fake
def _scatter_fake(grad, index, classes):
    return grad.new_empty(index.shape[1] * classes, grad.shape[1])
