"""The reclaimer: gives the claims of departed workers back to the queue.

It watches presence (no polling) and the task records, keeping an index of current claims by
worker. When a worker leaves, each of its claims is moved back to pending (or to dead when its
attempts are spent) by a compare-and-set that also checks the claim is still the one it saw; the
task store then publishes a fresh notification. A periodic sweep covers what watches can miss:
claims past their deadline, claims of workers absent at start (the full rebuild), and pending tasks
whose notification seems lost. Any number of reclaimers may run at once: the CAS makes them safe.

Telemetry: every reclaim goes through :func:`reclaim_claim`, which (when tracing records) emits a
``reclaim`` span in the task's trace (a child of ``submit``, with a ``presence.left`` event when a
departure caused it) and stores the span's context in the record's meta so the re-run links to it;
it counts ``corral.tasks.reclaimed`` (and ``dead``) and records the detection latency. The reclaimer
also keeps the ``corral.presence.size`` and ``corral.queue.depth`` gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coord import tracing
from coord.connection import Coord
from coord.errors import Conflict, InvalidTransition, NotFound, StaleClaim
from coord.metrics import instruments
from coord.presence import Joined, Left
from coord.presence.watcher import PresenceWatcher
from coord.tasks import TaskIndex, TaskRecord, TaskStatus

__all__ = ["RECLAIM_EPOCH_META", "RECLAIM_WORKER_META", "ReclaimEvent", "Reclaimer", "reclaim_claim"]

log = logging.getLogger("corral.reclaimer")

RECLAIM_EPOCH_META = tracing.RECLAIM_META_PREFIX + "epoch"
"""Meta key naming the epoch of the claim a traced reclaim took back (the re-run is the claim after it)."""
RECLAIM_WORKER_META = tracing.RECLAIM_META_PREFIX + "worker_id"
"""Meta key naming the worker whose claim a traced reclaim took back."""
_LOST_RACE = (StaleClaim, Conflict, InvalidTransition, NotFound)


async def reclaim_claim(
    coord: Coord,
    task_id: str,
    claim_id: str,
    *,
    reason: str,
    worker_id: str | None = None,
    left_reason: str | None = None,
    last_beat: datetime | None = None,
    record: TaskRecord | None = None,
) -> TaskRecord:
    """Reclaim claim ``claim_id`` of ``task_id`` (one CAS: ``TaskStore.reclaim``) with its span and metrics.

    When tracing records, the record is read first (unless ``record`` is given) so that the
    ``reclaim`` span is a child of the task's ``submit`` span; ``left_reason`` (``graceful`` or
    ``expired``) adds a ``presence.left`` event; the span's context, the reclaimed epoch and worker
    are written into the record's meta by the same CAS, for the re-run to link to. A lost race is
    not an error on the span (attribute ``corral.reclaim.outcome=stale``). Counts
    ``corral.tasks.reclaimed`` (and ``dead`` when the attempts are spent) and records
    ``corral.reclaim.detection_latency`` from ``last_beat`` (the claim's last write: claimed or
    extended). Raises what ``TaskStore.reclaim`` raises (``StaleClaim`` ...).
    """
    if tracing.enabled():
        done = await _traced_reclaim(coord, task_id, claim_id, reason, worker_id, left_reason, record)
    else:
        done = await coord.tasks.reclaim(task_id, claim_id, reason=reason)
    inst = instruments()
    attrs = inst.attrs(done.queue)
    inst.reclaimed.add(1, attrs)
    if done.status is TaskStatus.DEAD:
        inst.dead.add(1, attrs)
    if last_beat is not None:
        inst.detection_latency.record(max(0.0, (datetime.now(UTC) - last_beat).total_seconds()), attrs)
    return done


async def _traced_reclaim(
    coord: Coord,
    task_id: str,
    claim_id: str,
    reason: str,
    worker_id: str | None,
    left_reason: str | None,
    record: TaskRecord | None,
) -> TaskRecord:
    current = record if record is not None else await coord.tasks.get(task_id)
    held = current.claim
    if current.status is not TaskStatus.CLAIMED or held is None or held.claim_id != claim_id:
        # Already settled or taken back: no span for a reclaim that cannot happen (the store says why).
        return await coord.tasks.reclaim(task_id, claim_id, reason=reason)
    worker = worker_id or held.worker_id
    lost: Exception | None = None
    with tracing.start_span(
        tracing.RECLAIM,
        task_id,
        current.queue,
        current.attempt,
        current.epoch,
        context=tracing.context_from_meta(current.meta),
    ) as span:
        span.set_attribute("corral.worker.id", worker)
        span.set_attribute("corral.reclaim.reason", reason)
        if left_reason is not None:
            span.add_event(tracing.EVENT_PRESENCE_LEFT, {"reason": left_reason, "corral.worker.id": worker})
        meta = tracing.context_to_meta(prefix=tracing.RECLAIM_META_PREFIX)
        meta[RECLAIM_EPOCH_META] = str(current.epoch)
        meta[RECLAIM_WORKER_META] = worker
        try:
            done = await coord.tasks.reclaim(task_id, claim_id, reason=reason, meta=meta)
        except _LOST_RACE as err:
            span.set_attribute("corral.reclaim.outcome", "stale")
            lost = err
        else:
            span.set_attribute("corral.reclaim.outcome", done.status.value)
    if lost is not None:
        raise lost
    return done


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

    def __init__(self, coord: Coord, *, sweep_interval: float = 1.0, renotify_after: float = 30.0) -> None:
        self.coord = coord
        self.sweep_interval = sweep_interval
        self.renotify_after = renotify_after
        self.events: asyncio.Queue[ReclaimEvent] = asyncio.Queue()
        """Every reclaim this reclaimer made, in order."""
        self.reclaimed = 0
        """How many claims it gave back."""
        self._index: TaskIndex | None = None
        self._watcher: PresenceWatcher | None = None
        self._present: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._renotified: dict[str, datetime] = {}
        self._metrics = instruments()
        self._depth_queues: set[str] = set()

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
        self._metrics.presence_size.set(len(self._present), self._metrics.attrs())

    def _observe_depth(self) -> None:
        """Set ``corral.queue.depth`` per queue: pending tasks in the index (0 once for a queue that emptied)."""
        assert self._index is not None
        depth = {queue: n for (queue, status), n in self._index.counts().items() if status is TaskStatus.PENDING}
        for queue in self._depth_queues - depth.keys():
            depth[queue] = 0
        for queue, n in depth.items():
            self._metrics.queue_depth.set(n, self._metrics.attrs(queue))
        self._depth_queues = {queue for queue, n in depth.items() if n}

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
        entry = self._index.entry(task_id)
        last_beat = entry.updated_at if entry is not None and entry.claim_id == claim_id else None
        kind, _, left_reason = reason.partition(":")
        try:
            record = await reclaim_claim(
                self.coord,
                task_id,
                claim_id,
                reason=reason,
                worker_id=worker_id,
                left_reason=left_reason if kind == "worker-left" and left_reason else None,
                last_beat=last_beat,
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
