"""The task store's data: records as stored in ``{ns}_tasks``, claims handed to workers, wire messages.

A :class:`TaskRecord` is the JSON value of one key of the tasks bucket (key = task id). Its
``revision`` is the KV revision it was read at; it is never stored, it comes from the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

from coord.blobs import BlobRef
from coord.errors import InvalidInput
from coord.ids import Token
from coord.priority import Priority
from coord.wire import MAX_DELAY, Result

__all__ = [
    "TERMINAL",
    "Claim",
    "ClaimInfo",
    "JournalEntry",
    "Notification",
    "ResultNotice",
    "ScheduleRequest",
    "TaskRecord",
    "TaskStatus",
    "Transition",
    "filled",
]

_M = TypeVar("_M", bound=BaseModel)


def filled(model: _M, **fields: Any) -> _M:
    """``model`` itself with ``fields`` set: ``model_copy(update=fields)`` without the copy, for a model
    built or validated a moment ago that nothing else holds yet (a fresh decode, the record a
    transition just produced). The models are frozen for everyone else: never use it on a model
    that was handed in or out."""
    model.__dict__.update(fields)
    model.__pydantic_fields_set__.update(fields)
    return model


class TaskStatus(StrEnum):
    """Where a task is in its life: ``pending → claimed → succeeded | failed | dead | cancelled``."""

    PENDING = "pending"
    CLAIMED = "claimed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for statuses that only an explicit ``retry`` can leave."""
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED})
"""Statuses a task never leaves except by an explicit ``retry`` (and ``cancelled`` not even then)."""


class Transition(StrEnum):
    """The operation that produced a record revision (shown in the journal)."""

    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    HEARTBEAT = "heartbeat"
    COMPLETED = "completed"
    FAILED = "failed"
    RELEASED = "released"
    RECLAIMED = "reclaimed"
    CANCELLED = "cancelled"
    RETRIED = "retried"


class JournalEntry(BaseModel):
    """One successful transition of a task, as its record keeps it in ``TaskRecord.journal``.

    The journal is part of the record, so it is written by the same compare-and-set as the
    transition it describes: a rejected transition never appears, and no crash or lost message can
    leave a hole in it.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    revision: int = 0
    """KV revision the transition wrote (0 in the stored newest entry: it is the record's own revision)."""
    at: AwareDatetime
    """When it was written."""
    transition: Transition
    """Which operation it was."""
    status: TaskStatus
    """Status after the transition."""
    attempt: int
    """Attempt count after the transition."""
    epoch: int
    """Epoch after the transition."""
    worker_id: str | None = None
    """The worker holding (or who last held) the claim."""
    error: str | None = None
    """Error or reason recorded by the transition (its first 200 characters)."""
    progress: JsonValue = None
    """The progress a heartbeat reported (only when its JSON is at most 200 bytes)."""


class ClaimInfo(BaseModel):
    """The current claim of a task as stored in its record: who holds it, until when, under which epoch.

    Only the SHA-256 of the claim token is stored; the raw token exists only in the worker's
    :class:`Claim`.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker_id: str
    """Agent id of the worker holding the claim."""
    claim_id: str
    """Unique id of this claim (what a reclaimer names in ``reclaim``)."""
    token_sha256: str
    """Hex SHA-256 of the raw claim token."""
    epoch: int
    """Fencing number: strictly increases with every claim of the task."""
    claimed_at: AwareDatetime
    """When the claim was taken."""
    deadline: AwareDatetime
    """When the lease runs out unless extended by a heartbeat."""


class TaskRecord(BaseModel):
    """One task, as stored (JSON) under its id in the tasks bucket: the single source of truth.

    Invariants kept by :class:`coord.tasks.TaskStore`: ``claim`` is set exactly when ``status`` is
    ``claimed``; ``attempt < max_attempts`` whenever ``status`` is ``pending``; ``epoch`` equals the
    epoch of the latest claim and never decreases.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    """The task's id (also its KV key)."""
    queue: str
    """Queue whose workers may run it."""
    status: TaskStatus
    """Where the task is in its life."""
    spec: Any = Field(default=None, validation_alias=AliasChoices("spec", "payload"))
    """What the task is, as submitted (any JSON; for a parent's tasks, a :class:`coord.wire.Spec`).

    Records written by corral 0.1 stored it as ``payload``; both names are read."""
    attempt: int = 0
    """Claims counted so far against ``max_attempts`` (a ``release`` gives one back; ``retry`` resets)."""
    max_attempts: int = 3
    """Claims allowed before the task goes ``dead``."""
    epoch: int = 0
    """Epoch of the latest claim (0 before the first); a fencing number."""
    timeout: float | None = None
    """Lease length in seconds for claims of this task; None uses the store's default."""
    claim: ClaimInfo | None = None
    """The current claim (only while ``claimed``)."""
    result: Any = None
    """The result recorded by ``complete`` (None when it is in ``result_blob``)."""
    error: str | None = None
    """Why the latest attempt failed, was reclaimed or died."""
    progress: Any = None
    """The latest progress reported by a heartbeat of the current attempt."""
    parent: str | None = None
    """Agent id to push the terminal status to (``{ns}.results.{parent}``)."""
    meta: dict[str, str] = Field(default_factory=dict)
    """Free string metadata (e.g. W3C trace context ``traceparent``)."""
    created_at: AwareDatetime
    """When the task was scheduled."""
    updated_at: AwareDatetime
    """When this revision was written."""
    visible_at: AwareDatetime | None = None
    """While pending: when the task may be claimed (its ``not_before``, or the end of a retry backoff)."""
    priority: Priority = Priority.NORMAL
    """Level within the queue; its notifications go to that level's subjects (docs/tasks.md)."""
    not_before: AwareDatetime | None = None
    """The start asked for at schedule (``not_before``, or ``created_at + delay``); None: at once."""
    delay: float | None = None
    """The delay (seconds) asked for at schedule, when the start was given as one."""
    transition: Transition = Transition.SCHEDULED
    """The operation that wrote this revision."""
    last_worker: str | None = None
    """The worker of the latest claim (kept after the claim ends, for humans)."""
    journal: tuple[JournalEntry, ...] = ()
    """The first and the latest successful transitions, oldest first (see :mod:`coord.tasks.journal`:
    bounded; heartbeats beyond the newest few and entries beyond the bound are dropped and counted)."""
    journal_dropped: int = 0
    """Journal entries dropped so far to keep the journal within its bound."""
    spec_blob: BlobRef | None = None
    """Where the spec is when it was too large for the record (``spec`` is None then; :mod:`coord.blobs`)."""
    result_blob: BlobRef | None = None
    """Where the result is when it was too large for the record (``result`` is None then)."""
    revision: int = Field(default=0, exclude=True)
    """KV revision this record was read at or written as (not stored; 0 if unknown)."""

    @property
    def terminal(self) -> bool:
        """True when the task has ended (succeeded, failed, dead or cancelled)."""
        return self.status in TERMINAL

    def outcome(self) -> Result | None:
        """How the task ended, as a typed :class:`coord.wire.Result`; None while it has not ended.

        The stored ``result`` when it is a valid Result. Otherwise one made from the record: a
        success carrying the stored ``result`` as its ``output``, ``cancelled``, or a failure with
        ``error`` (a substrate fault when the task is ``dead``). ``result`` itself stays the raw JSON.
        """
        if not self.terminal:
            return None
        if self.result is not None:
            try:
                return Result.model_validate(self.result)
            except ValueError:
                pass
        if self.status is TaskStatus.SUCCEEDED:
            return Result.success(output=self.result)
        if self.status is TaskStatus.CANCELLED:
            return Result.failure("cancelled", substrate_fault=False)
        return Result.failure(self.error or str(self.status), substrate_fault=self.status is TaskStatus.DEAD)


class ScheduleRequest(BaseModel):
    """What ``TaskStore.schedule`` needs to create a task; validated before anything touches NATS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: Token
    """The task's id (idempotency key)."""
    queue: Token
    """Queue whose workers may run it."""
    spec: JsonValue = None
    """What the task is: any JSON value (a parent stores a :class:`coord.wire.Spec` here)."""
    max_attempts: int = Field(default=3, ge=1, le=1000, strict=True)
    """Claims allowed before the task goes ``dead`` (1..1000)."""
    timeout: float | None = Field(default=None, gt=0, le=86_400.0)
    """Lease length in seconds (0 < timeout <= 1 day); None uses the store's default."""
    parent: Token | None = None
    """Agent id to push the terminal status to."""
    meta: dict[str, str] = Field(default_factory=dict)
    """Free string metadata (e.g. trace context); not part of the task's identity."""
    priority: Priority = Priority.NORMAL
    """Level within the queue (``high``, ``normal``, ``low``)."""
    not_before: AwareDatetime | None = None
    """Not claimable before this time (timezone required); exclusive with ``delay``."""
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY)
    """Not claimable before this many seconds after the task is created; exclusive with ``not_before``."""

    @model_validator(mode="after")
    def _one_start(self) -> ScheduleRequest:
        if self.not_before is not None and self.delay is not None:
            raise InvalidInput("give not_before or delay, not both")
        return self


@dataclass
class Claim:
    """A worker's handle on a task it claimed: the raw token (never stored) and where the record stands.

    ``heartbeat`` updates ``deadline``, ``revision`` and ``record`` in place (and returns the claim),
    so the next write is one CAS against the revision this worker wrote last.
    """

    task_id: str
    """The claimed task."""
    worker_id: str
    """The worker holding it."""
    claim_id: str
    """Id of this claim."""
    token: str
    """The raw claim token; only its SHA-256 is stored."""
    epoch: int
    """Fencing number of this claim."""
    deadline: datetime
    """When the lease runs out unless extended."""
    revision: int
    """KV revision after this worker's last write."""
    record: TaskRecord
    """The record as of ``revision``."""
    lease: float
    """Lease length in seconds; each heartbeat extends the deadline to now + lease."""


class Notification(BaseModel):
    """Body of a message on ``{ns}.dispatch.{queue}``: "task T is pending at revision R".

    A wake-up hint only: anyone who can publish on the subject can forge one, so a worker claims
    from the record stored in the tasks bucket (``TaskStore.read_many``), never from this message.
    Unknown fields are refused: a notification is checked as strictly as the wire allows, and
    anything else is dead-lettered.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: Token
    """The pending task."""
    revision: int
    """KV revision at which it became pending."""
    epoch: int
    """Its epoch then (the next claim gets ``epoch + 1``)."""
    visible_at: AwareDatetime | None = None
    """Not claimable before this (retry backoff): NAK with the remaining delay."""


class ResultNotice(BaseModel):
    """Core-NATS message pushed to ``{ns}.results.{parent}`` when a task ends: a hint to read the record."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    """The task that ended."""
    status: TaskStatus
    """Its terminal status."""
    revision: int
    """KV revision of the terminal record."""
