"""Watching presence: :class:`PresenceWatcher` turns the bucket's changes into Joined / Left events.

It runs a :class:`coord.kv.KeyWatch` on the bucket (last value per key first, then every change),
so departures arrive as they happen: a DEL for a graceful leave, the server's MaxAge marker for an
expiry. There is no polling. A consumer lost to a server restart or a leader move is noticed
within two to four heartbeats and re-created from the last revision seen, so a watch survives a restart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from coord.kv import Entry, KeyWatch
from coord.presence._store import Latest, PresenceStore, classify
from coord.presence.models import AgentInfo, Joined, Left, PresenceEvent, Updated

__all__ = ["PresenceWatcher", "next_change", "wait_absent"]

log = logging.getLogger("corral.presence")

HEARTBEAT = 1.0
"""Consumer idle heartbeat: a lost consumer is re-created after two missed beats."""


@dataclass
class _Holder:
    instance: str
    info: AgentInfo
    at: datetime


class _Stop:
    pass


_STOP = _Stop()


class PresenceWatcher:
    """An async iterator (and async context manager) of :data:`PresenceEvent`.

    Entering the context (or the first ``__anext__``) subscribes and returns once the agents present
    at that moment are known (:attr:`present`), also when there are none. With ``include_existing``
    it first yields a :class:`Joined` for each of them, skipping stale expiry markers, then live
    changes. A renewal of a present agent yields nothing (an info change yields :class:`Updated`
    only with ``updates=True``). A key whose holder changed without a tombstone in between yields
    ``Left(expired)`` then ``Joined``. Malformed values are logged and skipped, never raised. Leave
    the context (or call :meth:`stop`) to end the iteration.
    """

    def __init__(
        self,
        store: PresenceStore,
        *,
        include_existing: bool = True,
        updates: bool = False,
        agent_id: str | None = None,
    ) -> None:
        self._include_existing = include_existing
        self._updates = updates
        self._queue: asyncio.Queue[PresenceEvent | _Stop] = asyncio.Queue()
        self._holders: dict[str, _Holder] = {}
        self._last_seq = 0
        self._watch = KeyWatch(store.bucket, self._on_entry, keys=agent_id or ">", heartbeat=HEARTBEAT)
        self._start_lock = asyncio.Lock()
        self._started = False
        self._stopped = False

    # --- public surface ------------------------------------------------------------------
    @property
    def present(self) -> dict[str, AgentInfo]:
        """The agents present as far as this watcher has seen (a copy)."""
        return {agent_id: holder.info for agent_id, holder in self._holders.items()}

    @property
    def renewed_at(self) -> dict[str, datetime]:
        """When the server stored the latest value (join or renewal) of each present agent (a copy).

        Renewals yield no event; this is how a watcher tells how recently each agent renewed.
        """
        return {agent_id: holder.at for agent_id, holder in self._holders.items()}

    @property
    def is_ready(self) -> bool:
        """True once the agents present at the start are known."""
        return self._watch.ready.is_set()

    async def start(self) -> PresenceWatcher:
        """Subscribe and wait until the agents present now are known; idempotent."""
        async with self._start_lock:
            if not self._started and not self._stopped:
                self._started = True
                await self._watch.start()
        await self._watch.ready.wait()
        return self

    async def stop(self) -> None:
        """Unsubscribe and end the iteration; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self._watch.stop()
        self._queue.put_nowait(_STOP)

    def __aiter__(self) -> PresenceWatcher:
        return self

    async def __anext__(self) -> PresenceEvent:
        if self._stopped and self._queue.empty():
            raise StopAsyncIteration
        if not self._started:
            await self.start()
        item = await self._queue.get()
        if isinstance(item, _Stop):
            self._queue.put_nowait(_STOP)  # stay stopped for later calls
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> PresenceWatcher:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- internals -----------------------------------------------------------------------
    def _on_entry(self, entry: Entry) -> None:
        if entry.revision <= self._last_seq:  # the watch delivers in stream order; older means replayed
            return
        self._last_seq = entry.revision
        change = classify(entry)
        agent_id = entry.key
        emit = self._watch.ready.is_set() or self._include_existing
        previous = self._holders.get(agent_id)
        if change.tombstone is not None:
            if previous is not None:
                del self._holders[agent_id]
                if emit:
                    self._queue.put_nowait(Left(agent_id, change.tombstone, entry.revision, change.at))
            return
        record = change.record
        if record is None:
            log.warning(
                "presence: skipping malformed value of key %r at revision %d (%s)",
                agent_id,
                entry.revision,
                change.problem,
            )
            return
        info = record.info()
        self._holders[agent_id] = _Holder(record.instance, info, change.at)
        if previous is None:
            if emit:
                self._queue.put_nowait(Joined(info, entry.revision))
        elif previous.instance != record.instance:
            if emit:
                self._queue.put_nowait(Left(agent_id, "expired", entry.revision, change.at))
                self._queue.put_nowait(Joined(info, entry.revision))
        elif self._updates and previous.info != info and emit:
            self._queue.put_nowait(Updated(info, entry.revision))


async def wait_absent(store: PresenceStore, agent_id: str, timeout: float) -> bool:
    """True as soon as ``agent_id`` is absent (at once if it is), False if still present after ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout), PresenceWatcher(store, include_existing=False, agent_id=agent_id) as w:
            if agent_id not in w.present:
                return True
            async for event in w:
                if isinstance(event, Left):
                    return True
    except TimeoutError:
        return False
    return False  # pragma: no cover - the watch ended early


async def next_change(store: PresenceStore, agent_id: str, after: int, timeout: float) -> Latest | None:
    """The first message of ``agent_id``'s key after revision ``after`` (at once if there is one), classified.

    None if there is none within ``timeout`` s. Watched, not polled.
    """
    found: asyncio.Future[Latest] = asyncio.get_running_loop().create_future()

    def on_entry(entry: Entry) -> None:
        if entry.revision > after and not found.done():
            found.set_result(classify(entry))

    try:
        async with asyncio.timeout(timeout), KeyWatch(store.bucket, on_entry, keys=agent_id, heartbeat=HEARTBEAT):
            return await found
    except TimeoutError:
        return None
