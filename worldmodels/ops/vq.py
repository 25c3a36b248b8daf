"""Nearest-codebook vector quantisation (VQ-VAE, van den Oord et al. 2017), as the
IRIS tokenizer uses it, and the EMA codebook update of VQ-VAE-2 (Razavi et al. 2019).

For ``z [N, D]`` (leading dims flattened) and a codebook ``c [K, D]``::

    d_nk  = |z_n|^2 + |c_k|^2 - 2 z_n . c_k          (fp32; fp64 for fp64 inputs)
    i_n   = argmin_k d_nk                             (ties: the lowest k)
    z_q_n = c_{i_n}
    out   = z + sg(z_q - z)                           (straight-through)
    codebook_loss   = mean((z_q - sg(z))^2)
    commitment_loss = beta * mean((sg(z_q) - z)^2)

``mean`` is over all ``N * D`` elements, as in IRIS (``(z.detach() - z_q).pow(2).mean()
+ beta * (z - z_q.detach()).pow(2).mean()``). ``out`` has exactly the value ``c_{i_n}``
and the identity gradient to ``z`` (written ``sg(z_q) + z - sg(z)``, which equals
``z + sg(z_q - z)`` up to rounding). Gradients: ``dL/dz = dL/dout - 2 beta g_cm (z_q -
z) / (N D)``; ``dL/dc_k = sum_{n: i_n = k} 2 g_cb (z_q_n - z_n) / (N D)``.

References (``vq_ref`` and its parts) are the specification; :func:`vq` adds
``impl="auto" | "triton" | "cpp" | "ref"`` (no C++ path; Triton never stores the
``N x K`` distances).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._dispatch import resolve_impl

Tensor = torch.Tensor


class VQOutput(NamedTuple):
    z_q: Tensor              # [..., D] like z: value codebook[indices], identity gradient to z
    indices: Tensor          # [...] int64
    codebook_loss: Tensor    # scalar: mean((z_q - sg(z))^2)
    commitment_loss: Tensor  # scalar: beta * mean((sg(z_q) - z)^2)


def _compute_dtype(z: Tensor, codebook: Tensor) -> torch.dtype:
    """The references' maths dtype: fp32, or fp64 when an input is fp64 (so that
    gradcheck can test them); the Triton path always computes in fp32."""
    return torch.float64 if torch.float64 in (z.dtype, codebook.dtype) else torch.float32


def nearest_code_ref(z: Tensor, codebook: Tensor) -> Tensor:
    """``argmin_k |z_n|^2 + |c_k|^2 - 2 z_n . c_k`` (ties: the lowest k), materialising
    the ``[N, K]`` distances. ``z [..., D]``, ``codebook [K, D]``; returns int64 ``[...]``."""
    dtype = _compute_dtype(z, codebook)
    flat = z.detach().reshape(-1, codebook.shape[1]).to(dtype)
    codes = codebook.detach().to(dtype)
    dist = flat.square().sum(1, keepdim=True) + codes.square().sum(1) - 2 * (flat @ codes.T)
    return dist.argmin(dim=1).reshape(z.shape[:-1])


def quantize_ref(z: Tensor, codebook: Tensor, indices: Tensor, beta: float = 0.25) -> VQOutput:
    """The outputs of :func:`vq_ref` for given ``indices [...]`` (``z [..., D]``): the
    straight-through ``z_q`` in the dtype of ``z`` and both losses (maths and losses in
    fp32, fp64 for fp64 inputs)."""
    dtype = _compute_dtype(z, codebook)
    flat = z.reshape(-1, codebook.shape[1]).to(dtype)
    z_q = codebook.to(dtype)[indices.reshape(-1)]
    codebook_loss = (z_q - flat.detach()).square().mean()
    commitment_loss = beta * (z_q.detach() - flat).square().mean()
    # Parenthesised so that the forward value is exactly z_q (z_q + 0).
    out = z_q.detach() + (flat - flat.detach())
    return VQOutput(out.to(z.dtype).reshape(z.shape), indices, codebook_loss, commitment_loss)


def vq_ref(z: Tensor, codebook: Tensor, beta: float = 0.25) -> VQOutput:
    """Nearest-codebook quantisation with straight-through gradients (IRIS's tokenizer).

    Args:
        z: ``[..., D]`` floating (fp32/bf16/fp16/fp64), no NaN.
        codebook: ``[K, D]`` floating, on the device of ``z``, ``K >= 1``.
        beta: commitment weight >= 0.
    Returns:
        :class:`VQOutput` ``(z_q [..., D] like z, indices [...] int64, codebook_loss,
        commitment_loss)``; distances and losses in fp32 (fp64 for fp64 inputs), see
        the module docstring for the equations.
    """
    check_vq(z, codebook, beta)
    return quantize_ref(z, codebook, nearest_code_ref(z, codebook), beta)


# ------------------------------------------------------------------ checks


def _check_floating(name: str, what: str, tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: {what} must be floating point, got dtype {tensor.dtype}; cast with .float().")


def _check_codebook(name: str, codebook: Tensor) -> None:
    _check_floating(name, "codebook", codebook)
    if codebook.dim() != 2 or codebook.shape[1] < 1:
        raise ValueError(f"{name}: codebook must be [K, D] with D >= 1, got shape {list(codebook.shape)}.")
    if codebook.shape[0] == 0:
        raise ValueError(f"{name}: the codebook is empty (K=0); it needs at least one code.")


def _check_vectors(name: str, z: Tensor, codebook: Tensor) -> None:
    """``z [..., D]`` floating, non-empty, D and device matching the codebook."""
    _check_floating(name, "z", z)
    dim = codebook.shape[1]
    if z.dim() < 1 or z.shape[-1] != dim:
        raise ValueError(f"{name}: z has shape {list(z.shape)} but the codebook has D={dim}; "
                         f"z must be [..., {dim}] (channels last).")
    if z.numel() == 0:
        raise ValueError(f"{name}: z has no vectors (shape {list(z.shape)}).")
    if z.device != codebook.device:
        raise ValueError(f"{name}: z is on {z.device}, the codebook on {codebook.device}; move them to one device.")


def _check_no_nan(name: str, z: Tensor) -> None:
    """One device sync; skipped while ``torch.compile`` traces."""
    if not torch.compiler.is_compiling() and bool(torch.isnan(z).any()):
        raise ValueError(f"{name}: z contains NaN; the encoder output is invalid (check the loss and learning rate).")


def check_vq(z: Tensor, codebook: Tensor, beta: float, name: str = "vq") -> None:
    """Raise TypeError/ValueError for inputs :func:`vq` cannot quantise, NaN in ``z``
    included (that check reads one flag back from the device; it is skipped while
    ``torch.compile`` traces)."""
    _check_codebook(name, codebook)
    _check_vectors(name, z, codebook)
    if not math.isfinite(float(beta)) or beta < 0:
        raise ValueError(f"{name}: beta={beta} must be a finite commitment weight >= 0.")
    _check_no_nan(name, z)


# -------------------------------------------------------------------- public op


def _triton_dtypes_ok(z: Tensor, codebook: Tensor) -> bool:
    return torch.float64 not in (z.dtype, codebook.dtype)


def vq(z: Tensor, codebook: Tensor, beta: float = 0.25, *, impl: str = "auto") -> VQOutput:
    """Nearest-codebook vector quantisation with straight-through gradients; same maths
    as :func:`vq_ref` (see the module docstring).

    The Triton path computes the distances in tiles over the codebook with a running
    min/argmin per row (never storing the ``N x K`` matrix), gathers ``z_q`` and the
    squared error in the same kernel, and has a fused backward pass.

    Args:
        z: ``[..., D]`` floating (fp32/bf16/fp16; fp64 runs the reference); checked for
            NaN (one device sync, skipped under ``torch.compile``).
        codebook: ``[K, D]`` floating on the device of ``z`` (it may have another dtype;
            the distances are accumulated in fp32).
        beta: commitment weight >= 0 (IRIS: 0.25).
        impl: "auto" (Triton on CUDA, the reference on CPU), "triton" or "ref"; there is
            no "cpp" path.
    Returns:
        :class:`VQOutput` ``(z_q [..., D] like z, indices [...] int64, codebook_loss,
        commitment_loss)``, the losses fp32 scalars (fp64 on the fp64 reference).
    """
    check_vq(z, codebook, beta)
    path = resolve_impl("vq", impl, z.device, triton=True, cpp_symbol=None, cpu_auto="ref")
    if path == "triton" and not _triton_dtypes_ok(z, codebook):
        if impl == "triton":
            raise TypeError("vq: impl='triton' computes in fp32 and takes fp32/bf16/fp16 inputs; "
                            "use impl='ref' for float64.")
        path = "ref"
    if path == "ref":
        return quantize_ref(z, codebook, nearest_code_ref(z, codebook), beta)
    from . import _vq_custom as custom

    flat = z.reshape(-1, codebook.shape[1])
    z_q, indices, codebook_loss, commitment_loss = custom.vq_forward(flat, codebook, float(beta))
    return VQOutput(z_q.reshape(z.shape), indices.reshape(z.shape[:-1]), codebook_loss, commitment_loss)


# ------------------------------------------------------------ EMA codebook


def _check_indices(name: str, indices: Tensor, z: Tensor, codes: int) -> None:
    if not isinstance(indices, Tensor) or indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: indices must be an int32/int64 tensor (the tokens of vq).")
    if indices.shape != z.shape[:-1]:
        raise ValueError(f"{name}: indices have shape {list(indices.shape)}, z {list(z.shape)}; "
                         "indices must be z's leading shape.")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codes):
        raise ValueError(f"{name}: indices must lie in [0, K={codes}).")


def _check_ema_state(name: str, codebook: Tensor, ema_count: Tensor, ema_sum: Tensor | None) -> None:
    codes = codebook.shape[0]
    _check_floating(name, "ema_count", ema_count)
    if ema_count.shape != (codes,):
        raise ValueError(f"{name}: ema_count has shape {list(ema_count.shape)}; it must be [K={codes}].")
    if ema_sum is not None:
        _check_floating(name, "ema_sum", ema_sum)
        if ema_sum.shape != codebook.shape:
            raise ValueError(f"{name}: ema_sum has shape {list(ema_sum.shape)}; it must be the codebook's "
                             f"{list(codebook.shape)}.")


@torch.no_grad()
def vq_ema_update_(codebook: Tensor, ema_count: Tensor, ema_sum: Tensor, z: Tensor, indices: Tensor,
                   decay: float = 0.99, eps: float = 1e-5, *,
                   reduce: Callable[[Tensor], None] | None = None) -> None:
    """EMA codebook update with Laplace smoothing (VQ-VAE appendix; VQ-VAE-2), in place.

    With ``n_k = #{n: i_n = k}`` and ``s_k = sum_{n: i_n = k} z_n``::

        ema_count <- decay * ema_count + (1 - decay) * n
        ema_sum   <- decay * ema_sum   + (1 - decay) * s
        m = sum_k ema_count_k;  count_k = (ema_count_k + eps) / (m + K eps) * m
        codebook_k <- ema_sum_k / count_k

    (no zero-debiasing; ``ema_count`` keeps the unsmoothed average). Initialise
    ``ema_count`` with ones and ``ema_sum`` with a copy of the codebook, so that
    unused codes keep their place.

    Args:
        codebook: ``[K, D]``; ema_count: ``[K]``; ema_sum: ``[K, D]`` (floating, the
            statistics' dtype is the maths dtype).
        z: ``[..., D]`` the quantised vectors (no gradient flows); indices: their codes
            ``[...]`` (int64, e.g. ``vq(...).indices``).
        decay: in [0, 1). eps: smoothing > 0.
        reduce: sums the batch's ``[n, s]`` (one flat tensor) in place over the processes
            of a data-parallel run before they enter the averages (an all-reduce), so that
            every process updates with the statistics of the global batch; None: this batch's.
    Checking that the indices lie in ``[0, K)`` reads two numbers back from the device.
    """
    name = "vq_ema_update_"
    _check_codebook(name, codebook)
    _check_vectors(name, z, codebook)
    _check_ema_state(name, codebook, ema_count, ema_sum)
    _check_indices(name, indices, z, codebook.shape[0])
    if not 0.0 <= decay < 1.0 or not eps > 0:
        raise ValueError(f"{name}: need 0 <= decay < 1 and eps > 0, got decay={decay}, eps={eps}.")
    codes = codebook.shape[0]
    flat, index = z.reshape(-1, codebook.shape[1]).to(ema_sum.dtype), indices.reshape(-1)
    counts = torch.bincount(index, minlength=codes).to(ema_count.dtype)
    sums = torch.zeros_like(ema_sum).index_add_(0, index, flat)
    if reduce is not None:
        statistics = torch.cat([counts.to(ema_sum.dtype), sums.reshape(-1)])
        reduce(statistics)
        counts, sums = statistics[:codes].to(ema_count.dtype), statistics[codes:].view_as(ema_sum)
    ema_count.mul_(decay).add_(counts, alpha=1.0 - decay)
    ema_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    total = ema_count.sum()
    smoothed = (ema_count + eps) / (total + codes * eps) * total
    codebook.copy_(ema_sum / smoothed.unsqueeze(1).to(ema_sum.dtype))


def _random_rows(rows: int, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` row numbers in [0, rows): distinct when there are enough rows."""
    device = generator.device if generator is not None else "cpu"
    if rows >= count:
        return torch.randperm(rows, generator=generator, device=device)[:count]
    return torch.randint(rows, (count,), generator=generator, device=device)


@torch.no_grad()
def restart_dead_codes_(codebook: Tensor, ema_count: Tensor, z: Tensor, threshold: float = 1.0,
                        generator: torch.Generator | None = None, *, ema_sum: Tensor | None = None) -> int:
    """Replace the codes whose ``ema_count`` fell below ``threshold`` with random rows of
    ``z`` (distinct rows when ``z`` has enough), in place (Jukebox-style restarts).

    A restarted code's ``ema_count`` is set to ``threshold`` and, when ``ema_sum`` is
    given, its ``ema_sum`` to ``threshold * new code``, so that the next
    :func:`vq_ema_update_` starts from the new code. A code that attracts fewer than
    ``threshold`` vectors per step is restarted again.

    Args:
        codebook: ``[K, D]``; ema_count: ``[K]``; z: ``[..., D]`` (e.g. the encoder's
            outputs of this batch); threshold: >= 0 (0 restarts nothing).
        generator: draws the rows (on its device; torch's global CPU generator if None).
        ema_sum: ``[K, D]`` EMA sums to reset with the codes, or None.
    Returns:
        How many codes were restarted (reads the count back from the device).
    """
    name = "restart_dead_codes_"
    _check_codebook(name, codebook)
    _check_vectors(name, z, codebook)
    _check_ema_state(name, codebook, ema_count, ema_sum)
    if not math.isfinite(float(threshold)) or threshold < 0:
        raise ValueError(f"{name}: threshold={threshold} must be finite and >= 0.")
    dead = (ema_count < threshold).nonzero().flatten()
    count = dead.numel()
    if count == 0:
        return 0
    flat = z.detach().reshape(-1, codebook.shape[1])
    new_codes = flat[_random_rows(flat.shape[0], count, generator).to(flat.device)]
    codebook[dead] = new_codes.to(codebook.dtype)
    ema_count[dead] = threshold
    if ema_sum is not None:
        ema_sum[dead] = threshold * new_codes.to(ema_sum.dtype)
    return count
