"""Frame-block-causal attention's Triton paths as ``torch.library`` custom ops, so
that ``torch.compile`` traces through them (``register_fake``) and autograd reaches
the fused backward kernels (``register_autograd``).

Ops (namespace ``worldmodels``):

* ``block_causal_attention(q, k, v, block, scale) -> (out, lse)``: ``q, k, v
  [B, H, T, Dh]``; ``out`` like ``q`` (contiguous), ``lse [B, H, T]`` fp32, the row
  logsumexp of the scaled, masked scores, saved for the backward pass and marked
  non-differentiable.
* ``block_causal_attention_backward(grad_out, q, k, v, out, lse, block, scale) ->
  (dq, dk, dv)``: no autograd of its own (no double backward).
* ``block_causal_attention_decode(q, k_cache, v_cache, cache_len, block, scale) ->
  out``: the newest ``Tq`` queries against the first ``cache_len`` cached rows; no
  gradient.

The Triton kernels (``kernels/attention.py``) are imported on first call only.
No ``from __future__ import annotations`` here: ``custom_op`` reads the annotations.
"""

import torch
from torch import Tensor

_LIB = "worldmodels"


def _kernels():
    """The kernels module, imported lazily: ``TRITON_INTERPRET`` is read at import."""
    from worldmodels.kernels import attention

    return attention


@torch.library.custom_op(f"{_LIB}::block_causal_attention", mutates_args=())
def block_causal_attention(q: Tensor, k: Tensor, v: Tensor, block: int, scale: float) -> tuple[Tensor, Tensor]:
    """Fused forward (Triton): ``(out, lse)``."""
    return _kernels().attention_forward(q, k, v, block, scale)


@block_causal_attention.register_fake
def _block_causal_attention_fake(q, k, v, block, scale):
    batch, heads, steps, head_dim = q.shape
    return q.new_empty(batch, heads, steps, head_dim), q.new_empty(batch, heads, steps, dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::block_causal_attention_backward", mutates_args=())
def block_causal_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, block: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused backward (Triton): ``(dq, dk, dv)`` in the dtype of ``q``."""
    return _kernels().attention_backward(grad_out, q, k, v, out, lse, block, scale)


@block_causal_attention_backward.register_fake
def _block_causal_attention_backward_fake(grad_out, q, k, v, out, lse, block, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, block, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.block, ctx.scale = block, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = block_causal_attention_backward(grad_out, q, k, v, out, lse, ctx.block, ctx.scale)
    return dq, dk, dv, None, None


block_causal_attention.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(f"{_LIB}::block_causal_attention_decode", mutates_args=())
def block_causal_attention_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_len: int, block: int, scale: float
) -> Tensor:
    """Decode forward (Triton): ``out`` like ``q`` (contiguous)."""
    return _kernels().attention_decode_forward(q, k_cache, v_cache, cache_len, block, scale)


@block_causal_attention_decode.register_fake
def _block_causal_attention_decode_fake(q, k_cache, v_cache, cache_len, block, scale):
    return q.new_empty(q.shape)
