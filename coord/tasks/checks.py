"""Checks of what callers hand the task store, before anything touches NATS."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from coord.errors import InvalidInput
from coord.tasks.models import TaskStatus

__all__ = ["as_status", "check_json", "positive_seconds"]


_WALK_DEPTH = 64
"""Deepest nesting the quick walk of :func:`check_json` follows before leaving the verdict to ``json.dumps``."""


def check_json(value: Any, field: str) -> None:
    """Raise :class:`InvalidInput` naming ``field`` unless ``value`` is JSON (no NaN, no sets, no objects).

    Accepts exactly what ``json.dumps(value, allow_nan=False)`` accepts. A walk over the value's
    containers accepts the plain cases without writing the JSON out (a 64 MiB string is checked in
    no time: writing it out held a worker's event loop for 150 ms); anything it is not sure of (another
    type, a subclass, a huge integer, deep nesting, a container met twice) gets ``json.dumps``'s own verdict.
    """
    if _plainly_json(value):
        return
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"{field} must be a JSON value (dict, list, str, number, bool or None): {err}") from None


def _plainly_json(value: Any) -> bool:
    """True when ``value`` is certainly JSON: plain containers, strings, finite floats, integers short
    enough to print (``sys.get_int_max_str_digits``) and no deeper than :data:`_WALK_DEPTH`."""
    digits = sys.get_int_max_str_digits()
    max_bits = 3 * digits if digits else None  # 2**(3d) < 10**d: at most d digits

    def plain(item: Any) -> bool:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            return True
        if kind is int:
            return max_bits is None or item.bit_length() <= max_bits
        return kind is float and math.isfinite(item)

    seen: set[int] = set()  # a container met twice (shared, or a cycle) is left to json.dumps
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is list or kind is tuple or kind is dict:
            if depth >= _WALK_DEPTH or id(item) in seen:
                return False
            seen.add(id(item))
            if kind is dict:
                if not all(plain(key) for key in item):
                    return False
                item = item.values()
            stack.extend((child, depth + 1) for child in item)
        elif not plain(item):
            return False
    return True


def as_status(value: TaskStatus | str | None) -> TaskStatus | None:
    """``value`` as a :class:`TaskStatus` (None stays None); :class:`InvalidInput` listing the statuses."""
    if value is None or isinstance(value, TaskStatus):
        return value
    try:
        return TaskStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise InvalidInput(f"status {value!r} is not a task status (one of: {allowed})") from None


def positive_seconds(value: float | None, field: str) -> float | None:
    """``value`` as seconds in (0, 1 day] (None stays None); :class:`InvalidInput` naming ``field``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86_400:
        raise InvalidInput(f"{field} must be a number of seconds in (0, 86400], got {value!r}")
    return float(value)
