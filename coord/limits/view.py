"""A live view of queues' limits and slots: :class:`LimitsView`, kept current by watches of the bucket.

Workers use it to know, without asking the server each time, whether a queue has a limit, which
slots look free (and at which revision to take them), and to wait for a slot to free without
polling; the reclaimer uses it to know which slots are held. The view is a hint: every decision it
informs is a compare-and-set on the bucket, which settles any race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coord.errors import InvalidRecord
from coord.kv import Entry, KeyWatch
from coord.limits.models import LIMIT_PREFIX, QueueLimits, SlotHolder, slot_filter, split_slot_key
from coord.limits.service import Limits, Slot, decode_limits, decode_slot

__all__ = ["LimitsView"]

log = logging.getLogger("corral.limits")


@dataclass(frozen=True)
class _Seen:
    revision: int
    live: bool
    holder: SlotHolder | None
    written_at: datetime | None = None


class LimitsView:
    """The limits and slots of ``queues`` (of every queue when None), followed live.

    :meth:`start` returns once the current state is in. :meth:`changed` wakes on every change of a
    limit or a slot, so a waiter learns at once that a slot freed. A limits key that holds something
    not corral's reads as no limit until it is repaired (then the repair takes effect at once); a key
    under ``slot.`` that is not canonical is never a slot, only listed by :meth:`foreign_keys`.
    """

    def __init__(self, limits: Limits, queues: Sequence[str] | None = None) -> None:
        self._limits_service = limits
        self._queues = None if queues is None else frozenset(queues)
        self._limits: dict[str, QueueLimits] = {}
        self._slots: dict[str, dict[int, _Seen]] = {}
        self._foreign: dict[str, int] = {}
        self._changed = asyncio.Event()
        bucket = limits.bucket
        patterns = [slot_filter()] if queues is None else [slot_filter(q) for q in sorted(self._queues or ())]
        self._watches = [KeyWatch(bucket, self._on_limit, keys=f"{LIMIT_PREFIX}.*")] + [
            KeyWatch(bucket, self._on_slot, keys=p) for p in patterns
        ]

    async def start(self) -> LimitsView:
        """Follow the bucket; returns once what it held at the start has been seen."""
        try:
            for watch in self._watches:
                await watch.start()
        except BaseException:  # cancellation too: stop what started, then raise it on
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """Stop following; idempotent."""
        for watch in self._watches:
            await watch.stop()
        self._bump()

    # --- reading ---------------------------------------------------------------------------------
    def limits(self, queue: str) -> QueueLimits | None:
        """The limits of ``queue`` as last seen (None: none)."""
        return self._limits.get(queue)

    def held(self, queue: str) -> int:
        """Slots of ``queue`` held now (whatever their number: a lowered limit leaves higher ones held)."""
        return sum(1 for seen in self._slots.get(queue, {}).values() if seen.live)

    def free(self, queue: str, concurrency: int) -> list[tuple[int, int]]:
        """``(index, revision)`` of each slot below ``concurrency`` that looks free, with the revision to
        take it over (0 for a slot never written)."""
        seen = self._slots.get(queue, {})
        return [
            (i, seen[i].revision if i in seen else 0) for i in range(concurrency) if i not in seen or not seen[i].live
        ]

    def limited(self) -> dict[str, QueueLimits]:
        """Every followed queue that has a limit, with its limits as last seen."""
        return {queue: limits for queue, limits in self._limits.items() if not limits.empty}

    def foreign_keys(self) -> dict[str, int]:
        """Keys seen under ``slot.`` that are no canonical slot key (e.g. ``slot.q.00``), by the revision
        to remove them at (:meth:`Limits.remove_keys`)."""
        return dict(self._foreign)

    def held_slots(self) -> list[Slot]:
        """Every slot held now, of every queue followed."""
        return [
            Slot(queue, index, seen.revision, seen.holder, seen.written_at)
            for queue, slots in sorted(self._slots.items())
            for index, seen in sorted(slots.items())
            if seen.live
        ]

    def changed(self) -> Coroutine[Any, Any, bool]:
        """An awaitable that ends at the next change of a limit or a slot after this call (take it
        before looking at the view, or right after with no await between, and no change is missed)."""
        return self._changed.wait()

    # --- what this process learned by writing -----------------------------------------------------
    def taken(self, slot: Slot) -> None:
        """Record a slot this process took (before the watch echoes it)."""
        self._see(slot.queue, slot.index, _Seen(slot.revision, True, slot.holder))

    def freed(self, queue: str, index: int, revision: int) -> None:
        """Record a slot this process gave back, at its tombstone's revision."""
        self._see(queue, index, _Seen(revision, False, None))

    def contended(self, queue: str, index: int) -> None:
        """A take of this slot lost a race: count it held until the watch delivers its newer revision."""
        current = self._slots.setdefault(queue, {}).get(index)
        self._slots[queue][index] = _Seen(current.revision if current else 0, True, None)

    def touch(self) -> None:
        """Wake the waiters of :meth:`changed` (something this process keeps outside the view changed)."""
        self._bump()

    # --- the watches -----------------------------------------------------------------------------
    def _wanted(self, queue: str) -> bool:
        return self._queues is None or queue in self._queues

    def _on_limit(self, entry: Entry) -> None:
        queue = entry.key.split(".", 1)[1]
        if not self._wanted(queue):
            return
        if entry.deleted:
            self._limits.pop(queue, None)
        else:
            try:
                self._limits[queue] = decode_limits(entry)
            except InvalidRecord as err:
                log.warning("%s; %s has no limit until it is set again", err, queue)
                self._limits.pop(queue, None)
        self._bump()

    def _on_slot(self, entry: Entry) -> None:
        where = split_slot_key(entry.key)
        if where is None:
            if entry.deleted:
                self._foreign.pop(entry.key, None)
            else:
                self._foreign[entry.key] = entry.revision
            return
        if not self._wanted(where[0]):
            return
        slot = decode_slot(entry)
        seen = _Seen(entry.revision, slot is not None, slot.holder if slot else None, entry.time)
        self._see(where[0], where[1], seen)

    def _see(self, queue: str, index: int, seen: _Seen) -> None:
        slots = self._slots.setdefault(queue, {})
        current = slots.get(index)
        if current is not None and seen.revision < current.revision:
            return  # older than what this process already knows
        if current is not None and seen.revision == current.revision and current.holder is not None:
            return
        slots[index] = seen
        self._bump()

    def _bump(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
