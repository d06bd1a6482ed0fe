"""Watching the tasks bucket: :class:`TaskWatch` (a stream of records) and :class:`TaskIndex` (live lookups).

A watch is one ordered consumer over the bucket (deliver last per key): first the current record
of every task, then ``None`` once, then every write as it happens. An index keeps a small summary
of each task (not the payload) by queue, status and worker, so finding pending or claimed work, a
worker's claims, or overdue leases costs O(matching tasks) instead of a scan of the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.js import api as js_api
from pydantic import ValidationError

from coord.provision import kv_stream_name
from coord.tasks.models import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from coord.tasks.store import TaskStore

__all__ = ["INDEX_HEADER", "IndexEntry", "TaskIndex", "TaskWatch", "entry_from_header", "index_header"]

log = logging.getLogger("corral.tasks")

_DELETES = ("DEL", "PURGE")


class _Stop:
    pass


_STOP = _Stop()


class TaskWatch:
    """Records of every task: the current ones, then ``None`` (end of the snapshot), then live updates.

    An async iterator and an async context manager (``async with store.watch() as w: async for r in w``).
    With ``snapshot_only`` it ends after the snapshot instead of yielding ``None``. Deleted keys and
    values that are not task records are skipped (the latter with a warning).

    It runs its own ordered consumer (last value per key, then every write) rather than nats-py's
    KV watcher, whose end-of-snapshot marker can come before records already on their way: the
    snapshot ends only once every record up to the last one the server had pushed is yielded.
    """

    def __init__(self, store: TaskStore, *, snapshot_only: bool = False) -> None:
        self._store = store
        self._snapshot_only = snapshot_only
        self._sub: Any = None
        self._queue: asyncio.Queue[TaskRecord | _Stop | None] = asyncio.Queue()
        self._snapshot_end: int | None = None
        self._last = 0
        self._done = False
        self.snapshot_done = asyncio.Event()
        """Set once every record that existed at the start has been yielded."""

    async def start(self) -> TaskWatch:
        """Start watching (done implicitly by ``async with`` or the first iteration)."""
        if self._sub is None and not self._done:
            bucket = self._store.coord.names.tasks_bucket
            prefix = f"$KV.{bucket}."

            async def on_msg(msg: Msg) -> None:
                self._on_msg(msg, prefix)

            self._sub = await self._store.coord.js.subscribe(
                prefix + ">",
                stream=kv_stream_name(bucket),
                ordered_consumer=True,
                deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                cb=on_msg,
                inactive_threshold=300.0,
            )
            info = await self._sub.consumer_info()
            if not info.num_pending:
                self._snapshot_end = info.delivered.stream_seq if info.delivered else 0
                self._end_snapshot_if_caught_up()
        return self

    def _on_msg(self, msg: Msg, prefix: str) -> None:
        meta = msg.metadata
        self._last = max(self._last, meta.sequence.stream)
        headers = msg.headers or {}
        if not (headers.get("KV-Operation") in _DELETES or "Nats-Marker-Reason" in headers or not msg.data):
            try:
                record = TaskRecord.model_validate_json(msg.data)
            except ValidationError as err:
                first = err.errors()[0]
                log.warning(
                    "task watch: key %s revision %s is not a task record (%d problems; %s: %s); skipped",
                    msg.subject[len(prefix) :],
                    meta.sequence.stream,
                    err.error_count(),
                    ".".join(str(p) for p in first["loc"]),
                    first["msg"],
                )
            else:
                self._queue.put_nowait(record.model_copy(update={"revision": meta.sequence.stream}))
        if meta.num_pending == 0 and self._snapshot_end is None:
            self._snapshot_end = meta.sequence.stream
        self._end_snapshot_if_caught_up()

    def _end_snapshot_if_caught_up(self) -> None:
        if self._snapshot_end is not None and self._last >= self._snapshot_end and not self.snapshot_done.is_set():
            self.snapshot_done.set()
            self._queue.put_nowait(None)

    async def stop(self) -> None:
        """Stop watching; iteration ends."""
        self._done = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._queue.put_nowait(_STOP)

    async def __aenter__(self) -> TaskWatch:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __aiter__(self) -> TaskWatch:
        return self

    async def __anext__(self) -> TaskRecord | None:
        await self.start()
        item = await self._queue.get()
        if isinstance(item, _Stop):
            self._queue.put_nowait(_STOP)  # stay stopped for later calls
            raise StopAsyncIteration
        if item is None and self._snapshot_only:
            await self.stop()
            raise StopAsyncIteration
        return item


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What an index keeps of one task (no payload or result)."""

    task_id: str
    """The task."""
    queue: str
    """Its queue."""
    status: TaskStatus
    """Its status at ``revision``."""
    revision: int
    """KV revision of the record this summarises."""
    epoch: int
    """Epoch at ``revision``."""
    attempt: int
    """Attempt count at ``revision``."""
    worker_id: str | None
    """Worker holding the claim (claimed tasks only)."""
    claim_id: str | None
    """Current claim id (claimed tasks only)."""
    deadline: datetime | None
    """Lease deadline (claimed tasks only)."""
    visible_at: datetime | None
    """End of the retry backoff (pending tasks only)."""
    updated_at: datetime
    """When ``revision`` was written."""

    @classmethod
    def of(cls, record: TaskRecord) -> IndexEntry:
        """The summary of ``record``."""
        claim = record.claim
        return cls(
            task_id=record.task_id,
            queue=record.queue,
            status=record.status,
            revision=record.revision,
            epoch=record.epoch,
            attempt=record.attempt,
            worker_id=claim.worker_id if claim else None,
            claim_id=claim.claim_id if claim else None,
            deadline=claim.deadline if claim else None,
            visible_at=record.visible_at,
            updated_at=record.updated_at,
        )


INDEX_HEADER = "Corral-Index"
"""Header on every write to the tasks bucket: the record's :class:`IndexEntry` fields as a JSON array
(queue, status, epoch, attempt, worker, claim id, deadline ms, visible_at ms, updated_at ms)."""


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def index_header(record: TaskRecord) -> str:
    """The :data:`INDEX_HEADER` value of ``record``."""
    claim = record.claim
    return json.dumps(
        [
            record.queue,
            record.status.value,
            record.epoch,
            record.attempt,
            claim.worker_id if claim else None,
            claim.claim_id if claim else None,
            _ms(claim.deadline if claim else None),
            _ms(record.visible_at),
            _ms(record.updated_at),
        ],
        separators=(",", ":"),
    )


def entry_from_header(task_id: str, revision: int, header: str) -> IndexEntry:
    """The :class:`IndexEntry` that :func:`index_header` encoded (ValueError/TypeError if malformed)."""
    queue, status, epoch, attempt, worker, claim_id, deadline, visible, updated = json.loads(header)
    updated_at = _from_ms(updated)
    if updated_at is None:
        raise ValueError("index header without updated_at")
    return IndexEntry(
        task_id=task_id,
        queue=queue,
        status=TaskStatus(status),
        revision=revision,
        epoch=int(epoch),
        attempt=int(attempt),
        worker_id=worker,
        claim_id=claim_id,
        deadline=_from_ms(deadline),
        visible_at=_from_ms(visible),
        updated_at=updated_at,
    )


class TaskIndex:
    """A live in-memory index of every task by (queue, status) and by claiming worker.

    Fed by a headers-only watch of the bucket (each write's :data:`INDEX_HEADER`, so no record body
    travels or is decoded); costs one small :class:`IndexEntry` per task (~300 bytes) and receives
    every write to the bucket. Lookups are O(matching). While it runs (``async with
    store.index()``), ``store.list``/``store.iter`` use it and first wait until it has seen the
    store's own latest write (read-your-writes). It may lag other writers by a network hop:
    callers act through CAS transitions, which re-check the record.
    """

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._entries: dict[str, IndexEntry] = {}
        self._groups: defaultdict[tuple[str, TaskStatus], set[str]] = defaultdict(set)
        self._by_worker: defaultdict[str, set[str]] = defaultdict(set)
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._advanced = asyncio.Event()
        self._ready_at: int | None = None
        self.revision = 0
        """Highest KV revision applied."""

    @property
    def ready(self) -> bool:
        """True once the initial snapshot is loaded (and while the watch runs)."""
        return self._ready.is_set()

    async def start(self, within: float = 30.0) -> TaskIndex:
        """Start the watch and wait (up to ``within`` seconds) until the snapshot is loaded."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="corral-task-index")
        try:
            await asyncio.wait_for(self._ready.wait(), within)
        except TimeoutError:
            await self.stop()
            raise
        self._store._index = self
        return self

    async def stop(self) -> None:
        """Stop the watch; the store goes back to scanning."""
        if self._store._index is self:
            self._store._index = None
        runner, self._runner = self._runner, None
        self._ready.clear()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def __aenter__(self) -> TaskIndex:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        """Follow the bucket from message headers only (no record bodies travel or get decoded)."""
        coord = self._store.coord
        bucket = coord.names.tasks_bucket
        prefix = f"$KV.{bucket}."

        async def on_msg(msg: Msg) -> None:
            await self._on_msg(msg, prefix)

        while True:
            sub = None
            try:
                sub = await coord.js.subscribe(
                    prefix + ">",
                    stream=kv_stream_name(bucket),
                    ordered_consumer=True,
                    headers_only=True,
                    deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                    cb=on_msg,
                    inactive_threshold=300.0,
                )
                info = await sub.consumer_info()
                if not info.num_pending:
                    # Everything was pushed already (maybe still in our socket): ready once the
                    # callback has applied up to the last sequence the server delivered.
                    pushed = info.delivered.stream_seq if info.delivered else 0
                    self._ready_at = pushed or 0
                    if self.revision >= self._ready_at:
                        self._ready.set()
                await asyncio.Event().wait()  # messages arrive through the callback until cancelled
            except asyncio.CancelledError:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                raise
            except Exception as err:
                log.warning("task index: watch failed (%s); restarting it", err)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._ready.clear()
            self._ready_at = None
            await asyncio.sleep(0.5)

    async def _on_msg(self, msg: Msg, prefix: str) -> None:
        meta = msg.metadata
        task_id = msg.subject[len(prefix) :]
        headers = msg.headers or {}
        try:
            if headers.get("KV-Operation") in _DELETES or "Nats-Marker-Reason" in headers:
                self._remove(task_id, meta.sequence.stream)
            elif INDEX_HEADER in headers:
                self._apply_entry(entry_from_header(task_id, meta.sequence.stream, headers[INDEX_HEADER]))
            else:  # written by something that does not summarise (e.g. by hand): read the record
                record = await self._store.get(task_id)
                self.apply(record)
        except Exception as err:  # a malformed write must not stop the index
            log.warning("task index: skipping %s at revision %s: %s", task_id, meta.sequence.stream, err)
        if meta.num_pending == 0 or (self._ready_at is not None and meta.sequence.stream >= self._ready_at):
            self._ready.set()

    def apply(self, record: TaskRecord) -> None:
        """Take ``record`` into the index (ignored if older than what the index holds for the task)."""
        self._apply_entry(IndexEntry.of(record))

    def _forget(self, old: IndexEntry) -> None:
        self._groups[(old.queue, old.status)].discard(old.task_id)
        if old.worker_id is not None:
            self._by_worker[old.worker_id].discard(old.task_id)
            if not self._by_worker[old.worker_id]:
                del self._by_worker[old.worker_id]

    def _apply_entry(self, entry: IndexEntry) -> None:
        old = self._entries.get(entry.task_id)
        if old is not None:
            if old.revision >= entry.revision:
                return
            self._forget(old)
        self._entries[entry.task_id] = entry
        self._groups[(entry.queue, entry.status)].add(entry.task_id)
        if entry.worker_id is not None:
            self._by_worker[entry.worker_id].add(entry.task_id)
        self._advance(entry.revision)

    def _remove(self, task_id: str, revision: int) -> None:
        old = self._entries.get(task_id)
        if old is not None and old.revision < revision:
            self._forget(old)
            del self._entries[task_id]
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self._advanced.set()

    async def wait_for(self, revision: int, within: float = 2.0) -> bool:
        """Wait up to ``within`` seconds until the index has applied ``revision`` (or later); False if not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True

    def entry(self, task_id: str) -> IndexEntry | None:
        """The summary of ``task_id``, if the index has seen it."""
        return self._entries.get(task_id)

    def entries(self, *, queue: str | None = None, status: TaskStatus | None = None) -> list[IndexEntry]:
        """Summaries of the tasks of ``queue`` and/or ``status`` (all if both are None)."""
        return [self._entries[t] for t in self.ids(queue=queue, status=status)]

    def ids(self, *, queue: str | None = None, status: TaskStatus | None = None) -> list[str]:
        """Ids of the tasks of ``queue`` and/or ``status``: O(groups + matching)."""
        if queue is not None and status is not None:
            return list(self._groups.get((queue, status), ()))
        found: list[str] = []
        for (q, s), members in self._groups.items():
            if (queue is None or q == queue) and (status is None or s is status):
                found.extend(members)
        return found

    def counts(self) -> dict[tuple[str, TaskStatus], int]:
        """Number of tasks per (queue, status)."""
        return {key: len(members) for key, members in self._groups.items() if members}

    def claims_of(self, worker_id: str) -> list[IndexEntry]:
        """Current claims held by ``worker_id``."""
        return [self._entries[t] for t in self._by_worker.get(worker_id, ())]

    def workers(self) -> list[str]:
        """Workers that hold at least one claim."""
        return list(self._by_worker)

    def overdue(self, now: datetime | None = None) -> list[IndexEntry]:
        """Claims whose lease deadline has passed (candidates for ``reclaim``)."""
        now = now or datetime.now(UTC)
        return [
            self._entries[t]
            for worker in self._by_worker.values()
            for t in worker
            if (d := self._entries[t].deadline) is not None and d < now
        ]

    def __len__(self) -> int:
        return len(self._entries)
