"""A worker's intake: notifications of one queue fetched in batches, each claimed or set aside.

A notification is a wake-up hint, never a source of state: what is claimed (spec, payload, parent,
limits, status) is read from the tasks bucket, one batched read per fetched batch, so a forged
notification can at most make a worker look at a task. Every failure is contained to the message it
concerns, and every message ends in one of a few bounded outcomes, decided by the one policy of
:mod:`coord.consumer.policy` from its delivery count (read on every path):

* claimed (acked), or stale (acked and dropped: someone else has the task, it ended or is gone);
* waiting — not yet visible, or refused for now by the queue's limits (:mod:`workers.gate`): put
  back for a delay that grows with its deliveries (never dead-lettered), and renewed (replaced by a
  fresh notification read from the stored record) once it has been delivered
  :data:`~coord.consumer.RENEW_AT` times, before the server's own bound would strand it;
* malformed or poisoned: terminated and dead-lettered with its reason;
* failing to claim for another reason: put back with a growing delay, dead-lettered after
  :attr:`coord.consumer.FAILING.limit` deliveries (or at once when its count cannot be read).

A dead-lettered notification loses nothing: the task's record stays pending and the reclaimer's
sweep notifies it again. The queue's consumers are the provisioner's (:class:`ConsumerCheck` re-creates
a lost one only where this credential may, and reports a re-pointed one loudly until it is set
back). The queue's priority levels each have their own consumer; :mod:`workers.levels` fills each
batch from them. Slots are reserved per batch (:class:`coord.consumer.Reservation`) and whatever is
not handed to a run goes back on every exit path.

A worker runs :meth:`Intake.run` for its life; a process that takes work only when asked (an agent's
``task_claim`` in ``corral mcp``) calls :meth:`Intake.take` per request and :meth:`Intake.settle` after
it: the same rounds, limits and outcomes, fetching nothing between requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from coord.aio import first_of
from coord.connection import Coord
from coord.consumer import (
    NOTIFICATION_ACK_WAIT,
    SERVER_MAX_DELIVER,
    ConsumerCheck,
    Reservation,
    Settler,
    Slots,
    deliveries,
    must_renew,
    queue_consumer_config,
)
from coord.errors import Conflict, InvalidRecord, InvalidTransition, NotFound, NotYetVisible
from coord.priority import LEVELS, Priority
from coord.retry import Pauses
from coord.tasks import Claim, Notification, TaskRecord, TaskStatus
from coord.validation import describe
from workers.gate import Gate
from workers.levels import Levels
from workers.stats import WorkerStats

__all__ = [
    "FETCH_WAIT",
    "MAX_NAK_DELAY",
    "NOTIFICATION_ACK_WAIT",
    "SERVER_MAX_DELIVER",
    "Intake",
    "Slots",
    "queue_consumer",
]

log = logging.getLogger("corral.worker")

FETCH_WAIT = 1.0
"""Longest a pull request waits on the server; also the longest a stop waits for fetches to end."""
MAX_NAK_DELAY = 3600.0
"""Longest a not-yet-visible notification is put back for at a time."""


async def queue_consumer(
    coord: Coord, queue: str, priority: Priority = Priority.NORMAL
) -> JetStreamContext.PullSubscription:
    """A nats-py pull subscription bound to the shared durable consumer of ``queue`` at ``priority``
    (which the provisioner or a parent created; the worker itself pulls through :class:`workers.levels.Levels`)."""
    return await coord.js.pull_subscribe_bind(
        coord.names.queue_consumer(queue, priority), stream=coord.names.dispatch_stream
    )


OnClaim = Callable[[Claim, TaskRecord | None], None]


class Intake:
    """Fetches and claims the notifications of one queue for a worker (see the module docstring).

    Runs while ``present`` is set (the worker holds its presence) until ``stopping`` is set.
    ``on_claim`` receives each claim won and the stored pending record it was claimed from; the slot
    of that claim is the claim's from then on (given back with :meth:`Slots.returned` when it ends).
    """

    def __init__(
        self,
        coord: Coord,
        queue: str,
        *,
        worker_id: str,
        lease: float | None,
        slots: Slots,
        max_batch: int,
        on_claim: OnClaim,
        present: asyncio.Event,
        stopping: asyncio.Event,
        stats: WorkerStats,
        gate: Gate | None = None,
    ) -> None:
        self.queue = queue
        """The queue this intake serves."""
        self.fetching = asyncio.Event()
        """Set once the queue's consumers were found as configured and pulled from (cleared while they are not)."""
        self._coord = coord
        self._worker_id = worker_id
        self._lease = lease
        self._slots = slots
        self._max_batch = max_batch
        self._on_claim = on_claim
        self._present = present
        self._stopping = stopping
        self._stats = stats
        self._levels: Levels | None = None
        self._gate = gate
        self._settler = Settler(coord.dead_letters, "dispatch", log)
        names = coord.names
        self.check = ConsumerCheck(
            coord.nc,
            coord.js,
            names.dispatch_stream,
            [queue_consumer_config(names, queue, p) for p in LEVELS],
            who=f"worker {worker_id}",
            fix=f"corral provision --queue {queue}",
        )
        """The check of the queue's consumers (found, as configured)."""

    async def run(self) -> None:
        """Fetch and claim until stopping; transient trouble is waited out, never raised."""
        pauses = Pauses(0.1, 5.0)
        try:
            while not self._stopping.is_set():
                await self._round(self._stopping, pauses)
        finally:
            await self.close()

    async def take(self, until: asyncio.Event) -> None:
        """Fetch and claim on demand, round after round as :meth:`run` does, until ``until`` (or stopping)
        is set: for a process that takes work only while it is asked for some (an agent's ``task_claim``
        sets ``until`` from ``on_claim``, or at its deadline). Transient trouble is waited out.

        The levels stay open for the next call: :meth:`settle` after it (what an idle pull still
        delivers is then put back), :meth:`close` when no more calls come.
        """
        pauses = Pauses(0.1, 5.0)
        while not until.is_set() and not self._stopping.is_set():
            await self._round(until, pauses)

    async def settle(self) -> None:
        """Put back what was fetched and not handed out, once the levels' idle pulls have ended
        (:meth:`workers.levels.Levels.settle`, within ~2 s); the levels stay open. After it, every
        notification :meth:`take` fetched is settled: claimed, put back or dead-lettered."""
        if self._levels is not None:
            await self._levels.settle(FETCH_WAIT + 1.0)

    async def _round(self, stop: asyncio.Event, pauses: Pauses) -> None:
        """One fetch-and-claim round; its waits end when ``stop`` is set."""
        if not self._present.is_set():
            await first_of(self._present.wait(), stop.wait())
            return
        try:
            if not await self.check.check():
                self.fetching.clear()
                await first_of(asyncio.sleep(min(1.0, self.check.interval)), stop.wait())
                return
            if self._levels is None:
                levels = Levels(self._coord, self.queue, idle_wait=FETCH_WAIT, asked=self.fetching)
                self._levels = await levels.open()
            await self._fetch_once(self._levels, stop)
            pauses.reset()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("worker %s: intake of %s: %s; retrying", self._worker_id, self.queue, err)
            if not await self.check.check(now=True):
                await self.close()
            await pauses.sleep(stop)

    async def close(self) -> None:
        """Stop pulling (the durable consumers stay on the server)."""
        levels, self._levels = self._levels, None
        if levels is not None:
            await levels.close()

    async def _fetch_once(self, levels: Levels, stop: asyncio.Event) -> None:
        most = self._max_batch
        if self._gate is not None:  # the queue's fleet-wide limits: wait until they leave room
            most = await self._gate.room(self.queue, most, stop)
            if most == 0:
                return
        with await self._slots.reserve(most, stop) as held:
            if held.count == 0:
                return
            if self._gate is not None and held.keep(self._gate.room_now(self.queue, held.count)) == 0:
                return  # the room was taken while this worker waited for its own
            try:
                msgs = await levels.fetch(held.count)
            except (nats.errors.TimeoutError, TimeoutError):
                return
            held.keep(len(msgs))
            if stop.is_set() or self._stopping.is_set() or not self._present.is_set():
                await asyncio.gather(*(self._settler.nak(m) for m in msgs))
                return
            await self.claim_batch(msgs, held, stop)

    async def claim_batch(self, msgs: list[Msg], held: Reservation, stop: asyncio.Event | None = None) -> None:
        """Claim every notification of ``msgs`` and settle each message; each claim won takes one
        slot of ``held`` (the rest go back when ``held`` is left). ``stop`` (default: stopping) ends
        a wait for the queue's limits.

        A notification is only a wake-up: the records of the whole batch are read from the tasks
        bucket in one batched request, and each claim (one CAS each, pipelined) is built from the
        stored record. Whatever a notification inlines is never claimed from.
        """
        notes: list[tuple[Msg, Notification]] = []
        later: list[tuple[Msg, Notification, float]] = []
        for msg in msgs:
            try:
                note = Notification.model_validate_json(msg.data)
            except ValidationError as err:
                await self._dead_letter(msg, f"malformed notification: {describe(err)}")
                continue
            delay = _seconds_until(note.visible_at)
            if delay > 0:
                later.append((msg, note, delay))
            else:
                notes.append((msg, note))
        for msg, note, delay in later:
            await self._wait(msg, note, min(delay, MAX_NAK_DELAY), exact=True)
        if not notes:
            return
        try:
            stored = await self._coord.tasks.read_many(
                [n.task_id for _, n in notes], revisions={n.task_id: n.revision for _, n in notes}
            )
        except Exception as err:  # nothing claimed: every message goes back (bounded as any failure)
            held.release()
            for msg, note in notes:
                await self._set_aside(msg, note, err)
            return
        if self._gate is not None:
            notes = await self._admitted(notes, stored, stop or self._stopping)
        claims = [
            self._coord.tasks.claim(
                n.task_id,
                self._worker_id,
                revision=n.revision,
                lease=self._lease,
                # absent from the batch read: claim() reads it and says why (gone, or not a record)
                record=stored.get(n.task_id),
                headers=m.headers,
            )
            for m, n in notes
        ]
        outcomes = await asyncio.gather(*claims, return_exceptions=True)
        won = sum(isinstance(outcome, Claim) for outcome in outcomes)
        held.keep(won)  # what was not won is free again before the others are settled
        for (msg, note), outcome in zip(notes, outcomes, strict=True):
            if isinstance(outcome, Claim):
                held.hand_over()
                await self._settler.ack(msg)
                self._on_claim(outcome, stored.get(note.task_id))
                continue
            if self._gate is not None:
                self._gate.release(note.task_id)
            await self._set_aside(msg, note, outcome)

    async def _admitted(
        self, notes: list[tuple[Msg, Notification]], stored: dict[str, TaskRecord], stop: asyncio.Event
    ) -> list[tuple[Msg, Notification]]:
        """The notes the queue's fleet-wide limits let through now, each holding its slot and start time;
        the others wait (put back, counted) or are dropped when their task is not pending."""
        assert self._gate is not None
        candidates = [(n.task_id, stored.get(n.task_id)) for _, n in notes]
        refusals = await self._gate.admit(self.queue, candidates, stop)
        admitted = []
        for (msg, note), refusal in zip(notes, refusals, strict=True):
            if refusal is None:
                admitted.append((msg, note))
            elif refusal.delay is None:
                await self._set_aside(msg, note, InvalidTransition(refusal.reason))
            else:
                await self._wait(msg, note, refusal.delay)
        return admitted

    async def _wait(self, msg: Msg, note: Notification, at_least: float, *, exact: bool = False) -> None:
        """Put back a notification that only waits (a start time, a limit): counted, never dead-lettered,
        renewed once delivered :data:`~coord.consumer.RENEW_AT` times. ``exact``: a start time, put back
        for just that long (the delay does not grow)."""
        if must_renew(deliveries(msg)):
            await self._renew(msg, note, at_least)
        elif exact:
            await self._settler.nak(msg, at_least)
        else:
            await self._settler.wait(msg, at_least)

    async def _renew(self, msg: Msg, note: Notification, delay: float) -> None:
        """Replace a notification delivered too often (or with an unreadable count) by a fresh one from
        the stored record (delivery count 0), so waiting of any length never reaches the consumer's own
        bound (:data:`SERVER_MAX_DELIVER`); a stale one is dropped."""
        try:
            record = await self._coord.tasks.get(note.task_id)
            if record.status is TaskStatus.PENDING and record.revision == note.revision:
                await self._coord.tasks.notify(record, force=True)
                self._stats.renewed_notifications += 1
            else:
                self._stats.dropped_notifications += 1
        except NotFound:
            self._stats.dropped_notifications += 1  # gone: the old notification is stale
        except Exception as err:
            log.warning("worker %s: renewing the notification of %s failed: %s", self._worker_id, note.task_id, err)
            await self._settler.wait(msg, delay)  # the server's bound ends it; the sweep renotifies
            return
        await self._settler.ack(msg)

    async def _set_aside(self, msg: Msg, note: Notification, failure: BaseException) -> None:
        if isinstance(failure, NotYetVisible):
            delay = _seconds_until(failure.visible_at) if isinstance(failure.visible_at, datetime) else 1.0
            await self._wait(msg, note, min(max(delay, 0.05), MAX_NAK_DELAY), exact=True)
        elif isinstance(failure, Conflict | InvalidTransition | NotFound):
            # Someone else holds it, it is finished, or it is gone: this notification is stale.
            self._stats.dropped_notifications += 1
            await self._settler.ack(msg)
        elif isinstance(failure, InvalidRecord):
            await self._dead_letter(msg, f"task {note.task_id!r} cannot be claimed: {failure}", task_id=note.task_id)
        else:
            what = f"claim of {note.task_id!r} failed: {type(failure).__name__}: {failure}"
            pause = await self._settler.failed(msg, what, task_id=note.task_id)
            if pause is None:
                self._stats.dead_lettered += 1
            else:
                log.warning("worker %s: %s; retrying in %.1fs", self._worker_id, what, pause)

    async def _dead_letter(self, msg: Msg, reason: str, *, task_id: str | None = None) -> None:
        self._stats.dead_lettered += 1
        await self._settler.dead_letter(msg, reason, task_id=task_id)


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
