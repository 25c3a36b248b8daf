"""Where does Catch's ball get lost in DreamerV3's world model? The world model alone,
on random-policy Catch episodes, with measurements of each stage.

    python benchmarks/probe_dreamer_catch.py --updates 1500 model_lr=1e-3
    python benchmarks/probe_dreamer_catch.py --updates 1500 model_lr=1e-3 stoch=32 classes=16

``key=value`` arguments override :class:`DreamerConfig` fields of ``dreamer_catch``'s
first model (``BASE``: dreamer_cartpole's narrow agent, 8x8 latents, model lr 3e-4).
It prints one JSON line per measurement:

* ``step 0`` and ``final``: ``embed_rel_spread`` (how far the encoder's output moves when
  only the ball's cell changes, relative to its norm), ``post_pair_kl`` (mean KL between
  the posteriors of such frames, nats), ``post_maxprob`` (the posterior's mean top
  probability) and the gradient norms of the image loss in the encoder, RSSM and decoder;
* every ``--every`` updates: the training losses and, on held-out windows, the squared
  error of the posterior reconstructions split into the ball's pixels, the paddle's and
  the rest (the ball left out costs 48: 16 pixels x 3 channels x 1²);
* ``final``: linear read-outs (ridge regression, held-out accuracy) of the ball's column
  and the paddle's from the encoder's output and from the features ``(h, z)`` (chance
  0.125), over steps where the ball has fallen at least one row.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from worldmodels.algos.dreamerv3.agent import DreamerAgent, DreamerConfig
from worldmodels.envs.catch import Catch
from worldmodels.nn.multi_io import preprocess_image

BASE = dict(deter=128, stoch=8, classes=8, hidden=64, blocks=2, cnn_keys="image", mlp_keys="$^", cnn_depth=16,
            mlp_units=64, mlp_layers=2, head_units=64, head_layers=1, actor_layers=2, critic_layers=2,
            model_lr=3e-4, train_actor=False)
OBS_SPACE = {"image": ((32, 32, 3), np.uint8)}


class CatchActions:
    """Catch's action space as :class:`DreamerAgent` reads it."""

    discrete = True
    size = 3


def random_episodes(episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Random-policy episodes as one stream of steps: ``image``, ``action`` (one-hot, taken
    after the frame), ``reward``, ``is_first``, ``is_terminal`` and ``state`` (ball row,
    ball column, paddle column)."""
    env, rng = Catch(), np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("image", "action", "reward", "is_first", "is_terminal", "state")}
    for episode in range(episodes):
        env.reset(seed=seed * 1000 + episode)
        reward, first, terminal = 0.0, True, False
        while True:
            action = int(rng.integers(3))
            rows["image"].append(env.render())
            rows["state"].append([env._ball[0], env._ball[1], env._paddle])
            rows["reward"].append(reward)
            rows["is_first"].append(first)
            rows["is_terminal"].append(terminal)
            rows["action"].append(np.eye(3, dtype=np.float32)[action])
            if terminal:
                break
            _, reward, terminal, _, _ = env.step(action)
            first = False
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["reward"] = out["reward"].astype(np.float32)
    return out


def windows(data: dict, rng: np.random.Generator, batch: int, length: int, low: int, high: int):
    """``batch`` windows of ``length`` steps from ``data[low:high]`` (the model restarts at
    each window's first step) and their states ``[B, T, 3]``."""
    index = rng.integers(low, high - length, size=batch)[:, None] + np.arange(length)[None]
    out = {k: torch.from_numpy(v[index]) for k, v in data.items() if k != "state"}
    out["is_first"] = out["is_first"].bool()
    out["is_first"][:, 0] = True
    return out, data["state"][index]


@torch.no_grad()
def reconstruction_errors(agent: DreamerAgent, batch: dict) -> tuple[dict[str, float], torch.Tensor]:
    """Per-step squared error of the posterior reconstructions, split into the ball's, the
    paddle's and the other pixels, and the features ``[B, T, F]``."""
    wm = agent.world_model
    post = wm.observe(batch)
    feat = wm.features(post.deter, post.stoch)
    error = ((wm.decoder(feat)["image"].mode() - preprocess_image(batch["image"])) ** 2).sum(-1)
    image = batch["image"]
    ball = (image == 255).all(-1)
    paddle = (image[..., 0] == 255) & (image[..., 1] == 128) & (image[..., 2] == 0)
    steps = error.shape[0] * error.shape[1]
    parts = {"image": error, "ball": error * ball, "paddle": error * paddle, "rest": error * ~(ball | paddle)}
    return {k: round(float(v.sum()) / steps, 2) for k, v in parts.items()}, feat


def read_out_accuracy(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, y_test: np.ndarray,
                      classes: int = 8) -> float:
    """Held-out accuracy of a one-hot ridge regression from ``x [N, D]`` to labels ``y [N]``."""
    x_train, x_test = (torch.cat([x, torch.ones(len(x), 1)], 1).double() for x in (x_train, x_test))
    gram = x_train.T @ x_train + 1e-2 * torch.eye(x_train.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, x_train.T @ F.one_hot(torch.as_tensor(y_train), classes).double())
    return round(float(((x_test @ weights).argmax(1).numpy() == y_test).mean()), 3)


@torch.no_grad()
def ball_sensitivity(agent: DreamerAgent) -> dict[str, float]:
    """How the encoder and a first-step posterior respond to frames that differ only in
    the ball's cell (56 cells, paddle fixed)."""
    wm, env = agent.world_model, Catch()
    env.reset(seed=0)
    frames = []
    for row in range(env.rows - 1):
        for col in range(env.cols):
            env._ball[:] = (row, col)
            frames.append(env.render())
    embed = wm.encoder({"image": torch.from_numpy(np.stack(frames))[:, None]})
    first = torch.ones(len(frames), 1, dtype=torch.bool)
    logits = wm.rssm.observe(embed, torch.zeros(len(frames), 1, CatchActions.size), first).post_logits[:, 0]
    log_p = torch.log_softmax(logits.float(), -1)
    pair_kl = (log_p.exp()[:, None] * (log_p[:, None] - log_p[None])).sum((-2, -1))
    embed = embed[:, 0]
    spread = (embed - embed.mean(0)).norm(dim=1).mean() / embed.norm(dim=1).mean()
    return {"embed_rel_spread": round(float(spread), 3), "post_pair_kl": round(float(pair_kl.mean()), 4),
            "post_maxprob": round(float(log_p.exp().max(-1).values.mean()), 3)}


def image_gradient_norms(agent: DreamerAgent, batch: dict) -> dict[str, float]:
    """Norms of the image loss's gradient in the encoder, the RSSM and the decoder."""
    wm = agent.world_model
    agent.zero_grad()
    wm.loss(batch)[0]["image"].backward()
    norms = {name: round(float(torch.sqrt(sum((p.grad ** 2).sum() for p in part.parameters() if p.grad is not None))), 3)
             for name, part in (("grad_encoder", wm.encoder), ("grad_rssm", wm.rssm), ("grad_decoder", wm.decoder))}
    agent.zero_grad()
    return norms


def read_outs(agent: DreamerAgent, data: dict, split: int, length: int) -> dict[str, float]:
    """Ball-column and paddle read-outs from the encoder's output and the features."""
    train, train_state = windows(data, np.random.default_rng(7), 64, length, 0, split)
    test, test_state = windows(data, np.random.default_rng(123), 32, length, split, len(data["image"]))
    with torch.no_grad():
        inputs = {"embed": [agent.world_model.encoder({"image": b["image"]}) for b in (train, test)],
                  "feat": [reconstruction_errors(agent, b)[1] for b in (train, test)]}
    fallen = [s[..., 0] >= 1 for s in (train_state, test_state)]
    out = {}
    for name, (x_train, x_test) in inputs.items():
        for label, column in (("ball_col", 1), ("paddle", 2)):
            out[f"{name}_{label}"] = read_out_accuracy(x_train[fallen[0]], train_state[..., column][fallen[0]],
                                                       x_test[fallen[1]], test_state[..., column][fallen[1]])
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` strings as DreamerConfig fields (values parsed as JSON, else text)."""
    config = dict(BASE)
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="model init and batch order (the data is fixed)")
    parser.add_argument("--episodes", type=int, default=40, help="random episodes (70 steps each), 80%% trained on")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("overrides", nargs="*", help="DreamerConfig fields, e.g. model_lr=1e-3 stoch=32")
    args = parser.parse_args()
    config = parse_overrides(args.overrides)
    torch.manual_seed(args.seed)
    data = random_episodes(args.episodes, seed=0)
    split = int(len(data["image"]) * 0.8)
    agent = DreamerAgent(DreamerConfig(**config), OBS_SPACE, CatchActions())
    wm = agent.world_model
    optimizer = torch.optim.Adam(wm.parameters(), lr=agent.config.model_lr, eps=agent.config.model_eps)
    rng = np.random.default_rng(args.seed)
    test, _ = windows(data, np.random.default_rng(123), 32, args.length, split, len(data["image"]))
    print(json.dumps({"changed": {k: v for k, v in config.items() if BASE.get(k) != v}, "step": 0,
                      **ball_sensitivity(agent), **image_gradient_norms(agent, test)}), flush=True)
    start, history = time.time(), []
    for step in range(1, args.updates + 1):
        terms = wm.loss(windows(data, rng, args.batch, args.length, 0, split)[0])[0]
        optimizer.zero_grad()
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), agent.config.model_grad_clip)
        optimizer.step()
        history.append({k: float(terms[k].detach()) for k in ("image", "dyn")})
        if step % args.every == 0:
            train = {k: round(float(np.mean([h[k] for h in history])), 2) for k in history[0]}
            history = []
            print(json.dumps({"step": step, "seconds": round(time.time() - start), "train": train,
                              "test": reconstruction_errors(agent, test)[0]}), flush=True)
    print(json.dumps({"final": args.updates, **read_outs(agent, data, split, args.length), **ball_sensitivity(agent),
                      **image_gradient_norms(agent, test)}), flush=True)


if __name__ == "__main__":
    main()
