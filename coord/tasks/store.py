"""The task store: every task transition as one compare-and-set on the record in ``{ns}_tasks``.

Guarantees:

* The record under the task's id is the single source of truth. A transition reads (or reuses the record it
  wrote last), applies a pure function from :mod:`coord.tasks.transitions`, and writes the result as a
  compare-and-set on the revision it started from (:mod:`coord.tasks.engine`). A lost race is retried against
  the fresh record only while the transition is still valid there (bounded), so no interleaving records a
  result twice or accepts one from a claim that is no longer current.
* ``epoch`` increases with every claim; the raw claim token goes only to the worker, the record keeps its
  SHA-256 (compared in constant time).
* Every write appends its transition to the record's journal (:mod:`coord.tasks.journal`) in the same CAS.
  Side effects follow a successful CAS only (:class:`coord.tasks.effects.TaskEffects`): a notification for
  every transition into pending (on its priority's subject), a result push for every terminal one.
* One size rule (:mod:`coord.tasks.size`): a task is accepted only if its record fits at its worst case;
  a large spec or result lives in a blob referenced by the record (:mod:`coord.tasks.values`), written
  by the CAS that checks the claim; a claim, reclaim or failure that cannot fit makes the task ``dead``.
* Every step is reported to the :class:`coord.observer.Observer` (spans and metrics live there).
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from coord.blobs import value_bytes
from coord.errors import InvalidInput, InvalidTransition, TaskExists
from coord.ids import new_id, validate_id
from coord.kv import Bucket
from coord.priority import Priority, as_priority
from coord.settings import Settings
from coord.tasks import transitions
from coord.tasks.checks import as_status, check_json, positive_seconds
from coord.tasks.effects import TaskEffects
from coord.tasks.engine import TransitionEngine
from coord.tasks.index import TaskIndex
from coord.tasks.journal import journal_of, journaled
from coord.tasks.models import Claim, JournalEntry, ScheduleRequest, TaskRecord, TaskStatus
from coord.tasks.observer import Observer
from coord.tasks.size import MAX_ERROR_CHARS, MAX_PROGRESS_BYTES, check_fits, cut
from coord.tasks.values import TaskValues
from coord.tasks.watch import TaskWatch

__all__ = ["MAX_ERROR_CHARS", "TaskStore"]

SCHEDULE_CONCURRENCY = 512
"""Tasks of one ``schedule_many`` written at once (a burst of thousands would swamp the server's
answers and turn into timeouts)."""


def _now() -> datetime:
    return datetime.now(UTC)


class TaskStore:
    """Tasks and claims in one namespace (``coord.tasks``). See the module docstring for guarantees.

    Built by :func:`coord.connect` from the tasks ``bucket``, the ``effects`` publisher, the
    ``values`` (where large specs and results go), the :class:`~coord.settings.Settings` (lease,
    backoff, visibility tolerance, CAS budget, patience) and the ``observer``. :meth:`tuned` gives a
    store with other settings on the same collaborators.
    """

    def __init__(
        self,
        bucket: Bucket,
        effects: TaskEffects,
        values: TaskValues,
        *,
        settings: Settings | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.bucket = bucket
        """The tasks bucket."""
        self.effects = effects
        """What follows a transition (notifications, result pushes)."""
        self.values = values
        """Specs and results, inline or in blobs (:meth:`resolved` reads them back)."""
        self.settings = settings or Settings.load()
        """The tunables this store applies."""
        self.observer = observer or Observer()
        """Where every step is reported."""
        self.backoff = self.settings.backoff
        """Retry delays after ``fail``."""
        self._engine = TransitionEngine(
            bucket,
            effects,
            self.observer,
            max_cas_attempts=self.settings.max_cas_attempts,
            retention=self.settings.task_retention,
        )
        self._index: TaskIndex | None = None

    @property
    def last_revision(self) -> int:
        """Highest KV revision this store has written (an index waits for it: read-your-writes)."""
        return self._engine.last_revision

    def tuned(self, **changes: Any) -> TaskStore:
        """A store on the same bucket and publishers with ``changes`` applied to its settings, e.g.
        ``coord.tasks.tuned(backoff=Backoff(base=0.1), lease=5)``; names are :class:`Settings` fields."""
        settings = self.settings.but(**changes)
        bucket = self.bucket
        if (settings.io_patience, settings.request_timeout) != (bucket.patience, bucket.request_timeout):
            bucket = bucket.tuned(patience=settings.io_patience, request_timeout=settings.request_timeout)
        return TaskStore(bucket, self.effects, self.values, settings=settings, observer=self.observer)

    # --- reading ---------------------------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord:
        """The current record of ``task_id``; :class:`NotFound` if there is none."""
        validate_id(task_id, "task_id")
        return await self._engine.read(task_id)

    async def read_many(
        self, ids: Sequence[str], *, revisions: Mapping[str, int] | None = None
    ) -> dict[str, TaskRecord]:
        """The stored records of ``ids`` by id, one batched read per 256 (what a worker claims from);
        answers missing or older than ``revisions`` are re-read from the leader, ids without one left out."""
        return await self._engine.read_many([validate_id(t, "task_id") for t in ids], revisions=revisions)

    async def iter(
        self, *, queue: str | None = None, status: TaskStatus | str | None = None
    ) -> AsyncIterator[TaskRecord]:
        """Every task (optionally of one ``queue`` and/or ``status``), each at its current revision.

        With a running :meth:`index` this reads only the matching records (located in memory);
        otherwise it is one ordered pass over the bucket (every record is transferred once).
        """
        if queue is not None:
            validate_id(queue, "queue")
        wanted = as_status(status)
        index = self._index
        if index is not None and index.ready:
            await index.wait_for(self.last_revision)
            ids = index.ids(queue=queue, status=wanted)
            for start in range(0, len(ids), 256):
                chunk = await asyncio.gather(*(self._engine.read_or_none(t) for t in ids[start : start + 256]))
                for record in chunk:
                    if record is not None and _matches(record, queue, wanted):
                        yield record
            return
        for entry in await self.bucket.scan():
            record = self._engine.decode_or_skip(entry)
            if record is not None and _matches(record, queue, wanted):
                yield record

    async def list(
        self, *, queue: str | None = None, status: TaskStatus | str | None = None
    ) -> builtins.list[TaskRecord]:
        """Every task (optionally of one ``queue`` and/or ``status``); see :meth:`iter` for the cost."""
        return [record async for record in self.iter(queue=queue, status=status)]

    def watch(self) -> TaskWatch:
        """Updates of every task: the current records first, then ``None`` once, then live changes
        (``async with store.watch() as updates: async for record in updates: ...``)."""
        return TaskWatch(self.bucket)

    def index(self, *, finished: bool = True) -> TaskIndex:
        """A live in-memory index of all tasks by queue, status and worker (``async with``). While it
        runs, :meth:`list` and :meth:`iter` of this store use it instead of scanning. With
        ``finished=False`` it keeps only pending and claimed tasks (what a reclaimer needs) and the store
        does not use it for listings."""
        if not finished:
            return TaskIndex(self.bucket, self.get, finished=False)
        return TaskIndex(self.bucket, self.get, on_start=self._attach_index, on_stop=self._detach_index)

    def _attach_index(self, index: TaskIndex) -> None:
        self._index = index

    def _detach_index(self, index: TaskIndex) -> None:
        if self._index is index:
            self._index = None

    async def resolved(self, record: TaskRecord) -> TaskRecord:
        """``record`` with its spec and result read back from their blobs, if any (a missing or corrupt
        blob is an :class:`~coord.errors.InvalidRecord` naming the task)."""
        return await self.values.resolved(record)

    async def journal(self, task_id: str) -> builtins.list[JournalEntry]:
        """The task's successful transitions in revision order (:class:`NotFound` if the task is unknown),
        from the record itself (``TaskRecord.journal``, bounded): one read, never a hole."""
        validate_id(task_id, "task_id")
        return journal_of(await self._engine.read(task_id))

    # --- scheduling ------------------------------------------------------------------------------
    async def schedule(
        self,
        task_id: str,
        *,
        queue: str,
        spec: Any = None,
        max_attempts: int = 3,
        timeout: float | None = None,  # the task's lease length, not a deadline for this call
        parent: str | None = None,
        meta: Mapping[str, str] | None = None,
        priority: Priority | str = Priority.NORMAL,
        not_before: datetime | None = None,
        delay: float | None = None,
    ) -> TaskRecord:
        """Create ``task_id`` as pending on ``queue`` at ``priority`` and notify its workers; idempotent by task id.

        The same definition and start again returns the existing record (re-notified if pending); another
        raises :class:`TaskExists`. Not claimable before ``not_before`` or ``delay`` seconds from now. Bad
        arguments raise :class:`~coord.errors.InvalidId`, a pydantic ``ValidationError`` or
        :class:`~coord.errors.PayloadTooLarge` (the record would not fit at its worst case:
        :mod:`coord.tasks.size`) before anything is written. A spec too large for the record is
        written to a blob first (:mod:`coord.tasks.values`).
        """
        validate_id(task_id, "task_id")
        validate_id(queue, "queue")
        request = ScheduleRequest(
            task_id=task_id,
            queue=queue,
            spec=spec,
            max_attempts=max_attempts,
            timeout=timeout,
            parent=parent,
            meta=dict(meta or {}),
            priority=as_priority(priority),
            not_before=not_before,
            delay=delay,
        )
        return (await self.schedule_many([request]))[0]

    async def schedule_many(self, requests: Sequence[ScheduleRequest]) -> builtins.list[TaskRecord]:
        """:meth:`schedule` for many tasks with pipelined writes; records in the order of ``requests``.

        Every request is validated (and every record sized at its worst case) before any is written.
        """
        checked = [r if isinstance(r, ScheduleRequest) else ScheduleRequest.model_validate(r) for r in requests]
        with self.observer.submitting(checked) as submission:
            now = _now()
            new = [journaled(None, transitions.schedule(r, now=now)) for r in submission.requests]
            placed = [self.values.place_spec(record, now) for record in new]
            for record, _ in placed:
                check_fits(record, self.bucket.nc.max_payload)
            encoded = [self._engine.encode(record) for record, _ in placed]
            room = asyncio.Semaphore(SCHEDULE_CONCURRENCY)
            outcomes = await asyncio.gather(
                *(
                    self._schedule(r, rec, blob, data, room)
                    for r, (rec, blob), data in zip(submission.requests, placed, encoded, strict=True)
                )
            )
            submission.created([record for record, _ in outcomes], [new for _, new in outcomes])
        return [record for record, _ in outcomes]

    async def _schedule(
        self, request: ScheduleRequest, record: TaskRecord, blob: bytes | None, data: bytes, room: asyncio.Semaphore
    ) -> tuple[TaskRecord, bool]:
        async with room:
            if blob is not None:
                await self.values.write(record, blob)
            created = await self._engine.create(record, data)
        if created is None:
            if record.spec_blob is not None:
                await self.values.blobs.discard(record.spec_blob)  # the existing task has its own
            return await self._existing(request), False
        return created, True

    async def _existing(self, request: ScheduleRequest) -> TaskRecord:
        existing = await self._engine.read(request.task_id)
        differences = transitions.redefinition(existing, request)
        if differences:
            raise TaskExists(
                f"task {request.task_id!r} already exists with a different definition ({'; '.join(differences)})"
            )
        if existing.status is TaskStatus.PENDING:
            await self.effects.notify(existing)  # heals a notification lost by an earlier attempt (deduped)
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
        headers: Mapping[str, str] | None = None,
    ) -> Claim:
        """Claim pending ``task_id`` for ``worker_id``: one CAS from pending to claimed.

        Built from the *stored* record only: ``record`` must come from this store (:meth:`get`,
        :meth:`read_many`), never from a message (without it, it is read); the CAS is on its revision,
        so spec, parent and limits are the store's and a finished task is never runnable again.
        ``revision`` (the notification's) decides nothing. ``lease`` overrides the task's timeout and
        the store's default; ``headers``: the notification's (trace context). Raises :class:`Conflict`
        (another worker holds it), :class:`InvalidTransition` (ended, backing off), :class:`NotFound`.
        """
        validate_id(task_id, "task_id")
        validate_id(worker_id, "worker_id")
        lease = positive_seconds(lease, "lease")
        if record is not None and record.task_id != task_id:
            raise InvalidInput(f"record is of task {record.task_id!r}, not {task_id!r}")
        first = record if record is not None and record.revision else None
        token = secrets.token_urlsafe(32)
        claim_id = new_id("c")
        digest = transitions.token_digest(token)
        used: builtins.list[float] = []

        def step(current: TaskRecord) -> TaskRecord:
            length = lease or current.timeout or self.settings.lease
            used.append(length)
            return transitions.claim(
                current,
                worker_id=worker_id,
                claim_id=claim_id,
                token_sha256=digest,
                lease=length,
                now=_now(),
                visibility_tolerance=self.settings.visibility_tolerance,
            )

        with self.observer.claiming(task_id, worker_id, first, headers) as scope:
            claimed = await self._engine.apply(task_id, step, first, unfit=True)
            if claimed.claim is None:  # its claimed record could not fit: it went dead instead
                raise InvalidTransition(f"task {task_id!r} cannot be claimed, it is dead now: {claimed.error}")
            claim = Claim(
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
            scope.done(claim)
        return claim

    async def heartbeat(self, claim: Claim, progress: Any = None) -> Claim:
        """Extend ``claim``'s lease to now + lease and record ``progress`` (if not None).

        One CAS against the revision this worker wrote last; :class:`StaleClaim` if the claim is no
        longer current. Updates ``claim`` in place and returns it.
        """
        if progress is not None:
            check_json(progress, "progress")
            size = len(value_bytes(progress))
            if size > MAX_PROGRESS_BYTES:
                raise InvalidInput(f"progress is {size} bytes of JSON; at most {MAX_PROGRESS_BYTES} are recorded")

        def step(current: TaskRecord) -> TaskRecord:
            return transitions.heartbeat(
                current, claim_id=claim.claim_id, token=claim.token, lease=claim.lease, progress=progress, now=_now()
            )

        with self.observer.heartbeating(claim):
            record = await self._engine.apply(claim.task_id, step, claim.record)
        assert record.claim is not None
        claim.deadline = record.claim.deadline
        self._advance(claim, record)
        return claim

    async def complete(self, claim: Claim, result: Any) -> TaskRecord:
        """Record ``result`` and mark the task succeeded, if ``claim`` is still current (else :class:`StaleClaim`).

        A result too large for the record goes to a blob first; its reference is written by the same
        CAS that checks the claim (the blob of a refused write is deleted, or expires). A result over
        ``Settings.max_blob_bytes`` raises :class:`~coord.errors.PayloadTooLarge` and writes nothing
        (the claim stays current, so the worker can still ``fail`` the task).
        """
        check_json(result, "result")
        with self.observer.settling(claim, ok=True) as scope:
            inline, ref = await self.values.place_result(claim.task_id, result)
            step = partial(transitions.complete, claim_id=claim.claim_id, token=claim.token, result=inline)
            record = await self.values.referencing(
                ref, self._engine.apply(claim.task_id, lambda r: step(r, result_blob=ref, now=_now()), claim.record)
            )
            scope.done(record)
        self._advance(claim, record)
        return record

    async def fail(self, claim: Claim, error: str, *, retry: bool = True, result: Any = None) -> TaskRecord:
        """Record a failed attempt of ``claim`` (if still current, else :class:`StaleClaim`).

        With ``retry`` the task goes back to pending after a jittered exponential backoff
        (``visible_at``), or ``dead`` when ``max_attempts`` claims are spent; without, it is
        ``failed`` for good (until a manual :meth:`retry`). ``result`` (any JSON, e.g. a structured
        failure report; a large one goes to a blob as in :meth:`complete`) is stored as the attempt's
        result; the next claim clears it. ``error`` is cut to ``MAX_ERROR_CHARS``; a failure whose
        record still cannot fit makes the task ``dead`` with the reason cut to fit (never an error).
        """
        if not isinstance(error, str):
            raise InvalidInput(f"error must be a string, got {type(error).__name__}")
        if result is not None:
            check_json(result, "result")
        error = cut(error)
        with self.observer.settling(claim, ok=False, error=error) as scope:
            inline, ref = await self.values.place_result(claim.task_id, result)
            step = partial(transitions.fail, claim_id=claim.claim_id, token=claim.token, error=error, retry=retry)
            record = await self.values.referencing(
                ref,
                self._engine.apply(
                    claim.task_id,
                    lambda r: step(r, backoff=self.backoff, now=_now(), result=inline, result_blob=ref),
                    claim.record,
                    unfit=True,
                ),
            )
            scope.done(record)
        self._advance(claim, record)
        return record

    async def release(self, claim: Claim) -> TaskRecord:
        """Give ``claim`` back voluntarily (e.g. on shutdown): the task is pending again and the
        attempt is not counted. :class:`StaleClaim` if the claim is no longer current."""
        record = await self._engine.apply(
            claim.task_id,
            lambda current: transitions.release(current, claim_id=claim.claim_id, token=claim.token, now=_now()),
            claim.record,
        )
        self._advance(claim, record)
        return record

    async def reclaim(
        self,
        task_id: str,
        expected_claim_id: str,
        *,
        reason: str = "reclaimed",
        departure: str | None = None,
        overdue_only: bool = False,
        meta: Mapping[str, str] | None = None,
    ) -> TaskRecord:
        """Take the task away from claim ``expected_claim_id``: pending again (the attempt counts), or
        ``dead`` when its attempts are spent (or its record cannot fit). :class:`StaleClaim` if that claim
        is not current any more. Decided on the record read now, inside the CAS: with ``overdue_only``
        (a lapsed lease) it is :class:`StaleClaim` unless that record's deadline has passed.
        ``departure`` (``graceful`` or ``expired``) says a presence departure caused it; ``meta``
        entries (and the observer's, e.g. the reclaim span's context) are merged by the same write.
        """
        validate_id(task_id, "task_id")
        if not isinstance(expected_claim_id, str) or not isinstance(reason, str):
            raise InvalidInput("expected_claim_id and reason must be strings")
        reason = cut(reason)
        extra = dict(meta or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise InvalidInput("meta must map strings to strings")
        current = await self._engine.read(task_id)
        with self.observer.reclaiming(current, reason=reason, departure=departure) as scope:
            added = {**extra, **scope.meta}

            def step(record: TaskRecord) -> TaskRecord:
                new = transitions.reclaim(
                    record, expected_claim_id=expected_claim_id, reason=reason, now=_now(), overdue_only=overdue_only
                )
                return new.model_copy(update={"meta": {**new.meta, **added}}) if added else new

            record = await self._engine.apply(task_id, step, current, unfit=True)
            scope.done(record)
        return record

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a pending or claimed task (its claim, if any, becomes stale); a no-op if already
        cancelled; :class:`InvalidTransition` if it has otherwise ended."""
        validate_id(task_id, "task_id")
        return await self._engine.apply(task_id, lambda current: transitions.cancel(current, now=_now()), None)

    async def retry(self, task_id: str) -> TaskRecord:
        """Put a dead or failed task back to pending with a fresh set of attempts (by hand);
        :class:`InvalidTransition` for any other status."""
        validate_id(task_id, "task_id")
        return await self._engine.apply(task_id, lambda current: transitions.retry(current, now=_now()), None)

    async def notify(self, record: TaskRecord, *, force: bool = False, again: int | str | None = None) -> None:
        """(Re)publish the notification of pending ``record`` (e.g. from a sweep).

        Deduplicated against the original notification of the same revision within the dispatch stream's
        duplicate window, so calling it again is harmless; ``again=n`` publishes the n-th renotification
        (deduped among all publishing it; a str is another kind, e.g. ``"s42"``); ``force`` publishes anyway.
        :class:`InvalidTransition` if ``record`` is not pending.
        """
        if record.status is not TaskStatus.PENDING:
            raise InvalidTransition(
                f"task {record.task_id!r} is {record.status.value}; only pending tasks are notified"
            )
        await self.effects.notify(record, force=force, again=again)

    async def queued_notifications(self) -> set[str]:
        """The notification subjects (``Names.notification_subject``) the dispatch stream holds now."""
        return await self.effects.queued()

    def _advance(self, claim: Claim, record: TaskRecord) -> None:
        claim.revision = record.revision
        claim.record = record


def _matches(record: TaskRecord, queue: str | None, status: TaskStatus | None) -> bool:
    return (queue is None or record.queue == queue) and (status is None or record.status is status)
