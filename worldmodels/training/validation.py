"""Checking config values against rules: types, ranges and choices, one line per mistake.

A :class:`Rule` says what a value may be, in words (``describe``) and as a test
(``accepts``); the constructors below (:func:`integer`, :func:`number`, :func:`choice`,
...) build the common ones. :func:`check_values` walks a config, finds each key's rule
(exact dotted keys or ``fnmatch`` patterns such as ``model.optim.*.lr``) and raises
:class:`ConfigError` for the first value that breaks it, with the key, the value and
what is allowed::

    train.lr=abc is not allowed: expected a number > 0.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import WorldModelsError

MISSING = "???"


class ConfigError(WorldModelsError, ValueError):
    """A config value that is not allowed; the message is one line naming the key, the
    value and what is allowed."""


@dataclass(frozen=True)
class Rule:
    """What one config value may be: ``describe`` in words, ``accepts`` as a test."""

    describe: str
    accepts: Callable[[Any], bool]

    def or_null(self) -> Rule:
        """The same rule, also accepting null (YAML ``null``, Python None)."""
        return Rule(f"{self.describe}, or null", lambda v: v is None or self.accepts(v))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def _within(value: float, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """An integer (not a bool, not a float) within ``[low, high]``."""
    bounds = _bounds(low, high, False, False)
    return Rule(f"an integer {bounds}".strip(), lambda v: _is_int(v) and _within(v, low, high, False, False))


def count(low: int = 1) -> Rule:
    """A whole number >= ``low``, written as an int or as a float such as ``1e6``."""
    def accepts(v: Any) -> bool:
        return _is_number(v) and float(v).is_integer() and v >= low
    return Rule(f"a whole number >= {low} (e.g. 1000 or 1e6)", accepts)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """A finite int or float within the bounds (open bounds exclude the limit)."""
    bounds = _bounds(low, high, low_open, high_open)
    return Rule(f"a number {bounds}".strip(),
                lambda v: _is_number(v) and _within(v, low, high, low_open, high_open))


def positive() -> Rule:
    """A finite number > 0."""
    return number(0, low_open=True)


def fraction(*, low_open: bool = False, high_open: bool = False) -> Rule:
    """A number in [0, 1] (bounds open on request)."""
    return number(0, 1, low_open=low_open, high_open=high_open)


def choice(*options: Any) -> Rule:
    """One of ``options`` (compared with ``==``; bools only match bools)."""
    shown = ", ".join(show(o) for o in options)

    def accepts(v: Any) -> bool:
        return any(v == o and isinstance(v, bool) == isinstance(o, bool) for o in options)
    return Rule(f"one of {shown}", accepts)


def boolean() -> Rule:
    """true or false."""
    return Rule("true or false", lambda v: isinstance(v, bool))


def text() -> Rule:
    """A non-empty string."""
    return Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))


def name() -> Rule:
    """A non-empty string usable as a file name (no ``/``)."""
    return Rule("a non-empty name without '/'", lambda v: isinstance(v, str) and bool(v.strip()) and "/" not in v)


def regex() -> Rule:
    """A string that compiles as a regular expression."""
    def accepts(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            re.compile(v)
        except re.error:
            return False
        return True
    return Rule("a regular expression", accepts)


def list_of(item: Rule, *, min_len: int = 0, length: int | None = None) -> Rule:
    """A list whose items each follow ``item``."""
    size = f"{length} " if length is not None else (f"at least {min_len} " if min_len else "")
    def accepts(v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < min_len or (length is not None and len(v) != length):
            return False
        return all(item.accepts(x) for x in v)
    return Rule(f"a list of {size}items, each {item.describe}", accepts)


def number_or_range(low: float, *, low_open: bool) -> Rule:
    """A number, or ``[min, max]`` with ``min <= max``, all within the bound."""
    one = number(low, low_open=low_open)

    def accepts(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return len(v) == 2 and all(one.accepts(x) for x in v) and v[0] <= v[1]
        return one.accepts(v)
    return Rule(f"{one.describe}, or [min, max] of such numbers", accepts)


def show(value: Any) -> str:
    """A value as it is written on the command line (``null``, ``true``, ``[1, 2]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a nested dict (lists are leaves)."""
    if isinstance(node, Mapping) and (node or not prefix):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def rule_for(rules: Mapping[str, Rule], key: str) -> Rule | None:
    """The rule of ``key``: an exact entry, else the first matching pattern."""
    if key in rules:
        return rules[key]
    return next((rule for pattern, rule in rules.items() if fnmatch.fnmatchcase(key, pattern)), None)


def check_values(values: Mapping[str, Any], rules: Mapping[str, Rule], last: Collection[str] = ()) -> None:
    """Raise :class:`ConfigError` for the first leaf of ``values`` that has no rule or
    breaks its rule; the keys in ``last`` (interpolations of other keys) are checked after
    the others, so that a bad value is reported where it was written."""
    items = sorted(leaves(values), key=lambda item: item[0] in last)
    for key, value in items:
        rule = rule_for(rules, key)
        if rule is None:
            raise ConfigError(f"{key}={show(value)} is not a setting of this experiment; "
                              "remove it (see `python -m worldmodels.train --cfg job` for the settings).")
        if value == MISSING:
            raise ConfigError(f"{key} must be set: {rule.describe} (add {key}=... to the command).")
        if not rule.accepts(value):
            raise ConfigError(f"{key}={show(value)} is not allowed: expected {rule.describe}.")
