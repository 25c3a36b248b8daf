"""Command-line overrides: early, readable errors and resuming a run's config.

Hydra's own errors for an unknown key or option do not always say what exists;
:func:`compose_overrides` composes the config and, when that fails, composes it again
one override at a time to name the first bad one and list the experiments/options or
keys that do exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .validation import ConfigError

CONFIG_MODULE = "worldmodels.configs"
GROUP_NOUNS = {"exp": "experiment"}


def _parse(overrides: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"cannot read the command's overrides: {first}") from None


def compose_overrides(overrides: Sequence[str]) -> DictConfig | None:
    """The job config ``overrides`` compose to (None for a multirun sweep, which Hydra
    checks itself); :class:`ConfigError` naming the bad override and what exists."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    parsed = _parse(overrides)
    if any(o.is_sweep_override() for o in parsed):
        return None
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base=None):
        try:
            return compose("config", overrides)
        except Exception as full_error:  # Hydra raises several exception types here
            for index, override in enumerate(parsed):
                try:
                    compose("config", overrides[: index + 1])
                except Exception as error:
                    raise ConfigError(_explain(override, overrides[:index], error)) from None
            raise ConfigError(str(full_error)) from None


def _explain(override, previous: Sequence[str], error: Exception) -> str:
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    key = override.key_or_group
    if key in loader.list_groups(""):
        options = loader.get_group_options(key)
        noun = GROUP_NOUNS.get(key, f"{key} option")
        return f"Unknown {noun} {override.value()!r}. Known {noun}s: {', '.join(options)}."
    cfg = compose("config", list(previous))
    return unknown_key_message(cfg, key) or f"Bad override {override.input_line!r}: {error}"


def unknown_key_message(cfg: DictConfig, key: str) -> str | None:
    """A message listing the keys next to ``key`` when ``key`` is not in ``cfg``."""
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
        return None
    parts = key.split(".")
    parent = ""
    for depth in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:depth])
        if isinstance(OmegaConf.select(cfg, candidate), DictConfig):
            parent = candidate
            break
    node = OmegaConf.select(cfg, parent) if parent else cfg
    where = f"under '{parent}'" if parent else "at the top level"
    keys = ", ".join(str(k) for k in node.keys())
    return f"Unknown config key '{key}'. Keys {where}: {keys}. (To add a new key use +{key}=...)"


def _runs_own_stages(saved: Path) -> bool:
    """Whether the run of this resolved config is a family with its own runner (World
    Models' stages), which resumes from its stage outputs, not from checkpoints/last.pt."""
    from ..algos import registry

    name = OmegaConf.select(OmegaConf.load(saved), "algo.name")
    return name in registry.FAMILIES and registry.family(str(name)).runner is not None


def config_for_resume(run_dir: Path, task_overrides: Sequence[str]) -> DictConfig:
    """The run's saved config with this command's dot overrides applied.

    Config groups (``exp=``, ``model=``, ...) cannot change when resuming: the
    checkpoint belongs to the model they built.
    """
    saved = run_dir / "resolved_config.yaml"
    if not saved.is_file() or not (_runs_own_stages(saved) or (run_dir / "checkpoints" / "last.pt").is_file()):
        raise FileNotFoundError(
            f"+resume={run_dir}: expected {saved} and {run_dir / 'checkpoints' / 'last.pt'}; "
            "pass the run directory of an earlier run (runs/<date>/<time>_<name>)."
        )
    cfg = OmegaConf.load(saved)
    for override in _parse([o for o in task_overrides if not o.lstrip("+~").startswith("resume=")]):
        key = override.key_or_group
        if isinstance(OmegaConf.select(cfg, key), DictConfig) or key in ("exp",):
            raise ConfigError(f"cannot change the config group '{key}' when resuming {run_dir}; start a new run.")
        if not override.is_add() and (message := unknown_key_message(cfg, key)):
            raise ConfigError(message)
        OmegaConf.update(cfg, key, override.value(), force_add=override.is_add())
    cfg.resume = str(run_dir)
    return cfg
