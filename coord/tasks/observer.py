"""The telemetry seam: :class:`Observer` hooks at every step of a task's life and at presence changes.

The task store, the worker runtime and the reclaimer call these hooks and nothing else for
telemetry; there is no second, traced copy of any control flow. The base class observes nothing
(every hook is free); :class:`coord.telemetry.observer.OtelObserver` turns the hooks into OpenTelemetry spans
and metrics. An application can pass its own subclass to ``coord.connect(observer=...)``.

Scoped hooks return a :class:`Scope`, used as a ``with`` block around the operation: the block's
exception (if any) is what the operation raised; :meth:`Scope.done` reports what it produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from coord.tasks.models import Claim, ScheduleRequest, TaskRecord

__all__ = ["NOOP", "Observer", "Scope", "Submission"]


class Scope:
    """One observed operation (a ``with`` block). This base does nothing; subclasses record."""

    __slots__ = ()

    meta: Mapping[str, str] = {}
    """Entries the operation should add to the task record's meta (e.g. a reclaim's trace context)."""

    def done(self, result: Any = None) -> None:
        """The operation produced ``result`` (a claim, a record...)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class Submission(Scope):
    """The observation of one ``schedule_many`` call."""

    __slots__ = ("requests",)

    def __init__(self, requests: Sequence[ScheduleRequest]) -> None:
        self.requests = list(requests)
        """The requests to write (an observer may have added trace context to their meta)."""

    def created(self, records: Sequence[TaskRecord], new: Sequence[bool]) -> None:
        """The records written (``new[i]`` is False for an idempotent repeat of an existing task)."""


NOOP = Scope()
"""The shared scope that observes nothing."""


class Observer:
    """Hooks at submit, claim, run, settle, reclaim, heartbeat and presence change (all no-ops here)."""

    def submitting(self, requests: Sequence[ScheduleRequest]) -> Submission:
        """Around the creation of a batch of tasks (the store writes ``Submission.requests``)."""
        return Submission(requests)

    def claiming(
        self, task_id: str, worker_id: str, pending: TaskRecord | None, headers: Mapping[str, str] | None
    ) -> Scope:
        """Around one claim by ``worker_id``; ``pending`` is the record it starts from when known (else
        ``headers`` of the notification carry the trace context); ``done(claim)``."""
        return NOOP

    def running(self, claim: Claim, pending: TaskRecord | None = None) -> Scope:
        """Around a worker's run of ``claim`` (``pending``: the record it was claimed from, when known)."""
        return NOOP

    def settling(self, claim: Claim, *, ok: bool, error: str | None = None) -> Scope:
        """Around ``complete`` (``ok``) or ``fail`` (with its ``error``); ``done(record)`` with the record written."""
        return NOOP

    def heartbeating(self, claim: Claim) -> Scope:
        """Around one lease extension of ``claim``."""
        return NOOP

    def reclaiming(self, record: TaskRecord, *, reason: str, departure: str | None) -> Scope:
        """Around the reclaim of ``record``'s claim (``departure``: ``graceful``/``expired`` when a
        presence departure caused it); ``done(record)`` with the record written; ``Scope.meta`` is
        merged into the record by the same compare-and-set."""
        return NOOP

    def cas_retried(self, task_id: str, queue: str, revision: int, attempt: int) -> None:
        """A compare-and-set on ``task_id`` lost a race and is retried."""

    def presence_changed(self, present: int) -> None:
        """``present`` agents are in presence now (as a reclaimer sees it)."""

    def queue_depths(self, depths: Mapping[str, int]) -> None:
        """Pending tasks per queue now (as a reclaimer's index sees it)."""
