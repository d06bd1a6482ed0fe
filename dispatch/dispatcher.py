"""The parent side: submit specs, await their results, cancel.

Results are pushed to the parent on ``{ns}.results.{parent}`` as tasks end. A push is only a hint
(anyone allowed to publish there could forge one): the parent resolves a task from its stored record,
read in one batched request for the pushes that arrive together, and only once that record is
terminal. The task record stays the truth, so a parent that restarts (or missed a push while
disconnected) reconciles by reading the records: every ``reconcile_interval`` it reads, in batched
requests of 256, the records of the tasks it awaits (those awaited for at least one interval; all of
them after a reconnect), so a lost push costs at most about one interval. No error stops the
reconciling. Backpressure: at most ``max_in_flight`` submitted tasks await a result at once;
``submit`` waits for room. Nothing is kept
of a task once its result was delivered (a later :meth:`Dispatcher.wait` reads the record), so
memory stays flat however many tasks a parent has ever submitted. :meth:`Dispatcher.stop` returns
within a few seconds whatever the server is doing. A :class:`~dispatch.reclaimer.Reclaimer` runs
inside every dispatcher by default, as a candidate for the namespace's one active reclaimer (named
by the parent id in the lease): a standby costs one message per renewal of the active one.

Telemetry happens in the task store's observer: each task gets a ``submit`` span (a child of the
caller's current span) whose context is stored in the task record's ``meta``, so the worker's spans,
on any host, join that trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from coord.aio import stop_tasks
from coord.connection import Coord
from coord.consumer import create_queue_consumers
from coord.errors import InvalidInput
from coord.ids import new_id, validate_id
from coord.tasks import TERMINAL, ResultNotice, ScheduleRequest, TaskRecord, TaskStatus
from coord.validation import IN_FLIGHT, TIMEOUT, WAIT, check_number
from coord.wire import Result, Spec, TaskInput
from dispatch.reclaimer import Reclaimer

__all__ = ["TERMINAL", "Dispatcher", "result_of"]

log = logging.getLogger("corral.dispatcher")

STOP_WITHIN = 5.0
"""Seconds :meth:`Dispatcher.stop` takes at most."""
READ_BATCH = 256
"""Records read in one batched request while reconciling."""


def result_of(record: TaskRecord) -> Result:
    """The :class:`Result` of a finished task (synthesised for dead/cancelled tasks without one).

    For a finished task this is :meth:`TaskRecord.outcome`; an unfinished one gets a failure naming its status.
    """
    outcome = record.outcome()
    if outcome is not None:
        return outcome
    if record.result is not None:
        with contextlib.suppress(Exception):
            return Result.model_validate(record.result)
    if record.status is TaskStatus.SUCCEEDED:
        return Result.success(output=record.result)
    if record.status is TaskStatus.CANCELLED:
        return Result.failure("cancelled", substrate_fault=False)
    substrate = record.status is TaskStatus.DEAD
    return Result.failure(record.error or str(record.status), substrate_fault=substrate)


class Dispatcher:
    """Submits tasks for ``parent_id`` and collects their results (see the module docstring)."""

    def __init__(
        self,
        coord: Coord,
        *,
        parent_id: str | None = None,
        max_in_flight: int = 10_000,
        reclaimer: bool = True,
        reconcile_interval: float | None = None,
    ) -> None:
        check_number("max_in_flight", max_in_flight, IN_FLIGHT)
        check_number("reconcile_interval", reconcile_interval, TIMEOUT, optional=True)
        self.coord = coord
        self.parent_id = validate_id(parent_id or new_id("p"), "parent_id")
        self.max_in_flight = max_in_flight
        self.reconcile_interval = (
            coord.settings.reconcile_interval if reconcile_interval is None else reconcile_interval
        )
        self.reclaimer: Reclaimer | None = Reclaimer(coord, candidate_id=self.parent_id) if reclaimer else None
        """The embedded reclaimer, a candidate for the lease (None when disabled)."""
        self._room = asyncio.Semaphore(max_in_flight)
        self._waiting: dict[str, asyncio.Future[TaskRecord]] = {}
        self._holding: set[str] = set()
        self._queues_made: set[str] = set()
        """Queues whose consumers this dispatcher made sure of (once per queue per process)."""
        self._since: dict[str, float] = {}
        self._waiters: dict[str, int] = {}
        self._sub: Subscription | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._pushed: dict[str, int] = {}
        self._push_reader: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> Dispatcher:
        """Subscribe to this parent's results and start the reclaimer."""
        self._stopping = False
        self._sub = await self.coord.nc.subscribe(self.coord.names.results_subject(self.parent_id), cb=self._on_push)
        if self.reclaimer is not None:
            await self.reclaimer.start()
        self._reconciler = asyncio.create_task(self._reconcile_loop(), name=f"reconcile-{self.parent_id}")
        return self

    async def stop(self) -> None:
        """Stop listening (submitted tasks go on; a later dispatcher can collect them).

        Returns within :data:`STOP_WITHIN` seconds plus the reclaimer's own bound, and never raises.
        """
        self._stopping = True
        reconciler, self._reconciler = self._reconciler, None
        reader, self._push_reader = self._push_reader, None
        running = [t for t in (reconciler, reader) if t is not None]
        if running:
            await stop_tasks(running, within=STOP_WITHIN, what=f"dispatcher {self.parent_id}")
        self._pushed.clear()
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                async with asyncio.timeout(1.0):
                    await sub.unsubscribe()
            except Exception as err:
                log.debug("dispatcher %s: unsubscribe failed: %s", self.parent_id, err)
        if self.reclaimer is not None:
            await self.reclaimer.stop()

    async def __aenter__(self) -> Dispatcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- submitting ----------------------------------------------------------------------------
    def _request(self, spec: Spec | TaskInput | Mapping[str, Any]) -> tuple[Spec, ScheduleRequest]:
        if not isinstance(spec, Spec):
            item = spec if isinstance(spec, TaskInput) else TaskInput.model_validate(dict(spec))
            spec = Spec(parent_agent_id=self.parent_id, **item.model_dump(exclude_none=True))
        elif spec.parent_agent_id is None:
            spec = spec.model_copy(update={"parent_agent_id": self.parent_id})
        # Every field was validated by Spec under the same rules: no second validation per task. Every
        # field is given (meta too): for one left out, pydantic inspects its default factory's signature.
        request = ScheduleRequest.model_construct(
            task_id=spec.task_id,
            queue=spec.queue,
            spec=spec.stored(),
            max_attempts=spec.max_attempts,
            timeout=spec.timeout,
            parent=self.parent_id,
            priority=spec.priority,
            not_before=spec.not_before,
            delay=spec.delay,
            meta={},
        )
        return spec, request

    async def submit(self, spec: Spec | TaskInput | Mapping[str, Any]) -> str:
        """Schedule one task (idempotent by task id); return its id. Waits while the parent is full."""
        return (await self.submit_many([spec]))[0]

    async def submit_many(self, specs: Sequence[Spec | TaskInput | Mapping[str, Any]]) -> list[str]:
        """Schedule a batch with pipelined writes; return the ids in order. Validates all before writing any."""
        prepared = [self._request(s) for s in specs]
        ids = [spec.task_id for spec, _ in prepared]
        if len(set(ids)) != len(ids):
            twice = sorted({t for t in ids if ids.count(t) > 1})
            raise InvalidInput(f"task_id {twice[0]!r} appears more than once in the batch (ids must be unique)")
        await self._make_queues({spec.queue for spec, _ in prepared})
        # A resubmit of a task this dispatcher already awaits takes no second slot.
        fresh = [t for t in ids if t not in self._holding]
        for _ in fresh:
            await self._room.acquire()
        for task_id in ids:
            self._track(task_id)
        try:
            records = await self.coord.tasks.schedule_many([r for _, r in prepared])
        except BaseException:
            for task_id in fresh:
                self._untrack(task_id)
            raise
        for record in records:
            if record.status in TERMINAL:  # an idempotent resubmit of a finished task
                self._resolve(record)
        return ids

    async def _make_queues(self, queues: set[str]) -> None:
        """Create (or set back to their configuration) the consumers of each queue first submitted to by
        this process: a worker credential may not, so a new queue's consumers come from its parent (or
        ``corral provision --queue``). Once per queue per process; a failure (e.g. credentials minted
        before parents could) is logged once and left to ``corral provision --queue``."""
        for queue in sorted(queues - self._queues_made):
            self._queues_made.add(queue)
            try:
                await create_queue_consumers(self.coord.nc, self.coord.js, self.coord.names, queue)
            except Exception as err:
                log.warning(
                    "dispatcher %s: could not create the consumers of queue %s (%s); its workers wait for "
                    "`corral provision --queue %s`",
                    self.parent_id,
                    queue,
                    err,
                    queue,
                )

    def _future(self, task_id: str) -> asyncio.Future[TaskRecord]:
        """The future that resolves with ``task_id``'s finished record (created on first use)."""
        future = self._waiting.get(task_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[task_id] = future
            self._since[task_id] = time.monotonic()
        return future

    def _track(self, task_id: str) -> None:
        """Await ``task_id`` as one of ours: it holds a backpressure slot until it ends."""
        self._future(task_id)
        self._holding.add(task_id)

    def _untrack(self, task_id: str) -> None:
        if task_id in self._holding:
            self._holding.discard(task_id)
            self._room.release()
        self._since.pop(task_id, None)
        future = self._waiting.pop(task_id, None)
        if future is not None and not future.done():
            future.cancel()

    def _resolve(self, record: TaskRecord) -> None:
        # The waiters hold the future; nothing of a finished task stays here.
        future = self._waiting.pop(record.task_id, None)
        self._since.pop(record.task_id, None)
        if future is not None and not future.done():
            future.set_result(record)
        if record.task_id in self._holding:
            self._holding.discard(record.task_id)
            self._room.release()

    async def _on_push(self, msg: Msg) -> None:
        """A result push is a hint: it names a task to read, never the result itself.

        Anyone who can publish on the results subject can forge a push, so the task resolves only
        from its stored record, and only once that record is terminal. Pushes arriving together
        are read with one batched request; a push whose read fails is left to the reconciling.
        """
        try:
            notice = ResultNotice.model_validate_json(msg.data)
        except ValidationError:
            log.warning("dispatcher: ignoring malformed result push on %s", msg.subject)
            return
        future = self._waiting.get(notice.task_id)
        if future is None or future.done():
            return
        self._pushed[notice.task_id] = max(notice.revision, self._pushed.get(notice.task_id, 0))
        if self._push_reader is None or self._push_reader.done():
            self._push_reader = asyncio.create_task(self._read_pushed(), name=f"results-{self.parent_id}")

    async def _read_pushed(self) -> None:
        """Read the records of the tasks pushed so far (256 per request) and resolve the finished ones."""
        while self._pushed and not self._stopping:
            batch = dict(list(self._pushed.items())[:256])
            for task_id in batch:
                del self._pushed[task_id]
            try:
                records = await self.coord.tasks.read_many(list(batch), revisions=batch)
            except Exception as err:  # the reconciling reads them again later
                log.debug("dispatcher %s: reading pushed results failed: %s", self.parent_id, err)
                continue
            for record in records.values():
                if record.status in TERMINAL:
                    self._resolve(record)

    async def _reconcile_loop(self) -> None:
        """Catch results whose push was missed: read the records of what we await (see the module doc).

        A push can be lost without a reconnect (a parent that falls behind, a subscription dropped
        as a slow consumer), so each pass reads every task awaited for at least one interval, not
        only after a reconnect: a missed push costs at most about two intervals.
        """
        reconnects = self._reconnects()
        while not self._stopping:
            await asyncio.sleep(self.reconcile_interval)
            try:
                now = self._reconnects()
                if now != reconnects:
                    candidates = list(self._waiting)
                else:
                    horizon = time.monotonic() - self.reconcile_interval
                    candidates = [t for t, since in self._since.items() if since <= horizon]
                reconnects = now
                await self._read_and_resolve(candidates)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # nothing may end the reconciling: the next pass tries again
                log.warning("dispatcher %s: reconciling failed (%s); trying again", self.parent_id, err)

    def _reconnects(self) -> int:
        return int(self.coord.nc.stats.get("reconnects", 0))

    async def _read_and_resolve(self, task_ids: list[str]) -> None:
        """Read ``task_ids`` (:data:`READ_BATCH` per batched request) and resolve those that have ended."""
        for start in range(0, len(task_ids), READ_BATCH):
            if self._stopping:
                return
            batch = [t for t in task_ids[start : start + READ_BATCH] if t in self._waiting]
            if not batch:
                continue
            try:
                records = await self.coord.tasks.read_many(batch)
            except Exception as err:  # the next pass reads them again
                log.debug("dispatcher %s: reading %d awaited records failed: %s", self.parent_id, len(batch), err)
                continue
            for record in records.values():
                if record.status in TERMINAL:
                    self._resolve(record)

    # --- collecting ----------------------------------------------------------------------------
    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """The finished task record of ``task_id``, its spec and result read back from their blobs if
        they were too large for the record (:class:`~coord.errors.InvalidRecord` naming the task if a
        blob is missing or corrupt).

        Tasks this dispatcher submitted resolve from the result push (or the periodic reconcile); any
        other task id (e.g. one submitted before a restart) is read first, so a restarted parent
        recovers results that ended while it was away.
        """
        validate_id(task_id, "task_id")
        check_number("timeout", timeout, WAIT, optional=True)
        with self._waiting_for([task_id]):
            future = self._waiting.get(task_id)
            if future is None:
                future = self._future(task_id)
                record = await self.coord.tasks.get(task_id)
                if record.status in TERMINAL:
                    self._resolve(record)
            record = await asyncio.wait_for(asyncio.shield(future), timeout)
        return await self.coord.tasks.resolved(record)

    @contextlib.contextmanager
    def _waiting_for(self, task_ids: list[str]) -> Iterator[None]:
        """Count the callers awaiting ``task_ids``; a task nobody awaits or submitted leaves no future."""
        for task_id in task_ids:
            self._waiters[task_id] = self._waiters.get(task_id, 0) + 1
        try:
            yield
        finally:
            for task_id in task_ids:
                left = self._waiters.get(task_id, 1) - 1
                if left > 0:
                    self._waiters[task_id] = left
                    continue
                self._waiters.pop(task_id, None)
                if task_id not in self._holding:
                    self._waiting.pop(task_id, None)
                    self._since.pop(task_id, None)

    async def result(self, task_id: str, timeout: float | None = None) -> Result:
        """The :class:`Result` of ``task_id`` once it has ended."""
        return result_of(await self.wait(task_id, timeout))

    async def as_completed(self, task_ids: Iterable[str], timeout: float | None = None) -> AsyncIterator[TaskRecord]:
        """Yield the finished records of ``task_ids`` in the order they finish.

        Raises ``TimeoutError`` if they have not all finished within ``timeout`` seconds.
        """
        ids = [validate_id(t, "task_id") for t in task_ids]
        check_number("timeout", timeout, WAIT, optional=True)
        done: asyncio.Queue[asyncio.Future[TaskRecord]] = asyncio.Queue()
        foreign: list[str] = []
        with self._waiting_for(ids):
            for task_id in ids:
                future = self._waiting.get(task_id)
                if future is None:
                    future = self._future(task_id)
                    foreign.append(task_id)
                future.add_done_callback(done.put_nowait)
            reader = asyncio.create_task(self._read_and_resolve(foreign)) if foreign else None
            try:
                async with asyncio.timeout(timeout):
                    for _ in ids:
                        yield (await done.get()).result()
            finally:
                if reader is not None:
                    reader.cancel()

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel ``task_id`` (pending or claimed); a running worker's result will be rejected."""
        record = await self.coord.tasks.cancel(task_id)
        self._resolve(record)
        return record

    def forget(self, task_id: str) -> None:
        """Stop tracking ``task_id`` (frees its backpressure slot without waiting for it)."""
        self._untrack(task_id)
