"""The rows of the dashboard's read model: what it keeps of a task, an agent, a departure, a queue and a
timeline item, each with the JSON a browser gets."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coord.presence import AgentInfo, LeftReason
from coord.tasks import TaskRecord, TaskStatus, Transition

__all__ = [
    "MAX_TEXT",
    "RATE_WINDOW",
    "AgentRow",
    "Departure",
    "QueueRow",
    "TaskPage",
    "TaskRow",
    "TimelineItem",
    "timestamp",
    "trace_id_of",
]

RATE_WINDOW = 60
"""Seconds over which queue rates are averaged."""
MAX_TEXT = 300
"""Characters of an error or reason kept per task row or timeline item."""


def timestamp(when: datetime | None) -> float | None:
    """``when`` as seconds since the epoch (None stays None)."""
    return None if when is None else when.timestamp()


def _cut(text: str | None, limit: int = MAX_TEXT) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trace_id_of(meta: Mapping[str, str]) -> str | None:
    """The W3C trace id in ``meta['traceparent']`` (``00-{trace id}-{span id}-{flags}``), if well formed."""
    parts = meta.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and all(c in "0123456789abcdef" for c in parts[1]):
        return parts[1] if parts[1] != "0" * 32 else None
    return None


def _title(spec: Any) -> str:
    if isinstance(spec, dict):
        title = spec.get("title")
        if isinstance(title, str):
            return title[:200]
    return ""


@dataclass(slots=True)
class TaskRow:
    """What the dashboard keeps of one task: enough to list and filter it (no spec body or result)."""

    task_id: str
    queue: str
    status: TaskStatus
    title: str
    attempt: int
    max_attempts: int
    epoch: int
    worker: str | None
    """The claim's worker while claimed, else the worker of the latest claim."""
    created_at: float
    updated_at: float
    visible_at: float | None
    error: str | None
    trace_id: str | None
    transition: Transition
    revision: int
    priority: str

    @classmethod
    def of(cls, record: TaskRecord) -> TaskRow:
        """The row of ``record``."""
        return cls(
            task_id=record.task_id,
            queue=record.queue,
            status=record.status,
            title=_title(record.spec),
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            epoch=record.epoch,
            worker=record.claim.worker_id if record.claim else record.last_worker,
            created_at=record.created_at.timestamp(),
            updated_at=record.updated_at.timestamp(),
            visible_at=timestamp(record.visible_at),
            error=_cut(record.error),
            trace_id=trace_id_of(record.meta),
            transition=record.transition,
            revision=record.revision,
            priority=record.priority.value,
        )

    def json(self) -> dict[str, Any]:
        """The row as JSON for the browser."""
        return {
            "task_id": self.task_id,
            "queue": self.queue,
            "status": self.status.value,
            "title": self.title,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "epoch": self.epoch,
            "worker": self.worker,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "visible_at": self.visible_at,
            "error": self.error,
            "trace_id": self.trace_id,
            "transition": self.transition.value,
            "revision": self.revision,
            "priority": self.priority,
        }


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a filtered task listing, newest update first."""

    total: int
    offset: int
    limit: int
    rows: list[TaskRow]

    def json(self) -> dict[str, Any]:
        """The page as JSON."""
        return {"total": self.total, "offset": self.offset, "limit": self.limit, "rows": [r.json() for r in self.rows]}


@dataclass(slots=True)
class AgentRow:
    """A present agent as presence announced it, with since when it is present (as far as the dashboard knows)."""

    info: AgentInfo
    since: float

    def json(self, claims: int) -> dict[str, Any]:
        """The agent as JSON; ``claims`` is how many claims the task records say it holds."""
        info = self.info
        return {
            "id": info.id,
            "role": info.role,
            "host": info.host,
            "pid": info.pid,
            "queues": list(info.queues),
            "tags": list(info.tags),
            "capacity": info.capacity,
            "inflight": info.inflight,
            "claims": claims,
            "parent": info.parent,
            "version": info.version,
            "started_at": info.started_at.timestamp(),
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class Departure:
    """An agent that left, and how."""

    agent_id: str
    reason: LeftReason
    at: float
    role: str | None

    def json(self) -> dict[str, Any]:
        """The departure as JSON."""
        return {"id": self.agent_id, "reason": self.reason, "at": self.at, "role": self.role}


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One thing that happened to the fleet (a join, departure, reclaim, rejected late result, ...)."""

    seq: int
    at: float
    kind: str
    text: str
    task_id: str | None = None
    agent_id: str | None = None

    def json(self) -> dict[str, Any]:
        """The item as JSON."""
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "text": self.text,
            "task_id": self.task_id,
            "agent_id": self.agent_id,
        }


@dataclass(slots=True)
class QueueRow:
    """Per-queue aggregates: tasks by status, rates and the oldest pending task."""

    name: str
    counts: dict[TaskStatus, int] = field(default_factory=dict)
    finished: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW + 1))
    """(second, tasks finished in it), newest last."""
    submitted: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW + 1))

    @staticmethod
    def _bump(window: deque[tuple[int, int]], now: float) -> None:
        second = int(now)
        if window and window[-1][0] == second:
            window[-1] = (second, window[-1][1] + 1)
        else:
            window.append((second, 1))

    @staticmethod
    def _rate(window: deque[tuple[int, int]], now: float) -> float:
        horizon = int(now) - RATE_WINDOW
        return sum(n for second, n in window if second > horizon) / RATE_WINDOW
