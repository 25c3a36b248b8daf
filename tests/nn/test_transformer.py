"""The GPT-style transformer: config checks, shapes, IRIS init, frame-block-causal and
causal masking, attention dropout, and KV-cache decoding against the full forward."""

from __future__ import annotations

import pytest
import torch

from worldmodels.nn.transformer import (
    Transformer,
    TransformerConfig,
    attention_with_dropout,
)
from worldmodels.ops import _dispatch
from worldmodels.ops.attention import attention_ref

needs_triton = pytest.mark.skipif(
    not _dispatch.triton_runs_on(torch.device("cpu")), reason="triton (interpreter) not available"
)
TINY = {"tokens_per_block": 3, "max_blocks": 4, "num_layers": 2, "num_heads": 2, "embed_dim": 32}
NO_DROPOUT = {"embed_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}
MODES = ["block_causal", "causal"]


def make(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(**{**TINY, **overrides}))


@pytest.mark.parametrize("bad, match", [
    ({"embed_dim": 30, "num_heads": 4}, "divisible by num_heads=4"),
    ({"num_layers": 0}, "num_layers must be an int >= 1"),
    ({"tokens_per_block": 2.5}, "tokens_per_block must be an int"),
    ({"max_blocks": True}, "max_blocks must be an int"),
    ({"resid_pdrop": 1.0}, "resid_pdrop=1.0"),
    ({"embed_pdrop": -0.1}, "embed_pdrop=-0.1"),
    ({"attention": "full"}, "attention='full'"),
    ({"impl": "cpp"}, "impl='cpp'"),
    ({"impl": "triton", "attn_pdrop": 0.1}, "set attn_pdrop=0"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**{**TINY, **bad})


def test_config_properties():
    config = TransformerConfig()
    assert config.max_tokens == 17 * 20 and config.head_dim == 64 and config.mask_block == 17
    assert TransformerConfig(attention="causal").mask_block == 1
    assert TransformerConfig(impl="triton", attn_pdrop=0.0).impl == "triton"


def test_shapes_init_and_gradients():
    model = make()
    x = torch.randn(2, 7, 32, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 7, 32) and y.dtype == torch.float32
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())
    qkv = model.blocks[0].attn.qkv
    assert torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    assert abs(qkv.weight.std().item() - 0.02) < 0.005
    assert torch.equal(model.ln_f.weight, torch.ones(32)) and torch.equal(model.ln_f.bias, torch.zeros(32))
    caches = model.make_kv_caches(2, "cpu", torch.float32)
    assert len(caches) == 2 and caches[0].keys.shape == (2, 2, 12, 16)


@pytest.mark.parametrize("mode", MODES)
def test_future_frames_do_not_leak(mode):
    model = make(attention=mode, **NO_DROPOUT).eval()
    x = torch.randn(2, 12, 32)
    changed = x.clone()
    changed[:, 6:9] += torch.randn(2, 3, 32)                       # frame 2
    y, y_changed = model(x), model(changed)
    torch.testing.assert_close(y[:, :6], y_changed[:, :6], rtol=0, atol=0)
    assert not torch.allclose(y[:, 9:], y_changed[:, 9:])


@pytest.mark.parametrize("mode, sees_own_frame", [("block_causal", True), ("causal", False)])
def test_tokens_within_a_frame(mode, sees_own_frame):
    model = make(attention=mode, **NO_DROPOUT).eval()
    x = torch.randn(1, 6, 32)
    changed = x.clone()
    changed[:, 5] += torch.randn(32)                                # last token of frame 1
    y, y_changed = model(x), model(changed)
    torch.testing.assert_close(y[:, :3], y_changed[:, :3], rtol=0, atol=0)
    assert ((y[:, 3] - y_changed[:, 3]).abs().max() > 1e-5) == sees_own_frame


@pytest.mark.parametrize("mode, chunk", [
    ("causal", 1), ("causal", 2), ("causal", 3), ("block_causal", 3), ("block_causal", 6),
])
def test_cached_decoding_matches_full_forward(mode, chunk):
    """Causal: token by token, in pairs across frame edges, frame by frame. Block-causal:
    whole frames only (a partial frame decoded alone cannot see its frame's later tokens)."""
    model = make(attention=mode).eval()
    x = torch.randn(2, 12, 32)
    full = model(x)
    caches = model.make_kv_caches(2)
    pieces = [model(x[:, start:start + chunk], caches) for start in range(0, 12, chunk)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert all(cache.length == 12 for cache in caches)


def test_block_causal_partial_frame_sees_only_decoded_tokens():
    """A frame's first token decoded alone sees its past but not the frame's later
    tokens: it matches the full forward over the sequence cut after it."""
    model = make(attention="block_causal", **NO_DROPOUT).eval()
    x = torch.randn(1, 6, 32)
    caches = model.make_kv_caches(1)
    model(x[:, :3], caches)
    first = model(x[:, 3:4], caches)
    torch.testing.assert_close(first, model(x[:, :4])[:, 3:], rtol=1e-5, atol=1e-5)
    assert (first - model(x)[:, 3:4]).abs().max() > 1e-5


def test_cache_checks():
    model = make().eval()
    caches = model.make_kv_caches(1)
    with pytest.raises(ValueError, match="one KV cache per layer"):
        model(torch.randn(1, 3, 32), caches[:1])
    model(torch.randn(1, 10, 32), caches)
    with pytest.raises(ValueError, match="exceed the caches' capacity 12"):
        model(torch.randn(1, 3, 32), caches)
    assert all(cache.length == 10 for cache in caches)
    caches[0].reset()
    with pytest.raises(ValueError, match="disagree in length"):
        model(torch.randn(1, 1, 32), caches)


def test_bad_inputs():
    model = make()
    with pytest.raises(ValueError, match=r"x \[B, T, 32\]"):
        model(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="max_tokens=12"):
        model(torch.randn(1, 13, 32))


def test_attention_dropout_only_in_training():
    model = make(embed_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.5)
    x = torch.randn(2, 9, 32)
    model.eval()
    reference = model(x)
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model(x), reference)
    model.blocks[0].attn.attn_drop.p = model.blocks[1].attn.attn_drop.p = 0.0
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [1, 3])
def test_attention_with_dropout_is_the_reference_without_it(block):
    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    out = attention_with_dropout(q, k, v, block, torch.nn.Dropout(0.0))
    torch.testing.assert_close(out, attention_ref(q, k, v, block=block), rtol=1e-6, atol=1e-6)


@needs_triton
def test_triton_path_matches_reference():
    x = torch.randn(1, 6, 32)
    ref = make(impl="ref", **NO_DROPOUT).eval()
    fused = make(impl="triton", **NO_DROPOUT).eval()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-4, atol=1e-4)
