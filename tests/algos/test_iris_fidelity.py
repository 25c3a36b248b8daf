"""IRIS and Δ-IRIS as the papers run them (issue 17): sampled imagined rewards and ends,
Δ-IRIS's actor-critic (EMA target critic, bootstrapped returns, masking after the first
end, zero-initialised critic), the training step (components one after another,
accumulation that leaves the schedule alone, updates per epoch), precision per
component, weight decay on linear weights only, the Δ-IRIS tokenizer's [0, 1] loss
and codebook-restart gate."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from worldmodels.algos.delta_iris.actor_critic import DeltaActorCritic, DeltaActorCriticConfig, mask_after_first_end
from worldmodels.algos.delta_iris.world_model import DeltaWorldModel, DeltaWorldModelConfig
from worldmodels.algos.iris.world_model import IrisWorldModel, IrisWorldModelConfig
from worldmodels.nn.delta_tokenizer import DeltaTokenizer, DeltaTokenizerConfig
from worldmodels.nn.distributions import TwoHotSymlog
from worldmodels.nn.token_heads import sample_ends, sample_rewards
from worldmodels.nn.vq import VectorQuantizer, VQConfig
from worldmodels.rl.imagination_agent import COMPONENTS, component_autocast, component_step, split_weight_decay
from worldmodels.rl.returns import lambda_returns
from worldmodels.training.precision import resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from test_iris_agent import tiny_agent, toy_data  # noqa: E402


def set_head_probs(head: nn.Sequential, probs: list[float]) -> None:
    """Make a ``Linear -> ReLU -> Linear`` head output ``log(probs)`` whatever its input."""
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.copy_(torch.tensor(probs).log())


# ---------------------------------------------------------------- sampled rewards and ends


def test_sampled_rewards_and_ends_follow_the_heads_probabilities():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.1, 0.6, 0.3]]).log().expand(20000, 3)
    rewards = sample_rewards(logits, generator=gen)
    assert set(rewards.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert abs(float((rewards == 1).float().mean()) - 0.3) < 0.02          # argmax would never give +1
    ends = sample_ends(torch.tensor([[0.8, 0.2]]).log().expand(20000, 2), generator=gen)
    assert abs(float(ends.float().mean()) - 0.2) < 0.02                     # argmax would never end
    assert not sample_ends(torch.tensor([[0.8, 0.2]]).log(), greedy=True).any()


def test_iris_imagination_samples_rewards_and_ends():
    torch.manual_seed(0)
    config = IrisWorldModelConfig(num_actions=2, vocab_size=8, tokens_per_obs=4, max_blocks=3, num_layers=1,
                                  num_heads=1, embed_dim=8)
    model = IrisWorldModel(config).eval()
    set_head_probs(model.head_rewards, [0.05, 0.65, 0.3])
    set_head_probs(model.head_ends, [0.75, 0.25])
    model.reset_imagination(torch.zeros(4000, 4, dtype=torch.int64))
    _, reward, done = model.step(torch.zeros(4000, dtype=torch.int64))
    assert abs(float((reward == 1).float().mean()) - 0.3) < 0.03
    assert abs(float(done.float().mean()) - 0.25) < 0.03
    model.reset_imagination(torch.zeros(8, 4, dtype=torch.int64))
    _, reward, done = model.step(torch.zeros(8, dtype=torch.int64), greedy=True)
    assert (reward == 0).all() and not done.any()


def test_delta_iris_imagination_samples_sign_rewards_and_ends_and_takes_the_two_hot_mean():
    torch.manual_seed(0)
    common = dict(num_actions=2, vocab_size=8, tokens_per_frame=4, resolution=16, max_blocks=3, num_layers=1,
                  num_heads=1, embed_dim=16, frame_channels=4, frame_latent_dim=1, frame_mult=(1, 1), frame_down=(1, 1))
    model = DeltaWorldModel(DeltaWorldModelConfig(**common, reward_bins=0)).eval()
    set_head_probs(model.head_rewards, [0.1, 0.5, 0.4])
    set_head_probs(model.head_ends, [0.7, 0.3])
    frames = torch.rand(3000, 1, 3, 16, 16)
    model.reset_imagination(frames, torch.zeros(3000, 0, dtype=torch.int64), torch.zeros(3000, 0, 4, dtype=torch.int64))
    out = model.step(torch.zeros(3000, dtype=torch.int64))
    assert abs(float((out.reward == 1).float().mean()) - 0.4) < 0.03
    assert abs(float(out.done.float().mean()) - 0.3) < 0.03
    two_hot = DeltaWorldModel(DeltaWorldModelConfig(**common, reward_bins=15)).eval()
    probs = torch.softmax(torch.randn(15), 0)
    set_head_probs(two_hot.head_rewards, probs.tolist())
    two_hot.reset_imagination(frames[:4], torch.zeros(4, 0, dtype=torch.int64), torch.zeros(4, 0, 4, dtype=torch.int64))
    expected = TwoHotSymlog(probs.log()[None].expand(4, 15)).mean()     # the mean, not a sample (Δ-IRIS)
    torch.testing.assert_close(two_hot.step(torch.zeros(4, dtype=torch.int64)).reward, expected)


# ---------------------------------------------------------------- Δ-IRIS's actor-critic


def delta_ac(**overrides) -> DeltaActorCritic:
    config = dict(num_actions=3, resolution=16, frame_channels=4, frame_latent_dim=2, frame_mult=(1, 1),
                  frame_down=(1, 1), lstm_dim=8, imagine_horizon=4, burn_in=1, gamma=0.9, lambda_=0.8,
                  two_hot_returns=False)
    return DeltaActorCritic(DeltaActorCriticConfig(**{**config, **overrides}))


class ScriptedDream:
    """A dream of fixed rewards and ends; frames are noise."""

    def __init__(self, rewards: torch.Tensor, ends: torch.Tensor):
        self.rewards, self.ends, self.t = rewards, ends, 0

    def start(self, batch):
        return None, torch.rand(self.rewards.shape[0], 3, 16, 16)

    def step(self, action):
        t, self.t = self.t, self.t + 1
        return torch.rand(action.shape[0], 3, 16, 16), self.rewards[:, t], self.ends[:, t]


def test_mask_after_first_end():
    ends = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert mask_after_first_end(ends).tolist() == [[True, True, True, False, False], [True] * 5,
                                                   [True, False, False, False, False]]


def test_delta_critic_is_zero_at_start_and_its_target_is_an_ema_copy():
    ac = delta_ac()
    assert not ac.model.critic.weight.any() and not ac.model.critic.bias.any()
    assert all(not p.requires_grad for p in ac.target_model.parameters())
    before = {k: v.clone() for k, v in ac.target_model.state_dict().items()}
    with torch.no_grad():
        for p in ac.model.parameters():
            p.add_(1.0)
    ac.update_target()
    for key, value in ac.target_model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.995 * before[key] + 0.005 * ac.model.state_dict()[key])
    two_hot = delta_ac(two_hot_returns=True, value_bins=9)
    assert two_hot.model.critic.out_features == 9
    _, value = two_hot.act(torch.rand(2, 3, 16, 16))
    assert torch.allclose(value, torch.zeros(2), atol=1e-6)   # zero logits: the two-hot mean is 0


def test_delta_critic_targets_are_bootstrapped_target_lambda_returns_masked_after_the_first_end():
    torch.manual_seed(0)
    ac = delta_ac()
    with torch.no_grad():   # distinct network and target values
        ac.target_model.critic.bias.fill_(2.0)
        ac.model.critic.bias.fill_(-1.0)
    rewards = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    ends = torch.tensor([[False, True, False, False], [False, False, False, False]])
    batch = {"observations": torch.zeros(2, 1, 3, 16, 16), "mask_padding": torch.ones(2, 1, dtype=torch.bool)}
    loss, metrics = ac.compute_loss(batch, ScriptedDream(rewards, ends))
    # target values are 2 everywhere (bias only); the bootstrap is the target's value of the H-th frame
    expected = lambda_returns(rewards, 1.0 - ends.float(), torch.full((2, 5), 2.0), 0.9, 0.8)
    mask = mask_after_first_end(ends)
    torch.testing.assert_close(metrics["imagined_return"], expected[mask].mean())
    torch.testing.assert_close(metrics["loss_values"], ((-1.0 - expected) ** 2)[mask].mean())
    assert float(metrics["masked_fraction"]) == pytest.approx(2 / 8)
    loss.backward()
    assert ac.model.actor.weight.grad is not None and all(p.grad is None for p in ac.target_model.parameters())


# ---------------------------------------------------------------- the training step


def fake_run(agent, data, accum: int = 1):
    precision = resolve_precision("fp32", torch.device("cpu"))
    return SimpleNamespace(model=agent, data=data, optimizer=torch.optim.AdamW(agent.param_groups()),
                           scaler=precision.grad_scaler(), precision=precision, accum_steps=accum)


def test_accumulation_keeps_the_schedule_and_components_step_one_after_another():
    torch.manual_seed(0)
    agent = tiny_agent()
    data = toy_data(starts={"tokenizer": 0, "world_model": 1, "actor_critic": 3})
    data.bind_model(agent)
    run = fake_run(agent, data, accum=3)
    drawn: list[str] = []
    sample = data.sample
    data.sample = lambda name: (drawn.append(name), sample(name))[1]
    seen_tokenizer: list[torch.Tensor] = []
    loss_fn = agent.component_loss

    def spy(name, batch):
        if name == "world_model":   # the world model sees the tokenizer as this update left it
            seen_tokenizer.append(next(agent.tokenizer.parameters()).detach().clone())
        return loss_fn(name, batch)

    agent.component_loss = spy
    steps = []
    for update in range(4):
        before = next(agent.tokenizer.parameters()).detach().clone()
        result = component_step(run)
        assert result.finite
        steps.append(data.collector.env_steps)
        if update >= 1:
            assert not torch.equal(seen_tokenizer[-1], before)
    assert data.updates == 4                                   # once per update, not per micro-batch
    assert drawn[:3] == ["tokenizer"] * 3 and drawn[3:9] == ["tokenizer"] * 3 + ["world_model"] * 3
    assert drawn.count("tokenizer") == 12 and drawn.count("world_model") == 9 and drawn.count("actor_critic") == 3
    assert steps[0] == steps[1] and steps[2] == steps[3] > steps[1]   # collect_every=2 updates, whatever accum is
    assert result.metrics["active/actor_critic"] == 1.0 and "actor_critic/entropy" in result.metrics


def test_a_component_step_changes_only_that_components_parameters():
    torch.manual_seed(0)
    agent = tiny_agent()
    data = toy_data(starts={"tokenizer": 0, "world_model": 9, "actor_critic": 9})
    data.bind_model(agent)
    before = {name: [p.detach().clone() for p in getattr(agent, name).parameters()] for name in COMPONENTS}
    component_step(fake_run(agent, data))
    for name in COMPONENTS:
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], getattr(agent, name).parameters()))
        assert changed == (name == "tokenizer"), name


def test_updates_per_epoch_spread_a_component_over_the_epoch():
    data = toy_data()
    window = data.windows["world_model"]
    object.__setattr__(window, "per_epoch", 3)
    trained = [window.trains_at(update, epoch=5) for update in range(10)]
    assert sum(trained[:5]) == 3 and sum(trained[5:]) == 3
    object.__setattr__(window, "start", 4)
    assert not any(window.trains_at(update, epoch=5) for update in range(4))


def test_delta_iris_atari_trains_the_world_model_120_of_200_updates(config_from):
    from worldmodels.training.config_check import check_config

    cfg = config_from(["+exp=delta_iris_atari"])
    check_config(cfg)
    assert cfg.algo.updates_per_epoch.world_model == 120 and cfg.algo.collect_every == 200
    assert cfg.model.actor_critic.two_hot_returns is False and cfg.model.tokenizer.restart_updates == 400
    assert config_from(["+exp=iris_atari"]).model.tokenizer.beta == 1.0


# ---------------------------------------------------------------- precision, weight decay


def test_an_fp32_component_leaves_the_runs_autocast():
    layer = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        with component_autocast("fp32", "cpu"):
            assert layer(x).dtype == torch.float32
        with component_autocast("run", "cpu"):
            assert layer(x).dtype == torch.bfloat16
    agent = tiny_agent()
    assert agent.precision == dict.fromkeys(COMPONENTS, "fp32")   # IRIS: fp32 throughout
    with pytest.raises(ValueError, match="model.precision"):
        agent.set_precision({"actor_critic": "fp16"})


def test_weight_decay_reaches_linear_weights_only():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2), nn.Embedding(3, 2))
    decayed, rest = split_weight_decay(module)
    assert [p.shape for p in decayed] == [module[3].weight.shape]
    assert len(rest) == len(list(module.parameters())) - 1
    ac = delta_ac()
    decayed, rest = split_weight_decay(ac)
    assert not any(p is q for p in decayed + rest for q in ac.target_model.parameters())


# ---------------------------------------------------------------- Δ-IRIS tokenizer details


def test_delta_tokenizer_loss_is_on_the_unit_scale():
    torch.manual_seed(0)
    tok = DeltaTokenizer(DeltaTokenizerConfig(num_actions=2, resolution=16, vocab_size=8, code_dim=4, latent_dim=4,
                                              channels=4, mult=(1, 1), down=(1, 1), frame_channels=4,
                                              frame_latent_dim=2, l1_weight=0.0, worst_pixel_weight=0.0,
                                              beta=0.0))
    batch = {"observations": torch.rand(2, 3, 3, 16, 16), "actions": torch.zeros(2, 3, dtype=torch.int64),
             "mask_padding": torch.ones(2, 3, dtype=torch.bool)}
    loss, metrics = tok.compute_loss(batch)
    frames = batch["observations"]
    prev, act, target = frames[:, :-1].flatten(0, 1)[:, None], torch.zeros(4, 1, dtype=torch.int64), frames[:, 1:]
    tok.eval()
    recon = tok.decode(prev, act, tok.encode(prev, act, target.flatten(0, 1)[:, None]).q)[:, 0]
    torch.testing.assert_close(loss, (target.flatten(0, 1) - recon).square().mean(), rtol=1e-4, atol=1e-5)


def test_codebook_restarts_stop_after_restart_updates_unless_usage_collapses():
    torch.manual_seed(0)
    vq = VectorQuantizer(VQConfig(num_codes=16, dim=4, ema=True, dead_threshold=0.5, restart_updates=2))
    z = torch.randn(64, 4)
    for _ in range(2):
        vq(z, channels_last=True)
    assert int(vq.num_updates) == 2
    vq.ema_count.fill_(1.0)   # every code used: entropy log2(16) = 4 bits, above log2(16) - 2
    vq.ema_count[0] = 0.0
    assert not vq._may_restart()
    vq.ema_count.zero_()
    vq.ema_count[0] = 1.0     # one code: entropy 0 < 1 bit, restarts come back
    assert vq._may_restart()


# ---------------------------------------------------------------- official checkpoints

FIXTURES = Path(__file__).parent.parent / "fixtures" / "upstream"


def upstream_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the upstream key names, shapes and dtypes of ``fixtures/upstream/<name>.json``
    (listed from eloialonso/iris and vmicheli/delta-iris), filled with random values."""
    import json

    gen = torch.Generator().manual_seed(seed)
    keys = json.loads((FIXTURES / f"{name}.json").read_text())["keys"]
    state = {}
    for key, spec in keys.items():
        dtype = getattr(torch, spec["dtype"])
        shape = spec["shape"]
        state[key] = (torch.randint(0, 8, shape, generator=gen) if not dtype.is_floating_point
                      else torch.rand(shape, generator=gen)).to(dtype)
    return state


def test_official_iris_state_dicts_import_into_the_iris_agent(config_from):
    from worldmodels.algos.iris.experiment import agent_configs
    from worldmodels.algos.iris.agent import IrisAgent
    from worldmodels.algos.iris.upstream import UpstreamImportError, iris_state_dict_from_upstream

    agent = IrisAgent(*agent_configs(config_from(["+exp=iris_atari"]), (64, 64, 3), 4))
    upstream = upstream_state("iris")
    upstream["tokenizer.lpips.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)   # official files keep LPIPS
    converted = iris_state_dict_from_upstream(upstream)
    agent.load_state_dict(converted, strict=True)
    ours = agent.state_dict()
    torch.testing.assert_close(ours["tokenizer.quantizer.codebook"], upstream["tokenizer.embedding.weight"])
    qkv = ours["world_model.transformer.blocks.3.attn.qkv.weight"]
    for index, name in enumerate(("query", "key", "value")):
        torch.testing.assert_close(qkv[256 * index:256 * (index + 1)],
                                   upstream[f"world_model.transformer.blocks.3.attn.{name}.weight"])
    torch.testing.assert_close(ours["world_model.action_embedding.weight"],
                               upstream["world_model.embedder.embedding_tables.0.weight"])
    torch.testing.assert_close(ours["actor_critic.cnn.9.weight"], upstream["actor_critic.conv4.weight"])
    # level 2 of the encoder has attention: block 1 comes after attention 0; the decoder's levels run backwards
    torch.testing.assert_close(ours["tokenizer.encoder.down.2.2.conv1.weight"],
                               upstream["tokenizer.encoder.down.2.block.1.conv1.weight"])
    torch.testing.assert_close(ours["tokenizer.decoder.up.0.3.conv.weight"],
                               upstream["tokenizer.decoder.up.4.upsample.conv.weight"])
    with pytest.raises(UpstreamImportError):
        iris_state_dict_from_upstream({"encoder.weight": torch.zeros(1)})


@pytest.mark.parametrize("game", ["atari", "crafter"])
def test_official_delta_iris_state_dicts_import_into_the_delta_iris_agent(config_from, game):
    from worldmodels.algos.delta_iris.agent import DeltaIrisAgent
    from worldmodels.algos.delta_iris.experiment import agent_configs
    from worldmodels.algos.delta_iris.upstream import delta_iris_state_dict_from_upstream

    agent = DeltaIrisAgent(*agent_configs(config_from([f"+exp=delta_iris_{game}"]), (64, 64, 3),
                                          4 if game == "atari" else 17))
    upstream = upstream_state(f"delta_{game}")
    converted = delta_iris_state_dict_from_upstream(upstream, agent.state_dict())
    agent.load_state_dict(converted, strict=True)
    ours = agent.state_dict()
    torch.testing.assert_close(ours["tokenizer.pre_quant.weight"], upstream["tokenizer.quantizer.pre_quant_proj.weight"])
    torch.testing.assert_close(ours["world_model.frame_embedding.3.weight"], upstream["world_model.frame_cnn.2.weight"])
    torch.testing.assert_close(ours["actor_critic.target_model.critic.weight"],
                               upstream["actor_critic.target_model.critic_linear.weight"])
    freqs = upstream["tokenizer.quantizer.codewords_freqs"]
    torch.testing.assert_close(ours["tokenizer.quantizer.ema_count"], freqs * freqs.numel())


# ---------------------------------------------------------------- the evaluation protocol


def test_protocol_env_and_human_normalised_scores(config_from):
    from worldmodels.evaluate import game_key, human_normalised, policy_settings, protocol_env_config

    env = protocol_env_config(config_from(["+exp=iris_atari", "env.task=ms_pacman"]))
    assert (env.noop_max, env.sticky_actions, env.terminal_on_life_loss, env.max_episode_steps) == (1, 0.0, False, 27000)
    assert game_key("ms_pacman") == game_key("ALE/MsPacman-v5") == "mspacman"
    scores = human_normalised("pong", -20.7 + 0.5 * (14.6 + 20.7))
    assert scores["human_normalised"] == pytest.approx(0.5) and scores["random_score"] == -20.7
    assert human_normalised("cartpole", 10.0) == {}
    cfg = config_from(["+exp=iris_tiny"])
    assert policy_settings("iris", cfg, None) == ("sample", {"temperature": 0.5}, 0.5)
    assert policy_settings("delta_iris", cfg, None)[2] == 1.0
    assert policy_settings("iris", cfg, 0.0) == ("greedy", {}, 0.0)
