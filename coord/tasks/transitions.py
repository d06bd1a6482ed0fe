"""The task state machine as pure functions: current record in, next record out (or a typed error).

Nothing here touches NATS. :class:`coord.tasks.TaskStore` applies one of these to the record it read
(or last wrote) and writes the result with a single compare-and-set on the record's revision, so a
transition is valid against exactly the state it replaces.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from coord.backoff import Backoff
from coord.blobs import BlobRef, blob_digest, value_bytes
from coord.errors import Conflict, InvalidTransition, NotYetVisible, StaleClaim
from coord.tasks.models import ClaimInfo, ScheduleRequest, TaskRecord, TaskStatus, Transition

__all__ = [
    "Backoff",
    "cancel",
    "check_claim",
    "claim",
    "complete",
    "fail",
    "heartbeat",
    "reclaim",
    "redefinition",
    "release",
    "retry",
    "schedule",
    "token_digest",
    "unfit",
]


IDENTITY = ("queue", "spec", "max_attempts", "timeout", "parent", "priority")
"""The fields that define a task: scheduling it again must repeat them and its start (``meta`` may differ)."""


def schedule(request: ScheduleRequest, *, now: datetime) -> TaskRecord:
    """— → pending: the first record of a task; a delayed one is not claimable before its ``visible_at``."""
    start = request.not_before
    if request.delay is not None:
        start = now + timedelta(seconds=request.delay)
    return TaskRecord(
        task_id=request.task_id,
        queue=request.queue,
        status=TaskStatus.PENDING,
        spec=request.spec,
        max_attempts=request.max_attempts,
        timeout=request.timeout,
        parent=request.parent,
        meta=request.meta,
        priority=request.priority,
        not_before=start,
        delay=request.delay,
        visible_at=start,
        created_at=now,
        updated_at=now,
        transition=Transition.SCHEDULED,
    )


def _start(task: TaskRecord | ScheduleRequest) -> str:
    """The start a task was asked for, as compared between a task and a repeated schedule of it."""
    if task.delay is not None:
        return f"delay {task.delay:g}s"
    return "at once" if task.not_before is None else f"not_before {task.not_before.isoformat()}"


def redefinition(existing: TaskRecord, request: ScheduleRequest) -> list[str]:
    """How ``request`` differs from the task ``existing`` defines (empty: an idempotent repeat).

    The start counts as asked for: the same ``delay`` again (not the same resulting time), or the
    same ``not_before``; anything else, a start added or dropped included, is a different task.
    """
    differences = [
        f"{name}: existing {getattr(existing, name)!r}, requested {getattr(request, name)!r}"
        for name in IDENTITY
        if name != "spec" and getattr(existing, name) != getattr(request, name)
    ]
    if existing.spec_blob is not None:
        data = value_bytes(request.spec)
        if (len(data), blob_digest(data)) != (existing.spec_blob.size, existing.spec_blob.digest):
            differences.insert(
                0,
                f"spec: existing {existing.spec_blob.size} bytes ({existing.spec_blob.digest}), "
                f"requested {len(data)} bytes ({blob_digest(data)})",
            )
    elif existing.spec != request.spec:
        differences.insert(0, f"spec: existing {existing.spec!r}, requested {request.spec!r}")
    if _start(existing) != _start(request):
        differences.append(f"start: existing {_start(existing)}, requested {_start(request)}")
    return differences


def token_digest(token: str) -> str:
    """Hex SHA-256 of a raw claim token (what the record stores)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _claimed_by(record: TaskRecord, claim_id: str, token: str | None) -> bool:
    current = record.claim
    if record.status is not TaskStatus.CLAIMED or current is None or current.claim_id != claim_id:
        return False
    return token is None or hmac.compare_digest(current.token_sha256, token_digest(token))


def check_claim(record: TaskRecord, claim_id: str, token: str | None) -> None:
    """Raise :class:`StaleClaim` unless ``claim_id`` (and ``token``, if given) is the task's current claim."""
    if _claimed_by(record, claim_id, token):
        return
    if record.claim is not None and record.claim.claim_id == claim_id:
        raise StaleClaim(f"task {record.task_id!r}: the token presented for claim {claim_id} does not match")
    holder = f"claimed by {record.claim.worker_id} at epoch {record.epoch}" if record.claim else record.status.value
    why = f" ({record.transition.value}: {record.error})" if record.error else f" ({record.transition.value})"
    raise StaleClaim(f"task {record.task_id!r}: claim {claim_id} is no longer current; the task is {holder}{why}")


def claim(
    record: TaskRecord,
    *,
    worker_id: str,
    claim_id: str,
    token_sha256: str,
    lease: float,
    now: datetime,
    visibility_tolerance: float = 0.0,
) -> TaskRecord:
    """pending → claimed: the next epoch, one more attempt, a lease until ``now + lease`` (the
    progress and result of an earlier attempt are cleared).

    Raises :class:`Conflict` when someone else holds the task, :class:`InvalidTransition` when it has
    ended or its retry backoff has not run out.
    """
    if record.status is TaskStatus.CLAIMED:
        holder = record.claim.worker_id if record.claim else "?"
        raise Conflict(f"task {record.task_id!r} is already claimed by {holder} (epoch {record.epoch})")
    if record.status is not TaskStatus.PENDING:
        raise InvalidTransition(f"task {record.task_id!r} is {record.status.value}; only a pending task can be claimed")
    if record.visible_at is not None and record.visible_at - timedelta(seconds=visibility_tolerance) > now:
        raise NotYetVisible(
            f"task {record.task_id!r} is not due yet (delayed, or backing off after a failure); it may be "
            f"claimed from {record.visible_at.isoformat()}",
            record.visible_at,
        )
    if record.attempt >= record.max_attempts:  # cannot happen through the store; refuse rather than loop
        raise InvalidTransition(f"task {record.task_id!r} has spent its {record.max_attempts} attempts")
    epoch = record.epoch + 1
    info = ClaimInfo(
        worker_id=worker_id,
        claim_id=claim_id,
        token_sha256=token_sha256,
        epoch=epoch,
        claimed_at=now,
        deadline=now + timedelta(seconds=lease),
    )
    return record.model_copy(
        update={
            "status": TaskStatus.CLAIMED,
            "attempt": record.attempt + 1,
            "epoch": epoch,
            "claim": info,
            "progress": None,
            "result": None,
            "result_blob": None,
            "visible_at": None,
            "updated_at": now,
            "transition": Transition.CLAIMED,
            "last_worker": worker_id,
        }
    )


def heartbeat(
    record: TaskRecord, *, claim_id: str, token: str, lease: float, progress: Any, now: datetime
) -> TaskRecord:
    """claimed → claimed: extend the lease to ``now + lease`` and record ``progress`` (if not None)."""
    check_claim(record, claim_id, token)
    assert record.claim is not None
    update: dict[str, Any] = {
        "claim": record.claim.model_copy(update={"deadline": now + timedelta(seconds=lease)}),
        "updated_at": now,
        "transition": Transition.HEARTBEAT,
    }
    if progress is not None:
        update["progress"] = progress
    return record.model_copy(update=update)


def _end_claim(record: TaskRecord, now: datetime, transition: Transition, **update: Any) -> TaskRecord:
    return record.model_copy(update={"claim": None, "updated_at": now, "transition": transition, **update})


def complete(
    record: TaskRecord,
    *,
    claim_id: str,
    token: str,
    result: Any,
    now: datetime,
    result_blob: BlobRef | None = None,
) -> TaskRecord:
    """claimed → succeeded, recording ``result`` (or the blob holding it: ``result_blob``; once: the
    claim ends with it)."""
    check_claim(record, claim_id, token)
    return _end_claim(
        record,
        now,
        Transition.COMPLETED,
        status=TaskStatus.SUCCEEDED,
        result=result,
        result_blob=result_blob,
        error=None,
        visible_at=None,
    )


def fail(
    record: TaskRecord,
    *,
    claim_id: str,
    token: str,
    error: str,
    retry: bool,
    backoff: Backoff,
    now: datetime,
    result: Any = None,
    result_blob: BlobRef | None = None,
) -> TaskRecord:
    """claimed → pending after a backoff (``visible_at``), or ``dead`` when attempts are spent, or
    ``failed`` (no retry) when ``retry`` is False. ``result`` (e.g. a structured failure report, or
    the blob holding it: ``result_blob``) is recorded as the attempt's result."""
    check_claim(record, claim_id, token)
    if not retry:
        status, visible = TaskStatus.FAILED, None
    elif record.attempt >= record.max_attempts:
        status, visible = TaskStatus.DEAD, None
    else:
        status, visible = TaskStatus.PENDING, now + timedelta(seconds=backoff.delay(record.attempt))
    return _end_claim(
        record,
        now,
        Transition.FAILED,
        status=status,
        error=error,
        result=result,
        result_blob=result_blob,
        visible_at=visible,
    )


def release(record: TaskRecord, *, claim_id: str, token: str, now: datetime) -> TaskRecord:
    """claimed → pending, giving the attempt back (a voluntary hand-back, e.g. on shutdown)."""
    check_claim(record, claim_id, token)
    return _end_claim(
        record,
        now,
        Transition.RELEASED,
        status=TaskStatus.PENDING,
        attempt=max(0, record.attempt - 1),
        visible_at=None,
    )


def reclaim(
    record: TaskRecord, *, expected_claim_id: str, reason: str, now: datetime, overdue_only: bool = False
) -> TaskRecord:
    """claimed → pending (the attempt stays counted), or ``dead`` when attempts are spent.

    Raises :class:`StaleClaim` when ``expected_claim_id`` is not the current claim any more, and,
    with ``overdue_only``, when the claim's deadline (as this record has it) has not passed: a
    reclaim for a lapsed lease is decided on the record it replaces, never on an older view of it.
    """
    check_claim(record, expected_claim_id, None)
    assert record.claim is not None
    if overdue_only and record.claim.deadline > now:
        raise StaleClaim(
            f"task {record.task_id!r}: claim {expected_claim_id} is not overdue (its lease runs until "
            f"{record.claim.deadline.isoformat()})"
        )
    status = TaskStatus.DEAD if record.attempt >= record.max_attempts else TaskStatus.PENDING
    return _end_claim(record, now, Transition.RECLAIMED, status=status, error=reason, visible_at=None)


def cancel(record: TaskRecord, *, now: datetime) -> TaskRecord | None:
    """pending | claimed → cancelled; None when already cancelled (nothing to write)."""
    if record.status is TaskStatus.CANCELLED:
        return None
    if record.status.terminal:
        raise InvalidTransition(f"task {record.task_id!r} is {record.status.value}; it cannot be cancelled")
    return _end_claim(record, now, Transition.CANCELLED, status=TaskStatus.CANCELLED, visible_at=None)


def retry(record: TaskRecord, *, now: datetime) -> TaskRecord:
    """dead | failed → pending with a fresh set of attempts (by hand)."""
    if record.status not in (TaskStatus.DEAD, TaskStatus.FAILED):
        raise InvalidTransition(
            f"task {record.task_id!r} is {record.status.value}; only a dead or failed task can be retried"
        )
    return _end_claim(
        record,
        now,
        Transition.RETRIED,
        status=TaskStatus.PENDING,
        attempt=0,
        result=None,
        result_blob=None,
        progress=None,
        visible_at=None,
    )


def unfit(record: TaskRecord, *, reason: str, now: datetime) -> TaskRecord:
    """Any status → ``dead`` with ``reason``, for a transition whose record would not fit a message
    (permanent: a claim or reclaim of that record can never fit). The claim, the result and the
    progress are dropped; the error is the reason (the caller cuts it to fit)."""
    return _end_claim(
        record,
        now,
        Transition.FAILED,
        status=TaskStatus.DEAD,
        error=reason,
        result=None,
        result_blob=None,
        progress=None,
        visible_at=None,
    )
