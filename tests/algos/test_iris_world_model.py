"""IRIS world model: config, output alignment, loss and padding, overfitting a batch
against the copy-last-frame baseline, and imagination through the KV caches."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from worldmodels.algos.iris.world_model import (
    IrisWorldModel,
    IrisWorldModelConfig,
    reward_sign_labels,
    rewards_from_logits,
    sample_tokens,
)
from worldmodels.utils.config import dataclass_from_config

K, V, A = 4, 16, 4
TINY = {"num_actions": A, "vocab_size": V, "tokens_per_obs": K, "max_blocks": 5, "num_layers": 2,
        "num_heads": 2, "embed_dim": 32}
NO_DROPOUT = {"embed_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}


def make(**overrides) -> IrisWorldModel:
    torch.manual_seed(0)
    return IrisWorldModel(IrisWorldModelConfig(**{**TINY, **overrides}))


def make_batch(batch: int = 3, frames: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Frames that change: ``frame[t + 1] = (frame[t] + action[t]) % V``, actions in 1..A-1."""
    gen = torch.Generator().manual_seed(seed)
    actions = torch.randint(1, A, (batch, frames), generator=gen)
    obs = [torch.randint(0, V, (batch, K), generator=gen)]
    for t in range(frames - 1):
        obs.append((obs[-1] + actions[:, t : t + 1]) % V)
    rewards = torch.randint(-1, 2, (batch, frames), generator=gen).float() * 0.7
    ends = torch.zeros(batch, frames, dtype=torch.bool)
    ends[0, -1] = True
    return {"obs_tokens": torch.stack(obs, dim=1), "actions": actions, "rewards": rewards, "ends": ends,
            "mask_padding": torch.ones(batch, frames, dtype=torch.bool)}


def test_config_from_hydra_node_and_errors():
    node = OmegaConf.create({**TINY, "name": "iris_world_model", "impl": "ref"})
    config = dataclass_from_config(IrisWorldModelConfig, node)
    tconfig = config.transformer()
    assert config.tokens_per_block == K + 1 and tconfig.attention == "causal" and tconfig.max_tokens == 25
    with pytest.raises(ValueError, match="vocab_size must be an int >= 1"):
        IrisWorldModelConfig(**{**TINY, "vocab_size": 0})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        IrisWorldModelConfig(**{**TINY, "embed_dim": 30, "num_heads": 4})


def test_forward_shapes_and_slots():
    model = make()
    tokens = make_batch()
    seq = model.interleave(tokens["obs_tokens"], tokens["actions"])[:, :12]     # 2 frames + 2 tokens
    out = model(seq)
    assert out.logits_obs.shape == (3, 12, V) and out.logits_rewards.shape == (3, 12, 3)
    assert out.logits_ends.shape == (3, 12, 2) and out.hidden.shape == (3, 12, 32)
    assert model.slots(7, past_length=3).tolist() == [3, 4, 0, 1, 2, 3, 4]
    assert torch.equal(seq[:, K], tokens["actions"][:, 0]) and torch.equal(seq[:, K + 1:2 * K + 1],
                                                                           tokens["obs_tokens"][:, 1])


def test_heads_see_only_the_past_and_actions_use_their_table():
    model = make(**NO_DROPOUT).eval()
    seq = model.interleave(make_batch()["obs_tokens"], make_batch()["actions"])
    out = model(seq)
    changed = seq.clone()
    changed[:, K] = (changed[:, K] + 1) % A                                    # the first action
    out_changed = model(changed)
    torch.testing.assert_close(out.hidden[:, :K], out_changed.hidden[:, :K], rtol=0, atol=0)
    assert (out.logits_rewards[:, K] - out_changed.logits_rewards[:, K]).abs().max() > 1e-6
    with pytest.raises(IndexError):
        model(torch.where(torch.arange(seq.shape[1]) % (K + 1) == K, A, seq))    # action id out of range


def test_next_obs_logits_alignment():
    """Position p's logits predict token p + 1: frame t's slots 0..K-2 give its tokens
    1..K-1, its action slot gives token 0 of frame t + 1."""
    model = make()
    frames = 3
    positions = torch.arange(frames * (K + 1)).float()
    logits = positions.view(1, -1, 1).expand(1, -1, V)
    picked = model.next_obs_logits(logits, frames)[0, :, 0].long()
    expected = [p for p in range(frames * (K + 1)) if p % (K + 1) != K - 1][:-1]
    assert picked.tolist() == expected and len(expected) == frames * K - 1


def test_incremental_forward_matches_full_forward():
    model = make().eval()
    seq = model.interleave(make_batch()["obs_tokens"], make_batch()["actions"])
    full = model(seq)
    caches = model.transformer.make_kv_caches(seq.shape[0])
    parts = [model(seq[:, :7], caches), model(seq[:, 7:8], caches, past_length=7), model(seq[:, 8:], caches)]
    for name in ("logits_obs", "logits_rewards", "logits_ends"):
        joined = torch.cat([getattr(part, name) for part in parts], dim=1)
        torch.testing.assert_close(joined, getattr(full, name), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="past_length=3 differs"):
        model(seq[:, :1], caches, past_length=3)


def test_forward_rejects_bad_tokens():
    model = make()
    with pytest.raises(ValueError, match=r"tokens \[B, L\] int64"):
        model(torch.zeros(2, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="max_tokens=25"):
        model(torch.zeros(1, 26, dtype=torch.int64))


def test_compute_loss_is_finite_and_reaches_every_parameter():
    model = make()
    loss, metrics = model.compute_loss(make_batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss.detach(), metrics["loss_obs"] + metrics["loss_rewards"] + metrics["loss_ends"])
    assert {"next_token_accuracy", "reward_accuracy", "end_accuracy", "copy_token_accuracy",
            "next_frame_token_accuracy"} <= set(metrics)
    assert metrics["copy_token_accuracy"] == 0.0                         # every action moves every token
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_padding_is_masked():
    model = make(**NO_DROPOUT).eval()
    batch = make_batch()
    batch["mask_padding"][:, :2] = False                                # IRIS pads episode starts
    loss, _ = model.compute_loss(batch)
    changed = {**batch, "rewards": batch["rewards"].clone(), "ends": batch["ends"].clone()}
    changed["rewards"][:, :2] = 5.0
    changed["ends"][:, :2] = True
    torch.testing.assert_close(model.compute_loss(changed)[0], loss, rtol=0, atol=0)
    end_padded = make_batch()
    end_padded["mask_padding"][:, -1] = False
    truncated = {key: value[:, :-1] for key, value in end_padded.items()}
    end_padded["obs_tokens"][:, -1] = (end_padded["obs_tokens"][:, -1] + 3) % V
    torch.testing.assert_close(model.compute_loss(end_padded)[0], model.compute_loss(truncated)[0])
    all_padding = {**batch, "mask_padding": torch.zeros_like(batch["mask_padding"])}
    assert model.compute_loss(all_padding)[0].item() == 0.0


def test_compute_loss_rejects_bad_batches():
    model = make()
    batch = make_batch()
    with pytest.raises(KeyError, match="mask_padding"):
        model.compute_loss({key: value for key, value in batch.items() if key != "mask_padding"})
    with pytest.raises(ValueError, match=r"obs_tokens must be \[B, T, 4\] int64"):
        model.compute_loss({**batch, "obs_tokens": batch["obs_tokens"][..., :3]})
    with pytest.raises(ValueError, match=r"rewards must be \[B, T\]"):
        model.compute_loss({**batch, "rewards": batch["rewards"][:, :2]})
    with pytest.raises(ValueError, match="exceed max_blocks=5"):
        model.compute_loss(make_batch(frames=6))


def test_overfits_a_batch_and_beats_copying_the_last_frame():
    model = make(**NO_DROPOUT)
    batch = make_batch(batch=4, frames=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first, _ = model.compute_loss(batch)
    for _ in range(100):
        optimizer.zero_grad()
        loss, metrics = model.compute_loss(batch)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first.item()
    assert metrics["next_frame_token_accuracy"] > metrics["copy_token_accuracy"] + 0.5
    assert metrics["next_token_accuracy"] > metrics["copy_token_accuracy"]


def test_reward_mapping():
    assert reward_sign_labels(torch.tensor([-2.5, 0.0, 0.3])).tolist() == [0, 1, 2]
    logits = torch.eye(3) * 5
    assert rewards_from_logits(logits).tolist() == [-1.0, 0.0, 1.0]
    model = make().eval()
    for target in (0, 1, 2):
        with torch.no_grad():
            model.head_rewards[-1].weight.zero_()
            model.head_rewards[-1].bias.copy_(torch.eye(3)[target] * 10)
        model.reset_imagination(torch.zeros(2, K, dtype=torch.int64))
        assert model.step(torch.ones(2, dtype=torch.int64))[1].tolist() == [target - 1.0] * 2


def test_imagination_shapes_seed_and_overflow():
    model = make().eval()
    first = make_batch()["obs_tokens"][:, 0]
    action = torch.tensor([0, 1, 3])
    caches = model.reset_imagination(first)
    assert len(caches) == 2 and caches[0].length == K
    tokens, reward, done = model.step(action, generator=torch.Generator().manual_seed(7))
    assert tokens.shape == (3, K) and tokens.dtype == torch.int64 and ((0 <= tokens) & (tokens < V)).all()
    assert reward.shape == (3,) and reward.dtype == torch.float32 and set(reward.tolist()) <= {-1.0, 0.0, 1.0}
    assert done.shape == (3,) and done.dtype == torch.bool and caches[0].length == 2 * K + 1
    model.reset_imagination(first)
    again, _, _ = model.step(action, generator=torch.Generator().manual_seed(7))
    assert torch.equal(tokens, again)
    for _ in range(3):
        model.step(action)
    with pytest.raises(RuntimeError, match="call reset_imagination"):
        model.step(action)


def test_greedy_imagination_matches_the_full_forward():
    model = make().eval()
    first = make_batch()["obs_tokens"][:, 0]
    actions = torch.tensor([[1, 2], [0, 3], [2, 2]])
    model.reset_imagination(first)
    frames = [first] + [model.step(actions[:, t], greedy=True)[0] for t in range(2)]
    seq = torch.cat([frames[0], actions[:, :1], frames[1], actions[:, 1:], frames[2]], dim=1)
    predicted = model(seq).logits_obs.argmax(-1)
    starts = (K, 2 * K + 1)                                            # the action positions
    for start, frame in zip(starts, frames[1:]):
        assert torch.equal(predicted[:, start:start + K], frame)


def test_imagination_errors():
    model = make().eval()
    with pytest.raises(RuntimeError, match="no imagination in progress"):
        model.step(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"obs_tokens \[B, 4\]"):
        model.reset_imagination(torch.zeros(2, K + 1, dtype=torch.int64))
    model.reset_imagination(torch.zeros(2, K, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"action \[2\] int64"):
        model.step(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature=0"):
        sample_tokens(torch.zeros(2, V), temperature=0)
