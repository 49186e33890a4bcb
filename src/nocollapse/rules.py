"""Validation rules for settings: each a check and the words for what it allows.

A failing value gives the message ``KEY=VALUE: must be ALLOWED``. The configuration
(:mod:`nocollapse.config`) and the augmentation settings (:class:`~nocollapse.augment.views.AugmentConfig`)
both state their fields' rules with these, so every setting is checked, and worded, the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Rule = tuple[Callable[[Any], bool], str]


def _bounds(low: float, high: float | None, low_open: bool, high_open: bool) -> tuple[Callable[[Any], bool], str]:
    """The check and text of an interval from ``low`` to ``high`` (None: unbounded); an open end is excluded."""
    def check(value: Any) -> bool:
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    if high is None:
        return check, f"{'>' if low_open else '>='} {low}"
    return check, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


FINITE: Rule = (_finite, "a finite number")


def real(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False, note: str = "") -> Rule:
    """A finite number within the bounds: every comparison with nan is false, but inf passes ``> 0``."""
    within, text = _bounds(low, high, low_open, high_open)
    return (lambda v: _finite(v) and within(v)), f"a finite number {text}{note}"


def integer(low: int, high: int | None = None, *, note: str = "") -> Rule:
    """An int (not a bool) in [low, high]."""
    within, text = _bounds(low, high, False, False)
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and within(v)), f"an integer {text}{note}"


def tuple_of(rule: Rule, *, least: int = 0, note: str = "") -> Rule:
    """A tuple of at least ``least`` items, each passing ``rule``."""
    check, text = rule
    count = "one or more comma-separated values" if least == 1 else "comma-separated values"
    return (lambda v: isinstance(v, tuple) and len(v) >= least and all(check(x) for x in v)), f"{count}, each {text}{note}"


def ordered_pair(low: float, high: float | None = None, *, note: str = "") -> Rule:
    """Two finite numbers ``min,max`` with ``low < min <= max`` (and ``max <= high`` when given): a range to draw from."""
    top = f" <= {high}" if high is not None else ""
    return ((lambda v: isinstance(v, tuple) and len(v) == 2 and all(_finite(x) for x in v) and low < v[0] <= v[1]
             and (high is None or v[1] <= high)),
            f"two finite numbers min,max with {low} < min <= max{top}{note}")


def one_of(*choices: Any) -> Rule:
    """One of ``choices``, compared after parsing (``regularizers.mhe_power`` is an int)."""
    return (lambda v: v in choices), "one of: " + ", ".join(str(c) for c in choices)


def optional(rule: Rule, none_means: str) -> Rule:
    """None, or a value passing ``rule``."""
    check, text = rule
    return (lambda v: v is None or check(v)), f"{text}, or none for {none_means}"


BOOL: Rule = (lambda v: isinstance(v, bool), "true or false")


def shown(value: Any) -> str:
    """A value as written on the command line: tuples comma-separated, strings quoted (to show blanks)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "''"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, str) else str(value)


def first_violation(values: dict[str, Any], rules: dict[str, Rule], prefix: str = "") -> str | None:
    """``PREFIXKEY=VALUE: must be ALLOWED`` for the first of ``values`` that breaks its rule, or None."""
    for key, value in values.items():
        if key not in rules:
            continue
        check, allowed = rules[key]
        try:
            ok = bool(check(value))
        except TypeError:  # a value of the wrong type, set in code rather than parsed
            ok = False
        if not ok:
            return f"{prefix}{key}={shown(value)}: must be {allowed}"
    return None
