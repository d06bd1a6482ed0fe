"""Recurring schedules, in the ``{ns}_schedules`` KV bucket: one key per schedule (see docs/schedules.md).

The value under a schedule's name is a :class:`Schedule`: its cron expression (5 fields, or 6 with
seconds first) and IANA time zone, the :class:`TaskTemplate` each tick submits, whether it is paused,
and the last tick a scheduler submitted. :class:`Schedules` writes them (every write a
compare-and-set) and watches them; the scheduler that submits the ticks is
:class:`dispatch.scheduler.Scheduler`. :mod:`coord.schedules.cron` says when a schedule fires and
which task id each tick gets (``{name}-{unix seconds}``), the same in every scheduler.
"""

from coord.schedules.cron import (
    CRON_RULE,
    MAX_NAME_LENGTH,
    check_cron,
    check_timezone,
    next_tick,
    previous_tick,
    tick_task_id,
)
from coord.schedules.models import Schedule, ScheduleName, TaskTemplate
from coord.schedules.service import Schedules

__all__ = [
    "CRON_RULE",
    "MAX_NAME_LENGTH",
    "Schedule",
    "ScheduleName",
    "Schedules",
    "TaskTemplate",
    "check_cron",
    "check_timezone",
    "next_tick",
    "previous_tick",
    "tick_task_id",
]
