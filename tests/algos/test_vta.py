"""VTA: shapes, loss terms, segment limits during training, temperature schedule,
boundary scores and pictures."""

import math

import pytest
import torch

from worldmodels.algos.vta.metrics import boundary_scores, dilate, random_boundaries
from worldmodels.algos.vta.model import VTA, VTAConfig, quantize
from worldmodels.algos.vta.visualize import GREEN, RED, YELLOW, save_visualization, with_bars

SMALL = dict(image_size=16, channels=1, widths=[8, 8], feat_size=16, belief_size=16, state_size=4,
             boundary_layers=2, seg_len=3, seg_num=4, init_size=2, seq_size=8)


def make(**overrides):
    torch.manual_seed(0)
    return VTA(VTAConfig(**{**SMALL, **overrides}))


def frames(batch=3, steps=12, channels=1, size=16):
    return torch.rand(batch, steps, channels, size, size, generator=torch.Generator().manual_seed(1))


def test_forward_shapes_and_loss_terms():
    model = make()
    obs = frames()
    out = model(obs, obs.new_zeros(3, 12, 0), seq_size=8, init_size=2)
    assert out.reconstruction.shape == (3, 8, 1, 16, 16)
    for name in ["mask", "obs_cost", "kl_abs", "kl_obs", "kl_mask", "abs_entropy", "obs_entropy", "boundary_entropy"]:
        assert getattr(out, name).shape == (3, 8), name
    expected = (out.obs_cost + out.kl_abs + out.kl_obs + out.kl_mask).sum(1).mean() / 8
    torch.testing.assert_close(out.train_loss, expected)
    assert out.kl_mask[:, 0].abs().max() < 1e-6            # step 0 is a boundary for both
    assert (out.kl_abs[out.mask < 0.5] == 0).all()          # the abstract level only pays at boundaries
    assert (out.kl_obs >= 0).all() and (out.kl_mask >= -1e-6).all()
    assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1


def test_every_parameter_learns():
    model = make(action_size=3)
    obs = frames()
    actions = torch.nn.functional.one_hot(torch.randint(0, 3, (3, 12)), 3).float()
    loss, metrics = model.compute_loss({"frames": obs, "actions": actions})
    loss.backward()
    assert {"obs_cost", "kl_abs", "kl_obs", "kl_mask", "boundary_rate", "mask_beta"} <= set(metrics)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_segment_limits_hold_during_training():
    model = make(seg_len=3, seg_num=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(5):
        out = model(frames(batch=8), torch.zeros(8, 12, 0), seq_size=8, init_size=2)
        out.train_loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mask = out.mask.detach() > 0.5
        assert mask[:, 0].all()
        assert (mask.sum(1) <= 4).all()
        starts = [torch.nonzero(row).flatten().tolist() + [8] for row in mask]
        assert all(b - a <= 3 for row in starts for a, b in zip(row, row[1:]))


def test_temperature_schedule_and_step_counter():
    fixed = make(mask_beta=0.7, beta_anneal=0.0)
    fixed.step += 1000
    assert fixed.mask_beta() == 0.7
    decaying = make(beta_anneal=0.01, max_beta=1.0, min_beta=0.2)
    assert decaying.mask_beta() == 1.0
    decaying.step += 100
    assert decaying.mask_beta() == pytest.approx(math.exp(-1.0))
    decaying.step += 10_000
    assert decaying.mask_beta() == 0.2
    model = make()
    batch = {"frames": frames()}
    model.compute_loss(batch)
    model.eval()
    model.compute_loss(batch)
    assert int(model.step) == 1 and "step" in model.state_dict()


def test_quantize_levels_and_gaussian_loss():
    x = torch.tensor([0.0, 0.5, 1.0])
    q = quantize(x, 5, dequantize=False)
    torch.testing.assert_close(q, torch.tensor([0.0, 15 / 32, 31 / 32]) - 0.5)
    assert quantize(x, None, dequantize=True) is x
    model = make(obs_bit=5, loss_type="gaussian", channels=3)
    out = model(frames(channels=3), torch.zeros(3, 12, 0), 8, 2, obs_std=0.5, loss_type="gaussian")
    assert torch.isfinite(out.train_loss)


def test_bad_inputs_are_named():
    model = make()
    with pytest.raises(ValueError, match=r"obs must be \[B, T, C, H, W\]"):
        model(torch.rand(3, 12, 16, 16), torch.zeros(3, 12, 0), 8, 2)
    with pytest.raises(ValueError, match="action must be"):
        model(frames(), torch.zeros(3, 12, 2), 8, 2)
    with pytest.raises(ValueError, match="init_size=6 \\+ seq_size=8"):
        model(frames(), torch.zeros(3, 12, 0), 8, 6)
    with pytest.raises(ValueError, match="loss_type='l1'"):
        VTAConfig(loss_type="l1")
    with pytest.raises(ValueError, match="seg_len=2 x seg_num=2"):
        make(seg_len=2, seg_num=2)(frames(), torch.zeros(3, 12, 0), 8, 2)


def test_boundary_scores_by_hand():
    truth = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 1]], dtype=torch.bool)
    pred = torch.tensor([[1, 0, 1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    scores = boundary_scores(pred, truth, tolerance=1)
    # step 0 is ignored; predictions at 2 (near 3) hit, 5 misses; truths at 3 found, 7 missed
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    assert boundary_scores(pred, truth, tolerance=0)["f1"] == 0.0
    assert dilate(truth, 1)[0].tolist() == [True, True, True, True, True, False, True, True]
    baseline = random_boundaries(torch.Size([200, 50]), 0.2, torch.Generator().manual_seed(0))
    assert baseline[:, 0].all() and abs(baseline[:, 1:].float().mean().item() - 0.2) < 0.02


def test_pictures(tmp_path):
    bars = with_bars(torch.zeros(3, 1, 4, 4), torch.tensor([1, 0, 1]), torch.tensor([0, 1, 1]))
    assert bars.shape == (3, 3, 6, 4)
    assert bars[0, :, 0, 0].tolist() == pytest.approx(list(RED))
    assert bars[1, :, 0, 0].tolist() == pytest.approx(list(GREEN))
    assert bars[2, :, 0, 0].tolist() == pytest.approx(list(YELLOW))
    model = make()
    held_out = {"frames": frames(), "events": torch.rand(3, 12) < 0.3}
    path = save_visualization(model, held_out, tmp_path, index=1, num_samples=2)
    assert path.name == "vis_seq_1.png" and (tmp_path / "jumpy_1.png").is_file()
    assert model.training  # restored
    import imageio.v3 as iio

    from worldmodels.utils.images import image_grid
    picture = iio.imread(path)
    frames_only = image_grid([torch.zeros(8, 3, 18, 16)] * 4)
    assert picture.shape[0] > frames_only.shape[0] and picture.shape[1] > frames_only.shape[1]
    label_column = picture[:, :20]
    assert (label_column < 128).any() and (label_column == 255).mean() > 0.5  # dark text on white


def test_training_only_options_keep_the_reported_elbo():
    from worldmodels.algos.vta.model import balanced_bernoulli_kl
    from worldmodels.nn.hrssm import mask_kl

    q = torch.log_softmax(torch.randn(4, 6, 2), -1).requires_grad_()
    p = torch.log_softmax(torch.randn(4, 6, 2), -1).requires_grad_()
    torch.testing.assert_close(balanced_bernoulli_kl(q, p, 0.8), mask_kl(q, p))
    assert (mask_kl(q, p)[:, 0] == 0).all() and (mask_kl(q, p)[:, 1:] > 0).all()
    balanced_bernoulli_kl(q, p, 1.0).sum().backward()
    assert q.grad.abs().sum() == 0 and p.grad.abs().sum() > 0   # all of it trains the prior
    plain, relaxed = make(), make(abs_free_nats=5.0, mask_kl_balance=0.8)
    obs, act = frames(), torch.zeros(3, 12, 0)
    torch.manual_seed(3)
    a = plain(obs, act, 8, 2)
    torch.manual_seed(3)
    b = relaxed(obs, act, 8, 2)
    assert b.train_loss < a.train_loss                            # KL_abs allowance in training
    plain.eval(), relaxed.eval()
    torch.manual_seed(4)
    c = plain(obs, act, 8, 2)
    torch.manual_seed(4)
    d = relaxed(obs, act, 8, 2)
    torch.testing.assert_close(c.train_loss, d.train_loss)       # evaluation reports the ELBO
    with pytest.raises(ValueError, match="mask_kl_balance=1.5"):
        VTAConfig(mask_kl_balance=1.5)


def test_boundary_warmup_keeps_the_detector_out_of_the_gradient():
    for grad in ("st", "disarm"):
        model = make(boundary_warmup=1, boundary_grad=grad)
        batch = {"frames": frames()}
        loss, _ = model.compute_loss(batch)
        loss.backward()
        detector = list(model.hrssm.post_boundary.parameters())
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in detector)
        model.zero_grad()
        loss, _ = model.compute_loss(batch)   # step 1: warm-up over
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detector)


def test_the_detector_starts_at_one_boundary_per_segment_length():
    model = make(seg_len=4)
    logits = model.hrssm.boundary_logits(torch.randn(64, 12, 16), torch.zeros(64, 12, 0))
    assert abs(torch.sigmoid(logits).mean().item() - 0.25) < 0.1


def test_given_boundaries_follow_the_events_under_the_segment_limits():
    model = make(boundary_source="events", seg_len=3, seg_num=4)
    events = torch.zeros(3, 12, dtype=torch.bool)
    events[:, 2 + 2] = True                    # window step 2
    events[1, 2 + 1] = True                    # sequence 1 also at window step 1
    out = model(frames(), torch.zeros(3, 12, 0), 8, 2, events=events)
    mask = out.mask > 0.5
    # step 0 starts a segment; the event at 2 starts one; seg_len=3 forces one at 5
    assert mask[0].nonzero().flatten().tolist() == [0, 2, 5]
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 2, 5]
    # the posterior is the point mass on the mask: KL_mask = -log p(m_t | o_{t-1})
    assert torch.isfinite(out.train_loss) and (out.kl_mask >= 0).all()
    torch.testing.assert_close(out.boundary.probs, out.mask)
    out.train_loss.backward()
    detector = list(model.hrssm.post_boundary.parameters())
    assert all(p.grad is None for p in detector)              # the detector is not used
    assert model.hrssm.prior_boundary.weight.grad.abs().sum() > 0  # the prior learns the events


def test_random_boundaries_match_the_event_rate():
    model = make(boundary_source="random", seg_len=8, seg_num=8)
    events = torch.rand(64, 12, generator=torch.Generator().manual_seed(2)) < 0.25
    torch.manual_seed(0)
    out = model(frames(batch=64), torch.zeros(64, 12, 0), 8, 2, events=events)
    mask = out.mask > 0.5
    rate = events[:, 3:10].float().mean()
    assert abs(mask[:, 1:].float().mean() - rate) < 0.06
    assert not torch.equal(mask, events[:, 2:10] | mask[:, :1])  # placed at random, not at the events


def test_control_runs_need_the_events():
    with pytest.raises(ValueError, match="boundary_source='oracle'"):
        VTAConfig(boundary_source="oracle")
    model = make(boundary_source="events")
    with pytest.raises(ValueError, match=r"needs the ground-truth events .*batch\['events'\]"):
        model.compute_loss({"frames": frames()})
    with pytest.raises(ValueError, match="needs the ground-truth events"):
        model(frames(), torch.zeros(3, 12, 0), 8, 2, events=torch.zeros(3, 5, dtype=torch.bool))


def test_cost_split_averages_each_kind_of_step():
    from types import SimpleNamespace

    from worldmodels.algos.vta.evaluate import cost_split

    kl_abs = torch.tensor([[9.0, 4.0, 0.0, 0.0]])
    kl_obs = torch.tensor([[9.0, 1.0, 2.0, 6.0]])
    obs_cost = torch.tensor([[9.0, 10.0, 20.0, 30.0]])
    out = SimpleNamespace(kl_abs=kl_abs, kl_obs=kl_obs, obs_cost=obs_cost)
    boundaries = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    events = torch.tensor([[0, 0, 0, 1]], dtype=torch.bool)
    split = cost_split(out, boundaries, events)
    assert split == {"eval/kl_at_boundaries": 5.0, "eval/kl_between_boundaries": 4.0,
                     "eval/kl_obs_at_events": 6.0, "eval/kl_obs_elsewhere": 1.5,
                     "eval/obs_cost_at_events": 30.0, "eval/obs_cost_elsewhere": 15.0}
    assert "eval/kl_obs_at_events" not in cost_split(out, boundaries, torch.zeros_like(events))


def test_a_detector_that_never_fires_pays_at_the_limits():
    """``limits_in_kl="prior"`` (the original code's): where seg_len forces a boundary
    the detector's own q(m_t) is charged, so never firing costs log(1000) there."""
    costs = {}
    for limits in ("prior", "both"):
        model = make(seg_len=3, seg_num=4, limits_in_kl=limits)
        out_layer = model.hrssm.post_boundary.out
        torch.nn.init.zeros_(out_layer.weight)
        torch.nn.init.constant_(out_layer.bias, -30.0)  # q(m_t) = sigmoid(-30) at every frame
        model.eval()
        out = model(frames(), torch.zeros(3, 12, 0), 8, 2)
        mask = out.mask > 0.5
        assert mask.nonzero()[:, 1].unique().tolist() == [0, 3, 6]  # only the forced boundaries
        forced = torch.zeros_like(mask)
        forced[:, [3, 6]] = True
        costs[limits] = out.kl_mask[forced]
        assert not out.free[forced].any() and out.free[:, [1, 2, 4, 5, 7]].all()
    torch.testing.assert_close(costs["prior"], torch.full_like(costs["prior"], math.log(1000)), atol=1e-3, rtol=0)
    assert costs["both"].abs().max() < 1e-2
    with pytest.raises(ValueError, match="limits_in_kl='posterior'"):
        VTAConfig(limits_in_kl="posterior").hrssm()


def test_the_normalised_detector_sees_its_inputs_from_the_start():
    """At initialisation the GroupNorm detector's log-odds differ between frames by
    about as much as they differ from 0, so the shared rate cannot race alone."""
    model = make(detector_norm="group")
    logits = model.hrssm.boundary_logits(torch.randn(8, 12, 16), torch.zeros(8, 12, 0))
    assert logits.shape == (8, 12)
    spread, level = logits.std(dim=1).mean(), logits.mean().abs()
    assert spread > 0.1 and spread > level / 4
    with pytest.raises(ValueError, match="detector_norm='batch'"):
        VTAConfig(detector_norm="batch").hrssm()


def test_training_metrics_report_the_detector_health():
    model = make(seg_len=8, seg_num=4)
    _, metrics = model.compute_loss({"frames": frames()})
    for key in ("boundary_entropy", "boundary_logit_mean", "boundary_logit_std"):
        assert torch.isfinite(torch.as_tensor(metrics[key])), key
    assert 0 < metrics["boundary_entropy"] <= math.log(2) + 1e-6
    given = make(boundary_source="events")
    _, metrics = given.compute_loss({"frames": frames(), "events": torch.zeros(3, 12, dtype=torch.bool)})
    assert "boundary_logit_mean" not in metrics  # no detector in the control runs


def test_periodic_baseline_keeps_time_at_the_rate():
    from worldmodels.algos.vta.metrics import periodic_boundaries

    marks = periodic_boundaries(torch.Size([500, 40]), 0.2, torch.Generator().manual_seed(0))
    assert marks[:, 0].all()
    assert abs(marks[:, 1:].float().mean().item() - 0.2) < 0.01
    starts = marks[:, 1:].nonzero()
    gaps = torch.diff(starts[:, 1])[torch.diff(starts[:, 0]) == 0]
    assert (gaps == 5).all()                                     # every 5th frame
    phases = marks[:, 1:6].float().argmax(1)
    assert len(phases.unique()) == 5                             # at every phase across sequences
    assert not periodic_boundaries(torch.Size([3, 9]), 0.0, torch.Generator())[:, 1:].any()


def test_foreground_error_tells_colour_from_gray():
    from worldmodels.algos.vta.evaluate import foreground_error

    truth = torch.zeros(1, 1, 3, 8, 8)
    truth[..., 0, 2:5, 2:5] = 1.0                  # a red ball
    assert foreground_error(truth, truth) == 0.0
    gray = truth.clone()
    gray[..., :, 2:5, 2:5] = 0.5                   # in the right place, in the average colour
    assert foreground_error(gray, truth) == pytest.approx(0.5)
    assert foreground_error(torch.zeros_like(truth), torch.zeros_like(truth)) == 0.0


def test_logit_decay_adds_the_mean_squared_log_odds_and_pulls_them_to_zero():
    batch = {"frames": frames()}
    plain, decayed = make(), make(logit_decay=0.5)
    decayed.load_state_dict(plain.state_dict())
    torch.manual_seed(3)
    base, _ = plain.compute_loss(batch)
    torch.manual_seed(3)
    loss, metrics = decayed.compute_loss(batch)
    logits = decayed.hrssm.boundary_logits(decayed.embed(batch["frames"]), torch.zeros(3, 12, 0))[:, 2:10]
    expected = 0.5 * logits[:, 1:].square().mean()
    torch.testing.assert_close(loss - base, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["train/logit_decay"], expected.detach(), rtol=1e-4, atol=1e-5)
    (bias_grad,) = torch.autograd.grad(expected, decayed.hrssm.post_boundary.out.bias)
    assert bias_grad.sign().item() == logits[:, 1:].mean().sign().item()   # descending it moves the log-odds to 0
    with pytest.raises(ValueError, match="logit_decay=-1"):
        VTAConfig(logit_decay=-1)


def test_common_noise_gives_equal_boundaries_equal_draws():
    model = make(boundary_grad="disarm", common_noise=True).train()
    obs, act = frames(), torch.zeros(3, 12, 0)
    embed = model.embed(obs)
    same = torch.zeros(3, 8, dtype=torch.bool)
    noise = torch.randn(3, 8, 2, 4).repeat(2, 1, 1, 1)
    pair = dict(boundaries=same.repeat(2, 1), latent_noise=noise)
    out = model.hrssm(embed.repeat(2, 1, 1), act.repeat(2, 1, 1), 2, 8, 1.0, **pair)
    first, second = out.kl_obs.chunk(2)
    torch.testing.assert_close(first, second)                   # same boundaries, same noise: same draws
    fresh = model.hrssm(embed.repeat(2, 1, 1), act.repeat(2, 1, 1), 2, 8, 1.0, boundaries=same.repeat(2, 1))
    assert not torch.allclose(*fresh.feat.chunk(2))            # fresh noise: different draws
    with pytest.raises(ValueError, match=r"latent_noise must be \[B, seq_size, 2, state\]"):
        model.hrssm(embed, act, 2, 8, 1.0, boundaries=same, latent_noise=torch.zeros(3, 8, 4))


def test_common_noise_trains_through_the_disarm_path():
    model = make(boundary_grad="disarm", common_noise=True).train()
    loss, _ = model.compute_loss({"frames": frames()})
    loss.backward()
    grad = model.hrssm.post_boundary.out.bias.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
