"""GPT-style pre-LayerNorm transformer of IRIS / Δ-IRIS world models (minGPT layout).

Each of ``num_layers`` blocks computes, on ``x [B, T, E]``::

    x = x + Dropout(W_o Attention(LN_1(x)))        H heads of Dh = E / H
    x = x + Dropout(W_2 GELU(W_1 LN_2(x)))          W_1: E -> 4E, W_2: 4E -> E

then a final LayerNorm. Attention is :func:`worldmodels.ops.attention.attention` with
``block = tokens_per_block`` (``attention="block_causal"``: a token sees its whole
frame and every earlier frame) or ``block = 1`` (``"causal"``). Positional embeddings
belong to the caller.

Attention dropout (``attn_pdrop``, on the attention probabilities) exists only in the
reference maths: the fused paths (Triton, SDPA) never materialise the probabilities.
So in training mode with ``attn_pdrop > 0`` the layer computes attention explicitly
(``impl="auto"`` or ``"ref"``, on any device), and ``impl="triton"`` with
``attn_pdrop > 0`` is a configuration error. For the fused kernel during training set
``attn_pdrop=0``; in eval mode, or with ``attn_pdrop == 0``, ``impl`` dispatches as usual.

Incremental decoding: ``forward(x_new, kv_caches)`` appends the new tokens' keys and
values to one :class:`~worldmodels.nn.kv_cache.KVCache` per layer and attends with
:func:`~worldmodels.ops.attention.attention_decode` (block-causal among the new tokens,
positions continuing from the caches' length). It is inference: no attention dropout,
and the caches hold detached tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops.attention import attention, block_causal_mask
from .kv_cache import KVCache
from .mlp import MLP

Tensor = torch.Tensor

ATTENTION_MODES = ("block_causal", "causal")
ATTENTION_IMPLS = ("auto", "triton", "ref")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TransformerConfig: {name} must be an int >= 1, got {value!r}.")


@dataclass
class TransformerConfig:
    tokens_per_block: int = 17        # tokens per frame (IRIS: 16 observation tokens + 1 action)
    max_blocks: int = 20              # frames the context (and a KV cache) holds
    num_layers: int = 10
    num_heads: int = 4
    embed_dim: int = 256              # E, a multiple of num_heads
    embed_pdrop: float = 0.1          # on the input embeddings
    resid_pdrop: float = 0.1          # on each residual branch
    attn_pdrop: float = 0.1           # on the attention probabilities (reference maths only)
    attention: str = "block_causal"   # "block_causal" | "causal"
    impl: str = "auto"                # of worldmodels.ops.attention: "auto" | "triton" | "ref"

    def __post_init__(self) -> None:
        for name in ("tokens_per_block", "max_blocks", "num_layers", "num_heads", "embed_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.embed_dim % self.num_heads:
            raise ValueError(f"TransformerConfig: embed_dim={self.embed_dim} must be divisible by "
                             f"num_heads={self.num_heads}.")
        for name in ("embed_pdrop", "resid_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerConfig: {name}={value} must lie in [0, 1).")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"TransformerConfig: attention={self.attention!r} is not one of {ATTENTION_MODES}.")
        if self.impl not in ATTENTION_IMPLS:
            raise ValueError(f"TransformerConfig: impl={self.impl!r} is not one of {ATTENTION_IMPLS}.")
        if self.impl == "triton" and self.attn_pdrop > 0:
            raise ValueError(f"TransformerConfig: impl='triton' has no attention-probability dropout but "
                             f"attn_pdrop={self.attn_pdrop}; set attn_pdrop=0 or use impl='auto' or 'ref'.")

    @property
    def max_tokens(self) -> int:
        """``tokens_per_block * max_blocks``: the longest sequence (and KV cache)."""
        return self.tokens_per_block * self.max_blocks

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mask_block(self) -> int:
        """The ``block`` argument of the attention ops: ``tokens_per_block`` or 1."""
        return self.tokens_per_block if self.attention == "block_causal" else 1


def init_gpt_weights_(module: nn.Module) -> None:
    """minGPT / IRIS initialisation of every submodule: Linear and Embedding weights
    ~ N(0, 0.02), Linear biases 0, LayerNorm weights 1 and biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Embedding)):
            nn.init.normal_(layer.weight, mean=0.0, std=0.02)
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, block: int, dropout: nn.Dropout) -> Tensor:
    """``dropout(softmax(q k^T / sqrt(Dh) + mask)) v`` with the frame-block-causal mask of
    :func:`~worldmodels.ops.attention.attention_ref`; ``q, k, v [B, H, T, Dh]`` ->
    ``[B, H, T, Dh]`` in the dtype of ``q``, maths in fp32."""
    scale = q.shape[-1] ** -0.5
    scores = q.float() @ k.float().transpose(-2, -1) * scale
    allowed = block_causal_mask(q.shape[2], k.shape[2], block, device=q.device)
    probs = dropout(torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1))
    return (probs @ v.float()).to(q.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention ``[B, T, E] -> [B, T, E]``: one ``E -> 3E`` projection to
    queries, keys and values, the masked attention, an output projection and dropout."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.attn_drop = nn.Dropout(config.attn_pdrop)
        self.resid_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """``x [B, T, E]``; with ``cache``, ``x`` holds the newest tokens, whose keys and
        values are appended to the cache before they attend to it."""
        batch, steps, embed = x.shape
        c = self.config
        qkv = self.qkv(x).view(batch, steps, 3, c.num_heads, c.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                       # [B, H, T, Dh] each
        if cache is not None:
            cache.append(k, v)
            y = cache.attend(q.to(cache.keys.dtype), block=c.mask_block, impl=c.impl).to(x.dtype)
        elif self.training and c.attn_pdrop > 0:
            y = attention_with_dropout(q, k, v, c.mask_block, self.attn_drop)
        else:
            y = attention(q, k, v, block=c.mask_block, impl=c.impl)
        y = y.transpose(1, 2).reshape(batch, steps, embed)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """``x + SelfAttention(LN(x))`` then ``x + Dropout(MLP(LN(x)))`` (MLP ``E -> 4E -> E``, GELU)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        embed = config.embed_dim
        self.ln1 = nn.LayerNorm(embed)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(embed)
        self.mlp = MLP(embed, embed, 4 * embed, layers=1, norm=False, act="gelu")
        self.mlp_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp_drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """Embedded tokens ``x [B, T, E]`` (positional embedding included) -> ``[B, T, E]``.

    Without caches the whole sequence is processed at once (training), ``T <= max_tokens``.
    With ``kv_caches`` (one per layer, see :meth:`make_kv_caches`) ``x`` holds the newest
    tokens at positions ``len(cache) .. len(cache) + T - 1``.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.drop = nn.Dropout(config.embed_pdrop)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.ln_f = nn.LayerNorm(config.embed_dim)
        init_gpt_weights_(self)

    def make_kv_caches(self, batch: int, device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> list[KVCache]:
        """Empty caches, one per layer, each ``[batch, H, max_tokens, Dh]``."""
        c = self.config
        return KVCache.per_layer(c.num_layers, batch, c.num_heads, c.max_tokens, c.head_dim,
                                 dtype=dtype, device=device)

    def forward(self, x: Tensor, kv_caches: list[KVCache] | None = None) -> Tensor:
        self._check_input(x, kv_caches)
        x = self.drop(x)
        for index, block in enumerate(self.blocks):
            x = block(x, None if kv_caches is None else kv_caches[index])
        return self.ln_f(x)

    def _check_input(self, x: Tensor, kv_caches: list[KVCache] | None) -> None:
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c.embed_dim or not x.is_floating_point():
            got = f"{list(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Transformer expects floating x [B, T, {c.embed_dim}], got {got}.")
        if not 1 <= x.shape[1] <= c.max_tokens:
            raise ValueError(f"Transformer: T={x.shape[1]} must lie in [1, max_tokens={c.max_tokens}].")
        if kv_caches is None:
            return
        if len(kv_caches) != c.num_layers:
            raise ValueError(f"Transformer: need one KV cache per layer ({c.num_layers}), got {len(kv_caches)}.")
        lengths = {cache.length for cache in kv_caches}
        if len(lengths) != 1:
            raise ValueError(f"Transformer: the KV caches disagree in length: {sorted(lengths)}.")
        end = lengths.pop() + x.shape[1]
        capacity = min(cache.capacity for cache in kv_caches)
        if end > capacity:
            raise ValueError(f"Transformer: {end - x.shape[1]} cached + {x.shape[1]} new = {end} tokens exceed "
                             f"the caches' capacity {capacity}; reset() the caches and start again.")


__all__ = [
    "ATTENTION_IMPLS",
    "ATTENTION_MODES",
    "Block",
    "SelfAttention",
    "Transformer",
    "TransformerConfig",
    "attention_with_dropout",
    "init_gpt_weights_",
]
