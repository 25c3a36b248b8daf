"""Every setting of the World Models pipeline, its presets (``quick``, ``full``) and checks.

``full`` follows the paper and the authors' code for CarRacing (10,000 random rollouts,
VAE 10 epochs, MDN-RNN 20 epochs, population 64 x 16 rollouts, up to 800 generations,
100 evaluation episodes). ``quick`` is a smoke run for a 2-core CPU (under 10 minutes).
``tiny`` on the ``tiny`` env is what the tests run.

Differences from the authors' code, on purpose: the VAE loss is the package's Gaussian
likelihood (1/2 squared error) with the authors' KL tolerance (KL floored at
``kl_tolerance * latent_dim``); collected episodes and dream/real rollouts are capped at
``rollout_steps`` / ``controller_steps`` (1,000 in ``full``, as CarRacing's own limit);
MDN-RNN training samples chunks of ``mdn_seq_len`` steps, episodes drawn in proportion
to their length, an episode shorter than a chunk taken whole and its padding masked out
of the losses (the authors cut one stream of concatenated episodes into chunks).

Doom take-cover (:data:`ENV_PRESETS`, applied over the mode's preset) follows the
authors' ``doomrnn``: z 64, LSTM 512, 5 Gaussians, a done ("restart") logit, the
controller trained in the dream at tau 1.15 (the paper's best; their ``doomrnn.py``
ships 1.25), episodes capped at 2,100 frames. Differences, on purpose: M trains on V's
posterior means (``mdn_latent=mean``; the authors' M on posterior draws; the measured
reason is at the field); envpool's TakeCover-v1 steps 4 frames per agent step (the authors' gym-doom steps one), so the
caps are 525 agent steps and the score counts 4 frames per step survived. As the authors
do, a dream episode ends where the done logit is > 0 (``dream_done=threshold``) and the
done loss weighs deaths 10 times (``done_weight``, their restart_factor). Measured on
one V and M (300 episodes, V 8 epochs): sampling the done from sigmoid(logit) with an
unweighted loss made the dream score 6 times the real one (1,182 against 190 frames),
its base-rate hazard killing every candidate at the same shared draws (18 of 40
generations had equal fitness for all); the threshold rule brings it to 208 against 189.
M takes no restart flag as input (the authors' does) because its training chunks never cross
episodes; ``full`` trains M on chunks of 100 steps (the authors' 500 frames are 125 of
envpool's steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import WorldModelsError

MODES = ("quick", "full", "tiny")
DEVICES = ("cpu", "cuda", "auto")
WANDB_MODES = ("disabled", "online", "offline")
DREAM_DONE_RULES = ("sample", "threshold")
CONTROLLER_INPUTS = ("raw", "standardized")
LATENTS = ("mean", "sample")


class PipelineConfigError(WorldModelsError, ValueError):
    """A pipeline setting is out of range; the message names it."""


@dataclass
class PipelineConfig:
    env: str = "carracing"
    mode: str = "quick"
    seed: int = 0
    device: str = "cpu"
    # collect: random rollouts
    rollouts: int = 200
    rollout_steps: int = 100
    collect_envs: int = 8
    # V: the VAE
    latent_dim: int = 32
    vae_widths: tuple[int, ...] = (32, 64, 128, 256)
    vae_epochs: int = 1
    vae_batch_size: int = 100
    vae_lr: float = 1e-3
    kl_tolerance: float = 0.5
    # M: the MDN-RNN
    hidden_size: int = 256
    num_mixtures: int = 5
    mdn_epochs: int = 2
    mdn_seq_len: int = 32
    mdn_batch_size: int = 32
    mdn_lr: float = 1e-3
    # M's training z: sample (a posterior draw per batch, the authors') or mean (the
    # posterior mean: what the real env and the dream's first step feed M by default).
    # mean is the Doom default: on one V (1,500 episodes, 5 epochs), whose posterior
    # noise is larger than the means' spread in 48 of 64 dimensions, M trained on draws
    # dreams a third of the fireballs V sees and its controller survives 377 +- 111 real
    # frames; trained on means, 792 +- 462 (random policy 357 +- 189; 100 episodes).
    mdn_latent: str = "sample"
    predict_done: bool = False
    done_weight: float = 1.0       # weight of done=1 steps in M's done loss (the authors' restart_factor)
    # C: the controller and CMA-ES
    train_in_dream: bool = False   # CarRacing in the paper trains in the real env
    population: int = 8
    generations: int = 5
    rollouts_per_candidate: int = 2
    sigma0: float = 0.1
    antithetic: bool = False       # mirrored pairs m +- sigma*y, each pair on the same env seeds
    weight_decay: float = 0.01
    controller_steps: int = 100
    temperature: float = 1.0
    # One controller per tau (the paper's table 2): each its own CMA-ES search in
    # temperatures/tau_<t>/, trained in the dream at that tau (same seed, so every search
    # starts from the same generation 0), and eval writes temperature_table.csv. () trains
    # one controller at `temperature`.
    train_temperatures: tuple[float, ...] = ()
    # raw: the controller reads M's features [z, h(, c)] as they are (the paper, the
    # authors' code). standardized: each feature minus its mean, over its std, both
    # measured once on M's features over the training episodes and saved in the
    # controller checkpoint; the real-env and the dream controller apply them. Why: on
    # Doom, M's cell state c is large (median |mean| 32), so at sigma0 0.1 over 1,088
    # weights the generation-0 candidates are bang-bang policies. Measured on a small
    # Doom V and M (quick, VAE 2 epochs, M 10), 64 candidates on 4,096 training steps:
    # raw, median |pre-activation| 35.7 and |tanh| > 0.99 at 92.1% of steps;
    # standardized, 1.10 and 17.8%.
    controller_input: str = "raw"
    # What z the controller and M read from V in the real env: mean (the posterior mean)
    # or sample (a draw mu + sigma * eps from the posterior, as the authors' real env does;
    # M trains on such draws). Measured on Doom (1,500 episodes, V 2 epochs, whose
    # posterior std, 0.79 on average, is wider than |mu|, 0.29): the same dream-trained
    # controller survives 422.2 +- 196.7 frames reading the mean, 417.2 +- 240.8 reading
    # draws (100 episodes each), so the mean stays the default.
    latent: str = "mean"
    dream_done: str = "sample"     # how a dream episode ends: sample (done ~ sigmoid(logit)) | threshold (logit > 0, the authors')
    mean_eval_every: int = 0       # generations between real-env evaluations of the CMA-ES mean; 0: never
    # evaluation
    eval_episodes: int = 4
    eval_temperatures: tuple[float, ...] = ()   # dream scores of the best controller at each tau, beside its real score
    save_videos: bool = False
    video_steps: int = 60
    # logs: every stage writes CSV and TensorBoard; wandb too when this is online or offline
    wandb: str = "disabled"        # disabled | online | offline (one wandb run per stage, grouped by run)
    wandb_project: str = "worldmodels"

    def check(self) -> "PipelineConfig":
        """Raise :class:`PipelineConfigError` naming the first bad setting; return self."""
        if self.mode not in MODES:
            raise PipelineConfigError(f"mode={self.mode!r} is not one of {', '.join(MODES)}.")
        if self.controller_input not in CONTROLLER_INPUTS:
            raise PipelineConfigError(f"controller_input={self.controller_input!r} is not one of "
                                      f"{', '.join(CONTROLLER_INPUTS)}.")
        for key in ("latent", "mdn_latent"):
            if getattr(self, key) not in LATENTS:
                raise PipelineConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(LATENTS)}.")
        if self.dream_done not in DREAM_DONE_RULES:
            raise PipelineConfigError(f"dream_done={self.dream_done!r} is not one of {', '.join(DREAM_DONE_RULES)}.")
        if self.wandb not in WANDB_MODES:
            raise PipelineConfigError(f"wandb={self.wandb!r} is not one of {', '.join(WANDB_MODES)}.")
        if self.device not in DEVICES and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise PipelineConfigError(f"device={self.device!r} is not cpu, cuda, cuda:N or auto.")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name in ("seed", "mean_eval_every") else 1
            if field.type == "int" and value < low:
                raise PipelineConfigError(f"{field.name}={value} must be an integer >= {low}.")
            if field.type == "float" and value < 0:
                raise PipelineConfigError(f"{field.name}={value} must be >= 0.")
        if self.sigma0 <= 0 or self.vae_lr <= 0 or self.mdn_lr <= 0 or self.done_weight <= 0:
            raise PipelineConfigError("sigma0, vae_lr, mdn_lr and done_weight must be > 0.")
        if any(tau < 0 for tau in self.eval_temperatures):
            raise PipelineConfigError(f"eval_temperatures={list(self.eval_temperatures)} must all be >= 0.")
        check_train_temperatures(self.train_temperatures)
        if self.train_temperatures and not self.train_in_dream:
            raise PipelineConfigError(f"train_temperatures={list(self.train_temperatures)} trains each controller in "
                                      "the dream at its tau: add --train-in-dream, or leave --train-temperatures out.")
        if self.population < 2:
            raise PipelineConfigError(f"population={self.population} must be >= 2 for CMA-ES.")
        if self.antithetic and self.population % 2:
            raise PipelineConfigError(f"population={self.population} must be even with antithetic sampling.")
        if self.mdn_seq_len >= self.rollout_steps:
            raise PipelineConfigError(f"mdn_seq_len={self.mdn_seq_len} must be < rollout_steps={self.rollout_steps}.")
        return self


def temperature_folder(tau: float) -> str:
    """``tau_1.15``: the folder of the controller trained at ``tau`` (under ``temperatures/``)."""
    return f"tau_{tau:g}"


def check_train_temperatures(taus: tuple[float, ...]) -> None:
    """Refuse a negative tau or one listed twice, naming the list."""
    if any(tau < 0 for tau in taus):
        raise PipelineConfigError(f"train_temperatures={list(taus)}: every tau must be >= 0 "
                                  "(e.g. 0.1,0.5,1.0,1.15,1.3).")
    folders = [temperature_folder(tau) for tau in taus]
    if len(set(folders)) != len(folders):
        raise PipelineConfigError(f"train_temperatures={list(taus)} lists a tau twice; give each once.")


def parse_temperatures(values: list[str], flag: str = "--train-temperatures") -> tuple[float, ...]:
    """``["0.1,0.5", "1.15"]`` (commas or spaces) -> ``(0.1, 0.5, 1.15)``; an empty list
    or a word that is not a number is refused in one line naming the flag."""
    words = [word for value in values for word in value.replace(",", " ").split()]
    if not words:
        raise PipelineConfigError(f"{flag} needs at least one tau, e.g. {flag} 0.1,0.5,1.0,1.15,1.3; "
                                  "leave it out to train one controller at --temperature.")
    try:
        taus = tuple(float(word) for word in words)
    except ValueError:
        raise PipelineConfigError(f"{flag} {' '.join(values)}: every tau must be a number, "
                                  f"e.g. {flag} 0.1,0.5,1.0,1.15,1.3.") from None
    check_train_temperatures(taus)
    return taus


PRESETS: dict[str, dict[str, object]] = {
    "quick": {},
    "full": {"rollouts": 10000, "rollout_steps": 1000, "collect_envs": 16, "vae_epochs": 10, "vae_lr": 1e-4,
             "mdn_epochs": 20, "mdn_seq_len": 999, "mdn_batch_size": 100,
             "population": 64, "generations": 800, "rollouts_per_candidate": 16, "controller_steps": 1000,
             "eval_episodes": 100, "mean_eval_every": 25, "video_steps": 300},
    "tiny": {"train_in_dream": True, "rollouts": 8, "rollout_steps": 20, "collect_envs": 4, "latent_dim": 4, "vae_widths": (8, 16),
             "vae_batch_size": 32, "hidden_size": 16, "num_mixtures": 3, "mdn_seq_len": 8, "mdn_batch_size": 8,
             "population": 4, "generations": 2, "rollouts_per_candidate": 2, "controller_steps": 10,
             "eval_episodes": 2, "video_steps": 8},
}


DOOM_TEMPERATURES = (0.1, 0.5, 1.0, 1.15, 1.3)
_DOOM = {"latent_dim": 64, "hidden_size": 512, "predict_done": True, "done_weight": 10.0, "dream_done": "threshold",
         "mdn_latent": "mean",
         "train_in_dream": True, "temperature": 1.15,
         "rollout_steps": 525, "controller_steps": 525, "eval_temperatures": DOOM_TEMPERATURES}
ENV_PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "doom": {
        "quick": {**_DOOM, "eval_episodes": 8},
        "full": {**_DOOM, "mdn_seq_len": 100},
        "tiny": {"vae_widths": (8, 8, 16, 16), "predict_done": True, "train_in_dream": True, "rollout_steps": 40,
                 "controller_steps": 20,
                 "eval_temperatures": (0.5, 1.15)},
    },
}


def preset(mode: str, **overrides: object) -> PipelineConfig:
    """The settings of ``mode`` (and of ``env`` in that mode, :data:`ENV_PRESETS`) with
    ``overrides`` applied, checked."""
    if mode not in PRESETS:
        raise PipelineConfigError(f"mode={mode!r} is not one of {', '.join(PRESETS)}.")
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PipelineConfigError(f"unknown settings {unknown}; known: {', '.join(sorted(known))}.")
    env_preset = ENV_PRESETS.get(str(overrides.get("env", PipelineConfig.env)), {}).get(mode, {})
    values = {**PRESETS[mode], **env_preset, **overrides, "mode": mode}
    return PipelineConfig(**values).check()


def to_json(config: PipelineConfig) -> dict:
    """JSON-ready settings (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def from_json(values: dict) -> PipelineConfig:
    """Settings read back from :func:`to_json`."""
    values = dict(values)
    values["vae_widths"] = tuple(values["vae_widths"])
    values["eval_temperatures"] = tuple(values.get("eval_temperatures", ()))
    values["train_temperatures"] = tuple(values.get("train_temperatures", ()))
    return PipelineConfig(**values).check()
