"""An agent's claims, taken through the worker intake: :class:`Claims`.

A ``task_claim`` claims exactly as a ``corral worker`` does, through the same machinery: the queue's
durable per-level consumers on the dispatch stream (:class:`workers.intake.Intake` with a capacity of
one, :mod:`workers.levels` for the priority levels' weighted share) and the queue's fleet-wide
limits (:class:`workers.gate.Gate`: a concurrency slot taken for the claim, a start reserved under
the rate). Nothing watches the tasks bucket: a call costs a few pulls, whatever else is written.

Per queue, a session keeps one intake and one gate, made on its first claim and reused by the next
ones (calls on one queue take turns); nothing is fetched between calls, and what a call's last idle
pull still delivers is put back right after it (:meth:`workers.intake.Intake.settle`). The concurrency
slot a claim took is given back when the claim ends here (:meth:`Claims.ended`: completed, failed,
released, lost); if the process dies, the reclaimer takes it back with the claim (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from coord.connection import Coord
from coord.consumer import Slots
from coord.tasks import Claim, TaskRecord
from workers.gate import Gate
from workers.intake import FETCH_WAIT, Intake
from workers.stats import WorkerStats

__all__ = ["Claims"]

log = logging.getLogger("corral.mcp")


@dataclass
class _Queue:
    """One queue's intake and gate in a session, and the call being served."""

    intake: Intake
    gate: Gate
    slots: Slots
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    won: list[Claim] = field(default_factory=list)
    until: asyncio.Event = field(default_factory=asyncio.Event)
    settling: asyncio.Task[None] | None = None


class Claims:
    """Claims for the agent ``agent_id`` (see the module docstring); fetches only while ``present`` is set.

    :meth:`claim` per request, :meth:`ended` when a claim it returned ends, :meth:`close` at the end.
    """

    def __init__(self, coord: Coord, agent_id: str, present: asyncio.Event) -> None:
        self.stats = WorkerStats()
        """What the intakes did (notifications dropped, put back, dead-lettered)."""
        self._coord = coord
        self._agent_id = agent_id
        self._present = present
        self._stopping = asyncio.Event()
        self._queues: dict[str, _Queue] = {}
        self._making = asyncio.Lock()
        self._gates: dict[str, Gate] = {}
        """The gate holding the slot of each claim returned and not ended, by task id."""

    async def _queue(self, name: str) -> _Queue:
        async with self._making:
            queue = self._queues.get(name)
            if queue is None:
                gate = Gate(self._coord, [name], self._agent_id)
                await gate.start()
                slots = Slots(1)
                intake = Intake(
                    self._coord,
                    name,
                    worker_id=self._agent_id,
                    lease=None,
                    slots=slots,
                    max_batch=1,
                    on_claim=lambda claim, _record: self._won(name, claim),
                    present=self._present,
                    stopping=self._stopping,
                    stats=self.stats,
                    gate=gate,
                )
                queue = self._queues[name] = _Queue(intake=intake, gate=gate, slots=slots)
            return queue

    def _won(self, name: str, claim: Claim) -> None:
        queue = self._queues[name]
        queue.won.append(claim)
        queue.slots.returned(1)  # the call's capacity of one: what the agent holds is the limits' to bound
        queue.until.set()

    async def claim(self, queue: str, wait: float) -> Claim | None:
        """The next task of ``queue`` claimed for this agent (priorities and limits as for any worker),
        waiting up to ``wait`` s (at least one fetch, ~1 s when nothing comes); None if none came.

        A call cancelled meanwhile gives back a claim it won (released: no attempt counted).
        """
        if self._stopping.is_set():
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, FETCH_WAIT)
        q = await self._queue(queue)
        try:
            async with asyncio.timeout_at(deadline):
                await q.turn.acquire()
        except TimeoutError:
            return None
        try:
            if q.settling is not None:
                await asyncio.shield(q.settling)
            q.won.clear()
            q.until = asyncio.Event()
            timer = loop.call_at(deadline, q.until.set)
            run = asyncio.ensure_future(q.intake.take(q.until))
            try:
                await asyncio.shield(run)
            except asyncio.CancelledError:
                q.until.set()  # let the round end by itself: a claim it wins is given back below
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(run), FETCH_WAIT + 5)
                for lost in q.won:
                    self._gates[lost.task_id] = q.gate
                    await self.give_back(lost)
                raise
            finally:
                timer.cancel()
                q.settling = asyncio.ensure_future(q.intake.settle())
            won = list(q.won)  # one at most: a capacity of one, a batch of one
        finally:
            q.turn.release()
        for claim in won:
            self._gates[claim.task_id] = q.gate
        return won[0] if won else None

    def ended(self, task_id: str) -> None:
        """The claim on ``task_id`` ended here (completed, failed, released or lost): give back its limits slot."""
        gate = self._gates.pop(task_id, None)
        if gate is not None:
            gate.release(task_id)

    async def give_back(self, claim: Claim) -> TaskRecord | None:
        """Release ``claim`` (pending again, no attempt counted) and its limits slot; None if it could not be."""
        try:
            return await self._coord.tasks.release(claim)
        except Exception as err:
            log.warning("mcp: could not release %s (%s); it is reclaimed after its lease", claim.task_id, err)
            return None
        finally:
            self.ended(claim.task_id)

    async def close(self) -> None:
        """Stop fetching, put back what was fetched, give back spare slots and stop following limits; never raises."""
        self._stopping.set()
        for queue in self._queues.values():
            queue.until.set()
            queue.slots.wake()
        for queue in list(self._queues.values()):
            with contextlib.suppress(Exception):
                if queue.settling is not None:
                    await queue.settling
            with contextlib.suppress(Exception):
                await queue.intake.close()
            with contextlib.suppress(Exception):
                await queue.gate.close()
        self._queues.clear()
