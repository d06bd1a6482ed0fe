"""A live index of every task by queue, status and worker: :class:`TaskIndex`.

An index keeps a small summary of each task (not the spec or result), so finding pending or claimed
work, a worker's claims, or overdue leases costs O(matching tasks) instead of a scan of the bucket.
It follows the bucket from message headers alone: every write the store makes carries the record's
summary in the :data:`INDEX_HEADER` header, so no record body travels or is decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

from coord.errors import InvalidRecord
from coord.kv import Bucket, Entry, KeyWatch
from coord.tasks.models import TaskRecord, TaskStatus

__all__ = ["INDEX_HEADER", "IndexEntry", "TaskIndex", "entry_from_header", "index_header"]

log = logging.getLogger("corral.tasks")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What an index keeps of one task (no spec or result)."""

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
        raise InvalidRecord("index header without updated_at")
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

    Costs one small :class:`IndexEntry` per task (~300 bytes) and receives every write to the
    bucket; a write without the summary header is looked up with ``read``. ``on_start`` and
    ``on_stop`` are told when the index becomes usable and when it stops. With ``finished=False``
    it keeps only pending and claimed tasks, so its size follows the work in progress, not history. Lookups are
    O(matching). While it runs (``async with store.index()``), ``store.list``/``store.iter`` use it
    and first wait until it has seen the store's own latest write (read-your-writes). It may lag
    other writers by a network hop: callers act through CAS transitions, which re-check the record.
    """

    def __init__(
        self,
        bucket: Bucket,
        read: Callable[[str], Awaitable[TaskRecord]],
        *,
        on_start: Callable[[TaskIndex], None] | None = None,
        on_stop: Callable[[TaskIndex], None] | None = None,
        finished: bool = True,
    ) -> None:
        self.finished = finished
        """Whether finished tasks are kept (False: only pending and claimed ones, memory flat in history)."""
        self._bucket = bucket
        self._read = read
        self._on_start = on_start
        self._on_stop = on_stop
        self._entries: dict[str, IndexEntry] = {}
        self._groups: defaultdict[tuple[str, TaskStatus], set[str]] = defaultdict(set)
        self._by_worker: defaultdict[str, set[str]] = defaultdict(set)
        self._watch: KeyWatch | None = None
        self._advanced = asyncio.Event()
        self.revision = 0
        """Highest KV revision applied."""

    @property
    def ready(self) -> bool:
        """True once the initial snapshot is loaded (and while the watch runs)."""
        return self._watch is not None and self._watch.ready.is_set()

    async def start(self, within: float = 30.0) -> TaskIndex:
        """Start the watch and wait (up to ``within`` seconds) until the snapshot is loaded."""
        if self._watch is None:
            self._watch = KeyWatch(self._bucket, self._on_entry, headers_only=True)
        try:
            position = await self._bucket.last_revision()
            await self._watch.start(within=within)
        except BaseException:
            await self.stop()
            raise
        # Ready means every entry up to where the bucket stood before the watch started has been
        # applied (or is gone: replaced, deleted, purged), so the index stands there too.
        self._advance(position)
        if self._on_start is not None:
            self._on_start(self)
        return self

    async def stop(self) -> None:
        """Stop the watch; the store goes back to scanning."""
        if self._on_stop is not None:
            self._on_stop(self)
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.stop()

    async def __aenter__(self) -> TaskIndex:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _on_entry(self, entry: Entry) -> None:
        try:
            if entry.deleted:
                self._remove(entry.key, entry.revision)
            elif INDEX_HEADER in entry.headers:
                self._apply_entry(entry_from_header(entry.key, entry.revision, entry.headers[INDEX_HEADER]))
            else:  # written by something that does not summarise (e.g. by hand): read the record
                record = await self._read(entry.key)
                self.apply(record)
        except Exception as err:  # a malformed write must not stop the index
            log.warning("task index: skipping %s at revision %s: %s", entry.key, entry.revision, err)
            self._advance(entry.revision)

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
        if not self.finished and entry.status.terminal:
            if old is not None:
                del self._entries[entry.task_id]
            self._advance(entry.revision)
            return
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
