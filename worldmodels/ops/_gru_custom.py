"""``torch.library`` registrations of the fused GRU scans (C++ and Triton paths).

Ops (each with a fake implementation, so ``torch.compile`` traces through them):

- ``worldmodels::gru_scan(x, h0, w_ih, w_hh, b_ih?, b_hh?, ln_weight?, ln_bias?, eps, impl)``
  -> ``(states, *saved)``; ``worldmodels::gru_scan_backward(grad, ..., *saved, impl)``.
- ``worldmodels::block_gru_scan(x, h0, weight, bias?, ln_weight?, ln_bias?, eps, impl)``
  -> ``(states, *saved)``; ``worldmodels::block_gru_scan_backward``.

``impl`` is "cpp" or "triton". The saved tensors (gate activations, LayerNorm
statistics) are extra outputs marked non-differentiable; the autograd formula calls
the backward op. Absent optional gradients come back as empty tensors. The backward
ops have no autograd of their own (no double backward through the fused paths).
"""

from typing import Optional

import torch

from . import _gru_seq as seq

Tensor = torch.Tensor


def _empty(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.new_empty(0, dtype=dtype)


def _states_c(x: Tensor, shape, dtype: torch.dtype) -> Tensor:
    """Fake of the compute-dtype copy of the states (empty when no cast happens)."""
    return _empty(x, dtype) if dtype == x.dtype else x.new_empty(shape, dtype=dtype)


def _like_or_empty(t: Optional[Tensor], x: Tensor) -> Tensor:
    return x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)


def _none_if_absent(grads, inputs):
    return tuple(None if t is None else g for g, t in zip(grads, inputs))


# ---------------------------------------------------------------- classic scan

@torch.library.custom_op("worldmodels::gru_scan", mutates_args=())
def gru_scan_op(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], ln_weight: Optional[Tensor], ln_bias: Optional[Tensor],
                eps: float, impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return seq.classic_forward(x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, impl)


@gru_scan_op.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, impl):
    (batch, steps, _), hidden = x.shape, h0.shape[1]
    dtype = seq.compute_dtype(x.dtype, impl)
    wide = (batch, steps, 3 * hidden)
    ln = ln_weight is not None
    xhat = x.new_empty(wide, dtype=dtype) if ln else _empty(x, dtype)
    rstd = x.new_empty((batch, steps), dtype=dtype) if ln else _empty(x, dtype)
    return (x.new_empty(batch, steps, hidden), _states_c(x, (batch, steps, hidden), dtype),
            x.new_empty(wide, dtype=dtype), x.new_empty((batch, steps, hidden), dtype=dtype),
            xhat, rstd, torch.empty_like(xhat), torch.empty_like(rstd))


@torch.library.custom_op("worldmodels::gru_scan_backward", mutates_args=())
def gru_scan_backward_op(grad: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                         b_ih: Optional[Tensor], b_hh: Optional[Tensor], ln_weight: Optional[Tensor],
                         ln_bias: Optional[Tensor], states: Tensor, saved: list[Tensor],
                         impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return seq.classic_backward(grad, x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, states, saved, impl)


@gru_scan_backward_op.register_fake
def _(grad, x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, states, saved, impl):
    return tuple(_like_or_empty(t, x) for t in (x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias))


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, _, impl = inputs
    ctx.impl = impl
    ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, *output)
    ctx.mark_non_differentiable(*output[1:])


def _gru_backward(ctx, grad, *_):
    x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, states, *saved = ctx.saved_tensors
    inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias)
    grads = gru_scan_backward_op(grad.contiguous(), *inputs, states, saved, ctx.impl)
    return (*_none_if_absent(grads, inputs), None, None)


gru_scan_op.register_autograd(_gru_backward, setup_context=_gru_setup)


# ---------------------------------------------------------------- block scan

@torch.library.custom_op("worldmodels::block_gru_scan", mutates_args=())
def block_gru_scan_op(x: Tensor, h0: Tensor, weight: Tensor, bias: Optional[Tensor],
                      ln_weight: Optional[Tensor], ln_bias: Optional[Tensor], eps: float,
                      impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return seq.block_forward(x, h0, weight, bias, ln_weight, ln_bias, eps, impl)


@block_gru_scan_op.register_fake
def _(x, h0, weight, bias, ln_weight, ln_bias, eps, impl):
    (batch, steps, _), hidden = x.shape, h0.shape[1]
    groups, width = weight.shape[0], weight.shape[2]
    dtype = seq.compute_dtype(x.dtype, impl)
    ln = ln_weight is not None
    xhat = x.new_empty((batch, steps, groups * width), dtype=dtype) if ln else _empty(x, dtype)
    rstd = x.new_empty((batch, steps, groups), dtype=dtype) if ln else _empty(x, dtype)
    return (x.new_empty(batch, steps, hidden), _states_c(x, (batch, steps, hidden), dtype),
            x.new_empty((batch, steps, groups * width), dtype=dtype),
            x.new_empty((batch, steps, hidden), dtype=dtype), xhat, rstd)


@torch.library.custom_op("worldmodels::block_gru_scan_backward", mutates_args=())
def block_gru_scan_backward_op(grad: Tensor, x: Tensor, h0: Tensor, weight: Tensor, bias: Optional[Tensor],
                               ln_weight: Optional[Tensor], ln_bias: Optional[Tensor], states: Tensor,
                               saved: list[Tensor], impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return seq.block_backward(grad, x, h0, weight, bias, ln_weight, ln_bias, states, saved, impl)


@block_gru_scan_backward_op.register_fake
def _(grad, x, h0, weight, bias, ln_weight, ln_bias, states, saved, impl):
    return tuple(_like_or_empty(t, x) for t in (x, h0, weight, bias, ln_weight, ln_bias))


def _block_setup(ctx, inputs, output):
    x, h0, weight, bias, ln_weight, ln_bias, _, impl = inputs
    ctx.impl = impl
    ctx.save_for_backward(x, h0, weight, bias, ln_weight, ln_bias, *output)
    ctx.mark_non_differentiable(*output[1:])


def _block_backward(ctx, grad, *_):
    x, h0, weight, bias, ln_weight, ln_bias, states, *saved = ctx.saved_tensors
    inputs = (x, h0, weight, bias, ln_weight, ln_bias)
    grads = block_gru_scan_backward_op(grad.contiguous(), *inputs, states, saved, ctx.impl)
    return (*_none_if_absent(grads, inputs), None, None)


block_gru_scan_op.register_autograd(_block_backward, setup_context=_block_setup)

# The C++ paths compute in fp32/fp64: under CPU autocast (precision=bf16) both scans take
# fp32 inputs and run with autocast off, as autocast's own fp32 ops do.
for _op in ("worldmodels::gru_scan", "worldmodels::block_gru_scan"):
    torch.library.register_autocast(_op, "cpu", torch.float32)
