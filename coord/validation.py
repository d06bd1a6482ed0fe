"""Corral's one-line :class:`~coord.errors.InvalidInput`: from pydantic's errors, and for numbers crossing an edge.

Every number a caller hands the public API (a TTL, a timeout, ``since``, a delay, a count) has both
bounds: :class:`Bound` says them, :func:`check_number` enforces one before anything is sent, and
the constants below are the documented maxima the CLI declares too (docs/cli.md "Numeric bounds").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from coord.errors import InvalidInput

__all__ = [
    "COUNT",
    "DAY",
    "DELAY",
    "IN_FLIGHT",
    "MAX_COUNT",
    "MAX_DELAY",
    "MAX_SINCE",
    "MAX_TTL",
    "REVISION",
    "SINCE",
    "TIMEOUT",
    "TTL",
    "WAIT",
    "WORKERS",
    "YEAR",
    "Bound",
    "check_number",
    "describe",
    "invalid_input",
    "rule",
]

DAY = 86_400.0
"""Seconds in a day: the longest timeout, wait, lease, interval or grace anything takes."""
YEAR = 365 * DAY
"""Seconds in a (365-day) year."""
MAX_TTL = 10 * YEAR
"""Longest per-message TTL (10 years): nats-server reads ``Nats-TTL`` as a Go duration (at most ~292 years)."""
MAX_SINCE = 10 * YEAR
"""Furthest back a reader may start (``since``), in seconds: no stream keeps events longer."""
MAX_DELAY = 366 * DAY
"""Longest delay before a task may be claimed (the same as :data:`coord.wire.MAX_DELAY`)."""
MAX_COUNT = 1_000_000
"""Largest count (``limit``, ``want``) a call takes."""

N = TypeVar("N", int, float)


def _plain(value: float) -> str:
    """``value`` without an exponent when whole (``315360000``, not ``3.1536e+08``)."""
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Bound:
    """The range a number crossing an edge must be in: finite, ``lo`` to ``hi`` inclusive (``lo`` excluded
    when ``open_low``), a whole number when ``integer``. ``str()`` says it as errors and docs do."""

    lo: float
    """Smallest value allowed (excluded when :attr:`open_low`)."""
    hi: float
    """Largest value allowed."""
    unit: str = ""
    """Unit named in messages (``s`` for seconds)."""
    open_low: bool = False
    """``lo`` itself is refused (a timeout of 0 is no timeout)."""
    integer: bool = False
    """Only whole numbers (``bool`` is never a number)."""

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = _plain(self.lo), _plain(self.hi)
        if self.integer:
            return f"a whole number from {lo} to {hi}{unit}"
        if self.open_low:
            return f"> {lo} and <= {hi}{unit}"
        return f"between {lo} and {hi}{unit}"

    def contains(self, value: object) -> bool:
        """True if ``value`` is a number within this range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return (value > self.lo if self.open_low else value >= self.lo) and value <= self.hi


@overload
def check_number(field: str, value: N, bound: Bound, *, optional: bool = False) -> N: ...
@overload
def check_number(field: str, value: N | None, bound: Bound, *, optional: bool) -> N | None: ...
def check_number(field: str, value: N | None, bound: Bound, *, optional: bool = False) -> N | None:
    """``value`` if ``bound`` contains it (or it is None and ``optional``); else :class:`InvalidInput`
    naming ``field`` and the range.

    NaN, infinities, ``bool`` and non-numbers are refused too, before anything is sent.
    """
    if value is None and optional:
        return None
    if not bound.contains(value):
        raise InvalidInput(f"{field} must be {bound} (got {_shown(value)})")
    return value


TTL = Bound(1, MAX_TTL, "s")
"""A per-message TTL: at least 1 s (nats-server refuses shorter), at most :data:`MAX_TTL`."""
TIMEOUT = Bound(0, DAY, "s", open_low=True)
"""A timeout, lease or interval: more than 0, at most a day."""
WAIT = Bound(0, DAY, "s")
"""A wait or grace that may be 0 (do not wait), at most a day."""
SINCE = Bound(0, MAX_SINCE, "s")
"""How far back a reader starts: 0 to :data:`MAX_SINCE`."""
DELAY = Bound(0, MAX_DELAY, "s")
"""A delay before a task may be claimed: 0 to :data:`MAX_DELAY`."""
COUNT = Bound(0, MAX_COUNT, integer=True)
"""A count or limit: a whole number from 0 to :data:`MAX_COUNT`."""
WORKERS = Bound(1, 1000, integer=True)
"""Tasks a worker runs at once (the largest queue concurrency limit)."""
IN_FLIGHT = Bound(1, MAX_COUNT, integer=True)
"""Tasks or messages handled at once, or in one batch."""
REVISION = Bound(0, 2**64 - 1, integer=True)
"""A stream sequence or KV revision (a compare-and-set's ``last``): 0 to 2^64 - 1."""

_MAX_SHOWN = 60
"""Longest value quoted back in an error (longer ones are cut, or named by their length)."""


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: object) -> str:
    if isinstance(value, float):
        return _number(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_SHOWN:
        return f"{len(text)} characters" if isinstance(value, str) else text[: _MAX_SHOWN - 1] + "…"
    return repr(text) if isinstance(value, str) and (not text or any(c.isspace() for c in text)) else text


def rule(problem: ErrorDetails) -> str:
    """What one pydantic problem means, as a rule a user can act on: ``must be >= 1 (got 0)``.

    No pydantic wording (``Input should be``), no URL; the value given is quoted back (its
    length, when it is long) unless the message already names it.
    """
    kind = problem["type"]
    ctx: dict[str, Any] = dict(problem.get("ctx") or {})
    bounds = {
        "greater_than": ("> ", "gt"),
        "greater_than_equal": (">= ", "ge"),
        "less_than": ("< ", "lt"),
        "less_than_equal": ("<= ", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        text = f"must be {op}{_plain(ctx[key])}"
    elif kind == "string_too_short":
        text = "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    elif kind == "string_too_long":
        text = f"must be at most {ctx['max_length']} characters"
    elif kind in ("too_short", "too_long"):
        which = "least" if kind == "too_short" else "most"
        text = f"must have at {which} {ctx.get('min_length', ctx.get('max_length'))} item(s)"
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        text = "must be a whole number"
    elif kind in ("float_parsing", "float_type"):
        text = "must be a number"
    elif kind in ("bool_parsing", "bool_type"):
        text = "must be true or false"
    elif kind in ("literal_error", "enum"):
        text = f"must be one of {ctx.get('expected', '')}"
    elif kind == "missing":
        return "is required"
    elif kind == "extra_forbidden":
        return "is not a known field"
    elif kind in ("value_error", "assertion_error"):
        # corral's own checks already name the value they reject
        return str(problem["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    else:
        text = str(problem["msg"]).replace("Input should be", "must be")
    if "input" in problem and not isinstance(problem["input"], dict | list):
        text += f" (got {_shown(problem['input'])})"
    return text


def _field(loc: tuple[int | str, ...], rename: Mapping[str, str] | Callable[[str], str] | None) -> str:
    path = ".".join(str(p) for p in loc) or "value"
    if rename is None:
        return path
    if callable(rename):
        return rename(path)
    return rename.get(path, rename.get(str(loc[0]), path) if loc else path)


def describe(err: ValidationError, rename: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
    """Every problem of ``err`` as ``field: rule`` joined by ``"; "`` (no pydantic URLs, no newlines).

    ``rename`` maps a field path to what the user knows it by (a CLI flag, an environment variable).
    """
    parts: list[str] = []
    for problem in err.errors(include_url=False):
        message = rule(problem)
        # A model-level check (empty location) names its fields in its own message.
        parts.append(f"{_field(problem['loc'], rename)}: {message}" if problem["loc"] else message)
    return "; ".join(parts).replace("\n", " ")


def invalid_input(
    err: ValidationError, rename: Mapping[str, str] | Callable[[str], str] | None = None, *, what: str = ""
) -> InvalidInput:
    """An :class:`InvalidInput` saying what :func:`describe` says, optionally prefixed with ``what``."""
    text = describe(err, rename)
    return InvalidInput(f"{what}: {text}" if what else text)
