"""The check a run's config passes before anything is made: each value against its rule
(:mod:`worldmodels.training.schema`), then the settings that only make sense together,
the device and precision, and the metric that picks ``best.pt``.

:func:`check_config` raises :class:`~worldmodels.training.validation.ConfigError` with
one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .precision import resolve_device, resolve_precision
from ..algos import registry
from .schema import ALGOS, COMMON, ENVS, EVAL_ENV, MODELS
from .validation import ConfigError, Rule, check_values, leaves, show, text

Values = dict[str, Any]


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first setting of ``cfg`` that is not allowed."""
    values = _resolved(cfg)
    raw = OmegaConf.to_container(cfg, resolve=False)
    interpolated = {key for key, value in leaves(raw) if isinstance(value, str) and value.startswith("${")}
    check_values(values, rules_for(values), last=interpolated)
    for check in CROSS_CHECKS:
        problem = check(values)
        if problem:
            raise ConfigError(problem)


def _resolved(cfg: DictConfig) -> Values:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as error:  # OmegaConf raises several types for a bad interpolation
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"the config does not resolve: {first}") from None


def _option(values: Values, group: str, tables: dict[str, dict[str, Rule]]) -> dict[str, Rule]:
    """The rules of the chosen ``group`` option (``{}`` when the run has no such group)."""
    node = values.get(group)
    if not isinstance(node, dict):
        return {}
    chosen = node.get("name")
    if chosen not in tables:
        raise ConfigError(f"{group}.name={show(chosen)} is not allowed: expected one of {', '.join(tables)}.")
    return tables[chosen]


def rules_for(values: Values) -> dict[str, Rule]:
    """Every rule that applies to a run with these ``env``, ``algo`` and ``model`` options."""
    return {**COMMON, **EVAL_ENV, "resume": text(), **_option(values, "env", ENVS), **_option(values, "algo", ALGOS),
            **_option(values, "model", MODELS)}


def _get(values: Values, key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _best_metric(values: Values) -> str | None:
    name = _get(values, "algo.name")
    allowed = registry.family(name).best_metrics if name in registry.FAMILIES else ()
    metric = _get(values, "train.best_metric")
    if allowed and metric not in allowed:
        return (f"train.best_metric={show(metric)} is not allowed: expected one of {', '.join(allowed)} "
                "(evaluation metrics where lower is better; best.pt keeps the lowest).")
    return None


def _device(values: Values) -> str | None:
    try:
        device = resolve_device(str(values["device"]))
        resolve_precision(str(values["precision"]), device)
    except ValueError as error:
        return str(error)
    return None


def _vta(values: Values) -> str | None:
    if _get(values, "model.name") != "vta":
        return None
    seg_len, seg_num, window = (_get(values, f"model.{k}") for k in ("seg_len", "seg_num", "seq_size"))
    if seg_len * seg_num < window:
        return (f"model.seg_len={seg_len} x model.seg_num={seg_num} = {seg_len * seg_num} < model.seq_size={window}: "
                "no segmentation covers the window; raise seg_len or seg_num.")
    return _ordered(values, "model.min_beta", "model.max_beta")


def _ordered(values: Values, low: str, high: str, strict: bool = False) -> str | None:
    a, b = _get(values, low), _get(values, high)
    if a is None or b is None or (a < b if strict else a <= b):
        return None
    return f"{low}={show(a)} must be {'<' if strict else '<='} {high}={show(b)}."


def _divides(values: Values, part: str, whole: str) -> str | None:
    a, b = _get(values, part), _get(values, whole)
    if a is None or b is None or b % a == 0:
        return None
    return f"{whole}={b} must be a multiple of {part}={a}."


def _dreamer(values: Values) -> str | None:
    if _get(values, "model.name") != "dreamerv3":
        return None
    return (_divides(values, "model.blocks", "model.deter")
            or _ordered(values, "model.actor_min_std", "model.actor_max_std")
            or _ordered(values, "model.return_norm_low", "model.return_norm_high", strict=True))


def _transformer(values: Values) -> str | None:
    if _get(values, "model.name") not in ("iris", "delta_iris"):
        return None
    return (_divides(values, "model.world_model.num_heads", "model.world_model.embed_dim")
            or _ordered(values, "algo.sequence_length", "model.world_model.max_blocks"))


def _env(values: Values) -> str | None:
    """The env a ``gym`` config describes exists as a spec (suite, task, combinations)."""
    if _get(values, "env.name") != "gym":
        return None
    from ..envs.factory import spec_from_config

    env = values["env"]
    try:
        spec_from_config(env, seed=values["seed"])
    except ValueError as error:
        return f"env.suite={env['suite']} env.task={env['task']}: {error}"
    return None


CROSS_CHECKS: tuple[Callable[[Values], str | None], ...] = (
    _best_metric, _device, _vta, _dreamer, _transformer, _env,
)
