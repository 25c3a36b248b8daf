"""The samplers' fast paths as ``torch.library`` custom ops, so that ``torch.compile``
traces through them (``register_fake``) and autograd reaches their fused backward
passes (``register_autograd``).

Ops (namespace ``worldmodels``):

* ``st_categorical_fwd(logits, unimix, noise?, seed) -> (sample, probs)`` and
  ``st_categorical_bwd(grad_sample?, grad_probs?, logits, unimix) -> grad_logits``:
  Triton (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).
* ``boundary_sample_{triton,cpp}_fwd(logits, noise?, seed, beta, seg_len, seg_num)
  -> (mask, probs, log_probs, soft, free)`` and ``boundary_sample_{triton,cpp}_bwd(
  grad_mask?, grad_probs?, grad_log_probs?, logits, soft, free, beta) -> grad_logits``.
  ``soft`` (probs in fp32) and ``free`` (bool, no constraint applied)
  are saved for the backward pass; the public op drops them.

``noise`` is None to draw with Philox from ``seed`` inside the kernel. No gradient
flows into ``noise``. The Triton kernels are imported on first call only.

No ``from __future__ import annotations`` here: ``custom_op`` reads the annotations.
"""

from typing import Optional

import torch
from torch import Tensor

from .._ext import require_extension

_LIB = "worldmodels"


def _kernels():
    from worldmodels.kernels import sampling  # lazy: TRITON_INTERPRET is read at import

    return sampling


# ------------------------------------------------------------------ st_categorical


@torch.library.custom_op(f"{_LIB}::st_categorical_fwd", mutates_args=())
def st_categorical_fwd(
    logits: Tensor, unimix: float, noise: Optional[Tensor], seed: int
) -> tuple[Tensor, Tensor]:
    """Fused forward (Triton): ``(one-hot sample, unimix probs)``, both like ``logits``."""
    return _kernels().st_categorical_forward(logits, unimix, noise, seed)


@st_categorical_fwd.register_fake
def _st_categorical_fwd_fake(logits, unimix, noise, seed):
    return logits.new_empty(logits.shape), logits.new_empty(logits.shape)


@torch.library.custom_op(f"{_LIB}::st_categorical_bwd", mutates_args=())
def st_categorical_bwd(
    grad_sample: Optional[Tensor], grad_probs: Optional[Tensor], logits: Tensor, unimix: float
) -> Tensor:
    """Fused backward (Triton): ``(1 - unimix) * p * (g - sum(g * p))``, ``g`` the sum
    of the two output gradients and ``p = softmax(logits)``."""
    return _kernels().st_categorical_backward(grad_sample, grad_probs, logits, unimix)


@st_categorical_bwd.register_fake
def _st_categorical_bwd_fake(grad_sample, grad_probs, logits, unimix):
    return logits.new_empty(logits.shape)


def _st_categorical_setup(ctx, inputs, output):
    logits, unimix, _noise, _seed = inputs
    ctx.save_for_backward(logits)
    ctx.unimix = unimix


def _st_categorical_backward(ctx, grad_sample, grad_probs):
    (logits,) = ctx.saved_tensors
    grad = st_categorical_bwd(grad_sample, grad_probs, logits, ctx.unimix)
    return grad, None, None, None


st_categorical_fwd.register_autograd(_st_categorical_backward, setup_context=_st_categorical_setup)


# ----------------------------------------------------------------- boundary_sample


def _boundary_triton_fwd(
    logits: Tensor, noise: Optional[Tensor], seed: int, beta: float, seg_len: int, seg_num: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _kernels().boundary_forward(logits, noise, seed, beta, seg_len, seg_num)


def _boundary_triton_bwd(
    grad_mask: Optional[Tensor], grad_probs: Optional[Tensor], grad_log_probs: Optional[Tensor],
    logits: Tensor, soft: Tensor, free: Tensor, beta: float,
) -> Tensor:
    return _kernels().boundary_backward(grad_mask, grad_probs, grad_log_probs, logits, soft, free, beta)


def _numpy32(tensor: Optional[Tensor]):
    """A float32 C-order NumPy view (or copy) of a CPU tensor; None stays None."""
    if tensor is None:
        return None
    return tensor.detach().to(torch.float32).contiguous().numpy()


def _boundary_cpp_fwd(
    logits: Tensor, noise: Optional[Tensor], seed: int, beta: float, seg_len: int, seg_num: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ext = require_extension("boundary_sample(impl='cpp')")
    arrays = ext.boundary_sample_forward(
        _numpy32(logits), _numpy32(noise), seed, beta, seg_len, seg_num, torch.get_num_threads()
    )
    mask, probs, log_probs, soft, free = (torch.from_numpy(a) for a in arrays)
    dtype = logits.dtype
    return mask.to(dtype), probs.to(dtype), log_probs.to(dtype), soft, free


def _boundary_cpp_bwd(
    grad_mask: Optional[Tensor], grad_probs: Optional[Tensor], grad_log_probs: Optional[Tensor],
    logits: Tensor, soft: Tensor, free: Tensor, beta: float,
) -> Tensor:
    ext = require_extension("boundary_sample(impl='cpp')")
    grad = ext.boundary_sample_backward(
        _numpy32(grad_mask), _numpy32(grad_probs), _numpy32(grad_log_probs), _numpy32(logits),
        _numpy32(soft), free.detach().contiguous().numpy(), beta, torch.get_num_threads(),
    )
    return torch.from_numpy(grad).to(logits.dtype)


def _boundary_fwd_fake(logits, noise, seed, beta, seg_len, seg_num):
    batch, steps = logits.shape
    return (
        logits.new_empty(batch, steps),
        logits.new_empty(batch, steps),
        logits.new_empty(batch, steps, 2),
        logits.new_empty(batch, steps, dtype=torch.float32),
        logits.new_empty(batch, steps, dtype=torch.bool),
    )


def _boundary_bwd_fake(grad_mask, grad_probs, grad_log_probs, logits, soft, free, beta):
    return logits.new_empty(logits.shape)


def _register_boundary(path: str, forward, backward):
    """Define ``worldmodels::boundary_sample_<path>_{fwd,bwd}``; returns the forward op."""
    fwd = torch.library.custom_op(f"{_LIB}::boundary_sample_{path}_fwd", forward, mutates_args=())
    bwd = torch.library.custom_op(f"{_LIB}::boundary_sample_{path}_bwd", backward, mutates_args=())
    fwd.register_fake(_boundary_fwd_fake)
    bwd.register_fake(_boundary_bwd_fake)

    def setup_context(ctx, inputs, output):
        logits, _noise, _seed, beta, _seg_len, _seg_num = inputs
        _mask, _probs, _log_probs, soft, free = output
        ctx.save_for_backward(logits, soft, free)
        ctx.beta = beta
        ctx.mark_non_differentiable(soft, free)

    def backward_fn(ctx, grad_mask, grad_probs, grad_log_probs, _grad_soft, _grad_free):
        logits, soft, free = ctx.saved_tensors
        grad = bwd(grad_mask, grad_probs, grad_log_probs, logits, soft, free, ctx.beta)
        return grad, None, None, None, None, None

    fwd.register_autograd(backward_fn, setup_context=setup_context)
    return fwd


boundary_sample_triton_fwd = _register_boundary("triton", _boundary_triton_fwd, _boundary_triton_bwd)
boundary_sample_cpp_fwd = _register_boundary("cpp", _boundary_cpp_fwd, _boundary_cpp_bwd)

BOUNDARY_OPS = {"triton": boundary_sample_triton_fwd, "cpp": boundary_sample_cpp_fwd}
