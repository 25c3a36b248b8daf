"""Input checks of the RSSM ops: shapes, dtypes and devices, with messages that
name the bad value and the expected shape (see :mod:`worldmodels.ops.rssm`)."""

from __future__ import annotations

from typing import NamedTuple

import torch

Tensor = torch.Tensor


class RSSMDims(NamedTuple):
    """Sizes read off an :class:`~worldmodels.ops.rssm.RSSMParams`."""

    stoch: int    # S, categorical variables
    classes: int  # K, classes per variable
    inputs: int   # I, width of the input projection
    groups: int   # G, GRU blocks
    deter: int    # H = G * Hg
    hidden: int   # U, width of the prior/posterior hidden layers
    embed: int    # E, embedding width
    action: int   # A, action width (0 allowed)


def _expect(name: str, tensor, shape: tuple[int, ...], meaning: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"params.{name} must be a tensor of shape {shape} {meaning}, got {type(tensor).__name__}.")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"params.{name} must have shape {shape} {meaning}, got {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise TypeError(f"params.{name} must be floating, got {tensor.dtype}.")


def params_dims(params) -> RSSMDims:
    """Check every tensor of ``params`` against the others and return the sizes."""
    s, k = int(params.stoch), int(params.classes)
    if s < 1 or k < 2:
        raise ValueError(f"params.stoch={s} must be >= 1 and params.classes={k} >= 2.")
    for name in ("in_weight", "gru_weight", "prior_weight", "post_embed_weight"):
        value = getattr(params, name)
        rank = 3 if name == "gru_weight" else 2
        if not isinstance(value, Tensor) or value.dim() != rank:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"params.{name} must be a rank-{rank} tensor, got {got}.")
    inputs, width = params.in_weight.shape
    action = width - s * k
    if action < 0:
        raise ValueError(
            f"params.in_weight must have shape [I, S*K + A] = [{inputs}, {s * k} + A], got {tuple(params.in_weight.shape)}."
        )
    groups, rows, cols = params.gru_weight.shape
    if cols % 3 or rows != cols // 3 + inputs:
        raise ValueError(
            f"params.gru_weight must have shape [G, Hg + I, 3 Hg] with I={inputs}, got {tuple(params.gru_weight.shape)}."
        )
    hg = cols // 3
    dims = RSSMDims(s, k, inputs, groups, groups * hg, params.prior_weight.shape[0],
                    params.post_embed_weight.shape[1], action)
    _check_shapes(params, dims, hg)
    return dims


def _check_shapes(params, d: RSSMDims, hg: int) -> None:
    sk = d.stoch * d.classes
    expected = {
        "in_weight": ((d.inputs, sk + d.action), "[I, S*K + A]"),
        "in_bias": ((d.inputs,), "[I]"),
        "in_norm_weight": ((d.inputs,), "[I]"),
        "in_norm_bias": ((d.inputs,), "[I]"),
        "gru_weight": ((d.groups, hg + d.inputs, 3 * hg), "[G, Hg + I, 3 Hg]"),
        "gru_bias": ((d.groups, 3 * hg), "[G, 3 Hg]"),
        "gru_norm_weight": ((d.groups, 3 * hg), "[G, 3 Hg]"),
        "gru_norm_bias": ((d.groups, 3 * hg), "[G, 3 Hg]"),
        "prior_weight": ((d.hidden, d.deter), "[U, H]"),
        "prior_bias": ((d.hidden,), "[U]"),
        "prior_norm_weight": ((d.hidden,), "[U]"),
        "prior_norm_bias": ((d.hidden,), "[U]"),
        "prior_out_weight": ((sk, d.hidden), "[S*K, U]"),
        "prior_out_bias": ((sk,), "[S*K]"),
        "post_weight": ((d.hidden, d.deter), "[U, H]"),
        "post_embed_weight": ((d.hidden, d.embed), "[U, E]"),
        "post_bias": ((d.hidden,), "[U]"),
        "post_norm_weight": ((d.hidden,), "[U]"),
        "post_norm_bias": ((d.hidden,), "[U]"),
        "post_out_weight": ((sk, d.hidden), "[S*K, U]"),
        "post_out_bias": ((sk,), "[S*K]"),
        "initial_deter": ((d.deter,), "[H]"),
    }
    if getattr(params, "initial_stoch", None) is not None:
        expected["initial_stoch"] = ((d.stoch, d.classes), "[S, K]")
    device = params.in_weight.device
    for name, (shape, meaning) in expected.items():
        tensor = getattr(params, name)
        _expect(name, tensor, shape, meaning)
        if tensor.device != device:
            raise ValueError(f"params.{name} is on {tensor.device}, params.in_weight on {device}; move them together.")


def _check_float(name: str, tensor, rank: int, meaning: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a tensor {meaning}, got {type(tensor).__name__}.")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have rank {rank} {meaning}, got shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be floating {meaning}, got {tensor.dtype}.")


def check_is_first(is_first, batch: int, steps: int) -> Tensor:
    """``is_first`` as bool ``[B, T]``; accepts bool or 0/1 integer/float tensors."""
    if not isinstance(is_first, Tensor):
        raise TypeError(f"is_first must be a bool tensor [B, T], got {type(is_first).__name__}.")
    if tuple(is_first.shape) != (batch, steps):
        raise ValueError(f"is_first must have shape [B, T] = {(batch, steps)}, got {tuple(is_first.shape)}.")
    if is_first.dtype == torch.bool:
        return is_first
    if is_first.is_complex() or not bool(((is_first == 0) | (is_first == 1)).all()):
        raise ValueError(f"is_first must be bool or hold only 0/1, got dtype {is_first.dtype} with other values.")
    return is_first != 0


def check_state(state, batch: int, dims: RSSMDims) -> None:
    """``state`` is None or ``(deter [B, H], stoch [B, S, K])``."""
    if state is None:
        return
    if not isinstance(state, (tuple, list)) or len(state) < 2:
        raise TypeError("state must be (deter [B, H], stoch [B, S, K]) or None.")
    deter, stoch = state[0], state[1]
    _check_float("state deter", deter, 2, "[B, H]")
    _check_float("state stoch", stoch, 3, "[B, S, K]")
    if tuple(deter.shape) != (batch, dims.deter):
        raise ValueError(f"state deter must have shape [B, H] = {(batch, dims.deter)}, got {tuple(deter.shape)}.")
    want = (batch, dims.stoch, dims.classes)
    if tuple(stoch.shape) != want:
        raise ValueError(f"state stoch must have shape [B, S, K] = {want}, got {tuple(stoch.shape)}.")


def check_noise(noise, seed, shape: tuple[int, ...]) -> None:
    if noise is not None and seed is not None:
        raise ValueError("give either seed or noise, not both.")
    if noise is None:
        return
    if not isinstance(noise, Tensor) or tuple(noise.shape) != shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise must be uniform [0, 1) of shape {shape}, got {got}.")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be floating, got {noise.dtype}.")


def check_observe(embed, action, is_first, params, state, noise, seed) -> tuple[RSSMDims, Tensor]:
    """Check the inputs of ``rssm_observe``; returns the sizes and ``is_first`` as bool."""
    _check_float("embed", embed, 3, "[B, T, E]")
    _check_float("action", action, 3, "[B, T, A]")
    batch, steps = embed.shape[:2]
    if steps == 0 or batch == 0:
        raise ValueError(f"embed must have B >= 1 and T >= 1, got shape {tuple(embed.shape)}.")
    if tuple(action.shape[:2]) != (batch, steps):
        raise ValueError(f"action [B, T, A] must match embed's B, T = {(batch, steps)}, got {tuple(action.shape)}.")
    dims = params_dims(params)
    if embed.shape[2] != dims.embed:
        raise ValueError(f"embed has E={embed.shape[2]}, params.post_embed_weight expects E={dims.embed}.")
    if action.shape[2] != dims.action:
        raise ValueError(f"action has A={action.shape[2]}, params.in_weight [I, S*K + A] expects A={dims.action}.")
    first = check_is_first(is_first, batch, steps)
    check_state(state, batch, dims)
    check_noise(noise, seed, (batch, steps, dims.stoch, dims.classes))
    device = params.in_weight.device
    for name, tensor in (("embed", embed), ("action", action), ("is_first", first)):
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but the params are on {device}.")
    return dims, first


def check_imagine(deter, stoch, action, params, noise, seed) -> RSSMDims:
    """Check the inputs of ``rssm_imagine_step``; returns the sizes."""
    _check_float("deter", deter, 2, "[B, H]")
    _check_float("action", action, 2, "[B, A]")
    dims = params_dims(params)
    batch = deter.shape[0]
    check_state((deter, stoch), batch, dims)
    if tuple(action.shape) != (batch, dims.action):
        raise ValueError(f"action must have shape [B, A] = {(batch, dims.action)}, got {tuple(action.shape)}.")
    check_noise(noise, seed, (batch, dims.stoch, dims.classes))
    return dims
