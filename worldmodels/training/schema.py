"""Every setting of ``python -m worldmodels.train``: its type, range or choices.

The rules are grouped as the configs are: settings every run has (:data:`COMMON`),
then those of the chosen ``env``, ``algo`` and ``model`` options (selected by their
``name``); each key is a full dotted path (patterns allowed, see
:func:`~worldmodels.training.validation.rule_for`). A run whose config holds a key
without a rule, or a value that breaks its rule, stops before its run directory is made
(:func:`worldmodels.training.config_check.check_config`). A new config key needs a rule
here; ``tests/training/test_config_check.py`` fails until it has one.
"""

from __future__ import annotations

from .validation import (
    Rule,
    boolean,
    choice,
    count,
    fraction,
    integer,
    list_of,
    name,
    number,
    number_or_range,
    positive,
    regex,
    text,
)

OP_IMPLS = ("auto", "triton", "cpp", "ref")          # worldmodels.ops._dispatch.IMPLS
RSSM_IMPLS = ("auto", "triton", "cpp", "scan", "ref")  # worldmodels.ops.rssm.RSSM_IMPLS
ATTENTION_IMPLS = ("auto", "triton", "ref")          # worldmodels.nn.transformer.ATTENTION_IMPLS
ENV_SUITES = ("classic", "gym", "atari", "dmc", "crafter", "robosuite", "procgen")  # worldmodels.envs.factory.SUITES
ENV_BACKENDS = ("auto", "envpool", "gymnasium")      # worldmodels.envs.factory.BACKENDS
NON_NEGATIVE = number(0)
COUNT = integer(1)
OPTIONAL_COUNT = integer(1).or_null()
PATH = text()

COMMON: dict[str, Rule] = {
    "seed": integer(0),
    "device": Rule("auto, cpu, cuda or cuda:N",
                   lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda")
                                                     or (v.startswith("cuda:") and v[5:].isdigit()))),
    "precision": choice("auto", "fp32", "bf16", "fp16"),
    "run.name": name(),
    "run.root": PATH,
    "train.max_steps": COUNT,
    "train.batch_size": COUNT,
    "train.accum_steps": COUNT,
    "train.lr": positive(),
    "train.weight_decay": NON_NEGATIVE,
    "train.grad_clip": NON_NEGATIVE.or_null(),
    "train.log_every": COUNT,
    "train.eval_every": COUNT,
    "train.checkpoint_every": COUNT,
    "train.best_metric": text(),  # the family's choices: its registry entry's best_metrics
    "train.stop_at": OPTIONAL_COUNT,
    "train.snapshot_every": OPTIONAL_COUNT,
    "train.progress": boolean(),
    "train.retain_host_memory": boolean(),
    "train.distributed.backend": choice("auto", "nccl", "gloo"),
    "train.distributed.timeout_s": positive(),
    "train.distributed.find_unused_parameters": boolean().or_null(),
    "train.distributed.world_size": OPTIONAL_COUNT,
    "train.distributed.global_batch_size": OPTIONAL_COUNT,
    "train.distributed.replay_capacity_per_rank": OPTIONAL_COUNT,
    "train.distributed.prefill_per_rank": integer(0).or_null(),
    "train.distributed.max_env_steps_per_rank": OPTIONAL_COUNT,
    "train.distributed.global_batch_sizes.*": COUNT,
    "init.path": PATH.or_null(),
    "init.components": list_of(text(), min_len=1).or_null(),
    "logger.wandb.mode": choice("disabled", "online", "offline"),
    "logger.wandb.project": text(),
    "logger.wandb.entity": text().or_null(),
    "logger.wandb.tags": list_of(text()),
}

ENVS: dict[str, dict[str, Rule]] = {
    "bouncing_balls": {
        "env.name": text(),
        "env.size": COUNT,
        "env.channels": choice(1, 3),
        "env.recolor_on_wall_hit": boolean(),
        "env.action_size": choice(0),
        "env.num_balls": COUNT,
        "env.radius": number_or_range(0, low_open=True),
        "env.speed": number_or_range(0, low_open=False),
        "env.seq_len": COUNT,
        "env.chunk_sequences": COUNT,
        "env.refresh_steps": COUNT,
        "env.eval_sequences": COUNT,
        "env.events": choice("any", "ball", "wall"),
    },
    "maze": {
        "env.name": text(),
        "env.root": PATH,
        "env.generate_if_missing": boolean(),
        "env.size": COUNT,
        "env.channels": choice(3),
        "env.action_size": choice(3),
        "env.eval_sequences": COUNT,
        "env.events": choice("turn", "junction", "any"),
    },
    "gym": {
        "env.name": text(),
        "env.suite": choice(*ENV_SUITES),
        "env.task": text(),
        "env.num_envs": COUNT,
        "env.size": list_of(COUNT, length=2),
        "env.action_repeat": OPTIONAL_COUNT,
        "env.sticky_actions": fraction(),
        "env.noop_max": integer(0),
        "env.max_episode_steps": OPTIONAL_COUNT,
        "env.backend": choice(*ENV_BACKENDS),
        "env.backend_used": text(),  # written by the run: the backend the factory chose
        "env.render_image": boolean(),
        "env.terminal_on_life_loss": boolean(),
        "env.use_fire_reset": boolean(),
        "env.full_action_space": boolean(),
        # robosuite only (worldmodels.envs.robosuite)
        "env.robot": text(),
        "env.cameras": list_of(text()),
        "env.proprio": list_of(text()),
        "env.controller": text().or_null(),
        "env.reward_shaping": boolean(),
        "env.render_effects": boolean(),
        # procgen only (worldmodels.envs.procgen.PROCGEN_DEFAULTS)
        "env.distribution_mode": choice("easy", "hard"),
        "env.num_levels": integer(0),
        "env.start_level": integer(0),
        **{f"env.{key}": boolean() for key in (
            "use_sequential_levels", "center_agent", "use_backgrounds", "use_monochrome_assets", "restrict_themes",
            "use_generated_assets", "paint_vel_info", "use_easy_jump")},
    },
}
# The evaluation env of online runs: null (the training env) or settings that differ from env's.
EVAL_ENV: dict[str, Rule] = {
    "eval_env": Rule("null or env settings", lambda v: v is None),
    **{key.replace("env.", "eval_env.", 1): rule for key, rule in ENVS["gym"].items() if key != "env.name"},
}

_OPENLOOP = {
    "algo.openloop_context": COUNT,
    "algo.openloop_length": COUNT,
    "algo.openloop_sequences": COUNT,
}
_OFFLINE_DATA = {
    "data.train_dir": PATH,
    "data.eval_dir": PATH.or_null(),
    "data.crop": OPTIONAL_COUNT,
    "data.on_error": choice("raise", "skip"),
    # a robomimic HDF5 file instead of the folders (worldmodels.data.robomimic)
    "data.path": PATH.or_null(),
    "data.split": text(),                    # all, or a mask/<name> of the file (train, valid)
    "data.eval_split": text().or_null(),
    "data.obs_keys": list_of(text(), min_len=1).or_null(),
    # worldmodels.data.obs_transform
    "data.cameras": list_of(text(), min_len=1).or_null(),
    "data.camera_flips": Rule("a mapping camera -> none | vertical | horizontal | both",
                              lambda v: v is None or v == {}),
    "data.camera_flips.*": choice("none", "vertical", "horizontal", "both"),  # obs_transform.FLIPS
}
_IRIS_FAMILY = {
    "algo.batch_sizes.*": COUNT,
    "algo.sequence_length": integer(2),
    "algo.starts.*": integer(0),
    "algo.collect_every": COUNT,
    "algo.collect_steps": COUNT,
    "algo.max_env_steps": count(),
    "algo.epsilon": fraction(),
    "algo.temperature": positive(),
    "algo.capacity": count(),
    "algo.selector": choice("uniform", "balanced", "recency", "priority"),  # worldmodels.rl.selectors
    "algo.priority_alpha": NON_NEGATIVE,
    "algo.replay_on_disk": boolean(),
    "algo.eval_episodes": COUNT,
    "algo.eval_temperature": NON_NEGATIVE,
    "algo.media_length": COUNT,
    "algo.held_out_frames": COUNT,
    "algo.updates_per_epoch.*": OPTIONAL_COUNT,
}

# World Models' pipeline (worldmodels.algos.world_models.config.PipelineConfig; null: the mode's preset)
WM_STAGES = ("collect", "vae", "encode", "mdnrnn", "controller", "eval")   # world_models.rundir.STAGES
_WORLD_MODELS: dict[str, Rule] = {
    "algo.name": text(),
    "algo.env": choice("carracing", "lunarlander", "doom", "tiny"),   # worldmodels.algos.world_models.envs.ENVS
    "algo.mode": choice("quick", "full", "tiny"),       # worldmodels.algos.world_models.config.MODES
    "algo.stages": list_of(choice(*WM_STAGES), min_len=1),
    **{f"algo.{key}": COUNT.or_null() for key in (
        "rollouts", "rollout_steps", "collect_envs", "latent_dim", "vae_epochs", "vae_batch_size", "hidden_size",
        "num_mixtures", "mdn_epochs", "mdn_seq_len", "mdn_batch_size", "generations", "rollouts_per_candidate",
        "controller_steps", "eval_episodes", "video_steps")},
    "algo.population": integer(2).or_null(),
    "algo.mean_eval_every": integer(0).or_null(),
    "algo.vae_widths": list_of(COUNT, min_len=1).or_null(),
    **{f"algo.{key}": positive().or_null() for key in ("vae_lr", "mdn_lr", "sigma0", "temperature")},
    **{f"algo.{key}": NON_NEGATIVE.or_null() for key in ("kl_tolerance", "weight_decay")},
    "algo.done_weight": positive().or_null(),
    "algo.dream_done": choice("sample", "threshold").or_null(),
    **{f"algo.{key}": choice("mean", "sample").or_null() for key in ("latent", "mdn_latent")},   # config.LATENTS
    "algo.eval_temperatures": list_of(NON_NEGATIVE).or_null(),
    "algo.train_temperatures": list_of(NON_NEGATIVE, min_len=1).or_null(),
    "algo.controller_input": choice("raw", "standardized").or_null(),   # world_models.config.CONTROLLER_INPUTS
    **{f"algo.{key}": boolean().or_null() for key in ("predict_done", "train_in_dream", "antithetic", "save_videos")},
}

ALGOS: dict[str, dict[str, Rule]] = {
    "vae": {"algo.name": text(), "algo.media_count": COUNT},
    "vta": {"algo.name": text(), "algo.margin": integer(0), "algo.tolerance": integer(0), "algo.detector_lr_scale": positive(),
            "algo.num_samples": integer(0)},
    "dreamerv3": {
        "algo.name": text(),
        "algo.train_ratio": positive(),
        "algo.prefill": integer(0),
        "algo.batch_length": integer(2),
        "algo.replay_capacity": count(),
        "algo.replay_selector": choice("uniform", "recency", "queue"),
        "algo.replay_on_disk": boolean(),
        "algo.eval_episodes": COUNT,
        "algo.eval_mode": choice("sample", "greedy"),  # worldmodels.algos.dreamerv3.evaluate.EVAL_MODES
        "algo.eval_envs": COUNT,
        **_OPENLOOP,
    },
    "dreamer_offline": {
        "algo.name": text(),
        "algo.batch_length": integer(2),
        "algo.eval_batch_size": OPTIONAL_COUNT,
        "algo.eval_chunk": COUNT,
        "algo.eval_max_episodes": OPTIONAL_COUNT,
        **_OPENLOOP,
        **_OFFLINE_DATA,
        "data.eval_dir": Rule("the folder of held-out episodes", PATH.accepts),
        "data.discrete": choice("auto", True, False),
        "data.crop_mode": choice("center", "random"),
        "data.standardize": Rule("null (DreamerV3's encoder takes uint8 images and symlogs vectors)",
                                 lambda v: v is None),
    },
    "dreamer_bc": {
        "algo.name": text(),
        "algo.eval_episodes": COUNT,
        "checkpoint": Rule("the path of a DreamerV3 checkpoint, e.g. runs/<date>/<time>_dreamer_offline/"
                           "checkpoints/best.pt", PATH.accepts),
        **_OFFLINE_DATA,
        "bc.key_order": list_of(text(), min_len=1).or_null(),
        "bc.units": COUNT,
        "bc.layers": integer(0),
        "bc.continuous_loss": choice("nll", "mse"),
    },
    "nextframe": {
        "algo.name": text(),
        "algo.eval_batch_size": COUNT,
        "algo.val_samples": COUNT,
        "algo.val_rollouts": COUNT,
        "algo.val_rollout_horizon": COUNT,
        "algo.media_count": COUNT,
        "data.root": PATH,
        "data.stack": COUNT,
        "data.val_ratio": fraction(low_open=True, high_open=True),
        "data.split_seed": integer(0),
    },
    "iris": {"algo.name": text(), **_IRIS_FAMILY},
    "world_models": _WORLD_MODELS,
    "delta_iris": {"algo.name": text(), **_IRIS_FAMILY, "algo.tokenizer_sequence_length": integer(2),
                   "algo.initial_collect_steps": COUNT},
}

_IMAGE_MODEL = {
    "model.name": text(),
    "model.image_size": COUNT,
    "model.channels": choice(1, 3),
    "model.widths": list_of(COUNT, min_len=1),
}
# the next-frame models: shapes may come from the dataset's manifest (auto)
_FRAME_MODEL = {
    **_IMAGE_MODEL,
    "model.image_size": Rule("auto (the dataset manifest's frame_shape) or an integer >= 1",
                             lambda v: v == "auto" or COUNT.accepts(v)),
    "model.channels": choice("auto", 1, 3),
    "model.stack": COUNT,
    "model.num_actions": integer(2),
    "model.action_embed": COUNT,
}
_ACTOR_CRITIC = {
    "model.actor_critic.lstm_dim": COUNT,
    "model.actor_critic.gamma": fraction(low_open=True),
    "model.actor_critic.lambda_": fraction(),
    "model.actor_critic.entropy_weight": NON_NEGATIVE,
    "model.actor_critic.imagine_horizon": COUNT,
    "model.actor_critic.burn_in": integer(0),
    "model.actor_critic.temperature": positive(),
    "model.optim.*.lr": positive(),
    "model.optim.*.weight_decay": NON_NEGATIVE,
    "model.optim.*.max_grad_norm": positive().or_null(),
    "model.precision.*": choice("run", "fp32", "bf16"),   # worldmodels.rl.imagination_agent.PRECISIONS
}
_TRANSFORMER = {
    "model.world_model.max_blocks": COUNT,
    "model.world_model.num_layers": COUNT,
    "model.world_model.num_heads": COUNT,
    "model.world_model.embed_dim": COUNT,
    "model.world_model.*_pdrop": fraction(high_open=True),
    "model.world_model.impl": choice(*ATTENTION_IMPLS),
}
_TOKENIZER_COMMON = {
    "model.tokenizer.vocab_size": integer(2),
    "model.tokenizer.beta": NON_NEGATIVE,
    "model.tokenizer.dead_threshold": NON_NEGATIVE,
    "model.tokenizer.impl": choice("auto", "triton", "ref"),
}

MODELS: dict[str, dict[str, Rule]] = {
    "conv_vae": {**_IMAGE_MODEL, "model.latent_dim": COUNT, "model.beta": NON_NEGATIVE,
                 "model.likelihood": choice("bernoulli", "gaussian")},
    "vta": {
        **_IMAGE_MODEL,
        "model.action_size": integer(0),
        "model.feat_size": COUNT, "model.belief_size": COUNT, "model.state_size": COUNT,
        "model.boundary_layers": COUNT,
        "model.seg_len": COUNT, "model.seg_num": COUNT,
        "model.min_std": positive(),
        "model.logit_bound": positive().or_null(),
        "model.init_size": COUNT, "model.seq_size": COUNT,
        "model.obs_bit": integer(1, 8).or_null(),
        "model.loss_type": choice("bce", "gaussian"),
        "model.obs_std": positive(),
        "model.mask_beta": positive(),
        "model.beta_anneal": NON_NEGATIVE,
        "model.min_beta": positive(), "model.max_beta": positive(),
        "model.abs_free_nats": NON_NEGATIVE,
        "model.mask_kl_balance": fraction().or_null(),
        "model.boundary_warmup": integer(0),
        "model.logit_decay": NON_NEGATIVE,
        "model.boundary_source": choice("learned", "events", "random"),
        "model.detector_norm": choice("group", "none"),
        "model.limits_in_kl": choice("prior", "both"),
        "model.boundary_grad": choice("st", "disarm"),
        "model.common_noise": boolean(),
    },
    "nextframe": {
        **_FRAME_MODEL,
        "model.l1_weight": NON_NEGATIVE,
        "model.l2_weight": NON_NEGATIVE,
        "model.ssim_weight": NON_NEGATIVE,
    },
    "nextframe_ae": {
        **_FRAME_MODEL,
        "model.latent_channels": COUNT,
        "model.predictor_width": COUNT,
        "model.predictor_blocks": integer(0),
        "model.huber_delta": positive(),
        "model.var_reg_lambda": NON_NEGATIVE,
        "model.var_target": NON_NEGATIVE,
        "model.latent_weight": NON_NEGATIVE,
    },
    "dreamerv3": {
        "model.name": text(),
        "model.deter": COUNT, "model.stoch": COUNT, "model.classes": COUNT, "model.hidden": COUNT,
        "model.blocks": COUNT,
        "model.rssm_initial": choice("learned", "zeros"),
        "model.rssm_impl": choice(*RSSM_IMPLS),
        "model.unimix": fraction(high_open=True),
        "model.cnn_keys": regex(), "model.mlp_keys": regex(),
        "model.cnn_depth": COUNT, "model.mlp_units": COUNT, "model.mlp_layers": integer(0),
        "model.key_order": list_of(text(), min_len=1).or_null(),
        "model.minres": COUNT,
        "model.head_units": COUNT,
        "model.head_layers": integer(0), "model.actor_layers": integer(0), "model.critic_layers": integer(0),
        "model.reward_bins": integer(2),
        "model.actor_min_std": positive(), "model.actor_max_std": positive(),
        "model.actor_grad": choice("reinforce", "dynamics"),  # worldmodels.algos.dreamerv3.behavior.ACTOR_GRADS
        "model.free_nats": NON_NEGATIVE,
        "model.*_scale": NON_NEGATIVE,
        "model.horizon": COUNT,
        "model.discount": fraction(low_open=True),
        "model.lam": fraction(),
        "model.entropy": NON_NEGATIVE,
        "model.slow_critic_fraction": fraction(),
        "model.slow_critic_reg": NON_NEGATIVE,
        "model.return_norm_decay": fraction(high_open=True),
        "model.return_norm_low": fraction(), "model.return_norm_high": fraction(),
        "model.train_actor": boolean(),
        "model.bc_scale": NON_NEGATIVE,
        "model.model_lr": positive(), "model.actor_lr": positive(), "model.critic_lr": positive(),
        "model.model_eps": positive(), "model.ac_eps": positive(),
        "model.model_grad_clip": positive().or_null(), "model.ac_grad_clip": positive().or_null(),
    },
    "iris": {
        "model.name": text(),
        **_TOKENIZER_COMMON,
        "model.tokenizer.z_channels": COUNT,
        "model.tokenizer.ch": COUNT,
        "model.tokenizer.ch_mult": list_of(COUNT, min_len=1),
        "model.tokenizer.num_res_blocks": integer(0),
        "model.tokenizer.attn_resolutions": list_of(COUNT),
        "model.tokenizer.dropout": fraction(high_open=True),
        "model.tokenizer.ema": boolean(),
        "model.tokenizer.*_weight": NON_NEGATIVE,
        "model.tokenizer.perceptual_weights_path": PATH.or_null(),
        **_TRANSFORMER,
        **_ACTOR_CRITIC,
        "model.actor_critic.conv_channels": list_of(COUNT, min_len=1),
    },
    "delta_iris": {
        "model.name": text(),
        **_TOKENIZER_COMMON,
        "model.tokenizer.tokens_per_frame": COUNT,
        "model.tokenizer.code_dim": COUNT,
        "model.tokenizer.latent_dim": COUNT,
        "model.tokenizer.channels": COUNT,
        "model.tokenizer.mult": list_of(COUNT, min_len=1),
        "model.tokenizer.down": list_of(choice(0, 1), min_len=1),
        "model.tokenizer.frame_channels": COUNT,
        "model.tokenizer.frame_latent_dim": COUNT,
        "model.tokenizer.action_channels": COUNT,
        "model.tokenizer.decay": fraction(high_open=True),
        "model.tokenizer.*_weight": NON_NEGATIVE,
        **_TRANSFORMER,
        "model.world_model.frame_channels": COUNT,
        "model.world_model.frame_latent_dim": COUNT,
        "model.world_model.frame_mult": list_of(COUNT, min_len=1),
        "model.world_model.frame_down": list_of(choice(0, 1), min_len=1),
        "model.world_model.reward_bins": Rule("0 (reward-sign classes) or an integer >= 2",
                                              lambda v: integer(0).accepts(v) and v != 1),
        "model.world_model.*_weight": NON_NEGATIVE,
        **_ACTOR_CRITIC,
        "model.actor_critic.frame_channels": COUNT,
        "model.actor_critic.frame_latent_dim": COUNT,
        "model.actor_critic.frame_mult": list_of(COUNT, min_len=1),
        "model.actor_critic.frame_down": list_of(choice(0, 1), min_len=1),
        "model.actor_critic.two_hot_returns": boolean(),
        "model.actor_critic.value_bins": integer(2),
        "model.actor_critic.target_tau": fraction(high_open=True),
        "model.tokenizer.restart_updates": integer(0).or_null(),
    },
}
