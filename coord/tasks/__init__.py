"""The task store: task records and claims in ``{ns}_tasks``, one compare-and-set per transition.

``coord.tasks`` (on a :class:`~coord.connection.Coord`) is a :class:`TaskStore`. The record under a
task's id is the single source of truth for who may work on what: every transition is one CAS on
its KV revision, a claim's ``epoch`` is a fencing number, a late result from a reclaimed worker is
rejected with :class:`~coord.errors.StaleClaim`. See ``docs/tasks.md``.
"""

from coord.backoff import Backoff
from coord.tasks.effects import TaskEffects
from coord.tasks.index import IndexEntry, TaskIndex
from coord.tasks.journal import journal_of
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
from coord.tasks.observer import Observer, Scope, Submission
from coord.tasks.store import TaskStore
from coord.tasks.values import TaskValues
from coord.tasks.watch import TaskWatch

__all__ = [
    "TERMINAL",
    "Backoff",
    "Claim",
    "ClaimInfo",
    "IndexEntry",
    "JournalEntry",
    "Notification",
    "Observer",
    "ResultNotice",
    "ScheduleRequest",
    "Scope",
    "Submission",
    "TaskEffects",
    "TaskIndex",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
    "TaskValues",
    "TaskWatch",
    "Transition",
    "journal_of",
]
