"""Fleet-wide per-queue limits on NATS: :class:`Limits`, the one reader and writer of ``{ns}_limits``.

Every write is a compare-and-set on one key, so any number of workers on any number of hosts share
each limit without a coordinator:

- **Concurrency** N is N slot keys. A worker takes a free slot (a CAS over the revision it saw free)
  before it claims a task of the queue, naming the task, the claim epoch and itself; it gives it
  back (a CAS delete at the slot's revision) once the claim has ended. :meth:`Limits.heal` takes
  back slots whose claim is over (read from the task store), so a holder that died returns its slot
  when its claim is reclaimed, even though it never released it.
- **Rate** R is one GCRA key: a worker reserves start times with a CAS that advances the key's
  theoretical arrival time, then waits exactly until its time (:func:`coord.limits.models.reserve`).

Workers may write slot and rate keys, so nothing read is trusted (docs/limits.md, "Trust"): a value
that is not corral's, or not finite and bounded, is written over or taken back at its own revision;
a slot is kept only while the task store shows its claim current, and the grace of a slot whose claim
is not written yet is counted by the server's clock and this process's own, never by the holder's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from pydantic import ValidationError

from coord.errors import Conflict, InvalidInput, InvalidRecord
from coord.ids import validate_id
from coord.kv import Bucket, Entry, conflicts
from coord.limits.models import (
    LIMIT_PREFIX,
    MAX_CONCURRENCY,
    RATE_PREFIX,
    SLOT_PREFIX,
    QueueLimits,
    Rate,
    RateState,
    Reservation,
    SlotHolder,
    Verdict,
    limit_key,
    plausible,
    rate_key,
    reserve,
    slot_key,
    split_slot_key,
    verdict,
)
from coord.tasks import IndexEntry, TaskStore
from coord.validation import COUNT, REVISION, WAIT, Bound, check_number, invalid_input

__all__ = ["KEEP", "SLOT_GRACE", "Keep", "Limits", "Slot", "decode_limits", "decode_slot"]

log = logging.getLogger("corral.limits")

SLOT_INDEX = Bound(0, MAX_CONCURRENCY - 1, integer=True)
"""A slot's index: 0 to the largest concurrency limit less one."""

SLOT_GRACE = 5.0
"""Seconds a slot whose claim is not written yet is left to its holder (a claim follows its slot within
milliseconds). They count from the server's time of the slot's write or from when the healer first saw
it, whichever is earlier by the healer's clock; the time the holder wrote in the slot is never used."""


SIGHTINGS_KEPT = 600.0
"""Seconds :meth:`Limits.heal` remembers when it first saw a slot revision whose claim was not written."""


class Keep(Enum):
    """Type of :data:`KEEP`."""

    KEEP = "keep"


KEEP = Keep.KEEP
"""Leave this limit as it is (:meth:`Limits.set`)."""


@dataclass(frozen=True)
class Slot:
    """One held concurrency slot, at the revision it was read or written at."""

    queue: str
    """The queue it limits."""
    index: int
    """Its number (``slot.{queue}.{index}``)."""
    revision: int
    """The revision of the holder's write (what a release or a take-over names)."""
    holder: SlotHolder | None
    """Who holds it; None for a value corral did not write (taken back by the next :meth:`Limits.heal`)."""
    written_at: datetime | None = field(default=None, compare=False)
    """When the server stored it (None: not known, e.g. a slot this process just wrote)."""


def decode_limits(entry: Entry) -> QueueLimits:
    """The :class:`QueueLimits` a ``limit.{queue}`` entry holds; :class:`InvalidRecord` if it holds something else."""
    try:
        limits = QueueLimits.model_validate_json(entry.value or b"")
    except ValidationError as err:
        raise InvalidRecord(f"limits of key {entry.key!r} are not corral's: {err.error_count()} problem(s)") from None
    if limit_key(limits.queue) != entry.key:
        raise InvalidRecord(f"limits of key {entry.key!r} name another queue ({limits.queue!r})")
    return limits


def decode_slot(entry: Entry) -> Slot | None:
    """The :class:`Slot` a live slot entry is (None for a tombstone or a key that is no slot)."""
    where = split_slot_key(entry.key)
    if where is None or entry.deleted:
        return None
    try:
        holder: SlotHolder | None = SlotHolder.model_validate_json(entry.value or b"")
    except ValidationError:
        holder = None
    return Slot(where[0], where[1], entry.revision, holder, entry.time)


class Limits:
    """Per-queue concurrency and rate limits, slots and rate state in one bucket (see the module docstring).

    ``tasks`` is the store slots are judged against; ``cas_attempts`` bounds each compare-and-set loop.
    """

    def __init__(self, bucket: Bucket, tasks: TaskStore, *, cas_attempts: int = 10) -> None:
        self.bucket = bucket
        """The ``{ns}_limits`` bucket."""
        self._tasks = tasks
        self._cas_attempts = cas_attempts
        self._rates: dict[str, tuple[int, RateState | None]] = {}
        self._unsure_since: dict[tuple[str, int, int], float] = {}

    # --- the limits ------------------------------------------------------------------------------
    async def get(self, queue: str) -> QueueLimits | None:
        """The limits of ``queue`` (None: none set); :class:`InvalidRecord` if its key holds something else."""
        entry = await self.bucket.get(limit_key(queue))
        return None if entry is None or entry.deleted else decode_limits(entry)

    async def all(self) -> dict[str, QueueLimits]:
        """The limits of every queue that has any, by queue (a value that is not corral's is skipped, logged)."""
        found: dict[str, QueueLimits] = {}
        for entry in await self.bucket.scan(f"{LIMIT_PREFIX}."):
            try:
                limits = decode_limits(entry)
            except InvalidRecord as err:
                log.warning("%s", err)
                continue
            found[limits.queue] = limits
        return found

    async def set(
        self, queue: str, *, concurrency: int | Keep | None = KEEP, rate: Rate | Keep | None = KEEP
    ) -> QueueLimits | None:
        """Set (an int, a :class:`Rate`), remove (None) or keep (:data:`KEEP`) each limit of ``queue``.

        One compare-and-set on ``limit.{queue}``; the key is deleted when no limit is left. Returns the
        limits now in force (None: none). Running workers follow the key, so a change applies to their
        next claims. Raises :class:`~coord.errors.InvalidInput` for a concurrency outside
        1..:data:`~coord.limits.models.MAX_CONCURRENCY`.
        """
        validate_id(queue, "queue")
        if concurrency is not None and concurrency is not KEEP:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int):
                raise InvalidInput(f"concurrency must be a whole number, got {concurrency!r}")
            if not 1 <= concurrency <= MAX_CONCURRENCY:
                raise InvalidInput(f"concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency}")
        key = limit_key(queue)
        async for _ in conflicts(f"limits of queue {queue!r}", self._cas_attempts):
            entry = await self.bucket.get(key, leader=True)
            current = None
            if entry is not None and not entry.deleted:
                try:
                    current = decode_limits(entry)
                except InvalidRecord:
                    current = None  # written over below
            try:
                limits = QueueLimits(
                    queue=queue,
                    concurrency=(current.concurrency if current else None) if concurrency is KEEP else concurrency,
                    rate=(current.rate if current else None) if rate is KEEP else rate,
                    updated_at=datetime.now(UTC),
                )
            except ValidationError as err:
                raise invalid_input(err, what=f"limits of queue {queue!r}") from None
            last = entry.revision if entry is not None else 0
            try:
                if not limits.empty:
                    await self.bucket.update(key, limits.model_dump_json().encode(), last=last)
                    return limits
                if entry is not None and not entry.deleted:
                    await self.bucket.delete(key, last=last)
                return None
            except Conflict:
                continue
        raise AssertionError("unreachable: conflicts() raises when its attempts are spent")  # pragma: no cover

    async def clear(self, queue: str) -> None:
        """Remove every limit of ``queue`` (slots held now are released by their holders as their claims end)."""
        await self.set(queue, concurrency=None, rate=None)

    # --- concurrency slots -----------------------------------------------------------------------
    async def take_slot(self, queue: str, index: int, *, over: int, holder: SlotHolder) -> Slot:
        """Take slot ``index`` of ``queue`` for ``holder`` with a CAS over revision ``over`` (the free
        revision seen: a tombstone's, or 0 for a slot never written, or a stale holder's).

        Raises :class:`~coord.errors.Conflict` when the slot changed meanwhile (someone else took it).
        """
        check_number("index", index, SLOT_INDEX)
        check_number("over", over, REVISION)
        revision = await self.bucket.update(slot_key(queue, index), holder.model_dump_json().encode(), last=over)
        return Slot(queue, index, revision, holder)

    async def release(self, slot: Slot) -> int | None:
        """Give ``slot`` back (a CAS delete at its revision); return the free slot's revision, or None
        when it had been taken back already."""
        try:
            return await self.bucket.delete(slot_key(slot.queue, slot.index), last=slot.revision)
        except Conflict:
            return None

    async def slots(self, queue: str | None = None) -> list[Slot]:
        """Every held slot of ``queue`` (of every queue when None), in key order."""
        prefix = f"{SLOT_PREFIX}." if queue is None else f"{SLOT_PREFIX}.{validate_id(queue, 'queue')}."
        found = [s for s in map(decode_slot, await self.bucket.scan(prefix)) if s is not None]
        return sorted(found, key=lambda s: (s.queue, s.index))

    async def heal(
        self,
        slots: Sequence[Slot],
        *,
        known: Callable[[str], IndexEntry | None] | None = None,
        grace: float = SLOT_GRACE,
    ) -> list[Slot]:
        """Take back every slot of ``slots`` whose claim is over; return those released.

        The take-back rule: a slot is kept only while the task store shows the claim it names current
        (its task, of the slot's queue, claimed by the holder at the slot's epoch or later; one slot per
        claim). It is over when the task's record is past the slot's epoch and not claimed by the
        holder, when its value is not corral's, or when no claim was written ``grace`` seconds after the
        slot was stored (its holder died before claiming): counted from the server's time of the write
        or from this healer's first sight of that revision, whichever is earlier, so neither a holder's
        clock nor a future time written in the slot can keep it longer. ``known`` (a live task index's
        lookup) spares the read of tasks it shows still claimed by their holder. Each release is a CAS
        at the slot's revision, so several healers, and the holder releasing at the same time, are safe.
        First sightings are kept per slot revision until the slot is judged otherwise or for
        :data:`SIGHTINGS_KEPT` seconds.
        """
        check_number("grace", grace, WAIT)
        suspects: list[Slot] = []
        over: list[Slot] = []
        claims: set[tuple[str, str, int]] = set()
        for slot in sorted(slots, key=lambda s: s.revision):
            holder = slot.holder
            claim = (slot.queue, holder.task_id, holder.epoch) if holder is not None else None
            if claim in claims:
                over.append(slot)  # one slot of a queue per claim: the first written keeps it
                continue
            if claim is not None:
                claims.add(claim)
            if holder is not None and known is not None:
                seen = known(holder.task_id)
                if (
                    seen is not None
                    and seen.queue == slot.queue
                    and verdict(holder, seen.status, seen.epoch, seen.worker_id) is Verdict.CURRENT
                ):
                    continue
            suspects.append(slot)
        ids = [s.holder.task_id for s in suspects if s.holder is not None]
        records = await self._tasks.read_many(ids) if ids else {}
        now, clock = datetime.now(UTC), time.monotonic()
        sighted = self._unsure_since
        unsure: set[tuple[str, int, int]] = set()
        for slot in suspects:
            holder = slot.holder
            if holder is not None:
                record = records.get(holder.task_id)
                if record is not None and record.queue != slot.queue:
                    over.append(slot)  # a claim of another queue holds none of this one's slots
                    continue
                worker = record.claim.worker_id if record is not None and record.claim is not None else None
                judged = verdict(holder, record.status if record else None, record.epoch if record else 0, worker)
                if judged is Verdict.CURRENT:
                    continue
                if judged is Verdict.UNSURE:
                    where = (slot.queue, slot.index, slot.revision)
                    since = sighted.setdefault(where, clock)
                    unsure.add(where)
                    stored = (now - slot.written_at).total_seconds() if slot.written_at is not None else 0.0
                    if max(clock - since, stored) < grace:
                        continue
            over.append(slot)
        judged_now = {(s.queue, s.index, s.revision) for s in slots}
        for where, since in list(sighted.items()):
            if (where in judged_now and where not in unsure) or clock - since > SIGHTINGS_KEPT:
                del sighted[where]
        over.sort(key=lambda s: s.revision)
        released = await asyncio.gather(*(self.release(s) for s in over))
        freed = [s for s, done in zip(over, released, strict=True) if done is not None]
        for slot in freed:
            log.info("limits: took back slot %d of %s from %s", slot.index, slot.queue, _who(slot))
        return freed

    async def remove_keys(self, keys: Mapping[str, int]) -> list[str]:
        """Delete each key of ``keys`` (a slot key that is not canonical, see
        :func:`~coord.limits.models.split_slot_key`) at the revision given, a CAS each; return those
        deleted (a key written again meanwhile is left for the next call). Never raises for one key."""
        done = await asyncio.gather(
            *(self.bucket.delete(key, last=revision) for key, revision in keys.items()), return_exceptions=True
        )
        removed = [key for key, result in zip(keys, done, strict=True) if not isinstance(result, BaseException)]
        for key in removed:
            log.info("limits: removed %s (not a slot key corral writes)", key)
        return removed

    # --- rate ------------------------------------------------------------------------------------
    def known_rate(self, queue: str) -> RateState | None:
        """The rate state of ``queue`` as this process last read or wrote it (None: not seen)."""
        known = self._rates.get(queue)
        return None if known is None else known[1]

    async def reserve(self, queue: str, rate: Rate, *, want: int, horizon: float) -> Reservation:
        """Reserve up to ``want`` starts of ``queue`` no later than ``horizon`` seconds from now.

        One CAS on ``rate.{queue}`` (first over the state this process saw last, then over a fresh
        read after each lost race). A state that is not corral's, or further ahead than a reservation
        could put it (:func:`~coord.limits.models.plausible`), is written over at its revision.
        The reservation's ``times`` are owned once it returns; with none, ``retry_at`` says when to
        ask again. Raises :class:`~coord.errors.Conflict` when the key keeps
        changing for ``cas_attempts`` tries.
        """
        check_number("want", want, COUNT)
        check_number("horizon", horizon, WAIT)
        key = rate_key(queue)
        known = self._rates.get(queue)
        async for attempt in conflicts(f"rate of queue {queue!r}", self._cas_attempts):
            if known is None or attempt:
                known = _rate_of(await self.bucket.get(key, leader=attempt > 0))
            revision, state = known
            now = time.time()
            if state is not None and not plausible(state, rate, now=now, horizon=horizon):
                log.warning("limits: %s is further ahead than any reservation; it is written over", key)
                known = revision, None
                state = None
            plan = reserve(state, rate, want=want, now=now, horizon=horizon)
            if plan.state is None:
                self._rates[queue] = known
                return plan
            try:
                written = await self.bucket.update(key, plan.state.model_dump_json().encode(), last=revision)
            except Conflict:
                continue
            self._rates[queue] = (written, plan.state)
            return plan
        raise AssertionError("unreachable: conflicts() raises when its attempts are spent")  # pragma: no cover

    async def rate_states(self) -> dict[str, RateState]:
        """The rate state of every queue that has one, by queue."""
        found: dict[str, RateState] = {}
        for entry in await self.bucket.scan(f"{RATE_PREFIX}."):
            _, state = _rate_of(entry)
            if state is not None:
                found[entry.key.split(".", 1)[1]] = state
        return found


def _rate_of(entry: Entry | None) -> tuple[int, RateState | None]:
    if entry is None:
        return 0, None
    if entry.deleted:
        return entry.revision, None
    try:
        return entry.revision, RateState.model_validate_json(entry.value or b"")
    except ValidationError:
        log.warning("limits: %s does not hold a rate state; it is written over", entry.key)
        return entry.revision, None


def _who(slot: Slot) -> str:
    holder = slot.holder
    if holder is None:
        return "a value corral did not write"
    return f"{holder.worker_id} ({holder.task_id}, epoch {holder.epoch})"
