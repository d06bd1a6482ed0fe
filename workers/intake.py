"""A worker's intake: notifications of one queue fetched in batches, each claimed or set aside.

A notification is a wake-up hint, never a source of state: what is claimed (spec, payload, parent,
limits, status) is read from the tasks bucket, one batched read per fetched batch, so a forged
notification can at most make a worker look at a task. Every failure is contained to the message it
concerns, and every message ends in one of a few
bounded outcomes: claimed (acked), stale (acked and dropped: someone else has the task, it ended
or is gone), not yet visible (NAKed until it is, at most an hour at a time), malformed or poisoned
(terminated and dead-lettered with its reason), or failing to claim for another reason (NAKed with
a growing delay, then dead-lettered after :data:`MAX_DELIVERIES`). A dead-lettered notification
loses nothing: the task's record stays pending and the reclaimer's sweep notifies it again. A
consumer that disappears (deleted by an operator, lost with a server) is re-created. The queue's
priority levels each have their own consumer; :mod:`workers.levels` fills each batch from them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from coord.aio import first_of
from coord.connection import Coord
from coord.errors import Conflict, InvalidRecord, InvalidTransition, NotFound, NotYetVisible
from coord.priority import Priority
from coord.tasks import Claim, Notification, TaskRecord, TaskStatus
from coord.validation import describe
from workers.gate import Gate
from workers.levels import NOTIFICATION_ACK_WAIT, SERVER_MAX_DELIVERIES, Levels, ensure_consumer

__all__ = [
    "FETCH_WAIT",
    "MAX_DELIVERIES",
    "MAX_NAK_DELAY",
    "NOTIFICATION_ACK_WAIT",
    "SERVER_MAX_DELIVERIES",
    "Intake",
    "Slots",
    "queue_consumer",
]

log = logging.getLogger("corral.worker")

FETCH_WAIT = 1.0
"""Longest a pull request waits on the server; also the longest a stop waits for fetches to end."""
MAX_DELIVERIES = 10
"""Deliveries of one notification whose claim keeps failing before it is dead-lettered."""
MAX_NAK_DELAY = 3600.0
"""Longest a not-yet-visible notification is put back for at a time."""


async def queue_consumer(
    coord: Coord, queue: str, priority: Priority = Priority.NORMAL
) -> JetStreamContext.PullSubscription:
    """The shared durable pull consumer of ``queue`` at ``priority`` (created, or updated to corral's
    config), bound with nats-py (the worker itself pulls through :class:`workers.levels.Levels`)."""
    durable = await ensure_consumer(coord, queue, priority)
    return await coord.js.pull_subscribe_bind(durable, stream=coord.names.dispatch_stream)


class Slots:
    """Free run slots of a worker, shared by its intakes (a batch never exceeds what is free)."""

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        """Slots not reserved right now."""
        self._changed = asyncio.Event()

    async def reserve(self, most: int, stopping: asyncio.Event) -> int:
        """Wait for a free slot (or a stop) and reserve up to ``most``; 0 when stopping."""
        while self.free <= 0 and not stopping.is_set():
            self._changed.clear()
            await self._changed.wait()
        if stopping.is_set():
            return 0
        n = min(self.free, most)
        self.free -= n
        return n

    def give_back(self, n: int) -> None:
        """Return ``n`` reserved slots."""
        if n:
            self.free += n
            self._changed.set()

    def wake(self) -> None:
        """Wake every waiter (on stop)."""
        self._changed.set()


@dataclass
class IntakeStats:
    """What the intakes of one worker did with notifications."""

    dropped_notifications: int = 0
    """Stale or duplicate notifications acked and dropped."""
    dead_lettered: int = 0
    """Notifications dead-lettered (malformed, poisoned, or failing too often)."""


OnClaim = Callable[[Claim, TaskRecord | None], None]


class Intake:
    """Fetches and claims the notifications of one queue for a worker (see the module docstring).

    Runs while ``present`` is set (the worker holds its presence) until ``stopping`` is set.
    ``on_claim`` receives each claim won and the stored pending record it was claimed from.
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
        stats: IntakeStats,
        gate: Gate | None = None,
    ) -> None:
        self.queue = queue
        """The queue this intake serves."""
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

    async def run(self) -> None:
        """Fetch and claim until stopping; transient trouble is waited out, never raised."""
        pause = 0.1
        try:
            while not self._stopping.is_set():
                if not self._present.is_set():
                    await first_of(self._present.wait(), self._stopping.wait())
                    continue
                try:
                    if self._levels is None:
                        self._levels = await Levels(self._coord, self.queue, idle_wait=FETCH_WAIT).open()
                    await self._fetch_once(self._levels)
                    pause = 0.1
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    log.warning(
                        "worker %s: intake of %s: %s; retrying in %.1fs", self._worker_id, self.queue, err, pause
                    )
                    if await self._consumer_gone():
                        await self.close()
                    await first_of(asyncio.sleep(pause), self._stopping.wait())
                    pause = min(pause * 2, 5.0)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop pulling (the durable consumers stay on the server)."""
        levels, self._levels = self._levels, None
        if levels is not None:
            await levels.close()

    async def _consumer_gone(self) -> bool:
        if self._levels is None:
            return True
        try:
            for consumer in self._levels.consumers:
                await self._coord.js.consumer_info(self._coord.names.dispatch_stream, consumer)
        except nats.js.errors.NotFoundError:
            log.warning("worker %s: the consumer of %s is gone; re-creating it", self._worker_id, self.queue)
            return True
        except Exception:
            return False  # the server is away: keep the binding and try again
        return False

    async def _fetch_once(self, levels: Levels) -> None:
        most = self._max_batch
        if self._gate is not None:  # the queue's fleet-wide limits: wait until they leave room
            most = await self._gate.room(self.queue, most, self._stopping)
            if most == 0:
                return
        n = await self._slots.reserve(most, self._stopping)
        if n == 0:
            return
        if self._gate is not None and (fits := self._gate.room_now(self.queue, n)) < n:
            self._slots.give_back(n - fits)  # the room was taken while this worker waited for its own
            if fits == 0:
                return
            n = fits
        try:
            msgs = await levels.fetch(n)
        except (nats.errors.TimeoutError, TimeoutError):
            self._slots.give_back(n)
            return
        except BaseException:
            self._slots.give_back(n)
            raise
        self._slots.give_back(n - len(msgs))
        if self._stopping.is_set() or not self._present.is_set():
            self._slots.give_back(len(msgs))
            await asyncio.gather(*(_settle(m.nak(), m) for m in msgs))
            return
        await self.claim_batch(msgs)

    async def claim_batch(self, msgs: list[Msg]) -> None:
        """Claim every notification of ``msgs`` and settle each message.

        A notification is only a wake-up: the records of the whole batch are read from the tasks
        bucket in one batched request, and each claim (one CAS each, pipelined) is built from the
        stored record. Whatever a notification inlines is never claimed from.
        """
        notes: list[tuple[Msg, Notification]] = []
        for msg in msgs:
            try:
                note = Notification.model_validate_json(msg.data)
            except ValidationError as err:
                self._slots.give_back(1)
                await self._dead_letter(msg, f"malformed notification: {describe(err)}")
                continue
            delay = _seconds_until(note.visible_at)
            if delay > 0:
                self._slots.give_back(1)
                if delay > MAX_NAK_DELAY and _deliveries(msg) >= MAX_DELIVERIES:
                    await self._renew(msg, note, delay)
                else:
                    await _settle(msg.nak(delay=min(delay, MAX_NAK_DELAY)), msg)
                continue
            notes.append((msg, note))
        if not notes:
            return
        try:
            stored = await self._coord.tasks.read_many(
                [n.task_id for _, n in notes], revisions={n.task_id: n.revision for _, n in notes}
            )
        except Exception as err:  # nothing claimed: every message goes back (bounded as any failure)
            for msg, note in notes:
                self._slots.give_back(1)
                await self._set_aside(msg, note, err)
            return
        if self._gate is not None:
            notes = await self._admitted(notes, stored)
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
        for (msg, note), outcome in zip(notes, outcomes, strict=True):
            if isinstance(outcome, Claim):
                await _settle(msg.ack(), msg)
                self._on_claim(outcome, stored.get(note.task_id))
                continue
            if self._gate is not None:
                self._gate.release(note.task_id)
            self._slots.give_back(1)
            await self._set_aside(msg, note, outcome)

    async def _admitted(
        self, notes: list[tuple[Msg, Notification]], stored: dict[str, TaskRecord]
    ) -> list[tuple[Msg, Notification]]:
        """The notes the queue's fleet-wide limits let through now, each holding its slot and start time;
        the others are put back for the delay the gate gives, or dropped when their task is not pending."""
        assert self._gate is not None
        candidates = [(n.task_id, stored.get(n.task_id)) for _, n in notes]
        refusals = await self._gate.admit(self.queue, candidates, self._stopping)
        admitted = []
        for (msg, note), refusal in zip(notes, refusals, strict=True):
            if refusal is None:
                admitted.append((msg, note))
                continue
            self._slots.give_back(1)
            if refusal.delay is None:
                await self._set_aside(msg, note, InvalidTransition(refusal.reason))
            else:
                await _settle(msg.nak(delay=refusal.delay), msg)
        return admitted

    async def _renew(self, msg: Msg, note: Notification, delay: float) -> None:
        """Replace the notification of a task delayed for long by a fresh one (from the stored record).

        A delay is waited out an hour at a time, and every hour is one more delivery: before the
        consumer's own bound (:data:`SERVER_MAX_DELIVERIES`) would drop it, a fresh notification
        (delivery count 0) takes its place, so a delay of days or months holds too.
        """
        try:
            record = await self._coord.tasks.get(note.task_id)
            if record.status is TaskStatus.PENDING and record.revision == note.revision:
                await self._coord.tasks.notify(record, force=True)
        except NotFound:
            pass  # gone: the old notification is stale
        except Exception as err:
            log.warning("worker %s: renewing the notification of %s failed: %s", self._worker_id, note.task_id, err)
            await _settle(msg.nak(delay=min(delay, MAX_NAK_DELAY)), msg)
            return
        await _settle(msg.ack(), msg)

    async def _set_aside(self, msg: Msg, note: Notification, failure: BaseException) -> None:
        if isinstance(failure, NotYetVisible):
            delay = _seconds_until(failure.visible_at) if isinstance(failure.visible_at, datetime) else 1.0
            await _settle(msg.nak(delay=min(max(delay, 0.05), MAX_NAK_DELAY)), msg)
        elif isinstance(failure, Conflict | InvalidTransition | NotFound):
            # Someone else holds it, it is finished, or it is gone: this notification is stale.
            self._stats.dropped_notifications += 1
            await _settle(msg.ack(), msg)
        elif isinstance(failure, InvalidRecord):
            await self._dead_letter(msg, f"task {note.task_id!r} cannot be claimed: {failure}", task_id=note.task_id)
        elif _deliveries(msg) >= MAX_DELIVERIES:
            reason = (
                f"claim of {note.task_id!r} failed {_deliveries(msg)} times, last: {type(failure).__name__}: {failure}"
            )
            await self._dead_letter(msg, reason, task_id=note.task_id)
        else:
            delay = min(30.0, 0.5 * 2 ** (_deliveries(msg) - 1))
            log.warning(
                "worker %s: claim of %s failed (%s: %s); retrying in %.1fs",
                self._worker_id,
                note.task_id,
                type(failure).__name__,
                failure,
                delay,
            )
            await _settle(msg.nak(delay=delay), msg)

    async def _dead_letter(self, msg: Msg, reason: str, *, task_id: str | None = None) -> None:
        self._stats.dead_lettered += 1
        await _settle(msg.term(), msg)
        await self._coord.dead_letters.record(
            "dispatch", reason, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {}), task_id=task_id
        )


async def _settle(ack: Awaitable[None], msg: Msg) -> None:
    """Ack, NAK or terminate; a failure is logged (the server redelivers what was not settled)."""
    try:
        await ack
    except Exception as err:
        log.debug("could not settle the notification on %s: %s", msg.subject, err)


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
