"""The task store: task records and claims in ``{ns}_tasks``, one compare-and-set per transition.

``coord.tasks`` (on a :class:`~coord.connection.Coord`) is a :class:`TaskStore`. The record under a
task's id is the single source of truth for who may work on what: every transition is one CAS on
its KV revision, a claim's ``epoch`` is a fencing number, a late result from a reclaimed worker is
rejected with :class:`~coord.errors.StaleClaim`. See ``docs/tasks.md``.
"""

from coord.tasks.journal import read_journal
from coord.tasks.models import (
    TERMINAL,
    Claim,
    ClaimInfo,
    JournalEntry,
    Notification,
    ResultNotice,
    ScheduleRequest,
    TaskRecord,
    TaskStatus,
    Transition,
)
from coord.tasks.store import DEFAULT_LEASE, TaskStore
from coord.tasks.transitions import Backoff
from coord.tasks.watch import IndexEntry, TaskIndex, TaskWatch

__all__ = [
    "DEFAULT_LEASE",
    "TERMINAL",
    "Backoff",
    "Claim",
    "ClaimInfo",
    "IndexEntry",
    "JournalEntry",
    "Notification",
    "ResultNotice",
    "ScheduleRequest",
    "TaskIndex",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
    "TaskWatch",
    "Transition",
    "read_journal",
]
