"""The reclaimer: gives the claims of departed workers back to the queue.

**One active reclaimer per namespace.** Every reclaimer (``corral reclaimer``, or inside a
:class:`~dispatch.Dispatcher`) is a candidate for the lease ``leader`` in ``{ns}_roster``
(:mod:`coord.lease`, with the presence TTL and interval), served by :class:`~dispatch.terms.TermRunner`.
Only the holder is *active*: it starts the task index, the presence watch, the limits view, the
rebuild (reclaiming the claims of absent workers, so fail-over leaves no gap) and the sweep, then
marks the lease ready; when the term ends all of that stops and it is a standby again, following the
lease key alone (one message per renewal). A standalone ``corral reclaimer`` is *preferred*: a
parent holding the lease hands it over when it asks. Fencing: no reclaim, slot repair or notification deletion
starts unless :meth:`~coord.lease.Lease.valid`, and every reclaim is still a CAS on the claim seen, so
an overlap is safe too (``candidate=False``: active from start to stop, as tests stage an overlap).

While active it watches presence (no polling) and the task records, keeping an index of current
claims by worker. When a worker leaves, each of its claims is moved back to pending (or to dead when
its attempts are spent) by a compare-and-set that also checks the claim is still the one it saw; the
task store then publishes a fresh notification. A periodic sweep covers what watches can miss:
claims past their deadline (reclaimed only if the record read inside the CAS is still overdue),
claims of workers absent at start (the full rebuild), concurrency slots whose claims are over
(see :mod:`coord.limits`; a reclaim gives its claim's slot back at once, and keys under ``slot.`` that
are no slot are removed), and pending tasks without a deliverable notification: a notification no
worker will be given (its consumer gave up on it, or its subject is no notification subject, see
:mod:`dispatch.undeliverable`) is deleted and its task, if pending, notified again; a pending task
whose notification is no longer in the stream (purged, lost) is notified again after
``renotify_after``. Both run in the background, never delaying a reclaim. Reclaimers acting at once
are safe: the CAS decides, only the one whose delete removed a message renotifies its task, and the
renotify ids they derive are the same, so the stream keeps one notification for all of them.

The active term keeps a :class:`PresenceFollower` (the roster keeper by default) in step with presence:
reconciled after the rebuild and before the lease is marked ready, then every ``RECONCILE_EVERY``.

Telemetry: every reclaim is ``TaskStore.reclaim``, which reports to the connection's observer (the
``reclaim`` span, the reclaim counters and the detection latency); the active reclaimer also reports
the number of agents present and the pending tasks per queue (``observer.presence_changed`` and
``observer.queue_depths``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from coord.aio import stop_tasks
from coord.connection import Coord
from coord.errors import Conflict, InvalidTransition, NotFound, StaleClaim
from coord.ids import new_id, validate_id
from coord.lease import LEADER, Lease, Term
from coord.limits import LimitsView
from coord.presence import Joined, Left, RosterKeeper
from coord.presence.roster import PresenceFollower
from coord.presence.watcher import PresenceWatcher
from coord.streams import Stream
from coord.tasks import IndexEntry, TaskIndex, TaskStatus
from coord.validation import TIMEOUT, check_number
from dispatch.reclaim_events import EVENTS_KEPT, BoundedEvents, ReclaimEvent, ReclaimReason
from dispatch.terms import TermRunner
from dispatch.undeliverable import find_undeliverable, parse_notification_subject

__all__ = [
    "EVENTS_KEPT",
    "PresenceFollower",
    "ReclaimEvent",
    "ReclaimReason",
    "Reclaimer",
    "RoleCallback",
]

log = logging.getLogger("corral.reclaimer")

_LOST_RACE = (StaleClaim, Conflict, InvalidTransition, NotFound)
STOP_WITHIN = 5.0
RENOTIFY_EVERY = 10.0
"""Longest pause between two passes over the dispatch stream for undeliverable or lost notifications."""


RECONCILE_EVERY = 60.0
"""Seconds between two reconciles of the follower (the roster) with presence while active: bounds how long a
forged roster write (only the parent and reclaimer roles may write one) is believed by roster followers."""


RoleCallback = Callable[[bool, Term | None], None]
"""Told ``(active, holder seen)`` each time a reclaimer becomes active or standby."""


class Reclaimer:
    """Presence-driven reclaim of departed workers' claims (see the module docstring).

    Use ``async with Reclaimer(coord):`` or :meth:`start` / :meth:`stop`. ``events`` receives every
    reclaim (the newest 1,024 when nobody reads them), for progress displays and tests; it and the
    counters go on across terms. ``candidate_id`` names it in the lease (a new id by default);
    ``preferred`` (``corral reclaimer``) makes a live non-preferred holder (a parent's) hand the lease to it;
    ``follower`` is kept in step with presence while active; ``on_role`` is told each change of role.
    """

    def __init__(
        self,
        coord: Coord,
        *,
        sweep_interval: float | None = None,
        renotify_after: float | None = None,
        candidate: bool = True,
        candidate_id: str | None = None,
        preferred: bool = False,
        follower: PresenceFollower | None = None,
        on_role: RoleCallback | None = None,
    ) -> None:
        check_number("sweep_interval", sweep_interval, TIMEOUT, optional=True)
        check_number("renotify_after", renotify_after, TIMEOUT, optional=True)
        self.coord = coord
        self.sweep_interval = coord.settings.sweep_interval if sweep_interval is None else sweep_interval
        """Seconds between sweeps (defaults to the connection's settings)."""
        self.renotify_after = coord.settings.renotify_after if renotify_after is None else renotify_after
        """A pending task older than this whose notification is no longer queued is notified again."""
        self.id = validate_id(candidate_id or new_id("r"), "candidate_id")
        """This reclaimer's id in the lease."""
        self.lease: Lease | None = (
            Lease(
                coord.roster,
                LEADER,
                self.id,
                ttl=coord.settings.presence_ttl,
                interval=coord.settings.presence_interval,
                preferred=preferred,
            )
            if candidate
            else None
        )
        """Its candidacy (None with ``candidate=False``: active from start to stop)."""
        self.follower: PresenceFollower = RosterKeeper(coord.roster) if follower is None else follower
        """Kept in step with presence while active: the namespace's roster (the presence change feed) by default."""
        self.on_role = on_role
        self.events: asyncio.Queue[ReclaimEvent] = BoundedEvents(EVENTS_KEPT)
        """The reclaims this reclaimer made, in order."""
        self.reclaimed = 0
        """How many claims it gave back."""
        self.renotified = 0
        """How many lost or undeliverable notifications it published again."""
        self.removed = 0
        """How many undeliverable notifications it deleted from the dispatch stream."""
        self.terms = 0
        """How many terms it has been active for (begun)."""
        self._dispatch = Stream(coord.js, coord.nc, coord.names.dispatch_stream, patience=5.0)
        self._index: TaskIndex | None = None
        self._watcher: PresenceWatcher | None = None
        self._slots: LimitsView | None = None
        self._present: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._renotifier: asyncio.Task[int] | None = None
        self._terms = TermRunner(self.lease, begin=self._begin, end=self._end) if self.lease is not None else None
        self._active = asyncio.Event()
        self._last_renotify = 0.0
        self._last_reconcile = 0.0
        self._stopping = False

    # --- role -------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while this reclaimer is the active one (its term started and rebuilt)."""
        return self._active.is_set()

    @property
    def holder(self) -> Term | None:
        """The lease's live term as last seen (this reclaimer's or another's); None when vacant."""
        return self.lease.current if self.lease is not None else None

    async def until_active(self) -> None:
        """Return once this reclaimer is active (rebuilt, lease marked ready)."""
        await self._active.wait()

    def _fenced(self) -> bool:
        """True unless a term's action must not start: the lease is not (or no longer surely) held."""
        return self.lease is not None and not self.lease.valid()

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> Reclaimer:
        """Campaign; returns once the role is known: active and rebuilt, or standby (the holder seen, or
        a vacant lease it tried to take)."""
        self._stopping = False
        if self._terms is None:
            try:
                await self._activate()
            except BaseException:
                await self._deactivate()
                raise
            self._begin_term()
            return self
        await self._terms.start()
        if not self.active:
            self._tell_role(False)
        return self

    async def stop(self) -> None:
        """Stop (an active term first, then the candidacy: a held lease is released so a standby takes
        over at once); returns within a few seconds whatever the server is doing."""
        self._stopping = True
        if self._terms is not None:
            await self._terms.stop()
        await self._deactivate()

    async def __aenter__(self) -> Reclaimer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _begin(self) -> None:
        """A term begins: start and rebuild, reconcile the follower, then mark the lease ready."""
        assert self.lease is not None
        await self._activate()
        # roster reconcile, then mark_ready: followers see the lease ready once the roster is current
        await self._reconcile_follower()
        # a mark_ready whose write failed leaves the flag for the next renewal: act while the lease is held
        if await self.lease.mark_ready() or self.lease.held:
            self._begin_term()

    async def _reconcile_follower(self) -> None:
        self._last_reconcile = asyncio.get_running_loop().time()
        try:
            await self.follower.reconcile(self._watcher.present if self._watcher is not None else {})
        except Exception:
            log.exception("reclaimer %s: the presence follower failed to reconcile", self.id)

    async def _end(self) -> None:
        """A term ends: everything it started stops; the reclaimer is a standby again."""
        was_active = self.active
        await self._deactivate()
        if was_active and not self._stopping:
            log.info("reclaimer %s: term over; standby", self.id)
            self._tell_role(False)

    async def _activate(self) -> None:
        """Start what a term keeps and rebuild (reclaim the claims of absent workers)."""
        self._index = await self.coord.tasks.index(finished=False).start()
        # direct: the keeper of the roster follows the presence bucket itself, never the roster it writes
        self._watcher = await self.coord.presence.watch(include_existing=False, updates=True, direct=True).start()
        self._present = set(self._watcher.present)
        self._slots = await LimitsView(self.coord.limits).start()
        self._observe_presence()
        await self._rebuild()

    def _begin_term(self) -> None:
        assert self._watcher is not None
        self.terms += 1
        self._tasks = [
            asyncio.create_task(self._watch_presence(self._watcher), name="reclaimer-presence"),
            asyncio.create_task(self._sweep_loop(), name="reclaimer-sweep"),
        ]
        self._active.set()
        log.info("reclaimer %s: active (term %d)", self.id, self.terms)
        self._tell_role(True)

    async def _deactivate(self) -> None:
        """Stop everything the term started (within :data:`STOP_WITHIN` each); never raises."""
        self._active.clear()
        tasks = [*self._tasks, *([self._renotifier] if self._renotifier is not None else [])]
        self._tasks, self._renotifier = [], None
        await stop_tasks(tasks, within=STOP_WITHIN, what="reclaimer")
        parts, self._watcher, self._slots, self._index = (self._watcher, self._slots, self._index), None, None, None
        self._present = set()
        for part in parts:
            if part is not None:
                try:
                    await part.stop()
                except Exception as err:
                    log.debug("reclaimer %s: stopping %s failed: %s", self.id, type(part).__name__, err)

    def _tell_role(self, active: bool) -> None:
        if self.on_role is None:
            return
        try:
            self.on_role(active, self.holder)
        except Exception:
            log.exception("reclaimer %s: the role callback failed", self.id)

    def claims_of(self, worker_id: str) -> dict[str, str]:
        """Current claims of ``worker_id`` as this reclaimer sees them: task id → claim id."""
        if self._index is None:
            return {}
        return {e.task_id: e.claim_id for e in self._index.claims_of(worker_id) if e.claim_id is not None}

    async def _watch_presence(self, watcher: PresenceWatcher) -> None:
        async for change in watcher:
            try:
                if not self._fenced():  # a term being handed over writes nothing the next one must undo
                    await self.follower.apply(change)
            except Exception:  # the follower's trouble must not end the watch
                log.exception("reclaimer: the presence follower failed on %r", change)
            try:
                if isinstance(change, Joined):
                    self._present.add(change.agent.id)
                    self._observe_presence()
                elif isinstance(change, Left):
                    self._present.discard(change.agent_id)
                    self._observe_presence()
                    await self.reclaim_worker(change.agent_id, ReclaimReason.left(change.reason), departed_at=change.at)
            except Exception:  # one departure must not end the watch
                log.exception("reclaimer: handling %r failed", change)

    def _observe_presence(self) -> None:
        self.coord.observer.presence_changed(len(self._present))

    def _observe_depth(self) -> None:
        """Report the pending tasks per queue, as the index sees them."""
        if self._index is None:
            return
        counts = self._index.counts().items()
        self.coord.observer.queue_depths({queue: n for (queue, status), n in counts if status is TaskStatus.PENDING})

    # --- reclaiming ----------------------------------------------------------------------------
    async def reclaim_worker(
        self, worker_id: str, reason: ReclaimReason, *, departed_at: datetime | None = None
    ) -> int:
        """Reclaim every claim ``worker_id`` holds now (one CAS each, concurrently); return how many."""
        claims = self.claims_of(worker_id)
        if not claims:
            return 0
        results = await asyncio.gather(
            *(self._reclaim(task_id, worker_id, claim_id, reason, departed_at) for task_id, claim_id in claims.items())
        )
        if any(results):
            await self.heal_slots()  # the reclaimed claims' concurrency slots come back at once
        return sum(results)

    async def _reclaim(
        self, task_id: str, worker_id: str, claim_id: str, reason: ReclaimReason, departed_at: datetime | None
    ) -> bool:
        if self._index is None or self._fenced():
            return False  # standby, or the term may be over: the next holder's rebuild takes it back
        try:
            record = await self.coord.tasks.reclaim(
                task_id,
                claim_id,
                reason=reason.value,
                departure=reason.departure,
                overdue_only=reason is ReclaimReason.DEADLINE,
            )
        except _LOST_RACE:
            return False  # completed, extended, or another reclaimer got there first: nothing to do
        except Exception as err:
            log.warning("reclaimer: reclaim of %s failed (%s); the sweep will retry", task_id, err)
            return False
        if self._index is not None:
            self._index.apply(record)
        self.reclaimed += 1
        detected = (datetime.now(UTC) - departed_at).total_seconds() if departed_at else None
        log.info("reclaimed %s from %s (%s) -> %s", task_id, worker_id, reason, record.status)
        self.events.put_nowait(ReclaimEvent(task_id, worker_id, claim_id, reason, str(record.status), detected))
        return True

    async def heal_slots(self) -> int:
        """Take back every concurrency slot whose claim is over (ended, reclaimed, or never written by
        a holder that died) and remove keys under ``slot.`` that are no slot; return how many slots.
        Never raises: the next sweep tries again."""
        if self._slots is None or self._index is None or self._fenced():
            return 0
        held, foreign = self._slots.held_slots(), self._slots.foreign_keys()
        if not held and not foreign:
            return 0
        try:
            if foreign:
                await self.coord.limits.remove_keys(foreign)
            return len(await self.coord.limits.heal(held, known=self._index.entry))
        except Exception as err:
            log.warning("reclaimer: taking back concurrency slots failed (%s); the next sweep retries", err)
            return 0

    async def _rebuild(self) -> None:
        """Reclaim the claims of workers that are not present (e.g. they died while nobody watched).

        The task index and the presence watch are separate streams, so a worker whose claim we see
        may not have been seen joining yet: its absence is confirmed with a read before reclaiming.
        """
        if self._index is None:
            return
        suspects = [w for w in self._index.workers() if w not in self._present]
        if not suspects:
            return
        infos = await asyncio.gather(*(self.coord.presence.get(w) for w in suspects), return_exceptions=True)
        absent: list[str] = []
        for worker_id, info in zip(suspects, infos, strict=True):
            if isinstance(info, BaseException):
                continue  # presence unknown: never reclaim on a guess
            if info is not None:
                self._present.add(worker_id)
            else:
                absent.append(worker_id)
        await asyncio.gather(*(self.reclaim_worker(w, ReclaimReason.WORKER_ABSENT) for w in absent))

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("reclaimer: sweep failed: %s", err)

    async def sweep(self) -> None:
        """One pass: expired deadlines and absent workers now, lost notifications in the background.

        Nothing while standby (or while the term may be over)."""
        if self._index is None or self._fenced():
            return
        now = datetime.now(UTC)
        overdue = [e for e in self._index.overdue(now) if e.worker_id and e.claim_id]
        await asyncio.gather(
            *(
                self._reclaim(e.task_id, e.worker_id, e.claim_id, ReclaimReason.DEADLINE, None)  # type: ignore[arg-type]
                for e in overdue
            )
        )
        await self._rebuild()
        await self.heal_slots()
        self._observe_depth()
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_reconcile >= RECONCILE_EVERY:
            await self._reconcile_follower()  # repairs what a forged roster write changed since the last one
        idle = self._renotifier is None or self._renotifier.done()
        if idle and loop.time() - self._last_renotify >= min(self.renotify_after / 2, RENOTIFY_EVERY):
            self._last_renotify = loop.time()
            self._renotifier = asyncio.create_task(self.renotify_lost(), name="reclaimer-renotify")

    async def renotify_lost(self) -> int:
        """Give every pending task a deliverable notification again; return how many were published.

        First every notification no worker will be given (:func:`~dispatch.undeliverable.find_undeliverable`)
        is deleted, and the task it names, if pending, notified again under an id naming the deleted
        message's sequence (fresh: no duplicate window drops it; the same for every reclaimer, and only
        the one whose delete succeeded publishes). Then every task pending for ``renotify_after``
        seconds whose notification is no longer in the stream (the one stream-info request of the pass
        tells) is notified again under an id derived from the record and the time it has been waiting.
        """
        index = self._index
        if index is None:
            return 0
        done = 0
        subjects = await self._dispatch.subjects(self.coord.names.dispatch_subjects)
        for lost in await find_undeliverable(self.coord, self._dispatch, subjects):
            if self._stopping or self._fenced():
                break
            try:
                if not await self._dispatch.delete(lost.seq):
                    continue  # acknowledged, or another reclaimer removed it
            except Exception as err:
                log.warning("reclaimer: removing undeliverable notification %d failed: %s", lost.seq, err)
                continue
            self.removed += 1
            log.info("reclaimer: removed notification %d on %s (no worker would be given it)", lost.seq, lost.subject)
            if lost.task_id is not None and await self._renotify(lost.task_id, f"s{lost.seq}", None):
                done += 1
        now = datetime.now(UTC)
        waiting: list[IndexEntry] = [
            e
            for e in index.entries(status=TaskStatus.PENDING)
            if (now - e.updated_at).total_seconds() >= self.renotify_after
            and (e.visible_at is None or e.visible_at <= now)
        ]
        if waiting:
            # A task renotified above counts as queued: its subject was listed before the removal.
            queued = {parsed[1] for s in subjects if (parsed := parse_notification_subject(self.coord, s))}
            for entry in waiting:
                if self._stopping or self._fenced():
                    break
                if entry.task_id in queued:
                    continue
                round_ = int((now - entry.updated_at).total_seconds() // self.renotify_after)
                if await self._renotify(entry.task_id, round_, entry.revision):
                    done += 1
        if done:
            log.info("reclaimer: renotified %d task(s) whose notification was lost or undeliverable", done)
        self.renotified += done
        return done

    async def _renotify(self, task_id: str, again: int | str, revision: int | None) -> bool:
        """Notify ``task_id`` again if it is pending (at ``revision`` when given); never raises."""
        try:
            record = await self.coord.tasks.get(task_id)
            if record.status is not TaskStatus.PENDING or revision not in (None, record.revision):
                return False
            await self.coord.tasks.notify(record, again=again)
        except NotFound:
            return False
        except Exception as err:
            log.warning("reclaimer: renotify of %s failed: %s", task_id, err)
            return False
        return True
