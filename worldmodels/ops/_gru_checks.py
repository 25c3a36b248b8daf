"""Input checks of the public GRU ops: ranks, sizes, dtypes and devices, with
messages that name the bad argument, what it should be and what it is."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _check_common(op: str, named: dict[str, Tensor | None], eps: float) -> None:
    """Floating dtype, one dtype and one device for every given tensor; eps > 0."""
    x = named["x"]
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must have a floating dtype, got {t.dtype}.")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but x has {x.dtype}; cast them to one dtype.")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}; move them to one device.")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}.")


def _check_shape(op: str, name: str, t: Tensor | None, want: list[int]) -> None:
    if t is not None and _shape(t) != want:
        raise ValueError(f"{op}: {name} must have shape {want}, got {_shape(t)}.")


def _check_x_h(op: str, x: Tensor, h: Tensor, sequence: bool) -> tuple[int, int, int]:
    """``(batch, inputs, hidden)`` after checking the ranks and the batch sizes."""
    x_rank, x_name = (3, "[B, T, I]") if sequence else (2, "[B, I]")
    h_name = "h0" if sequence else "h"
    if x.dim() != x_rank:
        raise ValueError(f"{op}: x must be {x_name}, got shape {_shape(x)}.")
    if h.dim() != 2:
        raise ValueError(f"{op}: {h_name} must be [B, H], got shape {_shape(h)}.")
    if x.shape[0] != h.shape[0]:
        raise ValueError(f"{op}: x has batch {x.shape[0]} but {h_name} has batch {h.shape[0]}.")
    if x.shape[0] == 0 or h.shape[1] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{op}: batch, input and hidden sizes must be >= 1, got x {_shape(x)}, {h_name} {_shape(h)}.")
    if sequence and x.shape[1] == 0:
        raise ValueError(f"{op}: the sequence is empty (T = 0, x has shape {_shape(x)}); pass at least one step.")
    return x.shape[0], x.shape[-1], h.shape[1]


def _check_ln_pair(op: str, ln_weight: Tensor | None, ln_bias: Tensor | None) -> None:
    if ln_bias is not None and ln_weight is None:
        raise ValueError(f"{op}: ln_bias was given without ln_weight; pass both (or ln_weight alone) for LayerNorm.")


def check_classic(op: str, x, h, w_ih, w_hh, b_ih, b_hh, ln_weight, ln_bias, eps, sequence: bool) -> None:
    """Checks the arguments of :func:`gru_cell` (``sequence=False``) or :func:`gru_scan`."""
    h_name = "h0" if sequence else "h"
    named = {"x": x, h_name: h, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh,
             "ln_weight": ln_weight, "ln_bias": ln_bias}
    for name in ("x", h_name, "w_ih", "w_hh"):
        if named[name] is None:
            raise TypeError(f"{op}: {name} is required.")
    _check_common(op, named, eps)
    _, inputs, hidden = _check_x_h(op, x, h, sequence)
    _check_shape(op, "w_ih", w_ih, [3 * hidden, inputs])
    _check_shape(op, "w_hh", w_hh, [3 * hidden, hidden])
    _check_shape(op, "b_ih", b_ih, [3 * hidden])
    _check_shape(op, "b_hh", b_hh, [3 * hidden])
    _check_ln_pair(op, ln_weight, ln_bias)
    _check_shape(op, "ln_weight", ln_weight, [2, 3 * hidden])
    _check_shape(op, "ln_bias", ln_bias, [2, 3 * hidden])


def check_block(op: str, x, h, weight, bias, ln_weight, ln_bias, eps, sequence: bool) -> None:
    """Checks the arguments of :func:`block_gru_cell` or :func:`block_gru_scan`."""
    h_name = "h0" if sequence else "h"
    for name, t in (("x", x), (h_name, h), ("weight", weight)):
        if t is None:
            raise TypeError(f"{op}: {name} is required.")
    named = {"x": x, h_name: h, "weight": weight, "bias": bias, "ln_weight": ln_weight, "ln_bias": ln_bias}
    _check_common(op, named, eps)
    _, inputs, hidden = _check_x_h(op, x, h, sequence)
    if weight.dim() != 3 or weight.shape[0] < 1 or weight.shape[2] % 3 != 0:
        raise ValueError(f"{op}: weight must be [G, Hg + I, 3 Hg] with G >= 1, got shape {_shape(weight)}.")
    groups, hg = weight.shape[0], weight.shape[2] // 3
    if groups * hg != hidden:
        raise ValueError(
            f"{op}: weight {_shape(weight)} implies hidden size G * Hg = {groups} * {hg} = {groups * hg}, "
            f"but {h_name} has {hidden} units; expected weight shape {[groups, hidden // groups + inputs, 3 * (hidden // groups)]}."
        )
    _check_shape(op, "weight", weight, [groups, hg + inputs, 3 * hg])
    _check_shape(op, "bias", bias, [groups, 3 * hg])
    _check_ln_pair(op, ln_weight, ln_bias)
    _check_shape(op, "ln_weight", ln_weight, [groups, 3 * hg])
    _check_shape(op, "ln_bias", ln_bias, [groups, 3 * hg])
