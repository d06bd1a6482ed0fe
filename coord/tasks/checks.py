"""Checks of what callers hand the task store, before anything touches NATS."""

from __future__ import annotations

import json
from typing import Any

from coord.errors import InvalidInput
from coord.tasks.models import TaskStatus

__all__ = ["as_status", "check_json", "positive_seconds"]


def check_json(value: Any, field: str) -> None:
    """Raise :class:`InvalidInput` naming ``field`` unless ``value`` is JSON (no NaN, no sets, no objects)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"{field} must be a JSON value (dict, list, str, number, bool or None): {err}") from None


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
