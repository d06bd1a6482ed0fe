"""Watching the tasks bucket: :class:`TaskWatch`, the current records, then every write as it happens."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from coord.errors import InvalidRecord
from coord.kv import Bucket, Entry, KeyWatch
from coord.tasks.codec import decode_record
from coord.tasks.models import TaskRecord

__all__ = ["TaskWatch"]

log = logging.getLogger("corral.tasks")


class _Stop:
    pass


_STOP = _Stop()


class TaskWatch:
    """Records of every task: the current ones, then ``None`` (end of the snapshot), then live updates.

    An async iterator and an async context manager (``async with store.watch() as w: async for r in w``).
    Deleted keys and values that are not task records are skipped (the latter with a warning). The
    snapshot ends only once every record that existed at the start has been yielded, also when
    there is none; a consumer lost to a server restart is re-created (see :class:`coord.kv.KeyWatch`).
    """

    def __init__(self, bucket: Bucket) -> None:
        self._queue: asyncio.Queue[TaskRecord | _Stop | None] = asyncio.Queue()
        self._watch = KeyWatch(bucket, self._on_entry, on_ready=lambda: self._queue.put_nowait(None))
        self._bucket = bucket.name
        self._started = False
        self.snapshot_done = self._watch.ready
        """Set once every record that existed at the start has been yielded."""

    def _on_entry(self, entry: Entry) -> None:
        if entry.deleted or entry.value is None:
            return
        try:
            record = decode_record(entry.value, entry.revision, where=f"{self._bucket} key {entry.key!r}")
        except InvalidRecord as err:
            log.warning("task watch: %s; skipped", err)
            return
        self._queue.put_nowait(record)

    async def start(self) -> TaskWatch:
        """Start watching (done implicitly by ``async with`` or the first iteration)."""
        if not self._started:
            self._started = True
            await self._watch.start()
        return self

    async def stop(self) -> None:
        """Stop watching; iteration ends."""
        await self._watch.stop()
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
        return item
