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


def _repeated_shift(at: datetime, zone: ZoneInfo) -> timedelta:
    """How far ``at`` is into the second pass of a repeated wall-clock hour, as an upper bound (else 0).

    In the second pass (``fold=1``) the same wall-clock times come round again; cronsim reads fixed
    times (``30 2 * * *``) on the wall clock without the fold, as their first pass.
    """
    local = at.astimezone(zone)
    if local.fold == 0:
        return timedelta(0)
    first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
    return first - second if first is not None and second is not None and first > second else timedelta(0)


def next_tick(expression: str, timezone: str, after: datetime) -> datetime | None:
    """The first tick strictly after ``after`` (aware UTC, whole seconds), or None if there is none.

    Always strictly after ``after``, also in a repeated hour: a fixed-time tick whose wall-clock
    time comes round again fired in the first pass and is not offered again (Debian cron's rule).
    """
    for tick in CronSim(expression, after.astimezone(_zone(timezone))):
        # In the repeated hour cronsim offers the first pass of times already past: skip them.
        if (found := tick.astimezone(UTC)) > after:
            return found
    return None  # cronsim looks 50 years ahead


def previous_tick(expression: str, timezone: str, at: datetime) -> datetime | None:
    """The latest tick at or before ``at`` (aware UTC, whole seconds), or None if there is none.

    Agrees with :func:`next_tick` on which instants are ticks, also across daylight-saving changes.
    """
    zone = _zone(timezone)
    # cronsim's reverse iteration starts strictly before its start: start one second after ``at``
    # (in UTC: a local wall-clock step could land in a daylight-saving gap). In the second pass of a
    # repeated hour, start after its end: cronsim reads wall-clock times there as their first pass,
    # so ticks of the first pass that are later on the wall clock than ``at`` would be missed.
    start = at.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    start += _repeated_shift(at, zone)
    for tick in CronSim(expression, start.astimezone(zone), reverse=True):
        if (found := tick.astimezone(UTC)) <= at:
            return found
    return None  # cronsim looks 50 years back


def tick_task_id(name: str, tick: datetime) -> str:
    """The task id of schedule ``name``'s tick at ``tick``: ``{name}-{unix seconds}``, the same in every scheduler."""
    return f"{name}-{int(tick.timestamp())}"
