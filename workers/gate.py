"""A worker's door to its queues' fleet-wide limits: :class:`Gate`.

The intake of a queue asks the gate how much it may fetch (:meth:`Gate.room`: it waits, without
polling, until a slot looks free or a start time is near), and lets through only what the gate
admits (:meth:`Gate.admit`: a concurrency slot taken with a compare-and-set for the claim about to
be made, and a start time reserved under the rate and waited for). The gate gives a slot back when
the claim it was taken for ends here (:meth:`Gate.release`); the reclaimer takes back the slots of
claims that ended elsewhere (see :mod:`coord.limits`). A queue without limits passes straight through.

A slot given back is first kept for :data:`SPARE_HOLD` seconds and handed to this worker's next claim
of the queue (a CAS that renames its holder). On a busy queue a slot thus goes from one task to the
next without ever looking free to the whole fleet, which would otherwise wake every waiting worker to
fetch for one slot (and put back all but one notification).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from coord.aio import first_of, stop_tasks
from coord.connection import Coord
from coord.errors import Conflict
from coord.limits import LimitsView, QueueLimits, Rate, Slot, SlotHolder
from coord.tasks import TaskRecord, TaskStatus

__all__ = ["HORIZON", "Gate", "Refusal"]

log = logging.getLogger("corral.worker")

HORIZON = 2.0
"""Seconds ahead a start may be reserved: a fetched notification waits at most this long for its time
(well inside its 5 s ack wait); a queue whose next start is further away is not fetched from until then."""
NO_SLOT_DELAY = 0.25
"""Least NAK delay of a notification fetched when a slot looked free but none could be taken (the intake
puts a waiting notification back for longer as its deliveries grow, see :mod:`coord.consumer.policy`)."""
SPARE_HOLD = 0.2
"""Seconds a slot whose claim ended is kept for this worker's next claim of the queue before it is given back."""
DUPLICATE_DELAY = 1.0
"""Least NAK delay of a notification whose task this worker is already claiming or running, or whose record was
not read (it comes back and is then claimed or dropped as stale)."""


@dataclass(frozen=True)
class Refusal:
    """Why a notification was not let through now, and what to do with it."""

    delay: float | None
    """Put it back for at least this many seconds (it only waits: counted, never dead-lettered, renewed
    when delivered too often; see :mod:`workers.intake`); None: the stored task is not pending (drop it)."""
    reason: str
    """What stopped it."""


class Gate:
    """The fleet-wide limits of a worker's ``queues`` (see the module docstring); :meth:`start` before use."""

    def __init__(self, coord: Coord, queues: Sequence[str], worker_id: str) -> None:
        self._limits = coord.limits
        self._view = LimitsView(coord.limits, queues)
        self._worker_id = worker_id
        self._held: dict[str, Slot] = {}
        self._spare: dict[str, dict[Slot, asyncio.TimerHandle]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Follow the queues' limits and slots; returns once they are known."""
        await self._view.start()

    async def close(self) -> None:
        """Give back the spare slots, wait (a few seconds at most) for slots being given back, then stop following."""
        self._closing = True
        for queue in list(self._spare):
            for slot in list(self._spare[queue]):
                self._give_back_spare(slot)
        if self._releases:
            _, late = await asyncio.wait(set(self._releases), timeout=5.0)
            await stop_tasks(late, within=1.0, what="slot releases")
        await self._view.stop()

    # --- before fetching -------------------------------------------------------------------------
    def room_now(self, queue: str, most: int) -> int:
        """How many of ``most`` notifications of ``queue`` may be fetched now (0: wait; see :meth:`room`)."""
        limits = self._view.limits(queue)
        if limits is None or limits.empty:
            return most
        if limits.rate is not None:
            if self._rate_wait(queue) > 0:
                return 0
            most = 1  # one reservation, one start: starts keep their spacing
        if limits.concurrency is not None:
            # this worker's spare slots, and at most one slot new to it per fetch: a few at a time
            # spread over the waiting workers instead of all going to whichever looks first
            free = limits.concurrency - self._view.held(queue)
            most = min(most, len(self._spare.get(queue, ())) + (1 if free > 0 else 0))
        return most

    async def room(self, queue: str, most: int, stopping: asyncio.Event) -> int:
        """Wait until something of ``queue`` may be fetched (a slot looks free, the next start is within
        :data:`HORIZON`) and return how many, at most ``most``; 0 once ``stopping`` is set.

        It wakes on a change of the queue's limits or slots (a watch, never a poll) or when the next
        start time comes near.
        """
        while not stopping.is_set():
            change = self._view.changed()  # taken before looking: no change is missed
            n = self.room_now(queue, most)
            if n > 0:
                change.close()
                return n
            waits: list[Awaitable[object]] = [change, stopping.wait()]
            delay = self._rate_wait(queue)
            if delay > 0:
                waits.append(asyncio.sleep(delay))
            await first_of(*waits)
        return 0

    def _rate_wait(self, queue: str) -> float:
        """Seconds until the queue's next start (as this process last saw it) is within the horizon."""
        state = self._limits.known_rate(queue)
        return 0.0 if state is None else max(0.0, state.tat - HORIZON - time.time())

    # --- before claiming -------------------------------------------------------------------------
    async def admit(
        self, queue: str, candidates: Sequence[tuple[str, TaskRecord | None]], stopping: asyncio.Event
    ) -> list[Refusal | None]:
        """For each ``(task id, stored record)`` about to be claimed: None when it may be claimed now
        (it holds a slot for that claim, and its reserved start time has come), else a :class:`Refusal`.

        A slot is taken for the claim the record leads to (its epoch + 1), so the slot names the
        claim before it exists. A refused candidate holds nothing.
        """
        limits = self._view.limits(queue)
        if limits is None or limits.empty:
            return [None] * len(candidates)
        out: list[Refusal | None] = []
        started = False
        for task_id, record in candidates:
            refusal = self._screen(task_id, record, started and limits.rate is not None)
            if refusal is None:
                assert record is not None
                refusal = await self._admit_one(queue, limits, record, stopping)
                started = started or refusal is None
            out.append(refusal)
        return out

    def _screen(self, task_id: str, record: TaskRecord | None, rate_used: bool) -> Refusal | None:
        if task_id in self._held:
            return Refusal(DUPLICATE_DELAY, "this worker already claims or runs it")
        if record is None:
            return Refusal(DUPLICATE_DELAY, "its record was not read")
        if record.status is not TaskStatus.PENDING:
            return Refusal(None, f"task {task_id!r} is {record.status.value}")
        if rate_used:
            return Refusal(NO_SLOT_DELAY, "one start per fetch under a rate limit")
        return None

    async def _admit_one(
        self, queue: str, limits: QueueLimits, record: TaskRecord, stopping: asyncio.Event
    ) -> Refusal | None:
        task_id = record.task_id
        try:
            if limits.concurrency is not None:
                slot = await self._take(queue, limits.concurrency, record)
                if slot is None:
                    return Refusal(NO_SLOT_DELAY, f"no free slot of {queue} (limit {limits.concurrency})")
                self._held[task_id] = slot
            if limits.rate is not None:
                wait = await self._start_time(queue, limits.rate)
                if wait is None or stopping.is_set():
                    self.release(task_id)
                    return Refusal(max(0.0, self._rate_wait(queue)), f"rate of {queue} ({limits.rate})")
                if wait > 0:
                    await first_of(asyncio.sleep(wait), stopping.wait())
                    if stopping.is_set():
                        self.release(task_id)
                        return Refusal(0.0, "stopping")
        except Exception as err:  # the server away (Unavailable), a CAS that kept losing: this one goes back
            self.release(task_id)
            log.warning("worker %s: limits of %s: %s; putting %s back", self._worker_id, queue, err, task_id)
            return Refusal(NO_SLOT_DELAY, f"{type(err).__name__}: {err}")
        return None

    async def _take(self, queue: str, concurrency: int, record: TaskRecord) -> Slot | None:
        """Take a slot below ``concurrency`` for the claim ``record`` leads to (a spare one of this worker
        first); None if none could be."""
        holder = SlotHolder(
            task_id=record.task_id, epoch=record.epoch + 1, worker_id=self._worker_id, at=datetime.now(UTC)
        )
        spares = self._spare.get(queue, {})
        while spares:
            spare, timer = spares.popitem()
            timer.cancel()
            try:
                slot = await self._limits.take_slot(queue, spare.index, over=spare.revision, holder=holder)
            except Conflict:
                continue  # taken back meanwhile (its old claim was over): try another
            self._view.taken(slot)
            return slot
        if self._view.held(queue) >= concurrency:
            return None
        free = self._view.free(queue, concurrency)
        random.shuffle(free)  # workers that saw the same slot free mostly try different ones
        for index, over in free:
            try:
                slot = await self._limits.take_slot(queue, index, over=over, holder=holder)
            except Conflict:
                self._view.contended(queue, index)
                continue
            self._view.taken(slot)
            return slot
        return None

    async def _start_time(self, queue: str, rate: Rate) -> float | None:
        """Reserve one start of ``queue``: seconds to wait for it, or None when none is within the horizon."""
        plan = await self._limits.reserve(queue, rate, want=1, horizon=HORIZON)
        if not plan.times:
            return None
        return max(0.0, plan.times[0] - time.time())

    # --- after the claim -------------------------------------------------------------------------
    def release(self, task_id: str) -> None:
        """The claim of ``task_id`` ended here (or was never made): give back its slot, in the background."""
        slot = self._held.pop(task_id, None)
        if slot is None:
            return
        limits = self._view.limits(slot.queue)
        if self._closing or limits is None or limits.concurrency is None or slot.index >= limits.concurrency:
            self._start_give_back(slot)
            return
        loop = asyncio.get_running_loop()
        self._spare.setdefault(slot.queue, {})[slot] = loop.call_later(SPARE_HOLD, self._give_back_spare, slot)
        self._view.touch()  # an intake waiting for room has some now

    def _give_back_spare(self, slot: Slot) -> None:
        timer = self._spare.get(slot.queue, {}).pop(slot, None)
        if timer is not None:
            timer.cancel()
            self._start_give_back(slot)

    def _start_give_back(self, slot: Slot) -> None:
        task = asyncio.get_running_loop().create_task(self._give_back(slot), name=f"release-{slot.queue}-{slot.index}")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _give_back(self, slot: Slot) -> None:
        try:
            revision = await self._limits.release(slot)
        except Exception as err:
            log.warning(
                "worker %s: could not give back slot %d of %s (%s); the reclaimer takes it back",
                self._worker_id,
                slot.index,
                slot.queue,
                err,
            )
            return
        if revision is not None:
            self._view.freed(slot.queue, slot.index, revision)
