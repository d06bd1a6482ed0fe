"""Watching presence: :class:`PresenceWatcher` turns the bucket's changes into Joined / Left events.

It runs an ordered push consumer on the bucket's subjects (last value per key first, then every
change), so departures arrive as they happen: a DEL for a graceful leave, the server's MaxAge marker
for an expiry. There is no polling. nats-py re-creates the consumer from the last sequence seen when
its heartbeats stop (server restart, leader change), so a watch survives a restart of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import api as js_api

from coord.presence._store import PresenceStore, classify
from coord.presence.models import AgentInfo, Joined, Left, PresenceEvent, Updated

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["PresenceWatcher"]

log = logging.getLogger("corral.presence")

HEARTBEAT = 1.0
"""Consumer idle heartbeat: a lost consumer is re-created after two missed beats."""


@dataclass
class _Holder:
    instance: str
    info: AgentInfo


class _Stop:
    pass


_STOP = _Stop()


class PresenceWatcher:
    """An async iterator (and async context manager) of :data:`PresenceEvent`.

    Entering the context (or the first ``__anext__``) subscribes and returns once the agents present
    at that moment are known (:attr:`present`). With ``include_existing`` it first yields a
    :class:`Joined` for each of them, skipping stale expiry markers, then live changes. A renewal of a
    present agent yields nothing (an info change yields :class:`Updated` only with ``updates=True``).
    A key whose holder changed without a tombstone in between yields ``Left(expired)`` then ``Joined``.
    Malformed values are logged and skipped, never raised. Leave the context (or call :meth:`stop`)
    to end the iteration.
    """

    def __init__(
        self,
        js: JetStreamContext,
        store: PresenceStore,
        *,
        include_existing: bool = True,
        updates: bool = False,
        agent_id: str | None = None,
    ) -> None:
        self._js = js
        self._store = store
        self._include_existing = include_existing
        self._updates = updates
        self._agent_id = agent_id
        self._queue: asyncio.Queue[PresenceEvent | _Stop] = asyncio.Queue()
        self._holders: dict[str, _Holder] = {}
        self._seen_seq: dict[str, int] = {}
        self._ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._ready_at_seq: int | None = None
        self._sub: JetStreamContext.PushSubscription | None = None
        self._start_lock = asyncio.Lock()
        self._stopped = False

    # --- public surface ------------------------------------------------------------------
    @property
    def present(self) -> dict[str, AgentInfo]:
        """The agents present as far as this watcher has seen (a copy)."""
        return {agent_id: holder.info for agent_id, holder in self._holders.items()}

    @property
    def is_ready(self) -> bool:
        """True once the agents present at the start are known."""
        return self._ready.is_set()

    async def start(self) -> PresenceWatcher:
        """Subscribe and wait until the agents present now are known; idempotent."""
        async with self._start_lock:
            if self._sub is None and not self._stopped:
                await self._subscribe()
        await self._ready.wait()
        return self

    async def stop(self) -> None:
        """Unsubscribe and end the iteration; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._queue.put_nowait(_STOP)

    def __aiter__(self) -> PresenceWatcher:
        return self

    async def __anext__(self) -> PresenceEvent:
        if self._stopped and self._queue.empty():
            raise StopAsyncIteration
        if self._sub is None:
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
    async def _subscribe(self) -> None:
        stream_last: int | None = None
        if self._agent_id is None:
            state = (await self._js.stream_info(self._store.stream)).state
            stream_last = state.last_seq if state.messages else 0
        self._ready_at_seq = stream_last or None
        self._sub = await self._js.subscribe(
            self._store.prefix + (self._agent_id or ">"),
            stream=self._store.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            idle_heartbeat=HEARTBEAT,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=30.0,
        )
        try:
            info = await self._sub.consumer_info()
        except BaseException:
            self._subscribed.set()
            raise
        if stream_last == 0:
            self._ready.set()
        elif info.num_pending == 0:
            delivered = info.delivered.stream_seq if info.delivered else 0
            if delivered == 0:
                self._ready.set()
            else:
                # Everything that existed has been sent; we are caught up once we processed it.
                target = delivered if self._ready_at_seq is None else min(delivered, self._ready_at_seq)
                self._ready_at_seq = target
        self._subscribed.set()

    async def _on_msg(self, msg: Msg) -> None:
        await self._subscribed.wait()
        try:
            self._handle(msg)
        except Exception:  # a bad message must never stop the watch
            log.exception("presence watch: could not handle a message on %s", msg.subject)

    def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        agent_id = msg.subject[len(self._store.prefix) :]
        if seq > self._seen_seq.get(agent_id, 0):
            self._seen_seq[agent_id] = seq
            self._apply(agent_id, seq, msg, meta.timestamp)
        if not self._ready.is_set() and (
            meta.num_pending == 0 or (self._ready_at_seq is not None and seq >= self._ready_at_seq)
        ):
            self._ready.set()

    def _apply(self, agent_id: str, seq: int, msg: Msg, at: datetime) -> None:
        change = classify(agent_id, seq, at, msg.headers, msg.data)
        emit = self._ready.is_set() or self._include_existing
        previous = self._holders.get(agent_id)
        if change.tombstone is not None:
            if previous is not None:
                del self._holders[agent_id]
                if emit:
                    self._queue.put_nowait(Left(agent_id, change.tombstone, seq, change.at))
            return
        record = change.record
        if record is None:
            log.warning(
                "presence: skipping malformed value of key %r at revision %d (%s)", agent_id, seq, change.problem
            )
            return
        info = record.info()
        self._holders[agent_id] = _Holder(record.instance, info)
        if previous is None:
            if emit:
                self._queue.put_nowait(Joined(info, seq))
        elif previous.instance != record.instance:
            if emit:
                self._queue.put_nowait(Left(agent_id, "expired", seq, change.at))
                self._queue.put_nowait(Joined(info, seq))
        elif self._updates and previous.info != info and emit:
            self._queue.put_nowait(Updated(info, seq))
