"""Capacity shared by a process's consuming loops: :class:`Slots` and the :class:`Reservation` handle.

A loop reserves room before it fetches (a batch never exceeds what is free) and gets a
:class:`Reservation`. Whatever the reservation did not hand over (to a running task, say) goes back
when it is left — on a normal end, an early return, an exception or a cancellation alike — so no
caller gives slots back by hand and no forgotten path shrinks the process.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Reservation", "Slots"]


class Slots:
    """Free slots of a process, shared by its loops (``capacity`` at most in use at once)."""

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        """Slots neither reserved nor handed over right now."""
        self._changed = asyncio.Event()

    async def reserve(self, most: int, stopping: asyncio.Event) -> Reservation:
        """Wait for a free slot (or a stop) and reserve up to ``most``: a handle holding 0 when stopping."""
        while self.free <= 0 and not stopping.is_set():
            self._changed.clear()
            await self._changed.wait()
        n = 0 if stopping.is_set() else min(self.free, most)
        self.free -= n
        return Reservation(self, n)

    def returned(self, n: int = 1) -> None:
        """``n`` slots handed over earlier are free again (the work they were handed to ended)."""
        if n > 0:
            self.free += n
            self._changed.set()

    def wake(self) -> None:
        """Wake every waiter (on stop)."""
        self._changed.set()


class Reservation:
    """Slots reserved by one loop for one batch; use as ``with await slots.reserve(...) as held:``.

    :meth:`hand_over` passes slots on to work that keeps them (given back later with
    :meth:`Slots.returned`); :meth:`keep` gives back all but some now; leaving the block gives back
    everything still held.
    """

    def __init__(self, slots: Slots, count: int) -> None:
        self._slots = slots
        self.count = count
        """Slots held (reserved, not yet handed over or given back)."""

    def keep(self, most: int) -> int:
        """Give back what is held above ``most`` now; returns what is held."""
        if self.count > most:
            self._slots.returned(self.count - max(0, most))
            self.count = max(0, most)
        return self.count

    def hand_over(self, n: int = 1) -> None:
        """``n`` held slots now belong to work that gives them back itself (:meth:`Slots.returned`)."""
        if n > self.count:
            raise ValueError(f"cannot hand over {n} slots, {self.count} held")
        self.count -= n

    def release(self) -> None:
        """Give back every slot still held (what leaving the block does)."""
        self.keep(0)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
