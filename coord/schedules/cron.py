"""When a schedule fires: cron expressions in a time zone, their ticks, and the task id of each tick.

Expressions are read by `cronsim <https://pypi.org/project/cronsim/>`_: the five standard fields
(minute hour day-of-month month day-of-week) as Debian's cron reads them (names, ranges, steps, ``L``,
``#``), or six with a seconds field first (``*/2 * * * * *``: every two seconds). Ticks are whole
seconds, computed in the schedule's IANA time zone (``zoneinfo``) with Debian cron's rules for
daylight-saving changes, and handled as aware UTC datetimes everywhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from coord.errors import InvalidInput

__all__ = [
    "CRON_RULE",
    "MAX_NAME_LENGTH",
    "check_cron",
    "check_timezone",
    "next_tick",
    "previous_tick",
    "tick_task_id",
]

CRON_RULE = "5 fields: minute hour day-of-month month day-of-week, or 6 with seconds first"
"""What a cron expression must look like, as errors say it."""

MAX_NAME_LENGTH = 100
"""Longest schedule name: ``{name}-{unix seconds}`` must stay within the 128 characters of a task id."""


def check_cron(expression: object) -> str:
    """``expression`` with its fields separated by single spaces, if it is a cron expression that fires.

    Raises :class:`~coord.errors.InvalidInput` naming the expression, what is wrong (``bad minute``)
    and the rule (:data:`CRON_RULE`); an expression that never fires (``0 0 30 2 *``) is refused too.
    """
    if not isinstance(expression, str):
        raise InvalidInput(f"cron expression must be a string ({CRON_RULE}), got {type(expression).__name__}")
    normal = " ".join(expression.split())
    start = datetime(2000, 1, 1, tzinfo=UTC)
    try:
        CronSim(normal, start)
    except CronSimError as err:
        raise InvalidInput(f"{expression!r} is not a cron expression: {str(err).lower()} ({CRON_RULE})") from None
    if _first_after(normal, start) is None:
        raise InvalidInput(f"{expression!r} never fires ({CRON_RULE})")
    return normal


def check_timezone(name: object) -> str:
    """``name`` if it is an IANA time zone this host knows (``UTC``, ``Europe/Paris``), else :class:`InvalidInput`."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("time zone must be an IANA name such as UTC or Europe/Paris")
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Paris)") from None
    return name


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _first_after(expression: str, after: datetime) -> datetime | None:
    try:
        return next(CronSim(expression, after))
    except StopIteration:  # cronsim looks 50 years ahead
        return None


def next_tick(expression: str, timezone: str, after: datetime) -> datetime | None:
    """The first tick strictly after ``after`` (aware UTC, whole seconds), or None if there is none."""
    local = after.astimezone(_zone(timezone))
    tick = _first_after(expression, local)
    return None if tick is None else tick.astimezone(UTC)


def previous_tick(expression: str, timezone: str, at: datetime) -> datetime | None:
    """The latest tick at or before ``at`` (aware UTC, whole seconds), or None if there is none."""
    # cronsim's reverse iteration starts strictly before its start: start one second after ``at``.
    # (in UTC: a local wall-clock step could land in a daylight-saving gap).
    start = (at.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)).astimezone(_zone(timezone))
    try:
        tick = next(CronSim(expression, start, reverse=True))
    except StopIteration:
        return None
    return tick.astimezone(UTC)


def tick_task_id(name: str, tick: datetime) -> str:
    """The task id of schedule ``name``'s tick at ``tick``: ``{name}-{unix seconds}``, the same in every scheduler."""
    return f"{name}-{int(tick.timestamp())}"
