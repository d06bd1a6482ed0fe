"""Priority levels of a task within its queue: ``high``, ``normal`` (the default) and ``low``.

Each level has its own notification subjects and its own durable consumer (see
:class:`coord.naming.Names`), so urgent work overtakes a backlog on the server side instead of
waiting behind it in one stream order. How a worker shares its slots among the levels (a weighted,
starvation-free share) is :mod:`workers.levels`.
"""

from __future__ import annotations

from enum import StrEnum

from coord.errors import InvalidInput

__all__ = ["LEVELS", "Priority", "as_priority"]


class Priority(StrEnum):
    """How urgent a task is within its queue."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


LEVELS: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
"""Every level, most urgent first."""


def as_priority(value: Priority | str) -> Priority:
    """``value`` as a :class:`Priority`; :class:`InvalidInput` naming the levels otherwise."""
    if isinstance(value, Priority):
        return value
    try:
        return Priority(value)
    except ValueError:
        raise InvalidInput(
            f"priority {value!r} is not a priority level (one of: {', '.join(p.value for p in LEVELS)})"
        ) from None
