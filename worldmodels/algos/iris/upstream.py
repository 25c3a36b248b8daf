"""Import the official IRIS checkpoints (eloialonso/iris ``checkpoints/last.pt``: the
state dict of its ``Agent``, keys ``tokenizer.*``, ``world_model.*``, ``actor_critic.*``)
into :class:`~worldmodels.algos.iris.agent.IrisAgent`.

    state = load_upstream_state_dict("Breakout.pt")      # torch.load(weights_only=True)
    agent.load_state_dict(iris_state_dict_from_upstream(state))

The renaming, part by part:

* tokenizer (taming-transformers' VQGAN): ``encoder.down.<i>.block.<j>`` /
  ``.attn.<j>`` / ``.downsample`` become the entries of ``encoder.down.<i>`` in the
  order they run (block, attention, block, attention, ..., downsample);
  ``decoder.up.<i>`` (indexed by level, run from the last) becomes
  ``decoder.up.<L - 1 - i>``; ``mid.block_1 / attn_1 / block_2`` -> ``mid.0 / 1 / 2``;
  ``norm_out`` / ``conv_out`` -> ``out.0`` / ``out.2``; ``nin_shortcut`` -> ``shortcut``;
  ``embedding.weight`` -> ``quantizer.codebook``; LPIPS weights (``lpips.*``) are dropped;
* world model: ``embedder.embedding_tables.0 / 1`` (actions / observations) ->
  ``action_embedding`` / ``obs_embedding``, ``pos_emb`` -> ``pos_embedding``, the
  attention's ``query``, ``key``, ``value`` concatenated into ``qkv``, ``mlp.0 / 2`` ->
  ``mlp.hidden.0`` / ``mlp.out``, ``head_<x>.head_module`` -> ``head_<x>`` (``head_observations``
  -> ``head_obs``); the attention masks and head index buffers are dropped;
* actor-critic: ``conv1..4`` -> ``cnn.0 / 3 / 6 / 9``, ``actor_linear`` / ``critic_linear``
  -> ``actor`` / ``critic``.

Shapes are checked against the upstream names; the agent must be built with IRIS's
configs (``configs/model/iris.yaml``) and the game's action count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...utils.upstream import UpstreamImportError, load_upstream_state_dict

Tensor = torch.Tensor


def _level_layout(keys: list[str], prefix: str, part: str) -> dict[int, tuple[int, int]]:
    """``{level: (blocks, attentions)}`` of ``<prefix>.<level>.{block,attn}.<j>`` keys."""
    layout: dict[int, list[set[int]]] = {}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(block|attn)\.(\d+)\.")
    for key in keys:
        match = pattern.match(key)
        if match:
            sets = layout.setdefault(int(match.group(1)), [set(), set()])
            sets[0 if match.group(2) == "block" else 1].add(int(match.group(3)))
    if not layout:
        raise UpstreamImportError(f"no {part} levels under {prefix!r} in the upstream state dict.")
    return {level: (len(b), len(a)) for level, (b, a) in layout.items()}


def _tokenizer(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    keys = [k for k in state if k.startswith("tokenizer.")]
    down = _level_layout(keys, "tokenizer.encoder.down", "encoder")
    up = _level_layout(keys, "tokenizer.decoder.up", "decoder")
    levels = len(up)
    out: dict[str, Tensor] = {}
    for key in keys:
        rest = key[len("tokenizer."):]
        if rest.startswith("lpips."):
            continue
        new = _tokenizer_key(rest, down, up, levels)
        out[f"tokenizer.{new}"] = state[key]
    return out


def _tokenizer_key(rest: str, down: dict, up: dict, levels: int) -> str:
    rest = rest.replace("nin_shortcut", "shortcut")
    if rest == "embedding.weight":
        return "quantizer.codebook"
    for side in ("encoder", "decoder"):
        rest = re.sub(rf"^{side}\.mid\.block_1\.", f"{side}.mid.0.", rest)
        rest = re.sub(rf"^{side}\.mid\.attn_1\.", f"{side}.mid.1.", rest)
        rest = re.sub(rf"^{side}\.mid\.block_2\.", f"{side}.mid.2.", rest)
        rest = re.sub(rf"^{side}\.norm_out\.", f"{side}.out.0.", rest)
        rest = re.sub(rf"^{side}\.conv_out\.", f"{side}.out.2.", rest)
    match = re.match(r"^(encoder\.down|decoder\.up)\.(\d+)\.(block|attn|downsample|upsample)(?:\.(\d+))?\.(.*)$", rest)
    if not match:
        return rest
    where, level, kind, index, tail = match.groups()
    level = int(level)
    blocks, attentions = (down if where == "encoder.down" else up)[level]
    if kind in ("downsample", "upsample"):
        position = blocks + attentions
    elif attentions:
        position = 2 * int(index) + (kind == "attn")
    else:
        position = int(index)
    ours = level if where == "encoder.down" else levels - 1 - level
    return f"{where}.{ours}.{position}.{tail}"


def _world_model(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    keys = [k for k in state if k.startswith("world_model.")]
    for key in keys:
        rest = key[len("world_model."):]
        if rest.endswith(".attn.mask") or rest.endswith(".indices"):
            continue
        block = re.match(r"^transformer\.blocks\.(\d+)\.attn\.(query|key|value)\.(weight|bias)$", rest)
        if block:
            layer, _, kind = block.groups()
            if block.group(2) == "query":
                parts = [state[f"world_model.transformer.blocks.{layer}.attn.{name}.{kind}"]
                         for name in ("query", "key", "value")]
                out[f"world_model.transformer.blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        rest = re.sub(r"^transformer\.blocks\.(\d+)\.mlp\.0\.", r"transformer.blocks.\1.mlp.hidden.0.", rest)
        rest = re.sub(r"^transformer\.blocks\.(\d+)\.mlp\.2\.", r"transformer.blocks.\1.mlp.out.", rest)
        rest = rest.replace("embedder.embedding_tables.0.", "action_embedding.")
        rest = rest.replace("embedder.embedding_tables.1.", "obs_embedding.")
        rest = re.sub(r"^pos_emb\.", "pos_embedding.", rest)
        rest = re.sub(r"^head_observations\.head_module\.", "head_obs.", rest)
        rest = re.sub(r"^head_(rewards|ends)\.head_module\.", r"head_\1.", rest)
        out[f"world_model.{rest}"] = state[key]
    return out


def _actor_critic(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    names = {"conv1": "cnn.0", "conv2": "cnn.3", "conv3": "cnn.6", "conv4": "cnn.9", "lstm": "lstm",
             "actor_linear": "actor", "critic_linear": "critic"}
    out: dict[str, Tensor] = {}
    for key in (k for k in state if k.startswith("actor_critic.")):
        module, _, param = key[len("actor_critic."):].partition(".")
        if module not in names:
            raise UpstreamImportError(f"unknown actor-critic key {key!r} in the upstream state dict.")
        out[f"actor_critic.{names[module]}.{param}"] = state[key]
    return out


def iris_state_dict_from_upstream(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An upstream IRIS ``Agent`` state dict -> the state dict of an :class:`IrisAgent`
    (module docstring); parts the upstream dict lacks are left out, so
    ``load_state_dict(..., strict=False)`` can load, say, a tokenizer alone."""
    parts = {name for name in ("tokenizer", "world_model", "actor_critic") if any(k.startswith(f"{name}.") for k in state)}
    if not parts:
        raise UpstreamImportError("the state dict has no tokenizer.*, world_model.* or actor_critic.* keys.")
    out: dict[str, Tensor] = {}
    if "tokenizer" in parts:
        out.update(_tokenizer(state))
    if "world_model" in parts:
        out.update(_world_model(state))
    if "actor_critic" in parts:
        out.update(_actor_critic(state))
    return out


__all__ = ["UpstreamImportError", "iris_state_dict_from_upstream", "load_upstream_state_dict"]
