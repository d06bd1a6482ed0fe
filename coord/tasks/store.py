"""The task store: every task transition as one compare-and-set on the record in ``{ns}_tasks``.

Guarantees:

* The record under the task's id is the single source of truth. A transition reads (or reuses the
  record it wrote last), applies a pure function from :mod:`coord.tasks.transitions`, and writes the
  result with ``Nats-Expected-Last-Subject-Sequence`` = the revision it started from. A lost race is
  retried against the fresh record only while the transition is still valid there (bounded), so
  no interleaving records a result twice or accepts one from a claim that is no longer current.
* ``epoch`` increases with every claim; the raw claim token goes only to the worker, the record
  keeps its SHA-256 (compared in constant time).
* Side effects follow a successful CAS only: a journal entry on ``{ns}.journal.{task}`` (deduped by
  ``{task}:{revision}``), a notification on ``{ns}.dispatch.{queue}`` for every transition into
  pending (``Nats-Msg-Id`` = ``{task}:{epoch}:{revision}``, never repeated), and a
  :class:`ResultNotice` to the parent for every terminal transition.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import nats.errors
import nats.js.errors
from opentelemetry import trace
from pydantic import ValidationError

from coord import metrics, tracing
from coord.errors import Conflict, CorralError, InvalidInput, InvalidTransition, NotFound, PayloadTooLarge, TaskExists
from coord.ids import new_id, validate_id
from coord.provision import kv_stream_name
from coord.retry import retry_transient
from coord.tasks import transitions
from coord.tasks.journal import JournalWriter, read_journal
from coord.tasks.models import (
    Claim,
    JournalEntry,
    ResultNotice,
    ScheduleRequest,
    TaskRecord,
    TaskStatus,
    Transition,
)
from coord.tasks.transitions import Backoff
from coord.tasks.watch import INDEX_HEADER, TaskIndex, TaskWatch, index_header

if TYPE_CHECKING:
    from coord.connection import Coord

__all__ = ["DEFAULT_LEASE", "TaskStore"]

log = logging.getLogger("corral.tasks")

DEFAULT_LEASE = 30.0
"""Lease length (seconds) of a claim when neither the claim nor the task names one."""

MAX_ERROR_CHARS = 16_384
"""``error`` texts are cut to this many characters (the record must stay small)."""

_HEADER_ROOM = 1024  # bytes kept free below max_payload for the headers of journal/notification messages
_WRONG_LAST = (10071, 10164)  # JSStreamWrongLastSequence{ErrF,ConstantErr}
_KV_OP = "KV-Operation"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_MSG_ID = "Nats-Msg-Id"
_MARKER = "Nats-Marker-Reason"
_TRANSIENT = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _json_check(value: Any, field: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"{field} must be a JSON value (dict, list, str, number, bool or None): {err}") from None


def _status(value: TaskStatus | str | None) -> TaskStatus | None:
    if value is None or isinstance(value, TaskStatus):
        return value
    try:
        return TaskStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise InvalidInput(f"status {value!r} is not a task status (one of: {allowed})") from None


def _positive(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86_400:
        raise InvalidInput(f"{field} must be a number of seconds in (0, 86400], got {value!r}")
    return float(value)


class _Raw:
    """One KV entry as read: value bytes (None for a delete/expiry marker) and revision."""

    __slots__ = ("data", "revision")

    def __init__(self, data: bytes | None, revision: int) -> None:
        self.data = data
        self.revision = revision


class TaskStore:
    """Tasks and claims in one namespace (``coord.tasks``). See the module docstring for guarantees.

    ``default_lease`` is the lease (seconds) when neither ``claim(lease=)`` nor the task's
    ``timeout`` names one; ``backoff`` spaces retries after ``fail``; ``visibility_tolerance``
    accepts a claim that many seconds before ``visible_at`` (clock skew between hosts);
    ``max_cas_attempts`` bounds the retries of a transition that keeps losing races;
    ``inline_limit`` is the largest record (bytes) copied into its notification so that a claim
    needs no read; ``io_patience`` is how long a write or read keeps retrying through a server
    restart or leader election before giving up.
    """

    def __init__(
        self,
        coord: Coord,
        *,
        default_lease: float = DEFAULT_LEASE,
        backoff: Backoff | None = None,
        visibility_tolerance: float = 0.25,
        max_cas_attempts: int = 10,
        inline_limit: int = 32 * 1024,
        io_patience: float = 15.0,
    ) -> None:
        self.coord = coord
        """The connection this store works through."""
        self.default_lease = _positive(default_lease, "default_lease") or DEFAULT_LEASE
        """Lease (seconds) used when neither the claim nor the task names one."""
        self.backoff = backoff or Backoff()
        """Retry delays after ``fail``."""
        self.visibility_tolerance = visibility_tolerance
        """Seconds before ``visible_at`` from which a claim is accepted."""
        self.max_cas_attempts = max(1, max_cas_attempts)
        """Writes a transition attempts before giving up with :class:`Conflict`."""
        self.inline_limit = inline_limit
        """Records up to this many bytes travel inside their notification."""
        self.io_patience = io_patience
        """Seconds an I/O call keeps retrying through server unavailability."""
        names = coord.names
        self._names = names
        self._stream = kv_stream_name(names.tasks_bucket)
        self._prefix = f"$KV.{names.tasks_bucket}."
        self._index: TaskIndex | None = None
        self._journal = JournalWriter(coord)
        self.last_revision = 0
        """Highest KV revision this store has written (an index waits for it: read-your-writes)."""

    # --- reading ---------------------------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord:
        """The current record of ``task_id``; :class:`NotFound` if there is none."""
        validate_id(task_id, "task_id")
        return await self._read(task_id)

    async def iter(
        self, *, queue: str | None = None, status: TaskStatus | str | None = None
    ) -> AsyncIterator[TaskRecord]:
        """Every task (optionally of one ``queue`` and/or ``status``), each at its current revision.

        With a running :meth:`index` this reads only the matching records (located in memory);
        otherwise it is one ordered pass over the bucket (every record is transferred once).
        """
        if queue is not None:
            validate_id(queue, "queue")
        wanted = _status(status)
        index = self._index
        if index is not None and index.ready:
            await index.wait_for(self.last_revision)
            ids = index.ids(queue=queue, status=wanted)
            for start in range(0, len(ids), 256):
                chunk = await asyncio.gather(*(self._read_or_none(t) for t in ids[start : start + 256]))
                for record in chunk:
                    if record is not None and _matches(record, queue, wanted):
                        yield record
            return
        async with TaskWatch(self, snapshot_only=True) as scan:
            async for record in scan:
                if record is not None and _matches(record, queue, wanted):
                    yield record

    async def list(
        self, *, queue: str | None = None, status: TaskStatus | str | None = None
    ) -> builtins.list[TaskRecord]:
        """Every task (optionally of one ``queue`` and/or ``status``); see :meth:`iter` for the cost."""
        return [record async for record in self.iter(queue=queue, status=status)]

    def watch(self) -> TaskWatch:
        """Updates of every task: the current records first, then ``None`` once, then live changes.

        Use ``async with store.watch() as updates: async for record in updates: ...``.
        """
        return TaskWatch(self)

    def index(self) -> TaskIndex:
        """A live in-memory index of all tasks by queue, status and worker (``async with``).

        While it runs, :meth:`list` and :meth:`iter` of this store use it instead of scanning.
        """
        return TaskIndex(self)

    async def journal(self, task_id: str) -> builtins.list[JournalEntry]:
        """The task's successful transitions in revision order (:class:`NotFound` if the task is unknown).

        Journal entries are published after each CAS without waiting; if the entry of the current
        revision is missing (its writer crashed in between, or it is still in flight) it is
        republished here, deduplicated by ``{task}:{revision}``.
        """
        validate_id(task_id, "task_id")
        await self._journal.replay_if_reconnected()
        record = await self._read(task_id)
        entries = await read_journal(self.coord, task_id)
        if not entries or entries[-1].revision < record.revision:
            await self._publish_journal(record, self._encode(record), wait=True)
            entries.append(JournalEntry.of(record))
        return entries

    # --- scheduling ------------------------------------------------------------------------------
    async def schedule(
        self,
        task_id: str,
        *,
        queue: str,
        payload: Any,
        max_attempts: int = 3,
        timeout: float | None = None,  # the task's lease length, not a deadline for this call
        parent: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> TaskRecord:
        """Create ``task_id`` as pending on ``queue`` and notify its workers; idempotent by task id.

        Scheduling an existing task with the same definition (queue, payload, max_attempts, timeout,
        parent) returns the existing record (re-notifying it if it is pending); a different
        definition raises :class:`TaskExists`. Raises :class:`~coord.errors.InvalidId` or a pydantic
        ``ValidationError`` for bad arguments and :class:`PayloadTooLarge` beyond the server's max
        payload, in all cases before anything is written.
        """
        validate_id(task_id, "task_id")
        validate_id(queue, "queue")
        request = ScheduleRequest(
            task_id=task_id,
            queue=queue,
            payload=payload,
            max_attempts=max_attempts,
            timeout=timeout,
            parent=parent,
            meta=dict(meta or {}),
        )
        return await self._schedule(request)

    async def schedule_many(self, requests: Sequence[ScheduleRequest]) -> builtins.list[TaskRecord]:
        """:meth:`schedule` for many tasks with pipelined writes; records in the order of ``requests``.

        Every request is validated (and every record sized) before any is written.
        """
        checked = [r if isinstance(r, ScheduleRequest) else ScheduleRequest.model_validate(r) for r in requests]
        now = _now()
        records = [self._new_record(r, now) for r in checked]
        prepared = [(r, record, self._encode(record)) for r, record in zip(checked, records, strict=True)]
        return list(await asyncio.gather(*(self._schedule(r, record, data) for r, record, data in prepared)))

    def _new_record(self, request: ScheduleRequest, now: datetime) -> TaskRecord:
        return TaskRecord(
            task_id=request.task_id,
            queue=request.queue,
            status=TaskStatus.PENDING,
            payload=request.payload,
            max_attempts=request.max_attempts,
            timeout=request.timeout,
            parent=request.parent,
            meta=request.meta,
            created_at=now,
            updated_at=now,
            transition=Transition.SCHEDULED,
        )

    async def _schedule(
        self, request: ScheduleRequest, record: TaskRecord | None = None, data: bytes | None = None
    ) -> TaskRecord:
        if record is None or data is None:
            record = self._new_record(request, _now())
            data = self._encode(record)
        revision = await self._write(record, data, 0)
        if revision is None:
            existing = await self._read_raw(request.task_id)
            if existing is not None and existing.data is None:  # a deleted key: create over its marker
                revision = await self._write(record, data, existing.revision)
            if revision is None:
                return await self._existing(request)
        created = record.model_copy(update={"revision": revision})
        self._written(revision)
        await self._publish_journal(created, data)
        await self._notify(created, data)
        return created

    async def _existing(self, request: ScheduleRequest) -> TaskRecord:
        existing = await self._read(request.task_id)
        differences = [
            f"{name}: existing {getattr(existing, name)!r}, requested {getattr(request, name)!r}"
            for name in ("queue", "payload", "max_attempts", "timeout", "parent")
            if getattr(existing, name) != getattr(request, name)
        ]
        if differences:
            raise TaskExists(
                f"task {request.task_id!r} already exists with a different definition ({'; '.join(differences)})"
            )
        if existing.status is TaskStatus.PENDING:
            await self._notify(existing, None)  # heals a notification lost by an earlier attempt (deduped)
        return existing

    # --- claims ----------------------------------------------------------------------------------
    async def claim(
        self,
        task_id: str,
        worker_id: str,
        *,
        revision: int | None = None,
        lease: float | None = None,
        record: TaskRecord | None = None,
    ) -> Claim:
        """Claim pending ``task_id`` for ``worker_id``: one CAS from pending to claimed.

        ``revision`` is the revision named by the notification; with ``record`` (the notification's
        inlined record at that revision) the claim is a single CAS and no read, falling back to a read
        and a CAS when the record has moved on. ``lease`` (seconds) overrides the task's timeout and
        the store's default. Raises :class:`Conflict` when another worker holds the task,
        :class:`InvalidTransition` when it has ended or is backing off, :class:`NotFound`.
        """
        validate_id(task_id, "task_id")
        validate_id(worker_id, "worker_id")
        lease = _positive(lease, "lease")
        first = None
        if record is not None:
            if record.task_id != task_id:
                raise InvalidInput(f"record is of task {record.task_id!r}, not {task_id!r}")
            at = record.revision or revision or 0
            if revision is not None and at != revision:
                raise InvalidInput(f"record is at revision {record.revision}, not {revision}")
            if at:
                first = record if record.revision == at else record.model_copy(update={"revision": at})
        token = secrets.token_urlsafe(32)
        claim_id = new_id("c")
        digest = transitions.token_digest(token)
        used: list[float] = []

        def step(current: TaskRecord) -> TaskRecord:
            length = lease or current.timeout or self.default_lease
            used.append(length)
            return transitions.claim(
                current,
                worker_id=worker_id,
                claim_id=claim_id,
                token_sha256=digest,
                lease=length,
                now=_now(),
                visibility_tolerance=self.visibility_tolerance,
            )

        claimed = await self._transition(task_id, step, first)
        assert claimed.claim is not None
        return Claim(
            task_id=task_id,
            worker_id=worker_id,
            claim_id=claim_id,
            token=token,
            epoch=claimed.epoch,
            deadline=claimed.claim.deadline,
            revision=claimed.revision,
            record=claimed,
            lease=used[-1],
        )

    async def heartbeat(self, claim: Claim, progress: Any = None) -> Claim:
        """Extend ``claim``'s lease to now + lease and record ``progress`` (if not None).

        One CAS against the revision this worker wrote last; :class:`StaleClaim` if the claim is no
        longer current. Updates ``claim`` in place and returns it.
        """
        if progress is not None:
            _json_check(progress, "progress")

        def step(current: TaskRecord) -> TaskRecord:
            return transitions.heartbeat(
                current, claim_id=claim.claim_id, token=claim.token, lease=claim.lease, progress=progress, now=_now()
            )

        record = await self._transition(claim.task_id, step, claim.record)
        assert record.claim is not None
        claim.deadline = record.claim.deadline
        self._advance(claim, record)
        return claim

    async def complete(self, claim: Claim, result: Any) -> TaskRecord:
        """Record ``result`` and mark the task succeeded, if ``claim`` is still current (else :class:`StaleClaim`).

        A result too large for the record raises :class:`PayloadTooLarge` and writes nothing (the
        claim stays current, so the worker can still ``fail`` the task).
        """
        _json_check(result, "result")
        record = await self._transition(
            claim.task_id,
            lambda current: transitions.complete(
                current, claim_id=claim.claim_id, token=claim.token, result=result, now=_now()
            ),
            claim.record,
        )
        self._advance(claim, record)
        return record

    async def fail(self, claim: Claim, error: str, *, retry: bool = True, result: Any = None) -> TaskRecord:
        """Record a failed attempt of ``claim`` (if still current, else :class:`StaleClaim`).

        With ``retry`` the task goes back to pending after a jittered exponential backoff
        (``visible_at``), or ``dead`` when ``max_attempts`` claims are spent; without, it is
        ``failed`` for good (until a manual :meth:`retry`). ``result`` (any JSON, e.g. a structured
        failure report) is stored as the attempt's result; the next claim clears it.
        """
        if not isinstance(error, str):
            raise InvalidInput(f"error must be a string, got {type(error).__name__}")
        if result is not None:
            _json_check(result, "result")
        error = error[:MAX_ERROR_CHARS]
        record = await self._transition(
            claim.task_id,
            lambda current: transitions.fail(
                current,
                claim_id=claim.claim_id,
                token=claim.token,
                error=error,
                retry=retry,
                backoff=self.backoff,
                now=_now(),
                result=result,
            ),
            claim.record,
        )
        self._advance(claim, record)
        return record

    async def release(self, claim: Claim) -> TaskRecord:
        """Give ``claim`` back voluntarily (e.g. on shutdown): the task is pending again and the
        attempt is not counted. :class:`StaleClaim` if the claim is no longer current."""
        record = await self._transition(
            claim.task_id,
            lambda current: transitions.release(current, claim_id=claim.claim_id, token=claim.token, now=_now()),
            claim.record,
        )
        self._advance(claim, record)
        return record

    async def reclaim(
        self, task_id: str, expected_claim_id: str, *, reason: str = "reclaimed", meta: Mapping[str, str] | None = None
    ) -> TaskRecord:
        """Take the task away from claim ``expected_claim_id``: pending again (the attempt counts), or
        ``dead`` when its attempts are spent. :class:`StaleClaim` if that claim is not current any more
        (completed, failed, reclaimed by someone else). ``meta`` entries (e.g. the reclaim span's trace
        context) are merged into the record's meta in the same compare-and-set."""
        validate_id(task_id, "task_id")
        if not isinstance(expected_claim_id, str) or not isinstance(reason, str):
            raise InvalidInput("expected_claim_id and reason must be strings")
        reason = reason[:MAX_ERROR_CHARS]
        extra = dict(meta or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise InvalidInput("meta must map strings to strings")

        def step(current: TaskRecord) -> TaskRecord:
            new = transitions.reclaim(current, expected_claim_id=expected_claim_id, reason=reason, now=_now())
            return new.model_copy(update={"meta": {**new.meta, **extra}}) if extra else new

        return await self._transition(task_id, step, None)

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a pending or claimed task (its claim, if any, becomes stale); a no-op if already
        cancelled; :class:`InvalidTransition` if it has otherwise ended."""
        validate_id(task_id, "task_id")
        return await self._transition(task_id, lambda current: transitions.cancel(current, now=_now()), None)

    async def retry(self, task_id: str) -> TaskRecord:
        """Put a dead or failed task back to pending with a fresh set of attempts (by hand);
        :class:`InvalidTransition` for any other status."""
        validate_id(task_id, "task_id")
        return await self._transition(task_id, lambda current: transitions.retry(current, now=_now()), None)

    async def notify(self, record: TaskRecord, *, force: bool = False) -> None:
        """(Re)publish the notification of pending ``record`` (e.g. from a sweep).

        Deduplicated against the original notification of the same revision within the dispatch
        stream's duplicate window, so calling it again is harmless; ``force`` publishes anyway.
        :class:`InvalidTransition` if ``record`` is not pending.
        """
        if record.status is not TaskStatus.PENDING:
            raise InvalidTransition(
                f"task {record.task_id!r} is {record.status.value}; only pending tasks are notified"
            )
        await self._notify(record, None, force=force)

    # --- the transition engine -------------------------------------------------------------------
    async def _transition(
        self, task_id: str, step: Callable[[TaskRecord], TaskRecord | None], first: TaskRecord | None
    ) -> TaskRecord:
        """Apply ``step`` to the current record and write it with one CAS; on a lost race re-read and
        retry while ``step`` still accepts the record (it raises when the transition became invalid)."""
        current = first if first is not None else await self._read(task_id)
        for attempt in range(self.max_cas_attempts):
            new = step(current)
            if new is None:
                return current
            data = self._encode(new)
            revision = await self._write(new, data, current.revision)
            if revision is not None:
                written = new.model_copy(update={"revision": revision})
                self._written(revision)
                await self._after(current, written, data)
                return written
            trace.get_current_span().add_event(
                tracing.EVENT_CAS_RETRY, {"key": task_id, "revision": current.revision, "attempt": attempt + 1}
            )
            metrics.instruments().cas_retries.add(1, metrics.instruments().attrs(current.queue))
            if attempt:  # repeated losses: step aside briefly so a busy writer cannot starve us
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
            current = await self._read(task_id)
        raise Conflict(f"task {task_id!r}: gave up after {self.max_cas_attempts} conflicting writes")

    async def _after(self, before: TaskRecord, record: TaskRecord, data: bytes) -> None:
        """Side effects of a successful CAS: journal, notification into pending, result push."""
        await self._publish_journal(record, data)
        if record.status is TaskStatus.PENDING:
            try:
                await self._notify(record, data)
            except Exception as err:  # the transition happened; a sweep re-notifies pending tasks
                log.warning("task %s: notification after %s failed: %s", record.task_id, record.transition, err)
        elif record.terminal and record.parent and not before.terminal:
            notice = ResultNotice(task_id=record.task_id, status=record.status, revision=record.revision)
            body = notice.model_dump_json(exclude={"record"}).encode()
            if len(data) <= self.inline_limit:
                body = body[:-1] + b',"record":' + data + b"}"
            try:
                await self.coord.nc.publish(
                    self._names.results_subject(record.parent), body, headers=tracing.inject() or None
                )
            except Exception as err:
                log.warning("task %s: result push to %s failed: %s", record.task_id, record.parent, err)

    def _advance(self, claim: Claim, record: TaskRecord) -> None:
        claim.revision = record.revision
        claim.record = record

    def _written(self, revision: int) -> None:
        if revision > self.last_revision:
            self.last_revision = revision

    # --- encoding --------------------------------------------------------------------------------
    def _encode(self, record: TaskRecord) -> bytes:
        data = record.model_dump_json().encode()
        limit = self.coord.nc.max_payload - _HEADER_ROOM
        if len(data) > limit:
            raise PayloadTooLarge(
                f"task {record.task_id!r}: the record would be {len(data)} bytes; the server accepts at most "
                f"{limit} (max_payload {self.coord.nc.max_payload} minus header room). Keep payload and "
                f"result small and put large data elsewhere (e.g. an object store) with a reference."
            )
        return data

    def _decode(self, task_id: str, raw: _Raw) -> TaskRecord:
        assert raw.data is not None
        try:
            return TaskRecord.model_validate_json(raw.data).model_copy(update={"revision": raw.revision})
        except ValidationError as err:
            raise CorralError(
                f"task {task_id!r}: revision {raw.revision} of {self._names.tasks_bucket} is not a task record "
                f"({err.error_count()} problems, first: {err.errors()[0]['msg']})"
            ) from None

    # --- NATS I/O --------------------------------------------------------------------------------
    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent call, retrying through server unavailability for ``io_patience`` seconds."""
        return await retry_transient(call, nc=self.coord.nc, within=self.io_patience, what=what)

    async def _read_raw(self, task_id: str) -> _Raw | None:
        subject = self._prefix + task_id

        async def call() -> _Raw | None:
            try:
                msg = await self.coord.js.get_msg(self._stream, subject=subject, direct=True)
            except nats.js.errors.NotFoundError:
                return None
            headers = msg.headers or {}
            if headers.get(_KV_OP) or headers.get(_MARKER):
                return _Raw(None, msg.seq or 0)
            return _Raw(msg.data or b"", msg.seq or 0)

        return await self._patiently(f"read {task_id}", call)

    async def _read_or_none(self, task_id: str) -> TaskRecord | None:
        raw = await self._read_raw(task_id)
        if raw is None or raw.data is None:
            return None
        return self._decode(task_id, raw)

    async def _read(self, task_id: str) -> TaskRecord:
        record = await self._read_or_none(task_id)
        if record is None:
            raise NotFound(f"task {task_id!r} does not exist in namespace {self.coord.namespace!r}")
        return record

    async def _write(self, record: TaskRecord, data: bytes, last: int) -> int | None:
        """CAS ``data`` (the encoded ``record``) over revision ``last`` (0: the key must not exist).

        Returns the new revision, or None when the key is not at ``last``. A write whose outcome is
        unknown (timeout, server gone) is resolved by reading the key: our exact bytes there mean it
        landed. Every write carries the record's index summary in a header, so an index can follow
        the bucket from headers alone.
        """
        task_id = record.task_id
        subject = self._prefix + task_id
        headers = {_EXPECTED_LAST: str(last), INDEX_HEADER: index_header(record)}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.io_patience
        pause = 0.05
        uncertain = False  # an earlier attempt may have landed without us hearing back
        while True:
            try:
                ack = await self.coord.js.publish(subject, data, headers=dict(headers))
                return ack.seq
            except nats.js.errors.APIError as err:
                if err.err_code in _WRONG_LAST:
                    return await self._landed(task_id, data) if uncertain else None
                if err.code != 503:
                    raise
                failure: Exception = err
            except _TRANSIENT as err:
                failure = err
            uncertain = True
            if loop.time() + pause > deadline:
                raise failure
            log.debug("write %s: %s; retrying in %.2fs", task_id, failure, pause)
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)
            try:
                raw = await self._read_raw(task_id)
            except Exception:
                continue  # still unreachable: write again (a wrong-last answer is then checked above)
            if raw is not None and raw.data == data:
                return raw.revision
            if (raw.revision if raw is not None else 0) != last:
                return None

    async def _landed(self, task_id: str, data: bytes) -> int | None:
        """The revision at which ``data`` is the key's current value, or None if it is not."""
        raw = await self._read_raw(task_id)
        return raw.revision if raw is not None and raw.data == data else None

    async def _publish_journal(self, record: TaskRecord, data: bytes, *, wait: bool = False) -> None:
        try:
            if wait:
                await self._patiently("journal", lambda: self._journal.publish_acked(record, data))
            else:
                await self._journal.publish(record, data)
        except Exception as err:
            log.warning("task %s: journal entry for revision %d not written: %s", record.task_id, record.revision, err)

    async def _notify(self, record: TaskRecord, data: bytes | None, *, force: bool = False) -> None:
        head: dict[str, Any] = {
            "task_id": record.task_id,
            "revision": record.revision,
            "epoch": record.epoch,
            "visible_at": record.visible_at.isoformat() if record.visible_at else None,
        }
        if data is None:
            data = record.model_dump_json().encode()
        body = json.dumps(head, separators=(",", ":")).encode()
        if len(data) <= self.inline_limit:
            body = body[:-1] + b',"record":' + data + b"}"
        msg_id = f"{record.task_id}:{record.epoch}:{record.revision}"
        if force:
            msg_id += f":{secrets.token_hex(4)}"
        headers = tracing.inject({_MSG_ID: msg_id})
        for key in ("traceparent", "tracestate"):
            if key in record.meta and key not in headers:
                headers[key] = record.meta[key]
        subject = self._names.dispatch_subject(record.queue)
        await self._patiently("notify", lambda: self.coord.js.publish(subject, body, headers=dict(headers)))


def _matches(record: TaskRecord, queue: str | None, status: TaskStatus | None) -> bool:
    return (queue is None or record.queue == queue) and (status is None or record.status is status)
