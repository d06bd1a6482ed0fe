"""Watching presence: :class:`PresenceWatcher` yields Joined / Left / Updated, changes only.

While a live, ready holder of the reclaimer's lease keeps the roster (:mod:`coord.presence.roster`),
a watcher follows the roster: one message per change, plus one per renewal of the lease. While none
does (no reclaimer running, a fail-over in progress) it follows the presence bucket itself: one
message per renewal of every agent watched. It switches both ways on its own, diffing the two views
so that the consumer sees each Joined and Left exactly once. Departures arrive as they happen: a DEL
for a graceful leave, the server's MaxAge marker for an expiry (the keeper's DEL with the reason in
the roster). There is no polling. A consumer lost to a server restart or a leader move is noticed
within two to four heartbeats and re-created from the last revision seen.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from types import TracebackType

from coord.aio import stop_tasks
from coord.kv import Bucket, Entry, KeyWatch
from coord.presence._store import Latest, PresenceStore, classify
from coord.presence.models import AgentInfo, Joined, Left, PresenceEvent, Updated
from coord.presence.sources import HEARTBEAT, DirectSource, Holder, RosterSource, Source, same_incarnation

__all__ = ["PresenceWatcher", "next_change", "wait_absent"]

log = logging.getLogger("corral.presence")

UNKNOWN = "."
"""Stands for "not compared yet" among the agents the two views disagree on (no agent id has a dot)."""
PAUSE = 1.0
"""Seconds before a failed switch to the presence bucket is tried again."""


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

    With a ``roster`` bucket it follows the roster while a live, ready keeper holds its lease and
    the presence bucket otherwise (``ttl`` and ``interval``: the namespace's presence timing, which
    bounds how long a silent lease counts as live); without one it always follows the presence
    bucket (what the roster's keeper itself must do).
    """

    def __init__(
        self,
        store: PresenceStore,
        *,
        include_existing: bool = True,
        updates: bool = False,
        agent_id: str | None = None,
        roster: Bucket | None = None,
        ttl: float = 3.0,
        interval: float = 1.0,
    ) -> None:
        self._store = store
        self._include_existing = include_existing
        self._updates = updates
        self._agent_id = agent_id
        self._ttl = ttl
        self._queue: asyncio.Queue[PresenceEvent | _Stop] = asyncio.Queue()
        self._holders: dict[str, Holder] = {}
        self._roster = (
            None
            if roster is None
            else RosterSource(roster, self._on_change, self._wake_up, ttl=ttl, interval=interval, agent_id=agent_id)
        )
        self._direct: DirectSource | None = None
        self._differ: set[str] = {UNKNOWN}
        """Agents the roster and the presence bucket disagree on (while both are followed)."""
        self._active: Source | None = None
        self._wake = asyncio.Event()
        self._controller: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._stopped = False
        self.switches = 0
        """How many times this watcher switched between the roster and the presence bucket."""

    # --- public surface ------------------------------------------------------------------
    @property
    def present(self) -> dict[str, AgentInfo]:
        """The agents present as far as this watcher has seen (a copy)."""
        return {agent_id: holder.info for agent_id, holder in self._holders.items()}

    @property
    def since(self) -> dict[str, datetime]:
        """When the server stored the value that announced each present agent or its latest info (a copy).

        For an agent that joined while watched this is its join (or its latest info change); for one
        present at the start, the value seen then (no earlier than its join). Renewals do not move it.
        """
        return {agent_id: holder.at for agent_id, holder in self._holders.items()}

    @property
    def mode(self) -> str:
        """``roster`` while following the roster, ``presence`` while following the presence bucket."""
        return "roster" if self._active is not None and self._active is self._roster else "presence"

    @property
    def is_ready(self) -> bool:
        """True once the agents present at the start are known."""
        return self._ready.is_set()

    async def start(self) -> PresenceWatcher:
        """Subscribe and wait until the agents present now are known; idempotent."""
        async with self._start_lock:
            if not self._started and not self._stopped:
                self._started = True
                await self._begin()
                self._ready.set()
        await self._ready.wait()
        return self

    async def stop(self) -> None:
        """Unsubscribe and end the iteration; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._controller is not None:
            await stop_tasks([self._controller], within=5.0, what="presence watcher")
        for source in (self._roster, self._direct):
            if source is not None:
                await source.stop()
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

    # --- choosing the source -------------------------------------------------------------
    async def _begin(self) -> None:
        # Always from the presence bucket first: the roster is only followed once it agrees with it,
        # so a roster that is stale, behind or forged never makes an agent seem to leave or join.
        roster = self._roster
        if roster is not None:
            try:
                await roster.start()
            except Exception as err:  # e.g. a namespace provisioned before the roster existed
                log.warning("presence: cannot follow the roster (%s); following the presence bucket only", err)
                await roster.stop()
                roster = self._roster = None
        self._activate(await self._start_direct(), emit=self._include_existing)
        if roster is not None:
            self._controller = asyncio.create_task(self._control(roster), name="presence-watch-source")

    async def _start_direct(self) -> DirectSource:
        direct = self._direct = DirectSource(self._store, self._on_change, agent_id=self._agent_id)
        try:
            await direct.start()
        except BaseException:
            self._direct = None
            await direct.stop()
            raise
        if self._roster is not None:
            view, other = direct.view, self._roster.view
            self._differ = {a for a in view.keys() | other.keys() if not _same_info(view.get(a), other.get(a))}
        return direct

    async def _control(self, roster: RosterSource) -> None:
        """Follow the roster while its keeper is live and ready, the presence bucket otherwise."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wait = roster.live_for(now)
            try:
                if self._active is roster and not wait:
                    self._activate(await self._start_direct(), emit=True)
                    log.info("presence: the roster has no live keeper; following the presence bucket")
                    continue
                # The keeper writes each change a moment after it happens: switch only at a moment the
                # two views agree, so no agent flickers out and back (and a forged roster is never used).
                if self._active is not roster and wait and not self._differ and await self._to_roster(roster):
                    continue
            except Exception as err:
                if self._store.bucket.nc.is_closed:
                    return  # for good: nothing this loop could switch to would receive anything
                log.warning("presence: switching the watch's source failed (%s); trying again", err)
                await asyncio.sleep(PAUSE)
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(wait or None):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _to_roster(self, roster: RosterSource) -> bool:
        await roster.refresh()
        if self._differ or self._active is roster:
            return False
        self._activate(roster, emit=True)
        log.info("presence: the roster has a live keeper; following it")
        direct, self._direct = self._direct, None
        self._differ = {UNKNOWN}  # until a direct source runs again
        if direct is not None:
            await direct.stop()
        return True

    def _wake_up(self) -> None:
        self._wake.set()

    # --- events --------------------------------------------------------------------------
    def _activate(self, source: Source, *, emit: bool) -> None:
        """Follow ``source`` from now on: the consumer's view becomes its view, by events."""
        if self._active is not None:
            self.switches += 1
        self._active = source
        for agent_id in [a for a in self._holders if a not in source.view]:
            self._apply(source, agent_id, emit)
        for agent_id in source.view:
            self._apply(source, agent_id, emit)

    def _on_change(self, source: Source, agent_id: str) -> None:
        direct, roster = self._direct, self._roster
        if direct is not None and roster is not None:
            if _same_info(direct.view.get(agent_id), roster.view.get(agent_id)):
                self._differ.discard(agent_id)
            else:
                self._differ.add(agent_id)
        if source is self._active:
            self._apply(source, agent_id, self._ready.is_set() or self._include_existing)
        self._wake.set()

    def _apply(self, source: Source, agent_id: str, emit: bool) -> None:
        """Make the consumer's view of ``agent_id`` equal to ``source``'s, yielding the difference."""
        old, new = self._holders.get(agent_id), source.view.get(agent_id)
        if new is None:
            if old is None:
                return
            del self._holders[agent_id]
            gone = source.gone.get(agent_id)
            if emit:
                if gone is None:
                    self._put(Left(agent_id, "expired", source.revision, datetime.now(UTC)))
                else:
                    self._put(Left(agent_id, gone.reason, gone.revision, gone.at))
            return
        self._holders[agent_id] = new
        if not emit:
            return
        if old is None:
            self._put(Joined(new.info, new.revision))
        elif not same_incarnation(old, new):
            self._put(Left(agent_id, "expired", new.revision, new.at))
            self._put(Joined(new.info, new.revision))
        elif self._updates and old.info != new.info:
            self._put(Updated(new.info, new.revision))

    def _put(self, event: PresenceEvent) -> None:
        self._queue.put_nowait(event)


def _same_info(a: Holder | None, b: Holder | None) -> bool:
    return a is b or (a is not None and b is not None and a.info == b.info)


async def wait_absent(via: PresenceStore | PresenceWatcher, agent_id: str, timeout: float) -> bool:
    """True as soon as ``agent_id`` is absent (at once if it is), False if still present after ``timeout`` s.

    ``via`` is the presence store (the key itself is watched) or a fresh watcher of that agent
    (``include_existing=False``), entered here.
    """
    watcher = (
        via if isinstance(via, PresenceWatcher) else PresenceWatcher(via, include_existing=False, agent_id=agent_id)
    )
    try:
        async with asyncio.timeout(timeout), watcher as w:
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
