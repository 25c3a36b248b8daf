"""Import the official Δ-IRIS checkpoints (vmicheli/delta-iris ``checkpoints/last.pt``:
the state dict of its ``Agent``) into :class:`~worldmodels.algos.delta_iris.agent.DeltaIrisAgent`.

    state = load_upstream_state_dict("last.pt")            # torch.load(weights_only=True)
    agent.load_state_dict(delta_iris_state_dict_from_upstream(state, agent.state_dict()))

The renaming, part by part (the frame CNNs and residual blocks are Δ-IRIS's own, so
inside them the names are the same):

* tokenizer: ``encoder.encoder.<n>`` / ``decoder.decoder.<n>`` / ``frame_cnn.encoder.<n>``
  -> ``encoder.<n>`` / ``decoder.<n>`` / ``frame_cnn.<n>``; ``encoder_act_emb`` /
  ``decoder_act_emb`` -> ``encoder_action`` / ``decoder_action``; the quantiser's
  ``pre_quant_proj`` / ``post_quant_proj`` -> ``pre_quant`` / ``post_quant``; its
  ``codebook`` stays, ``codewords_freqs`` (frequencies summing to 1) become the EMA
  usage counts ``quantizer.ema_count = K * freqs`` with ``ema_sum = codebook * ema_count``
  (this package's EMA statistics), ``num_codebook_updates`` -> ``quantizer.num_updates``;
* world model: ``frame_cnn.0.encoder.<n>`` / ``frame_cnn.2`` -> ``frame_embedding.0.<n>``
  / ``frame_embedding.3`` (the LayerNorm; both flatten ``(h, w, c)``), ``act_emb`` /
  ``latents_emb`` -> ``action_embedding`` / ``latent_embedding``, ``transformer.pos_emb``
  -> ``pos_embedding``, ``transformer.ln`` -> ``transformer.ln_f``; per block
  ``sa.ln`` / ``mlp.ln`` -> ``ln1`` / ``ln2``, ``sa.query, key, value`` concatenated into
  ``attn.qkv``, ``sa.attention.proj`` -> ``attn.proj``, ``mlp.mlp.0 / 2`` ->
  ``mlp.hidden.0`` / ``mlp.out``; ``head_<x>.head_module`` -> ``head_<x>``; masks and
  index buffers are dropped;
* actor-critic: ``model`` and ``target_model``: ``cnn.0.encoder.<n>`` -> ``cnn.<n>``,
  ``actor_linear`` / ``critic_linear`` -> ``actor`` / ``critic``.

The agent must be built with the run's Δ-IRIS configs (Atari or Crafter) and the
game's action count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...utils.upstream import UpstreamImportError, load_upstream_state_dict

Tensor = torch.Tensor

_RULES = [
    (r"^tokenizer\.encoder\.encoder\.", "tokenizer.encoder."),
    (r"^tokenizer\.decoder\.decoder\.", "tokenizer.decoder."),
    (r"^tokenizer\.frame_cnn\.encoder\.", "tokenizer.frame_cnn."),
    (r"^tokenizer\.encoder_act_emb\.", "tokenizer.encoder_action."),
    (r"^tokenizer\.decoder_act_emb\.", "tokenizer.decoder_action."),
    (r"^tokenizer\.quantizer\.pre_quant_proj\.", "tokenizer.pre_quant."),
    (r"^tokenizer\.quantizer\.post_quant_proj\.", "tokenizer.post_quant."),
    (r"^tokenizer\.quantizer\.num_codebook_updates$", "tokenizer.quantizer.num_updates"),
    (r"^world_model\.frame_cnn\.0\.encoder\.", "world_model.frame_embedding.0."),
    (r"^world_model\.frame_cnn\.2\.", "world_model.frame_embedding.3."),
    (r"^world_model\.act_emb\.", "world_model.action_embedding."),
    (r"^world_model\.latents_emb\.", "world_model.latent_embedding."),
    (r"^world_model\.transformer\.pos_emb\.", "world_model.pos_embedding."),
    (r"^world_model\.transformer\.ln\.", "world_model.transformer.ln_f."),
    (r"^world_model\.transformer\.blocks\.(\d+)\.sa\.ln\.", r"world_model.transformer.blocks.\1.ln1."),
    (r"^world_model\.transformer\.blocks\.(\d+)\.mlp\.ln\.", r"world_model.transformer.blocks.\1.ln2."),
    (r"^world_model\.transformer\.blocks\.(\d+)\.sa\.attention\.proj\.", r"world_model.transformer.blocks.\1.attn.proj."),
    (r"^world_model\.transformer\.blocks\.(\d+)\.mlp\.mlp\.0\.", r"world_model.transformer.blocks.\1.mlp.hidden.0."),
    (r"^world_model\.transformer\.blocks\.(\d+)\.mlp\.mlp\.2\.", r"world_model.transformer.blocks.\1.mlp.out."),
    (r"^world_model\.head_(latents|rewards|ends)\.head_module\.", r"world_model.head_\1."),
    (r"^actor_critic\.(model|target_model)\.cnn\.0\.encoder\.", r"actor_critic.\1.cnn."),
    (r"^actor_critic\.(model|target_model)\.actor_linear\.", r"actor_critic.\1.actor."),
    (r"^actor_critic\.(model|target_model)\.critic_linear\.", r"actor_critic.\1.critic."),
]
_DROPPED = (re.compile(r"\.sa\.mask$"), re.compile(r"\.indices$"), re.compile(r"^tokenizer\.quantizer\.codewords_freqs$"))
_QKV = re.compile(r"^world_model\.transformer\.blocks\.(\d+)\.sa\.(query|key|value)\.(weight|bias)$")


def delta_iris_state_dict_from_upstream(state: Mapping[str, Tensor],
                                        reference: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """An upstream Δ-IRIS ``Agent`` state dict -> a :class:`DeltaIrisAgent` state dict
    (module docstring). ``reference`` (the agent's own ``state_dict()``) drops the
    quantiser's update counter when this agent does not keep one."""
    if not any(k.startswith(("tokenizer.", "world_model.", "actor_critic.")) for k in state):
        raise UpstreamImportError("the state dict has no tokenizer.*, world_model.* or actor_critic.* keys.")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        qkv = _QKV.match(key)
        if qkv:
            layer, name, kind = qkv.groups()
            if name == "query":
                parts = [state[f"world_model.transformer.blocks.{layer}.sa.{n}.{kind}"] for n in ("query", "key", "value")]
                out[f"world_model.transformer.blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        if any(pattern.search(key) for pattern in _DROPPED):
            continue
        new = key
        for pattern, replacement in _RULES:
            new, count = re.subn(pattern, replacement, new)
            if count:
                break
        out[new] = value
    if "tokenizer.quantizer.codewords_freqs" in state:
        freqs = state["tokenizer.quantizer.codewords_freqs"].float()
        count = freqs * freqs.numel()
        out["tokenizer.quantizer.ema_count"] = count
        out["tokenizer.quantizer.ema_sum"] = state["tokenizer.quantizer.codebook"].float() * count[:, None]
    if reference is not None and "tokenizer.quantizer.num_updates" not in reference:
        out.pop("tokenizer.quantizer.num_updates", None)
    return out


__all__ = ["UpstreamImportError", "delta_iris_state_dict_from_upstream", "load_upstream_state_dict"]
