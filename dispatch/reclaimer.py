"""The reclaimer: gives the claims of departed workers back to the queue.

It watches presence (no polling) and the task records, keeping an index of current claims by
worker. When a worker leaves, each of its claims is moved back to pending (or to dead when its
attempts are spent) by a compare-and-set that also checks the claim is still the one it saw; the
task store then publishes a fresh notification. A periodic sweep covers what watches can miss:
claims past their deadline, claims of workers absent at start (the full rebuild), and pending tasks
whose notification seems lost. Any number of reclaimers may run at once: the CAS makes them safe.

Telemetry: every reclaim is ``TaskStore.reclaim``, which reports to the connection's observer (the
``reclaim`` span, the reclaim counters and the detection latency); the reclaimer also reports the
number of agents present and the pending tasks per queue (``observer.presence_changed`` and
``observer.queue_depths``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coord.connection import Coord
from coord.errors import Conflict, InvalidTransition, NotFound, StaleClaim
from coord.presence import Joined, Left
from coord.presence.watcher import PresenceWatcher
from coord.tasks import TaskIndex, TaskStatus

__all__ = ["ReclaimEvent", "Reclaimer"]

log = logging.getLogger("corral.reclaimer")

_LOST_RACE = (StaleClaim, Conflict, InvalidTransition, NotFound)


@dataclass(frozen=True)
class ReclaimEvent:
    """One claim given back."""

    task_id: str
    worker_id: str
    claim_id: str
    reason: str
    """Why: ``worker-left:expired``, ``worker-left:graceful``, ``deadline`` or ``worker-absent``."""
    status: str
    """The task's status after the reclaim (pending, or dead when its attempts were spent)."""
    detected_after: float | None
    """Seconds from the worker's departure (as recorded by the server) to the reclaim, when known."""


class Reclaimer:
    """Presence-driven reclaim of departed workers' claims (see the module docstring).

    Use ``async with Reclaimer(coord):`` or :meth:`start` / :meth:`stop`. ``events`` receives every
    reclaim, for progress displays and tests.
    """

    def __init__(
        self, coord: Coord, *, sweep_interval: float | None = None, renotify_after: float | None = None
    ) -> None:
        self.coord = coord
        self.sweep_interval = coord.settings.sweep_interval if sweep_interval is None else sweep_interval
        """Seconds between sweeps (defaults to the connection's settings)."""
        self.renotify_after = coord.settings.renotify_after if renotify_after is None else renotify_after
        """A pending task older than this whose notification seems lost is notified again."""
        self.events: asyncio.Queue[ReclaimEvent] = asyncio.Queue()
        """Every reclaim this reclaimer made, in order."""
        self.reclaimed = 0
        """How many claims it gave back."""
        self._index: TaskIndex | None = None
        self._watcher: PresenceWatcher | None = None
        self._present: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._renotified: dict[str, datetime] = {}

    async def start(self) -> Reclaimer:
        """Start watching; returns once the initial rebuild is done."""
        self._index = await self.coord.tasks.index().start()
        self._watcher = await self.coord.presence.watch(include_existing=False).start()
        self._present = set(self._watcher.present)
        self._observe_presence()
        await self._rebuild()
        self._tasks = [
            asyncio.create_task(self._watch_presence(self._watcher), name="reclaimer-presence"),
            asyncio.create_task(self._sweep_loop(), name="reclaimer-sweep"),
        ]
        return self

    async def stop(self) -> None:
        """Stop watching."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._watcher is not None:
            await self._watcher.stop()
        if self._index is not None:
            await self._index.stop()

    async def __aenter__(self) -> Reclaimer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def claims_of(self, worker_id: str) -> dict[str, str]:
        """Current claims of ``worker_id`` as this reclaimer sees them: task id → claim id."""
        if self._index is None:
            return {}
        return {e.task_id: e.claim_id for e in self._index.claims_of(worker_id) if e.claim_id is not None}

    async def _watch_presence(self, watcher: PresenceWatcher) -> None:
        async for change in watcher:
            if isinstance(change, Joined):
                self._present.add(change.agent.id)
                self._observe_presence()
            elif isinstance(change, Left):
                self._present.discard(change.agent_id)
                self._observe_presence()
                await self.reclaim_worker(change.agent_id, f"worker-left:{change.reason}", departed_at=change.at)

    def _observe_presence(self) -> None:
        self.coord.observer.presence_changed(len(self._present))

    def _observe_depth(self) -> None:
        """Report the pending tasks per queue, as the index sees them."""
        assert self._index is not None
        counts = self._index.counts().items()
        self.coord.observer.queue_depths({queue: n for (queue, status), n in counts if status is TaskStatus.PENDING})

    # --- reclaiming ----------------------------------------------------------------------------
    async def reclaim_worker(self, worker_id: str, reason: str, *, departed_at: datetime | None = None) -> int:
        """Reclaim every claim ``worker_id`` holds now (one CAS each, concurrently); return how many."""
        claims = self.claims_of(worker_id)
        if not claims:
            return 0
        results = await asyncio.gather(
            *(self._reclaim(task_id, worker_id, claim_id, reason, departed_at) for task_id, claim_id in claims.items())
        )
        return sum(results)

    async def _reclaim(
        self, task_id: str, worker_id: str, claim_id: str, reason: str, departed_at: datetime | None
    ) -> bool:
        assert self._index is not None
        kind, _, departure = reason.partition(":")
        try:
            record = await self.coord.tasks.reclaim(
                task_id, claim_id, reason=reason, departure=departure if kind == "worker-left" and departure else None
            )
        except _LOST_RACE:
            return False  # completed, or another reclaimer got there first: nothing to do
        except Exception as err:
            log.warning("reclaimer: reclaim of %s failed (%s); the sweep will retry", task_id, err)
            return False
        self._index.apply(record)
        self.reclaimed += 1
        detected = (datetime.now(UTC) - departed_at).total_seconds() if departed_at else None
        log.info("reclaimed %s from %s (%s) -> %s", task_id, worker_id, reason, record.status)
        self.events.put_nowait(ReclaimEvent(task_id, worker_id, claim_id, reason, str(record.status), detected))
        return True

    async def _rebuild(self) -> None:
        """Reclaim the claims of workers that are not present (e.g. they died while nobody watched).

        The task index and the presence watch are separate streams, so a worker whose claim we see
        may not have been seen joining yet: its absence is confirmed with a read before reclaiming.
        """
        assert self._index is not None
        for worker_id in self._index.workers():
            if worker_id in self._present:
                continue
            if await self.coord.presence.get(worker_id) is not None:
                self._present.add(worker_id)
                continue
            await self.reclaim_worker(worker_id, "worker-absent")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("reclaimer: sweep failed: %s", err)

    async def sweep(self) -> None:
        """One pass: expired deadlines, claims of absent workers, pending tasks with a lost notification."""
        assert self._index is not None
        now = datetime.now(UTC)
        overdue = [e for e in self._index.overdue(now) if e.worker_id and e.claim_id]
        await asyncio.gather(
            *(
                self._reclaim(e.task_id, e.worker_id, e.claim_id, "deadline", None)  # type: ignore[arg-type]
                for e in overdue
            )
        )
        await self._rebuild()
        self._observe_depth()
        stale = now - timedelta(seconds=self.renotify_after)
        for entry in self._index.entries(status=TaskStatus.PENDING):
            last = max(entry.updated_at, self._renotified.get(entry.task_id, entry.updated_at))
            if last > stale or (entry.visible_at is not None and entry.visible_at > now):
                continue
            self._renotified[entry.task_id] = now
            with contextlib.suppress(Exception):
                await self.coord.tasks.notify(await self.coord.tasks.get(entry.task_id), force=True)
