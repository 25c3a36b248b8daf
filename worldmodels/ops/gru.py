"""GRU cells and scans: the classic cell and DreamerV3's block-diagonal cell.

References (``*_ref``) are plain PyTorch and are the specification; the fast paths
and the public ops with ``impl=`` are built around them.

Classic cell (same maths as ``torch.nn.GRUCell``; optional LayerNorm on the gate
pre-activations, as used by VTA and DreamerV1/2 variants)::

    gi = x W_ih^T + b_ih,  gh = h W_hh^T + b_hh            (each [B, 3H]: r | z | n)
    gi, gh = LN_0(gi), LN_1(gh)                             (only with ln_weight/ln_bias)
    r = sigmoid(gi_r + gh_r);  z = sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n);  h' = (1 - z) * n + z * h

Block-diagonal cell (DreamerV3; G groups, H = G * Hg; x is the already normalised
input projection, shared by every group)::

    p_g = [h_g, x] W_g + b_g                                ([B, 3 Hg] per group g)
    p_g = LN(p_g)                                           (only with ln_weight/ln_bias)
    r, c, u = split(p_g, 3)
    reset = sigmoid(r);  cand = tanh(reset * c);  update = sigmoid(u - 1)
    h'_g = update * cand + (1 - update) * h_g

Public ops (``gru_cell``, ``gru_scan``, ``block_gru_cell``, ``block_gru_scan``) take
the references' arguments plus ``impl="auto" | "triton" | "cpp" | "ref"``:

- ``"triton"`` (CUDA; CPU tensors only under ``TRITON_INTERPRET=1``): per step one
  launch of a fused kernel (recurrent GEMM tile + gates) or, with LayerNorm, a
  GEMM-tile launch and a row-wise LayerNorm+gates launch (``kernels/gru*.py``).
- ``"cpp"`` (CPU): GEMMs in PyTorch (MKL), per-step gate maths fused in C++
  (``csrc/gru.cpp``), OpenMP over the batch rows.
- Both fused paths precompute the input projections of all steps in one GEMM, store
  the gate activations in forward, run the reverse recurrence in backward and do the
  weight-gradient GEMMs once over the whole sequence. They are registered as
  ``torch.library`` custom ops (``worldmodels::gru_scan``,
  ``worldmodels::block_gru_scan`` and their ``*_backward``), so ``torch.compile``
  traces through them. The cells run the scan ops with ``T = 1``.
- bf16/fp16 inputs are computed in float32 by the fused paths (states are returned in
  the input dtype); float64 is computed in float64. No double backward through them.
- NaN and inf inputs are not checked; every path propagates them as the reference does
  (NaN where the gate maths meets NaN, ``inf - inf`` or ``0 * inf``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _gru_custom  # registers the worldmodels::*gru_scan custom ops
from ._dispatch import resolve_impl
from ._gru_checks import check_block, check_classic

Tensor = torch.Tensor

# What impl="auto" prefers for CPU tensors (see benchmarks/bench_gru.py): the fused
# C++ scans beat the eager reference at every measured size; a single cell step
# is dominated by the custom op's fixed cost, so cells stay on the reference.
_CPU_AUTO = {"gru_scan": "cpp", "block_gru_scan": "cpp", "gru_cell": "ref", "block_gru_cell": "ref"}
_CPP_SYMBOL = {"gru": "GruClassicForwardF32", "block": "GruBlockForwardF32"}


def gru_cell_ref(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """One classic GRU step.

    Args:
        x: input ``[B, I]``.
        h: state ``[B, H]``.
        w_ih, w_hh: ``[3H, I]`` and ``[3H, H]`` (gate order r, z, n as in ``nn.GRUCell``).
        b_ih, b_hh: ``[3H]`` or None.
        ln_weight, ln_bias: ``[2, 3H]`` LayerNorm affine parameters for ``gi`` (row 0)
            and ``gh`` (row 1), or None for no LayerNorm.
    Returns:
        the next state ``[B, H]``.
    """
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    if ln_weight is not None:
        width = (gi.shape[-1],)
        gi = F.layer_norm(gi, width, ln_weight[0], None if ln_bias is None else ln_bias[0], eps)
        gh = F.layer_norm(gh, width, ln_weight[1], None if ln_bias is None else ln_bias[1], eps)
    r_i, z_i, n_i = gi.chunk(3, dim=-1)
    r_h, z_h, n_h = gh.chunk(3, dim=-1)
    r = torch.sigmoid(r_i + r_h)
    z = torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + r * n_h)
    return (1 - z) * n + z * h


def gru_scan_ref(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """The classic cell over a sequence of known inputs (teacher forcing).

    Args:
        x: inputs ``[B, T, I]``; h0: initial state ``[B, H]``; weights as in
            :func:`gru_cell_ref`.
    Returns:
        states after every step ``[B, T, H]`` (``out[:, t]`` follows ``x[:, t]``).
    """
    h, states = h0, []
    for t in range(x.shape[1]):
        h = gru_cell_ref(x[:, t], h, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps)
        states.append(h)
    return torch.stack(states, dim=1)


def block_gru_cell_ref(
    x: Tensor,
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """One step of DreamerV3's block-diagonal GRU.

    Args:
        x: input ``[B, I]``, shared by all groups.
        h: state ``[B, H]`` with ``H = G * Hg``.
        weight: ``[G, Hg + I, 3 Hg]``; rows ``:Hg`` act on the group's state, rows
            ``Hg:`` on the input. Output columns are r | c | u.
        bias: ``[G, 3 Hg]`` or None.
        ln_weight, ln_bias: ``[G, 3 Hg]`` LayerNorm affine parameters (LayerNorm over
            each group's ``3 Hg`` pre-activations), or None for no LayerNorm.
    Returns:
        the next state ``[B, H]``.
    """
    groups, hg = weight.shape[0], weight.shape[2] // 3
    h_groups = h.view(h.shape[0], groups, hg)
    inputs = torch.cat([h_groups, x.unsqueeze(1).expand(-1, groups, -1)], dim=-1)  # [B, G, Hg+I]
    parts = torch.einsum("bgi,gio->bgo", inputs, weight)
    if bias is not None:
        parts = parts + bias
    if ln_weight is not None:
        parts = F.layer_norm(parts, (3 * hg,), None, None, eps) * ln_weight
        if ln_bias is not None:
            parts = parts + ln_bias
    r, c, u = parts.chunk(3, dim=-1)
    reset = torch.sigmoid(r)
    cand = torch.tanh(reset * c)
    update = torch.sigmoid(u - 1)
    return (update * cand + (1 - update) * h_groups).reshape(h.shape)


def block_gru_scan_ref(
    x: Tensor,
    h0: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """The block-diagonal cell over known inputs ``x [B, T, I]`` from ``h0 [B, H]``;
    returns the states ``[B, T, H]``."""
    h, states = h0, []
    for t in range(x.shape[1]):
        h = block_gru_cell_ref(x[:, t], h, weight, bias, ln_weight, ln_bias, eps)
        states.append(h)
    return torch.stack(states, dim=1)


# ---------------------------------------------------------------- public ops

def _path(op: str, impl: str, x: Tensor, cell: str) -> str:
    return _resolve(op, impl, x.device, cell)


@torch.compiler.assume_constant_result
def _resolve(op: str, impl: str, device: torch.device, cell: str) -> str:
    # A constant for torch.compile: the choice depends only on the arguments here.
    return resolve_impl(op, impl, device, triton=True, cpp_symbol=_CPP_SYMBOL[cell], cpu_auto=_CPU_AUTO[op])


def _ops():
    return _gru_custom


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, ln_weight: Tensor | None = None, ln_bias: Tensor | None = None,
             eps: float = 1e-5, impl: str = "auto") -> Tensor:
    """One classic GRU step, as :func:`gru_cell_ref` (``x [B,I]``, ``h [B,H]`` -> ``[B,H]``),
    with the implementation chosen by ``impl``."""
    check_classic("gru_cell", x, h, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, sequence=False)
    path = _path("gru_cell", impl, x, "gru")
    if path == "ref":
        return gru_cell_ref(x, h, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps)
    out = _ops().gru_scan_op(x.unsqueeze(1), h, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, path)
    return out[0].squeeze(1)


def gru_scan(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, ln_weight: Tensor | None = None, ln_bias: Tensor | None = None,
             eps: float = 1e-5, impl: str = "auto") -> Tensor:
    """The classic cell over known inputs, as :func:`gru_scan_ref`
    (``x [B,T,I]``, ``h0 [B,H]`` -> states ``[B,T,H]``), fused over time on the fast paths."""
    check_classic("gru_scan", x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, sequence=True)
    path = _path("gru_scan", impl, x, "gru")
    if path == "ref":
        return gru_scan_ref(x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps)
    return _ops().gru_scan_op(x, h0, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, path)[0]


def block_gru_cell(x: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None = None,
                   ln_weight: Tensor | None = None, ln_bias: Tensor | None = None, eps: float = 1e-5,
                   impl: str = "auto") -> Tensor:
    """One block-diagonal GRU step, as :func:`block_gru_cell_ref`
    (``x [B,I]``, ``h [B,G*Hg]``, ``weight [G,Hg+I,3Hg]`` -> ``[B,G*Hg]``)."""
    check_block("block_gru_cell", x, h, weight, bias, ln_weight, ln_bias, eps, sequence=False)
    path = _path("block_gru_cell", impl, x, "block")
    if path == "ref":
        return block_gru_cell_ref(x, h, weight, bias, ln_weight, ln_bias, eps)
    out = _ops().block_gru_scan_op(x.unsqueeze(1), h, weight, bias, ln_weight, ln_bias, eps, path)
    return out[0].squeeze(1)


def block_gru_scan(x: Tensor, h0: Tensor, weight: Tensor, bias: Tensor | None = None,
                   ln_weight: Tensor | None = None, ln_bias: Tensor | None = None, eps: float = 1e-5,
                   impl: str = "auto") -> Tensor:
    """The block-diagonal cell over known inputs, as :func:`block_gru_scan_ref`
    (``x [B,T,I]``, ``h0 [B,H]`` -> states ``[B,T,H]``), fused over time on the fast paths."""
    check_block("block_gru_scan", x, h0, weight, bias, ln_weight, ln_bias, eps, sequence=True)
    path = _path("block_gru_scan", impl, x, "block")
    if path == "ref":
        return block_gru_scan_ref(x, h0, weight, bias, ln_weight, ln_bias, eps)
    return _ops().block_gru_scan_op(x, h0, weight, bias, ln_weight, ln_bias, eps, path)[0]
