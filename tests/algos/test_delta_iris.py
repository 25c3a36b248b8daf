"""Δ-IRIS: the delta tokenizer, the world model over frame embeddings and delta tokens,
the imagined environment, the agent, its data windows, the evaluator and the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from worldmodels.algos.delta_iris.agent import (
    DeltaDream,
    DeltaIrisAgent,
    check_compatible,
)
from worldmodels.algos.delta_iris.experiment import (
    DeltaIrisEvaluator,
    agent_configs,
    build_data,
)
from worldmodels.algos.delta_iris.world_model import (
    DeltaWorldModel,
    DeltaWorldModelConfig,
)
from worldmodels.algos.delta_iris.actor_critic import DeltaActorCriticConfig
from worldmodels.algos.iris.agent import COMPONENTS
from worldmodels.nn.delta_tokenizer import DeltaTokenizer, DeltaTokenizerConfig
from worldmodels.nn.frame_cnn import check_levels, frame_decoder, frame_encoder

sys.path.insert(0, str(Path(__file__).parent))
from test_iris_agent import TOY_ID, check_evaluation_protocol, grads_by_component, train_stop_resume

R, A, K, V = 16, 3, 4, 16


def tok_config(**overrides) -> DeltaTokenizerConfig:
    base = {"num_actions": A, "resolution": R, "tokens_per_frame": K, "vocab_size": V, "code_dim": 8,
            "latent_dim": 4, "channels": 8, "mult": (1, 2), "down": (1, 1), "frame_channels": 4,
            "frame_latent_dim": 2, "action_channels": 2}
    return DeltaTokenizerConfig(**{**base, **overrides})


def wm_config(**overrides) -> DeltaWorldModelConfig:
    base = {"num_actions": A, "vocab_size": V, "tokens_per_frame": K, "resolution": R, "max_blocks": 6,
            "num_layers": 1, "num_heads": 2, "embed_dim": 16, "frame_channels": 4, "frame_latent_dim": 1,
            "frame_mult": (1, 1), "frame_down": (1, 1), "reward_bins": 0}
    return DeltaWorldModelConfig(**{**base, **overrides})


def ac_config(**overrides) -> DeltaActorCriticConfig:
    base = {"num_actions": A, "resolution": R, "frame_channels": 4, "frame_latent_dim": 2, "frame_mult": (1, 1),
            "frame_down": (1, 1), "lstm_dim": 8, "imagine_horizon": 3, "burn_in": 2, "two_hot_returns": False}
    return DeltaActorCriticConfig(**{**base, **overrides})


def sequences(batch=2, steps=5, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"observations": torch.randint(0, 256, (batch, steps, 3, R, R), dtype=torch.uint8, generator=gen),
            "actions": torch.randint(0, A, (batch, steps), generator=gen),
            "rewards": torch.randint(-1, 2, (batch, steps), generator=gen).float(),
            "ends": torch.zeros(batch, steps, dtype=torch.bool),
            "mask_padding": torch.ones(batch, steps, dtype=torch.bool)}


# ---------------------------------------------------------------- frame CNNs

def test_frame_cnns_map_between_frames_and_latent_grids():
    enc = frame_encoder(3, 5, 8, (1, 2, 2), (1, 0, 1))
    dec = frame_decoder(5, 3, 8, (1, 2, 2), (1, 0, 1))
    z = enc(torch.rand(2, 3, 16, 16))
    assert z.shape == (2, 5, 4, 4) and dec(z).shape == (2, 3, 16, 16)
    assert check_levels((1, 2), (1, 1), 16, "x") == 4
    with pytest.raises(ValueError, match="equally long"):
        check_levels((1, 2), (1,), 16, "x")
    with pytest.raises(ValueError, match="divisible"):
        check_levels((1, 1), (1, 1), 18, "x")


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_shapes_and_decode_tokens_matches_the_straight_through_path():
    torch.manual_seed(0)
    tok = DeltaTokenizer(tok_config()).eval()
    batch = sequences()
    obs, act = batch["observations"], batch["actions"]
    enc = tok.encode(obs[:, :-1], act[:, :-1], obs[:, 1:])
    assert enc.q.shape == (2, 4, 4, 4, 4) and enc.tokens.shape == (2, 4, K) and enc.tokens.dtype == torch.int64
    assert 0 <= int(enc.tokens.min()) and int(enc.tokens.max()) < V
    via_q = tok.decode(obs[:, :-1], act[:, :-1], enc.q).clamp(0, 1)
    via_tokens = tok.decode_tokens(obs[:, :-1], act[:, :-1], enc.tokens)
    torch.testing.assert_close(via_tokens, via_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tok.encode_decode(obs[:, :-1], act[:, :-1], obs[:, 1:]), via_q)


def test_tokens_depend_on_the_previous_frame_and_the_action():
    torch.manual_seed(1)
    tok = DeltaTokenizer(tok_config()).eval()
    b = sequences(batch=1, steps=2)
    obs, act = b["observations"].float() / 255, b["actions"]
    z = tok.encode(obs[:, :1], act[:, :1], obs[:, 1:]).q
    other_prev = tok.encode(1 - obs[:, :1], act[:, :1], obs[:, 1:]).q
    other_action = tok.encode(obs[:, :1], (act[:, :1] + 1) % A, obs[:, 1:]).q
    assert not torch.allclose(z, other_prev) and not torch.allclose(z, other_action)
    decoded = tok.decode(obs[:, :1], act[:, :1], z)
    assert not torch.allclose(decoded, tok.decode(obs[:, :1], (act[:, :1] + 1) % A, z))


def test_tokenizer_loss_reaches_every_trained_part_and_ignores_padding_pairs():
    torch.manual_seed(2)
    tok = DeltaTokenizer(tok_config())
    batch = sequences(steps=4)
    batch["mask_padding"][1, 2:] = False
    loss, metrics = tok.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert {"l1", "l2", "worst_pixel", "commitment", "psnr", "copy_psnr", "codebook_usage"} <= set(metrics)
    for name in ("encoder", "encoder_action", "pre_quant", "post_quant", "frame_cnn", "decoder_action", "decoder"):
        grads = [p.grad for p in getattr(tok, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert tok.quantizer.codebook.grad is None  # EMA codes
    tok.eval()
    reference, _ = tok.compute_loss(batch)
    changed = {**batch, "observations": batch["observations"].clone()}
    changed["observations"][1, 3] = 255 - changed["observations"][1, 3]  # frame 3 of row 1 is padding
    torch.testing.assert_close(tok.compute_loss(changed)[0], reference, rtol=0, atol=0)


def test_tokenizer_config_and_input_errors():
    with pytest.raises(ValueError, match="perfect square"):
        tok_config(tokens_per_frame=3)
    with pytest.raises(ValueError, match="perfect square"):
        tok_config(tokens_per_frame=9)  # 3 does not divide the 4x4 latent grid
    with pytest.raises(ValueError, match="must be an int >= 1"):
        tok_config(vocab_size=0)
    tok = DeltaTokenizer(tok_config())
    b = sequences()
    obs, act = b["observations"], b["actions"]
    with pytest.raises(ValueError, match="prev_frames must be"):
        tok.encode(obs[:, :-1, :, :8], act[:, :-1], obs[:, 1:])
    with pytest.raises(ValueError, match="actions must lie"):
        tok.encode(obs[:, :-1], act[:, :-1] + A, obs[:, 1:])
    with pytest.raises(ValueError, match="tokens must lie"):
        tok.decode_tokens(obs[:, :-1], act[:, :-1], torch.full((2, 4, K), V))
    with pytest.raises(KeyError, match="lacks"):
        tok.compute_loss({"observations": obs})
    with pytest.raises(ValueError, match="T >= 2"):
        tok.compute_loss({**b, "observations": obs[:, :1]})


# ---------------------------------------------------------------- world model

def wm_batch(model_seed=0, **kw):
    torch.manual_seed(model_seed)
    batch = sequences(**kw)
    gen = torch.Generator().manual_seed(7)
    batch["latent_tokens"] = torch.randint(0, V, (batch["actions"].shape[0], batch["actions"].shape[1] - 1, K),
                                           generator=gen)
    return batch


def test_latent_predictions_are_causal_and_aligned_with_their_targets():
    model = DeltaWorldModel(wm_config()).eval()
    b = wm_batch(steps=4)
    logits, _ = model.predict(b["observations"], b["actions"], b["latent_tokens"])
    assert logits.shape == (2, 3, K, V)
    t, j = 1, 2
    changed = b["latent_tokens"].clone()
    changed[:, t, j] = (changed[:, t, j] + 1) % V
    other, _ = model.predict(b["observations"], b["actions"], changed)
    # targets up to (t, j) cannot see token (t, j); the next one does
    torch.testing.assert_close(other[:, :t], logits[:, :t], rtol=0, atol=0)
    torch.testing.assert_close(other[:, t, : j + 1], logits[:, t, : j + 1], rtol=0, atol=0)
    assert not torch.allclose(other[:, t, j + 1], logits[:, t, j + 1])
    # the action at t reaches the first token of z_{t+1} but no earlier target
    actions = b["actions"].clone()
    actions[:, t] = (actions[:, t] + 1) % A
    moved, _ = model.predict(b["observations"], actions, b["latent_tokens"])
    torch.testing.assert_close(moved[:, :t], logits[:, :t], rtol=0, atol=0)
    assert not torch.allclose(moved[:, t, 0], logits[:, t, 0])


def test_world_model_loss_masks_padding_and_both_reward_modes_train():
    for bins in (0, 255):
        model = DeltaWorldModel(wm_config(reward_bins=bins))
        b = wm_batch(steps=5)
        b["mask_padding"][1, 3:] = False
        loss, metrics = model.compute_loss(b)
        loss.backward()
        assert torch.isfinite(loss) and metrics["loss_rewards"] > 0
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert unused == [], unused
        model.eval()
        reference = model.compute_loss(b)[0]
        changed = {**b, "rewards": b["rewards"].clone(), "latent_tokens": b["latent_tokens"].clone()}
        changed["rewards"][1, 3:] = 5.0
        changed["latent_tokens"][1, 2:] = 0  # targets of pairs (2, 3) and (3, 4): padding
        torch.testing.assert_close(model.compute_loss(changed)[0], reference, rtol=0, atol=0)
    labels = b["latent_tokens"][b["mask_padding"][:, 1:] & b["mask_padding"][:, :-1]]
    expected = (labels == torch.mode(labels.flatten()).values).float().mean()
    assert metrics["majority_latent_accuracy"] == pytest.approx(float(expected))


def test_world_model_overfits_one_batch():
    model = DeltaWorldModel(wm_config())
    b = wm_batch(steps=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.compute_loss(b)[0].item()
    for _ in range(150):
        optimizer.zero_grad()
        loss, metrics = model.compute_loss(b)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first and metrics["latent_accuracy"] > 0.9


def test_world_model_batch_errors():
    model = DeltaWorldModel(wm_config())
    b = wm_batch()
    with pytest.raises(KeyError, match="lacks"):
        model.compute_loss({k: v for k, v in b.items() if k != "latent_tokens"})
    with pytest.raises(ValueError, match="latent_tokens must be"):
        model.compute_loss({**b, "latent_tokens": b["latent_tokens"][:, :, :2]})
    with pytest.raises(ValueError, match="exceed max_blocks"):
        model.compute_loss(wm_batch(steps=7))
    with pytest.raises(ValueError, match="reward_bins"):
        wm_config(reward_bins=1)


def test_cached_imagination_matches_the_teacher_forced_model():
    """Greedy steps through the KV cache give the tokens the full forward pass predicts
    for the same context, and the same rewards and ends."""
    model = DeltaWorldModel(wm_config(reward_bins=255)).eval()
    b = wm_batch(steps=3)
    frames, actions, latents = b["observations"].float() / 255, b["actions"], b["latent_tokens"]
    model.reset_imagination(frames[:, :2], actions[:, :1], latents[:, :1])
    out = model.step(actions[:, 1], greedy=True)
    model.observe_frame(frames[:, 2])
    teacher = torch.cat([latents[:, :1], out.tokens[:, None]], dim=1)
    logits, action_hidden = model.predict(frames, actions, teacher)
    assert torch.equal(logits[:, 1].argmax(-1), out.tokens)
    from worldmodels.nn.distributions import TwoHotSymlog

    expected_reward = TwoHotSymlog(model.head_rewards(action_hidden[:, 1]).float()).mean()
    torch.testing.assert_close(out.reward, expected_reward, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.done, model.head_ends(action_hidden[:, 1]).argmax(-1).bool())


def test_imagination_order_and_capacity_errors():
    model = DeltaWorldModel(wm_config()).eval()
    frames = torch.rand(2, 1, 3, R, R)
    action = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="no imagination"):
        model.step(action)
    empty = torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, K, dtype=torch.int64)
    model.reset_imagination(frames, *empty)
    model.step(action)
    with pytest.raises(RuntimeError, match="observe_frame"):
        model.step(action)
    model.observe_frame(frames[:, 0])
    for _ in range(model.config.max_blocks - 3):
        model.step(action)
        model.observe_frame(frames[:, 0])
    model.step(action)  # 1 + 5 frames: the context is full after this step's frame
    model.observe_frame(frames[:, 0])
    with pytest.raises(RuntimeError, match="max_tokens"):
        model.step(action)
    model.reset_imagination(frames, *empty)
    with pytest.raises(ValueError, match="expects action"):
        model.step(action.float())


# ---------------------------------------------------------------- agent

def tiny_agent(**ac) -> DeltaIrisAgent:
    return DeltaIrisAgent(tok_config(), wm_config(), ac_config(**ac))


def test_components_must_agree():
    with pytest.raises(ValueError, match="disagree on vocab_size"):
        check_compatible(tok_config(), wm_config(vocab_size=8), ac_config())
    with pytest.raises(ValueError, match="disagree on num_actions"):
        check_compatible(tok_config(), wm_config(), ac_config(num_actions=4))
    with pytest.raises(ValueError, match="max_blocks"):
        check_compatible(tok_config(), wm_config(), ac_config(burn_in=2, imagine_horizon=4))
    check_compatible(tok_config(), wm_config(), ac_config(burn_in=2, imagine_horizon=3))


def test_each_component_trains_alone_and_the_dream_fills_the_context_exactly():
    torch.manual_seed(3)
    agent = tiny_agent(burn_in=2, imagine_horizon=3)  # 2 + 3 + 1 = max_blocks 6: the context is used up
    b = sequences(steps=5)
    subs = {"tokenizer": {k: b[k] for k in ("observations", "actions", "mask_padding")},
            "world_model": b,
            "actor_critic": {k: v[:, :3] for k, v in b.items() if k in ("observations", "actions", "mask_padding")}}
    for name in COMPONENTS:
        agent.zero_grad(set_to_none=True)
        loss, metrics = agent.compute_loss({name: subs[name]})
        loss.backward()
        assert torch.isfinite(loss) and metrics[f"active/{name}"] == 1.0
        assert grads_by_component(agent) == {other: other == name for other in COMPONENTS}, name
    assert agent.tokenizer.training and agent.world_model.training
    # burn-in 2 frames, the start frame, then H = 3 steps of K + 2 positions: the context holds all of them
    assert agent.world_model._caches[0].length == (2 + 3) * (K + 2) + 1 <= agent.world_model.max_tokens


def test_world_model_loss_leaves_the_tokenizer_codebook_alone():
    agent = tiny_agent()
    before = agent.tokenizer.quantizer.codebook.detach().clone()
    agent.world_model_loss(sequences())
    assert torch.equal(agent.tokenizer.quantizer.codebook, before) and agent.tokenizer.training
    agent.tokenizer_loss({k: v for k, v in sequences().items() if k in ("observations", "actions", "mask_padding")})
    assert not torch.equal(agent.tokenizer.quantizer.codebook, before)  # EMA update in training


def test_dream_steps_decode_from_the_previous_frame():
    torch.manual_seed(4)
    agent = tiny_agent().eval()
    dream = DeltaDream(agent.tokenizer, agent.world_model, greedy=True)
    b = sequences(steps=3)
    context, frame = dream.start(b)
    assert context.shape == (2, 2, 3, R, R) and frame.shape == (2, 3, R, R)
    action = torch.tensor([0, 2])
    prev = frame
    tokens_before = agent.world_model._caches[0].length
    nxt, reward, done = dream.step(action)
    assert agent.world_model._caches[0].length == tokens_before + K + 2
    assert nxt.shape == frame.shape and 0 <= float(nxt.min()) and float(nxt.max()) <= 1
    assert reward.shape == (2,) and done.shape == (2,)
    # decoding the same tokens from the same previous frame gives the same frame
    agent.world_model.reset_imagination(b["observations"].float() / 255, b["actions"][:, :-1],
                                        agent.tokenizer.encode(b["observations"][:, :-1], b["actions"][:, :-1],
                                                               b["observations"][:, 1:]).tokens)
    out = agent.world_model.step(action, greedy=True)
    torch.testing.assert_close(agent.tokenizer.decode_tokens(prev[:, None], action[:, None], out.tokens[:, None])[:, 0],
                               nxt)


def test_policy_acts_on_real_frames():
    agent = tiny_agent().eval()
    import numpy as np

    obs = {"image": np.random.default_rng(0).integers(0, 256, (3, R, R, 3), dtype=np.uint8),
           "is_first": np.ones(3, bool)}
    actions, (hx, _cx) = agent.policy(obs, None, "greedy")
    assert actions.shape == (3,) and hx.shape == (3, 8)
    frames = torch.from_numpy(obs["image"]).movedim(-1, 1)
    agent.actor_critic.reset(3)
    logits, _ = agent.actor_critic.act(frames.float() / 255)
    assert actions.tolist() == logits.argmax(-1).tolist()


# ---------------------------------------------------------------- data, evaluation, CLI

def test_data_windows_carry_actions_for_the_tokenizer_and_the_dream(config_from):
    changed = ["algo.initial_collect_steps=30", "algo.tokenizer_sequence_length=4", "algo.sequence_length=5",
               "algo.batch_sizes={tokenizer:3,world_model:2,actor_critic:4}",
               "algo.starts={tokenizer:0,world_model:0,actor_critic:0}", "env.num_envs=2"]
    keys = {item.split("=")[0] for item in changed}
    cfg = config_from(["+exp=delta_iris_tiny", *[t for t in TINY if t.split("=")[0] not in keys], *changed])
    data = build_data(cfg, torch.device("cpu"))
    batch = data.next_batch()
    assert data.collector.env_steps == 30  # the first collection uses initial_steps
    assert batch["tokenizer"]["observations"].shape == (3, 4, 3, 16, 16)
    assert set(batch["tokenizer"]) == {"observations", "actions", "mask_padding"}
    assert set(batch["actor_critic"]) == {"observations", "actions", "mask_padding"}
    assert batch["actor_critic"]["mask_padding"][:, -1].all()
    assert set(batch["world_model"]) == {"observations", "actions", "rewards", "ends", "mask_padding"}
    assert all(type(w.selector).__name__ == "CountPriority" for w in data.windows.values())
    data.close()
    with pytest.raises(ValueError, match="tokenizer_sequence_length"):
        tiny = [t for t in TINY if not t.startswith("algo.tokenizer_sequence_length")]
        build_data(config_from(["+exp=delta_iris_tiny", *tiny, "algo.tokenizer_sequence_length=1"]), "cpu")


def test_experiments_compose_into_agent_configs(config_from):
    crafter = config_from(["+exp=delta_iris_crafter"])
    tok, wm, ac = agent_configs(crafter, (64, 64, 3), 17)
    assert crafter.algo.name == "delta_iris" and crafter.env.suite == "crafter"
    assert (tok.tokens_per_frame, tok.vocab_size, tok.latent_resolution, tok.patch) == (4, 1024, 8, 4)
    assert (wm.tokens_per_block, wm.embed_dim, wm.frame_features, wm.reward_bins, wm.max_blocks) == (6, 512, 512,
                                                                                                      255, 21)
    assert (ac.burn_in, ac.imagine_horizon, ac.num_actions) == (5, 15, 17)
    check_compatible(tok, wm, ac)
    atari = config_from(["+exp=delta_iris_atari"])
    tok, wm, ac = agent_configs(atari, (64, 64, 3), 6)
    assert (wm.embed_dim, wm.frame_features, wm.reward_bins, wm.max_blocks, wm.latents_weight) == (256, 256, 0, 26,
                                                                                                     0.1)
    assert atari.algo.sequence_length <= wm.max_blocks and (ac.burn_in, ac.imagine_horizon) == (5, 20)
    assert dict(atari.algo.starts) == {"tokenizer": 1000, "world_model": 10000, "actor_critic": 15000}
    check_compatible(tok, wm, ac)
    tiny = config_from(["+exp=delta_iris_tiny"])
    check_compatible(*agent_configs(tiny, (32, 32, 3), 2))


TINY = ["env.suite=gym", f"env.task={TOY_ID}", "env.size=[16,16]", "env.render_image=false", "device=cpu",
        "model.tokenizer.channels=4", "model.tokenizer.frame_channels=4", "model.tokenizer.latent_dim=4",
        "model.tokenizer.code_dim=8", "model.tokenizer.vocab_size=16", "model.world_model.frame_channels=4",
        "model.world_model.max_blocks=6", "model.world_model.num_layers=1", "model.world_model.embed_dim=16",
        "model.actor_critic.frame_channels=4", "model.actor_critic.frame_latent_dim=2",
        "model.actor_critic.frame_mult=[1,1]", "model.actor_critic.frame_down=[1,1]", "model.actor_critic.lstm_dim=8",
        "model.actor_critic.imagine_horizon=3", "model.actor_critic.burn_in=2",
        "algo.batch_sizes={tokenizer:2,world_model:2,actor_critic:2}", "algo.sequence_length=5",
        "algo.tokenizer_sequence_length=3", "algo.collect_every=2", "algo.collect_steps=12",
        "algo.initial_collect_steps=12", "algo.eval_episodes=1", "algo.media_length=4"]


def test_evaluator_scores_delta_reconstructions_against_copying(config_from):
    cfg = config_from(["+exp=delta_iris_tiny", *TINY, "algo.held_out_frames=6"])
    torch.manual_seed(5)
    agent = DeltaIrisAgent(*agent_configs(cfg, (16, 16, 3), 3)).eval()
    evaluator = DeltaIrisEvaluator(cfg, "cpu")
    metrics = evaluator.evaluate(agent)
    images = torch.from_numpy(evaluator.episode["image"]).movedim(-1, 1)
    actions = torch.from_numpy(evaluator.episode["action"])
    assert len(images) == 6
    # windows of max_blocks = 6 frames: one window, 5 pairs
    with torch.no_grad():
        recon = agent.tokenizer.encode_decode(images[None, :-1], actions[None, :-1], images[None, 1:])[0]
    truth = images[1:].float() / 255
    expected = (-10 * torch.log10((recon - truth).square().flatten(1).mean(1))).mean()
    assert metrics["eval/tokenizer_psnr"] == pytest.approx(float(expected), rel=1e-4)
    copy = (-10 * torch.log10((images[:-1].float() / 255 - truth).square().flatten(1).mean(1))).mean()
    assert metrics["eval/frame_copy_psnr"] == pytest.approx(float(copy), rel=1e-4)
    for name in ("latent_accuracy", "majority_latent_accuracy", "reward_accuracy", "end_accuracy"):
        assert 0.0 <= metrics[f"eval/wm_{name}"] <= 1.0
    evaluator.close()


def test_cli_trains_stops_and_resumes(tmp_path):
    run_dir, rows = train_stop_resume(tmp_path, "delta_iris_tiny", TINY)
    check_evaluation_protocol(run_dir, "delta_iris", 1.0)
    train = [r for r in rows if r.get("train/loss")]
    assert 0.0 <= float(train[-1]["train/world_model/latent_accuracy"]) <= 1.0
    assert [r["step"] for r in rows if r.get("eval/tokenizer_psnr")] == ["3", "6"]
