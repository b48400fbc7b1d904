"""Declared constraints of the configuration dataclasses, checked in one place.

Each configuration class lists what every field accepts in a ``CONSTRAINTS`` class attribute (scikit-learn's
``_parameter_constraints`` is the model) and calls :func:`validate` from ``__post_init__``, so a bad setting is
refused with the same kind of message wherever it comes from (library, CLI, dashboard) and before any work starts.
A field's entry is a tuple of alternatives; the value must satisfy one of them. ``None`` as an alternative accepts
``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

MAX_REGULARISER = 1e6
"""The largest damping δ and ridge ρ accepted: beyond it H + δI is δI to float32 precision for any model here, and
the squares the solvers form overflow long before δ = 1e308."""


class Constraint(Protocol):
    def accepts(self, value: Any) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Interval:
    """A real (or, with ``integer``, a whole) number between ``low`` and ``high`` (None: unbounded on that side);
    ``closed`` says which ends belong to it: "both", "left", "right" or "neither". Never NaN, never ±inf."""

    low: float | None
    high: float | None
    closed: str = "both"
    integer: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        left_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        right_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return left_ok and right_ok

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("both", "left") else "("
            right = "]" if self.closed in ("both", "right") else ")"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{kind} {'≥' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'≤' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        return kind


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (names of methods, solvers, data choices)."""

    options: tuple

    def accepts(self, value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in self.options)

    def describe(self) -> str:
        return "one of " + ", ".join(str(o) for o in self.options)


@dataclass(frozen=True)
class InstanceOf:
    """An instance of a type (a nested configuration, a flag)."""

    kind: type

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.kind)

    def describe(self) -> str:
        return "True or False" if self.kind is bool else f"a {self.kind.__name__}"


Alternatives = tuple[Constraint | None, ...]


class ConfigError(ValueError):
    """A setting outside its declared constraints: which configuration and field, what it accepts, what was given
    (so that a front end can name its own flag or widget instead of the field)."""

    def __init__(self, config: str, field: str, allowed: str, value: Any) -> None:
        self.config, self.field, self.allowed, self.value = config, field, allowed, value
        super().__init__(f"{config}: {field} must be {allowed}, got {value!r}")

    def naming(self, name: str) -> str:
        """The same message about ``name`` (e.g. the command-line flag that set the field)."""
        return f"{name} must be {self.allowed}, got {self.value!r}"


def validate(config: Any) -> None:
    """Raise :class:`ConfigError` naming the first field of ``config`` that satisfies none of its declared
    alternatives, what it accepts, and the value given."""
    constraints: dict[str, Alternatives] = type(config).CONSTRAINTS
    for name, alternatives in constraints.items():
        value = getattr(config, name)
        if any(value is None if c is None else c.accepts(value) for c in alternatives):
            continue
        allowed = " or ".join("None" if c is None else c.describe() for c in alternatives)
        raise ConfigError(type(config).__name__, name, allowed, value)
