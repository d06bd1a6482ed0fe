"""What a reclaim reports: why a claim was taken back (:class:`ReclaimReason`) and the event
(:class:`ReclaimEvent`) a :class:`~dispatch.reclaimer.Reclaimer` puts on its bounded ``events`` queue."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from enum import StrEnum

from coord.presence import LeftReason

__all__ = ["EVENTS_KEPT", "BoundedEvents", "ReclaimEvent", "ReclaimReason"]

EVENTS_KEPT = 1024
"""Reclaim events kept for :attr:`Reclaimer.events` readers; older ones are dropped when nobody reads."""


class ReclaimReason(StrEnum):
    """Why a claim was taken back; its value is the task's stored ``error`` text."""

    WORKER_LEFT_EXPIRED = "worker-left:expired"
    """Its worker's presence expired (dead, hung or cut off)."""
    WORKER_LEFT_GRACEFUL = "worker-left:graceful"
    """Its worker left on purpose without giving the claim back."""
    DEADLINE = "deadline"
    """Its lease ran out without a heartbeat."""
    WORKER_ABSENT = "worker-absent"
    """Its worker was not present when the reclaimer (re)built its view."""

    @classmethod
    def left(cls, reason: LeftReason) -> ReclaimReason:
        """The reason for a worker that left for ``reason``."""
        return cls.WORKER_LEFT_GRACEFUL if reason == "graceful" else cls.WORKER_LEFT_EXPIRED

    @property
    def departure(self) -> LeftReason | None:
        """How the worker left, for a presence departure; None otherwise."""
        if self is ReclaimReason.WORKER_LEFT_GRACEFUL:
            return "graceful"
        if self is ReclaimReason.WORKER_LEFT_EXPIRED:
            return "expired"
        return None


@dataclass(frozen=True)
class ReclaimEvent:
    """One claim given back."""

    task_id: str
    worker_id: str
    claim_id: str
    reason: ReclaimReason
    """Why (a string enum: ``worker-left:expired``, ``worker-left:graceful``, ``deadline`` or ``worker-absent``)."""
    status: str
    """The task's status after the reclaim (pending, or dead when its attempts were spent)."""
    detected_after: float | None
    """Seconds from the worker's departure (as recorded by the server) to the reclaim, when known."""


class BoundedEvents(asyncio.Queue[ReclaimEvent]):
    """A queue that keeps only the newest :data:`EVENTS_KEPT` events when nobody reads it."""

    def put_nowait(self, item: ReclaimEvent) -> None:
        if self.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.get_nowait()
        super().put_nowait(item)
