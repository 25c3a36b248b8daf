"""A Linear layer whose input ends in one-hot groups, without building the one-hot part.

DreamerV3's heads and input projections read ``[x, flat(z)]``, where ``z [..., S, K]``
holds ``S`` one-hot groups of ``K`` classes (32 x 32). Wherever ``z`` is an exact sample
that needs no gradient of its own (imagined states, the detached posterior states that
imagination starts from) the product with its ``S * K`` columns is a sum of ``S`` of
them::

    y = x W_x^T + sum_s W_z[:, s*K + k_s] + b,      k_s = index[..., s]

so each output costs ``S`` additions where the dense product costs ``S * K``
multiply-adds, and its weight gradient is a scatter-add of the output gradient
(``dW_z[:, s*K + k_s] += dy``) where the dense one is a GEMM. The C++ path
(``csrc/onehot_linear.cpp``) does both; the reference builds the one-hot and multiplies.

Straight-through latents (the world model's posterior samples) are exactly one-hot in
value but carry a gradient: pass them as ``z`` and they receive ``dz = dy W_z``, the
gradient the dense product gives them, while the forward pass still gathers.

Non-finite weights: the reference multiplies every column, so an inf or NaN in a column
that no sample selects gives NaN (``0 * inf``); the gather never reads such a column.
Non-finite values in ``x`` or in the selected columns propagate alike on both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import cpp_has, resolve_impl

Tensor = torch.Tensor
FAST_DTYPES = (torch.float32, torch.float64)


def _check(x: Tensor, index: Tensor, weight_x: Tensor, weight_z: Tensor, bias: Tensor | None,
           z: Tensor | None = None) -> int:
    """Validate the shapes; returns ``K``."""
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.dim() < 1:
        raise TypeError(f"index must be an integer tensor [..., S], got {index.dtype} {tuple(index.shape)}.")
    if x.shape[:-1] != index.shape[:-1]:
        raise ValueError(f"x [..., D] and index [..., S] need the same leading dims, got {tuple(x.shape)} and "
                         f"{tuple(index.shape)}.")
    groups = index.shape[-1]
    units = weight_x.shape[0]
    if weight_x.dim() != 2 or weight_x.shape[1] != x.shape[-1]:
        raise ValueError(f"weight_x must be [U, D={x.shape[-1]}], got {tuple(weight_x.shape)}.")
    if weight_z.dim() != 2 or weight_z.shape[0] != units or groups == 0 or weight_z.shape[1] % groups:
        raise ValueError(f"weight_z must be [U={units}, S*K] with S={groups} groups, got {tuple(weight_z.shape)}.")
    if bias is not None and bias.shape != (units,):
        raise ValueError(f"bias must be [U={units}], got {tuple(bias.shape)}.")
    classes = weight_z.shape[1] // groups
    if z is not None and z.shape != (*index.shape, classes):
        raise ValueError(f"z must be [..., S, K] = {(*index.shape, classes)}, got {tuple(z.shape)}.")
    return classes


def onehot_linear_ref(x: Tensor, index: Tensor, weight_x: Tensor, weight_z: Tensor,
                      bias: Tensor | None = None, *, z: Tensor | None = None) -> Tensor:
    """The specification: ``F.linear([x, flat(one_hot(index, K))], [W_x, W_z], b)``, with
    ``z`` in place of ``one_hot(index, K)`` when given.

    Args:
        x: ``[..., D]`` dense inputs (``D`` may be 0).
        index: integer ``[..., S]``, class ``k_s`` in ``[0, K)`` of each group.
        weight_x: ``[U, D]``; weight_z: ``[U, S*K]`` (column ``s*K + k`` is class ``k``
            of group ``s``); bias: ``[U]`` or None.
        z: ``[..., S, K]``, the one-hot latents that ``index`` describes, when they need a
            gradient (straight-through samples), else None.
    Returns:
        ``[..., U]`` in the dtype of ``x``.
    """
    classes = _check(x, index, weight_x, weight_z, bias, z)
    onehot = F.one_hot(index.long(), classes).to(x.dtype) if z is None else z
    return F.linear(torch.cat([x, onehot.flatten(-2)], dim=-1), torch.cat([weight_x, weight_z], dim=1), bias)


class _OneHotLinear(torch.autograd.Function):
    """The C++ path on 2-D operands: ``x [N, D]``, ``rows [N, S]``, ``z [N, S*K]`` or None."""

    @staticmethod
    def forward(ctx, x, rows, weight_x, weight_z, bias, z, classes: int):
        from ._onehot_custom import onehot_gather_sum

        y = onehot_gather_sum(weight_z.t().contiguous(), rows, classes)
        if bias is not None:
            y += bias
        y.addmm_(x, weight_x.t())  # in place: no copy of y into a new result
        ctx.save_for_backward(x, rows, weight_x, weight_z)
        ctx.classes = classes
        return y

    @staticmethod
    def backward(ctx, grad):
        from ._onehot_custom import onehot_scatter_sum

        x, rows, weight_x, weight_z = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = grad @ weight_x if need[0] else None
        grad_wx = grad.t() @ x if need[2] else None
        grad_wz = onehot_scatter_sum(grad, rows, ctx.classes).t() if need[3] else None
        grad_bias = grad.sum(0) if need[4] else None
        grad_z = grad @ weight_z if need[5] else None
        return grad_x, None, grad_wx, grad_wz, grad_bias, grad_z, None


def _onehot_linear_cpp(x: Tensor, index: Tensor, weight_x: Tensor, weight_z: Tensor, bias: Tensor | None,
                       z: Tensor | None, classes: int) -> Tensor:
    lead, groups = x.shape[:-1], index.shape[-1]
    rows = index.reshape(-1, groups).long()
    flat_z = None if z is None else z.reshape(rows.shape[0], groups * classes)
    y = _OneHotLinear.apply(x.reshape(rows.shape[0], x.shape[-1]), rows, weight_x, weight_z, bias, flat_z, classes)
    return y.reshape(*lead, weight_x.shape[0])


def onehot_linear(x: Tensor, index: Tensor, weight_x: Tensor, weight_z: Tensor, bias: Tensor | None = None, *,
                  z: Tensor | None = None, impl: str = "auto") -> Tensor:
    """``y = x W_x^T + sum_s W_z[:, s*K + index[..., s]] + b`` (module docstring).

    Equal to :func:`onehot_linear_ref` (up to the order of float additions), with
    gradients for ``x``, ``weight_x``, ``weight_z``, ``bias`` and ``z``; none reaches
    ``index``. Pass the two blocks of one Linear's weight as slices
    (``W[:, :D]``, ``W[:, D:]``): the gradients reach the full weight.

    Args:
        x, index, weight_x, weight_z, bias, z: as :func:`onehot_linear_ref`; the fast
            path reads only ``index`` (``z`` must equal ``one_hot(index)``) and gives
            ``z`` the gradient ``dy W_z``.
        impl: "auto" (C++ for float32/float64 CPU tensors outside autocast when the
            extension is built, else the reference; on CUDA the reference, whose GEMM
            runs on tensor cores; under CPU autocast the reference too, as a bf16 GEMM
            on AMX or AVX512-BF16 units beats the fp32 gather), "cpp" or "ref". There
            is no Triton path.
    Raises:
        ValueError: an index outside ``[0, K)`` (both paths), or mismatched shapes.
    """
    classes = _check(x, index, weight_x, weight_z, bias, z)
    cpu_auto = "cpp" if _gather_wins(x) else "ref"
    path = resolve_impl("onehot_linear", impl, x.device, triton=False, cpp_symbol="onehot_gather_sum_f32",
                        cpu_auto=cpu_auto)
    if path == "ref":
        return onehot_linear_ref(x, index, weight_x, weight_z, bias, z=z)
    return _onehot_linear_cpp(x, index, weight_x, weight_z, bias, z, classes)


def _gather_wins(x: Tensor) -> bool:
    """fp32/fp64 outside autocast: under CPU autocast the dense product runs in bf16."""
    return x.dtype in FAST_DTYPES and not torch.is_autocast_enabled(x.device.type)


def gathers(x: Tensor) -> bool:
    """Whether :func:`onehot_linear` with ``impl="auto"`` takes its fast path for inputs
    like ``x`` here and now (elsewhere, and under autocast, the dense product is the
    faster way to the same values)."""
    return x.device.type == "cpu" and _gather_wins(x) and cpp_has("onehot_gather_sum_f32")


def onehot_index(z: Tensor) -> Tensor | None:
    """The class indices ``[..., S]`` of ``z [..., S, K]`` when every group is exactly
    one-hot (one 1, the rest 0), else None (then use the dense product)."""
    ones, zeros = (z == 1).sum(-1), (z == 0).sum(-1)
    if not bool(((ones == 1) & (zeros == z.shape[-1] - 1)).all()):
        return None
    return z.argmax(-1)


__all__ = ["gathers", "onehot_index", "onehot_linear", "onehot_linear_ref"]
