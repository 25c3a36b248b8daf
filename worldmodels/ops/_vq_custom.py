"""Vector quantisation's Triton path as ``torch.library`` custom ops, so that
``torch.compile`` traces through it (``register_fake``) and autograd reaches its
fused backward pass (``register_autograd``).

Ops (namespace ``worldmodels``):

* ``vq_forward(z [N, D], codebook [K, D], beta) -> (z_q [N, D], indices [N] int64,
  codebook_loss, commitment_loss)``: ``z_q`` in the dtype of ``z`` (the
  straight-through output: value ``codebook[index]``, gradient the identity to
  ``z``); the losses are fp32 scalars.
* ``vq_backward(grad_z_q?, grad_codebook_loss?, grad_commitment_loss?, z, z_q,
  indices, num_codes, beta) -> (grad_z, grad_codebook fp32 [num_codes, D])``. It reads
  the saved ``z_q``, not the codebook, so updating the codebook in place after the
  forward pass (EMA, restarts) leaves the backward pass valid.

Triton runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. The
kernels are imported on first call only.

No ``from __future__ import annotations`` here: ``custom_op`` reads the annotations.
"""

import torch
from torch import Tensor

_LIB = "worldmodels"


def _kernels():
    from worldmodels.kernels import vq  # lazy: TRITON_INTERPRET is read at import

    return vq


@torch.library.custom_op(f"{_LIB}::vq_forward", mutates_args=())
def vq_forward(z: Tensor, codebook: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused nearest-code search, gather and squared error (Triton); the losses are
    ``sum(sq_err) / (N D)`` and ``beta`` times it."""
    z_q, index, sq_err = _kernels().vq_forward(z, codebook)
    codebook_loss = sq_err.sum() / z.numel()
    return z_q, index, codebook_loss, beta * codebook_loss


@vq_forward.register_fake
def _vq_forward_fake(z, codebook, beta):
    rows = z.shape[0]
    scalar = z.new_empty((), dtype=torch.float32)
    return z.new_empty(z.shape), z.new_empty(rows, dtype=torch.int64), scalar, torch.empty_like(scalar)


@torch.library.custom_op(f"{_LIB}::vq_backward", mutates_args=())
def vq_backward(
    grad_z_q: Tensor | None, grad_codebook_loss: Tensor | None, grad_commitment_loss: Tensor | None,
    z: Tensor, z_q: Tensor, indices: Tensor, num_codes: int, beta: float,
) -> tuple[Tensor, Tensor]:
    """Fused backward (Triton): ``grad_z = grad_z_q - 2 beta g_cm (z_q - z) / (N D)``;
    ``grad_codebook[k] = sum_{n: index_n = k} 2 g_cb (z_q_n - z_n) / (N D)`` (fp32)."""
    return _kernels().vq_backward(grad_z_q, grad_codebook_loss, grad_commitment_loss, z, z_q, indices,
                                  num_codes, beta)


@vq_backward.register_fake
def _vq_backward_fake(grad_z_q, grad_codebook_loss, grad_commitment_loss, z, z_q, indices, num_codes, beta):
    return z.new_empty(z.shape), z.new_empty(num_codes, z.shape[1], dtype=torch.float32)


def _vq_setup(ctx, inputs, output):
    z, codebook, beta = inputs
    z_q, indices, _codebook_loss, _commitment_loss = output
    ctx.save_for_backward(z, z_q, indices)
    ctx.beta = beta
    ctx.num_codes, ctx.codebook_dtype = codebook.shape[0], codebook.dtype
    ctx.mark_non_differentiable(indices)


def _vq_backward(ctx, grad_z_q, _grad_indices, grad_codebook_loss, grad_commitment_loss):
    z, z_q, indices = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        grad_codebook_loss = None
    grad_z, grad_codebook = vq_backward(grad_z_q, grad_codebook_loss, grad_commitment_loss, z, z_q, indices,
                                        ctx.num_codes, ctx.beta)
    return grad_z, grad_codebook.to(ctx.codebook_dtype), None


vq_forward.register_autograd(_vq_backward, setup_context=_vq_setup)
