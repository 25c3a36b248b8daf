"""Procgen's 16 games on envpool (``CoinrunEasy-v0``, ...): the ``procgen`` suite of
:func:`worldmodels.envs.factory.make_env` and the batch the frame recorder
(:mod:`worldmodels.data.generate_frames`) steps.

A Procgen env observes ``image`` uint8 ``[64, 64, 3]`` (its native render) and takes one
of 15 discrete actions. The :class:`~worldmodels.envs.factory.EnvSpec` keys of the suite
are the difficulty ``distribution_mode`` (``easy`` | ``hard``) and Procgen's own options
(:data:`PROCGEN_DEFAULTS`: ``num_levels`` 0 is unlimited levels, ``start_level``,
``use_backgrounds``, ...), passed to envpool as they are.

envpool's Procgen links the system Qt5 runtime: ``sudo apt-get install libqt5gui5`` on
Debian/Ubuntu; without it (or envpool) :func:`make_procgen` raises
:class:`ProcgenUnavailableError` in one line that says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import WorldModelsError

if TYPE_CHECKING:
    from .factory import EnvSpec
    from .spaces import VectorEnv

GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot", "heist",
         "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
MODES = ("easy", "hard")
NATIVE_SIZE = 64       # Procgen renders 64x64 RGB
NUM_ACTIONS = 15
# Procgen's options (envpool's names) with Procgen's defaults; distribution_mode picks the task id.
PROCGEN_DEFAULTS: dict[str, Any] = {
    "distribution_mode": "easy", "num_levels": 0, "start_level": 0, "use_sequential_levels": False,
    "center_agent": True, "use_backgrounds": True, "use_monochrome_assets": False, "restrict_themes": False,
    "use_generated_assets": False, "paint_vel_info": False, "use_easy_jump": False,
}
OPTIONS = tuple(key for key in PROCGEN_DEFAULTS if key != "distribution_mode")   # envpool keyword options


class ProcgenUnavailableError(WorldModelsError, ImportError):
    """envpool or the Qt5 runtime its Procgen games link is missing."""


def _unavailable(error: BaseException) -> ProcgenUnavailableError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "qt" in detail.lower():
        return ProcgenUnavailableError(f"Procgen (envpool) needs the system Qt5 runtime: sudo apt-get install "
                                       f"libqt5gui5 (Debian/Ubuntu) [{detail}]")
    return ProcgenUnavailableError(f"Procgen needs envpool >= 1.0 (pip install envpool; Linux, Python >= 3.11) "
                                   f"and the Qt5 runtime (sudo apt-get install libqt5gui5) [{detail}]")


def task_id(game: str, mode: str) -> str:
    """envpool's id of a Procgen ``game`` in difficulty ``mode``: ``CoinrunEasy-v0``."""
    if game not in GAMES:
        raise ValueError(f"{game!r} is not a Procgen game; the games are {', '.join(GAMES)}.")
    if mode not in MODES:
        raise ValueError(f"Procgen distribution_mode {mode!r} is not one of {', '.join(MODES)}.")
    return f"{game.capitalize()}{mode.capitalize()}-v0"


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` when each is a Procgen option of the right type (``num_levels`` and
    ``start_level`` integers >= 0, the rest booleans); else a one-line ValueError that
    names the key and the known ones."""
    for key, value in options.items():
        if key not in OPTIONS:
            raise ValueError(f"{key!r} is not a Procgen option; the options are {', '.join(OPTIONS)}.")
        expected = type(PROCGEN_DEFAULTS[key])
        if expected is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"Procgen option {key} must be an integer >= 0, got {value!r}.")
        if expected is bool and not isinstance(value, bool):
            raise ValueError(f"Procgen option {key} must be true or false, got {value!r}.")
    return options


def check_spec(spec: EnvSpec) -> None:
    """The Procgen keys of ``spec``: only suite ``procgen`` sets them, and there they
    must be valid (:func:`check_options`; the size Procgen renders, 64x64; no
    ``max_episode_steps``: envpool's Procgen ignores it, the game's limit holds)."""
    if spec.suite != "procgen":
        for key, default in PROCGEN_DEFAULTS.items():
            if getattr(spec, key) != default:
                raise ValueError(f"{key} is a Procgen option; suite {spec.suite!r} does not take it.")
        return
    task_id(spec.task, spec.distribution_mode)
    check_options({key: getattr(spec, key) for key in OPTIONS})
    if tuple(spec.size) != (NATIVE_SIZE, NATIVE_SIZE):
        raise ValueError(f"Procgen renders {NATIVE_SIZE}x{NATIVE_SIZE} frames; size must be "
                         f"[{NATIVE_SIZE}, {NATIVE_SIZE}], got {list(spec.size)}.")
    if spec.backend == "gymnasium":
        raise ValueError("suite 'procgen' runs on envpool only; use backend 'auto' or 'envpool'.")
    if spec.max_episode_steps is not None:   # envpool's Procgen keeps the game's own limit whatever it is given
        raise ValueError(f"Procgen ends episodes at the game's own limit (coinrun: 1,000 steps); max_episode_steps "
                         f"must be null, got {spec.max_episode_steps}.")


def make_procgen(game: str, mode: str, num_envs: int, seed: int, options: dict[str, Any]) -> Any:
    """An envpool gymnasium batch of ``num_envs`` Procgen ``game`` envs (``mode`` easy or
    hard); ``options`` are envpool's Procgen settings (``num_levels``, ``start_level``,
    ``use_backgrounds``, ..., and envpool's ``channel_first``)."""
    name = task_id(game, mode)
    try:
        import envpool

        return envpool.make_gymnasium(name, num_envs=num_envs, seed=seed, **options)
    except (ImportError, OSError) as error:
        raise _unavailable(error) from None


def procgen_env(spec: EnvSpec) -> VectorEnv:
    """The :class:`~worldmodels.envs.spaces.VectorEnv` of a ``procgen`` spec: ``image``
    uint8 ``[N, 64, 64, 3]``, 15 discrete actions, envpool's autoreset mapped to the
    factory's flags."""
    from .backends import EnvpoolVectorEnv

    options: dict[str, Any] = {key: getattr(spec, key) for key in OPTIONS}
    options["channel_first"] = False
    env = make_procgen(spec.task, spec.distribution_mode, spec.num_envs, spec.seed, options)
    return EnvpoolVectorEnv(spec, task_id(spec.task, spec.distribution_mode), None, env=env)


__all__ = ["GAMES", "MODES", "NATIVE_SIZE", "NUM_ACTIONS", "OPTIONS", "PROCGEN_DEFAULTS", "ProcgenUnavailableError",
           "check_options", "check_spec", "make_procgen", "procgen_env", "task_id"]
