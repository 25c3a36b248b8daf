"""Triton kernels of nearest-codebook vector quantisation (see ``worldmodels.ops.vq``).

* Forward: one program per block of ``BLOCK_N`` rows of ``z [N, D]``. It loops over
  the codebook in tiles of ``BLOCK_K`` codes; per tile, ``z . c`` is a ``tl.dot``
  accumulated in fp32 over ``D`` in chunks of ``BLOCK_D``, the distances
  ``|z|^2 + |c|^2 - 2 z . c`` of the tile are formed in registers and a running
  ``(min, argmin)`` per row is updated (a strict ``<`` across tiles and a left tie
  break inside a tile keep the lowest index on ties). The ``N x K`` distance matrix
  is never stored. The same program then gathers ``z_q = codebook[index]`` and the
  row's squared error ``sum_d (z_q - z)^2`` (fp32).
* Backward: one program per block of rows, a loop over ``D``: ``diff = z_q - z``
  from the saved ``z_q`` (so in-place codebook updates after the forward pass do
  not matter), ``grad_z = grad_z_q - 2 beta g_commit / (N D) diff`` and an fp32
  ``atomic_add`` of ``2 g_codebook / (N D) diff`` into the code's row of the
  codebook's gradient (the order of those sums is not fixed). With mixed dtypes,
  ``z_q`` is the code rounded to the dtype of ``z``.

How ``z . c`` is computed (``DOT``): bf16/fp16 tiles of one dtype with tensor cores
and fp32 accumulation (their products are exact in fp32); fp32 or mixed dtypes from
fp32 tiles in IEEE fp32 (no TF32), so the chosen codes match the reference's fp32
matmul; under the interpreter, whose ``tl.dot`` is NumPy's matmul (not
position-independent, so exact duplicate codes could differ in the last bit, and
unusable for bf16), as fp32 products summed per pair. Only jit functions and their
launchers live here; the ops import this module lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DOT_NATIVE, DOT_IEEE, DOT_SUM = 0, 1, 2


def _interpreting(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


# --------------------------------------------------------------------------- helpers


@triton.jit
def _row_sq_norm(z_ptr, row, row_ok, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """``sum_d z[row, d]^2`` in fp32, ``[BLOCK_N]``."""
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        col = d0 + tl.arange(0, BLOCK_D)
        valid = row_ok[:, None] & (col[None, :] < D)
        x = tl.load(z_ptr + row[:, None] * D + col[None, :], mask=valid, other=0.0).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    return acc


@triton.jit
def _tile_dot(z_ptr, code_ptr, row, row_ok, code, code_ok, D,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
              DOT: tl.constexpr):
    """``z[row] . codebook[code]`` in fp32, ``[BLOCK_N, BLOCK_K]`` (padding gives 0)."""
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        col = d0 + tl.arange(0, BLOCK_D)
        col_ok = col[None, :] < D
        x = tl.load(z_ptr + row[:, None] * D + col[None, :], mask=row_ok[:, None] & col_ok, other=0.0)
        c = tl.load(code_ptr + code[:, None] * D + col[None, :], mask=code_ok[:, None] & col_ok, other=0.0)
        if DOT == 0:
            acc = tl.dot(x, tl.trans(c), acc)
        elif DOT == 1:
            acc = tl.dot(x.to(tl.float32), tl.trans(c.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc += tl.sum(x.to(tl.float32)[:, None, :] * c.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def _gather_codes(z_ptr, code_ptr, zq_ptr, sq_err_ptr, row, row_ok, index, D,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Write ``z_q[row] = codebook[index]`` and ``sq_err[row] = sum_d (z_q - z)^2``."""
    err = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        col = d0 + tl.arange(0, BLOCK_D)
        valid = row_ok[:, None] & (col[None, :] < D)
        q = tl.load(code_ptr + index[:, None] * D + col[None, :], mask=valid, other=0.0)
        x = tl.load(z_ptr + row[:, None] * D + col[None, :], mask=valid, other=0.0).to(tl.float32)
        tl.store(zq_ptr + row[:, None] * D + col[None, :], q.to(zq_ptr.dtype.element_ty), mask=valid)
        diff = q.to(tl.float32) - x
        err += tl.sum(diff * diff, axis=1)
    tl.store(sq_err_ptr + row, err, mask=row_ok)


# ---------------------------------------------------------------------------- kernels


@triton.jit
def _vq_fwd_kernel(
    z_ptr, code_ptr, code_sq_ptr, zq_ptr, index_ptr, sq_err_ptr, N, K, D,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = row < N
    z_sq = _row_sq_norm(z_ptr, row, row_ok, D, BLOCK_N, BLOCK_D)
    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for k0 in range(0, K, BLOCK_K):
        code = k0 + tl.arange(0, BLOCK_K)
        code_ok = code < K
        dot = _tile_dot(z_ptr, code_ptr, row, row_ok, code, code_ok, D, BLOCK_N, BLOCK_K, BLOCK_D, DOT)
        c_sq = tl.load(code_sq_ptr + code, mask=code_ok, other=0.0)
        dist = z_sq[:, None] + c_sq[None, :] - 2.0 * dot
        dist = tl.where(code_ok[None, :], dist, float("inf"))
        tile_best = tl.min(dist, axis=1)
        tile_index = tl.argmin(dist, axis=1, tie_break_left=True).to(tl.int64) + k0
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index, best_index)
    tl.store(index_ptr + row, best_index, mask=row_ok)
    _gather_codes(z_ptr, code_ptr, zq_ptr, sq_err_ptr, row, row_ok, best_index, D, BLOCK_N, BLOCK_D)


@triton.jit
def _vq_bwd_kernel(
    grad_zq_ptr, grad_codebook_loss_ptr, grad_commitment_ptr, z_ptr, zq_ptr, index_ptr,
    grad_z_ptr, grad_code_ptr, N, D, codebook_scale, commitment_scale,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GZQ: tl.constexpr, HAS_GCB: tl.constexpr, HAS_GCM: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = row < N
    index = tl.load(index_ptr + row, mask=row_ok, other=0)
    g_codebook = 0.0
    g_commit = 0.0
    if HAS_GCB:
        g_codebook = tl.load(grad_codebook_loss_ptr).to(tl.float32) * codebook_scale
    if HAS_GCM:
        g_commit = tl.load(grad_commitment_ptr).to(tl.float32) * commitment_scale
    for d0 in range(0, D, BLOCK_D):
        col = d0 + tl.arange(0, BLOCK_D)
        valid = row_ok[:, None] & (col[None, :] < D)
        offsets = row[:, None] * D + col[None, :]
        x = tl.load(z_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        diff = tl.load(zq_ptr + offsets, mask=valid, other=0.0).to(tl.float32) - x
        grad = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        if HAS_GZQ:
            grad += tl.load(grad_zq_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        if HAS_GCM:
            grad -= g_commit * diff
        tl.store(grad_z_ptr + offsets, grad.to(grad_z_ptr.dtype.element_ty), mask=valid)
        if HAS_GCB:
            tl.atomic_add(grad_code_ptr + index[:, None] * D + col[None, :], g_codebook * diff, mask=valid)


# -------------------------------------------------------------------------- launchers


def _dot_mode(z: torch.Tensor, codebook: torch.Tensor) -> int:
    if _interpreting(z):
        return DOT_SUM
    if z.dtype != codebook.dtype or z.dtype == torch.float32:
        return DOT_IEEE
    return DOT_NATIVE


def _forward_blocks(dim: int, z: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_D, num_warps). ``tl.dot`` needs every block >= 16.
    Under the interpreter ``BLOCK_D`` is 16 so that small tests cross chunk edges and
    the ``[BLOCK_N, BLOCK_K, BLOCK_D]`` products stay small."""
    if _interpreting(z):
        return 64, 64, 16, 4
    return 64, 64, max(16, min(64, triton.next_power_of_2(dim))), 4


def _backward_blocks(dim: int, z: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps)."""
    if _interpreting(z):
        return 64, 16, 4
    block_d = max(16, min(128, triton.next_power_of_2(dim)))
    return max(1, 4096 // block_d), block_d, 4


def vq_forward(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. ``z [N, D]``, ``codebook [K, D]`` (made contiguous).
    Returns ``(z_q [N, D] in the dtype of z, indices [N] int64, sq_err [N] fp32)``; with
    mixed dtypes the codes are rounded to the dtype of ``z`` by torch, after the kernel."""
    z, codebook = z.contiguous(), codebook.contiguous()
    rows, dim = z.shape
    codes = codebook.shape[0]
    code_sq = codebook.to(torch.float32).square().sum(1)
    z_q = torch.empty(z.shape, device=z.device, dtype=codebook.dtype)  # exact codes
    index = torch.empty(rows, device=z.device, dtype=torch.int64)
    sq_err = torch.empty(rows, device=z.device, dtype=torch.float32)
    block_n, block_k, block_d, warps = _forward_blocks(dim, z)
    grid = (triton.cdiv(rows, block_n),)
    _vq_fwd_kernel[grid](
        z, codebook, code_sq, z_q, index, sq_err, rows, codes, dim,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=_dot_mode(z, codebook),
        num_warps=warps,
    )
    return z_q.to(z.dtype), index, sq_err


def vq_backward(
    grad_z_q: torch.Tensor | None, grad_codebook_loss: torch.Tensor | None,
    grad_commitment: torch.Tensor | None, z: torch.Tensor, z_q: torch.Tensor,
    index: torch.Tensor, codes: int, beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel; missing gradients count as zero. ``z``, ``z_q``
    ``[N, D]``, ``index [N]``. Returns ``(grad_z [N, D] like z, grad_codebook [codes, D]
    fp32)``."""
    z, z_q, index = z.contiguous(), z_q.contiguous(), index.contiguous()
    rows, dim = z.shape
    grad_z = torch.empty_like(z)
    grad_code = torch.zeros(codes, dim, device=z.device, dtype=torch.float32)
    gzq = grad_z_q.contiguous() if grad_z_q is not None else None
    scale = 2.0 / (rows * dim)
    block_n, block_d, warps = _backward_blocks(dim, z)
    grid = (triton.cdiv(rows, block_n),)
    _vq_bwd_kernel[grid](
        gzq if gzq is not None else z,
        grad_codebook_loss if grad_codebook_loss is not None else grad_code,
        grad_commitment if grad_commitment is not None else grad_code,
        z, z_q, index, grad_z, grad_code, rows, dim, scale, beta * scale,
        BLOCK_N=block_n, BLOCK_D=block_d, HAS_GZQ=gzq is not None,
        HAS_GCB=grad_codebook_loss is not None, HAS_GCM=grad_commitment is not None,
        num_warps=warps,
    )
    return grad_z, grad_code
