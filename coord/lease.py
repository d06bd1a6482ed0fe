"""Leases: one active holder of a role per namespace, elected through the store.

A lease is one key of a KV bucket (the reclaimer's is ``leader`` in ``{ns}_roster``) whose value,
a :class:`LeaseRecord`, names the holder. The holder writes it with a per-message TTL and renews it
every ``interval`` by compare-and-set at the revision it last wrote, exactly like a presence key, so:

- **One holder at a time.** Taking the lease is a create (or a compare-and-set over a value that is
  nobody's, see below); two candidates racing for it get one winner from the server.
- **Fail-over within the TTL.** A holder that dies stops renewing; the server expires the key after
  the enforced TTL (whole seconds) and its expiry marker reaches every candidate, which tries to take
  the lease at once. A holder that stops on purpose deletes the key at its revision: the hand-over is
  immediate.
- **Fail closed, so never two holders acting.** A holder counts its term as over once no renewal has
  reached the server for the enforced TTL minus a margin (counted from when its last successful renewal
  was *sent*, the earliest moment the server can have stored it, so before the server can expire the key
  and let a candidate in), or at once when a renewal finds the key at another revision. :meth:`Lease.valid`
  answers that for each action the holder takes.
- **Standbys cost next to nothing.** A candidate that does not hold the lease follows this one key:
  one message per renewal of the holder.
- **Hostile values are healed, never obeyed.** A value without ``Nats-TTL`` (no holder of corral
  writes one) or that is not a lease record is nobody's lease: a candidate writes over it at its
  revision. A well-formed value that stops changing (no write seen for the enforced TTL plus an
  interval, timed on this process's clock from when the value was seen, so clock skew plays no part)
  is a dead holder's whose TTL the server does not apply: it is written over the same way.

- **Preferred candidates take over from the others.** A candidate made ``preferred`` (a standalone
  ``corral reclaimer``, which exists to take this work off parents) that finds a live term of a
  non-preferred holder asks for it: it writes the holder's record back at its revision with itself
  as ``wanted_by``. The holder steps down on that write (no action of its starts after it) and hands
  the lease over by writing the asker's record at that revision; the asker takes it with its first
  renewal. A holder that cannot answer (dead, or a corral without hand-over) is waited out as any
  other: the server expires the key a TTL after the ask. A want over a preferred holder is not
  honoured: that holder takes its key back at once.

A term also says when its holder is **ready** (:meth:`Lease.mark_ready`): done taking over, so
what the role keeps (the roster) is current. :func:`read_term` and :func:`is_live` are the same rules
for processes that only follow a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from coord.aio import stop_tasks
from coord.errors import Conflict, KeyExists
from coord.ids import Token
from coord.kv import MSG_TTL, Bucket, Entry, KeyWatch
from coord.presence.timing import check_timing, enforced_ttl

__all__ = ["LEADER", "Candidate", "Lease", "LeaseRecord", "Term", "asks_for", "hands_to", "is_live", "read_term"]

log = logging.getLogger("corral.lease")

LEADER = "leader"
"""Key of the reclaimer's lease in the roster bucket."""
MARGIN = 0.5
"""Seconds before the server could expire the key at which a holder stops counting itself the holder."""
STOP_WITHIN = 5.0


class Candidate(BaseModel):
    """A candidate as it names itself in a lease record: enough to hand it the lease."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    holder: Token
    """Its id."""
    instance: str = Field(min_length=1, max_length=64)
    """Nonce of its campaign."""
    host: str = Field(default="", max_length=255)
    """Host it runs on."""
    pid: int = Field(default=0, ge=0)
    """Its process id on ``host``."""


class LeaseRecord(BaseModel):
    """The value of a lease key: who holds it, since when, whether it is ready and who asks for it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    holder: Token
    """Id of the candidate holding the lease (a reclaimer's or a parent's id)."""
    instance: str = Field(min_length=1, max_length=64)
    """Nonce of the holding process's campaign: two processes with one id are told apart."""
    host: str = Field(default_factory=socket.gethostname, max_length=255)
    """Host the holder runs on."""
    pid: int = Field(default_factory=os.getpid, ge=0)
    """Process id of the holder on ``host``."""
    since: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    """When this term began (the holder's clock: for display only)."""
    ready: bool = False
    """True once the holder finished taking over."""
    preferred: bool = False
    """True for a preferred holder (a standalone reclaimer): it never hands the lease over."""
    wanted_by: Candidate | None = None
    """A preferred candidate asking this (non-preferred) holder for the lease, or None."""

    def candidate(self) -> Candidate:
        """This record's holder as a :class:`Candidate`."""
        return Candidate(holder=self.holder, instance=self.instance, host=self.host, pid=self.pid)


@dataclass(frozen=True)
class Term:
    """A lease as read from the store: its record at a revision."""

    record: LeaseRecord
    revision: int
    at: datetime | None
    """When the server stored this revision."""


def read_term(entry: Entry | None) -> tuple[Term | None, str]:
    """The live term an entry of a lease key holds: ``(term, "")``, or ``(None, why it is nobody's)``.

    No entry or a tombstone (a release, an expiry marker) is vacant with an empty reason; a value
    without ``Nats-TTL`` or that is not a :class:`LeaseRecord` is nobody's, with the reason (a
    candidate writes over it at its revision).
    """
    if entry is None or entry.deleted:
        return None, ""
    if MSG_TTL not in entry.headers:
        return None, "no Nats-TTL header: not written by a lease holder"
    try:
        record = LeaseRecord.model_validate_json(entry.value or b"")
    except ValidationError as err:
        first = err.errors()[0]
        return None, f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"
    return Term(record, entry.revision, entry.time), ""


def is_live(seen_at: float, now: float, *, ttl: float, interval: float) -> bool:
    """Whether a term last seen written at ``seen_at`` (a monotonic time) may still be held at ``now``.

    A holder renews every ``interval``; a value unchanged for longer than the enforced TTL plus one
    interval is a dead holder's, whatever TTL it claims.
    """
    return now - seen_at <= enforced_ttl(ttl) + interval


def asks_for(term: Term | None, mine: LeaseRecord) -> bool:
    """Whether the candidate writing ``mine`` asks the live ``term``'s holder for the lease: it is
    preferred, the holder is not, and nobody asks yet."""
    if term is None or not mine.preferred:
        return False
    record = term.record
    return not record.preferred and record.wanted_by is None and record.instance != mine.instance


def hands_to(term: Term | None, mine: LeaseRecord) -> Candidate | None:
    """Who the holder writing ``mine`` hands the lease to when ``term`` is its own record with an ask
    on it: the asker, unless the holder is preferred itself (then nobody)."""
    if term is None or term.record.instance != mine.instance or mine.preferred:
        return None
    asker = term.record.wanted_by
    return asker if asker is not None and asker.instance != mine.instance else None


class Lease:
    """One process's candidacy for the lease under ``key`` (see the module docstring for the guarantees).

    ``async with Lease(bucket, "leader", "reclaimer-a", ttl=3, interval=1) as lease:`` campaigns until
    the block ends, then releases a held lease. :meth:`until` waits for the lease to be held or not;
    :attr:`held` and :meth:`valid` say whether this process holds it now; :attr:`current` is the live
    term as last seen (this process's or another's).
    """

    def __init__(
        self, bucket: Bucket, key: str, holder: str, *, ttl: float, interval: float, preferred: bool = False
    ) -> None:
        check_timing(interval, ttl)
        self.bucket = bucket
        self.key = key
        self.ttl = ttl
        self.interval = interval
        self.record = LeaseRecord(holder=holder, instance=secrets.token_hex(8), preferred=preferred)
        """What this process writes while it holds the lease (``preferred``: see the module docstring)."""
        self.current: Term | None = None
        """The live term as last seen, or None when the lease is vacant (or held by nobody's value)."""
        self.terms = 0
        """How many terms this process has begun."""
        self._revision = 0
        self._last_ok_send = 0.0
        self._seen: Entry | None = None
        self._seen_at = 0.0
        self._held = asyncio.Event()
        self._free = asyncio.Event()
        self._free.set()
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._retry_at = 0.0
        self._watch: KeyWatch | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    # --- state ------------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True while this process holds the lease (see :meth:`valid` before acting on it)."""
        return self._held.is_set()

    def valid(self) -> bool:
        """True if this process holds the lease and the server cannot have expired it yet."""
        loop = asyncio.get_running_loop()
        return self.held and loop.time() < self._last_ok_send + enforced_ttl(self.ttl) - MARGIN

    async def until(self, held: bool) -> None:
        """Return once this process holds the lease (``held=True``) or does not (``held=False``)."""
        await (self._held if held else self._free).wait()

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> Lease:
        """Follow the key and campaign; returns once the first attempt to take the lease was made."""
        self._stopping = False
        self._watch = await KeyWatch(self.bucket, self._on_entry, keys=self.key).start(within=self.bucket.patience)
        await self._attempt()
        self._runner = asyncio.create_task(self._run(), name=f"lease-{self.key}")
        return self

    async def stop(self) -> None:
        """Stop campaigning; a held lease (or one handed to this process and not yet taken) is released,
        deleted at its revision, so a standby takes it at once."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await stop_tasks([self._runner], within=STOP_WITHIN, what=f"lease {self.key}")
            self._runner = None
        revision = self._revision if self.held else self._handed_revision()
        if revision:
            self._step_down("released", level=logging.INFO)
            with contextlib.suppress(Exception):  # best effort: the TTL frees it anyway
                await self.bucket.delete(self.key, last=revision, patience=2.0)
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    def _handed_revision(self) -> int:
        """The revision of a term handed to this process and not yet taken (0: none)."""
        term = self.current
        if term is None or term.record.instance != self.record.instance or term.record.wanted_by is not None:
            return 0
        return term.revision

    async def __aenter__(self) -> Lease:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def mark_ready(self) -> bool:
        """Record that the holder finished taking over: True once written. False if the term ended (no
        longer held) or the write failed for now (still held: the next renewal carries the flag)."""
        if not self.held:
            return False
        self.record = self.record.model_copy(update={"ready": True})
        return await self._renew()

    # --- following the key -----------------------------------------------------------------------
    def _on_entry(self, entry: Entry) -> None:
        self._seen, self._seen_at = entry, asyncio.get_running_loop().time()
        term, problem = read_term(entry)
        self.current = term
        if problem:
            log.warning(
                "lease %s: value at revision %d is nobody's (%s); it will be written over",
                self.key,
                entry.revision,
                problem,
            )
        if self.held and entry.revision > self._revision:
            mine = term is not None and term.record.instance == self.record.instance
            if not mine:
                self._step_down(f"the key was written at revision {entry.revision} by another writer")
            elif term is not None and term.record.wanted_by is not None:  # handed over (or taken back) next
                self._step_down(f"{term.record.wanted_by.holder} asks for it", level=logging.INFO)
        self._wake.set()

    # --- campaigning ------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            now = loop.time()
            due = self._last_ok_send + self.interval if self.held else now + self._stale_in(now)
            delay = max(due, self._retry_at) - now
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            if self._stopping:
                return
            if self.held:
                if loop.time() >= self._last_ok_send + self.interval:
                    await self._renew()
            else:
                await self._attempt()

    def _stale_in(self, now: float) -> float:
        """Seconds until the value seen counts as a dead holder's (0: now; a long wait when vacant)."""
        term, _ = read_term(self._seen)
        if term is None:
            return 0.0 if self._seen is not None and not self._seen.deleted else self.interval
        limit = enforced_ttl(self.ttl) + self.interval
        return max(0.0, self._seen_at + limit - now) + 0.01

    async def _attempt(self) -> None:
        """Take the lease if it is vacant, nobody's, a dead holder's or handed to this process; ask a
        live non-preferred holder for it when this candidate is preferred. Never raises."""
        seen, loop = self._seen, asyncio.get_running_loop()
        term, _ = read_term(seen)
        if term is not None and is_live(self._seen_at, loop.time(), ttl=self.ttl, interval=self.interval):
            if asks_for(term, self.record):
                await self._ask(term)
                return
            if term.record.instance != self.record.instance:
                return
            asker = hands_to(term, self.record)
            if asker is not None:
                await self._hand_over(term.revision, asker)
                return
            # named this process's: handed to it, its own term asked for by no one it yields to, or one
            # it stepped down from unasked; a compare-and-set at the revision seen takes it (back)
        record = self.record.model_copy(update={"since": datetime.now(UTC), "ready": False})
        sent = loop.time()
        try:
            if seen is None or seen.deleted:
                revision = await self.bucket.create(self.key, _encode(record), ttl=self.ttl, patience=self.interval)
            else:
                revision = await self.bucket.update(
                    self.key, _encode(record), last=seen.revision, ttl=self.ttl, patience=self.interval
                )
        except (KeyExists, Conflict):
            return  # another candidate won; the watch says who
        except Exception as err:
            log.debug("lease %s: taking it failed (%s); trying again", self.key, err)
            self._retry_at = loop.time() + self._pause()
            return
        self.record, self._revision, self._last_ok_send = record, revision, sent
        self.terms += 1
        self._free.clear()
        self._held.set()
        log.info("lease %s: %s holds it (revision %d)", self.key, record.holder, revision)

    async def _ask(self, term: Term) -> None:
        """Write the holder's record back at its revision with this candidate as ``wanted_by``."""
        asking = term.record.model_copy(update={"wanted_by": self.record.candidate()})
        try:
            await self.bucket.update(
                self.key, _encode(asking), last=term.revision, ttl=self.ttl, patience=self.interval
            )
        except Conflict:
            return  # renewed meanwhile: asked again when that renewal is seen
        except Exception as err:
            log.debug("lease %s: asking for it failed (%s); trying again", self.key, err)
            self._retry_at = asyncio.get_running_loop().time() + self._pause()
            return
        log.info("lease %s: %s asks %s for it", self.key, self.record.holder, term.record.holder)

    async def _hand_over(self, revision: int, asker: Candidate) -> None:
        """Write ``asker``'s record at ``revision`` (the ask): it takes the lease with its first renewal."""
        handed = LeaseRecord(
            holder=asker.holder, instance=asker.instance, host=asker.host, pid=asker.pid, preferred=True
        )
        try:
            await self.bucket.update(self.key, _encode(handed), last=revision, ttl=self.ttl, patience=self.interval)
        except Exception as err:  # the ask expires with its TTL; candidates take the lease then
            log.info("lease %s: handing it to %s failed (%s)", self.key, asker.holder, err)
            return
        log.info("lease %s: %s handed it to %s", self.key, self.record.holder, asker.holder)

    def _pause(self) -> float:
        """How long to wait after a write that failed for a reason other than a lost race."""
        return min(0.25, self.interval / 4)

    async def _renew(self) -> bool:
        async with self._writing:  # a renewal and mark_ready must not race each other at one revision
            return await self._renew_once()

    async def _renew_once(self) -> bool:
        loop = asyncio.get_running_loop()
        if not self.held:
            return False
        deadline = self._last_ok_send + enforced_ttl(self.ttl) - MARGIN
        sent = loop.time()
        if sent >= deadline:
            self._step_down("no renewal reached the server within the TTL")
            return False
        try:
            revision = await self.bucket.update(
                self.key, _encode(self.record), last=self._revision, ttl=self.ttl, patience=deadline - sent
            )
        except Conflict:
            self._step_down("the key is no longer at the revision this holder wrote")
            return False
        except Exception as err:
            log.debug("lease %s: renewal failed (%s); retrying", self.key, err)
            self._retry_at = loop.time() + self._pause()
            return False
        if self.held:
            self._revision, self._last_ok_send = revision, sent
        return self.held

    def _step_down(self, why: str, *, level: int = logging.WARNING) -> None:
        if not self.held:
            return
        log.log(level, "lease %s: %s no longer holds it (%s)", self.key, self.record.holder, why)
        self._held.clear()
        self._free.set()
        self._wake.set()


def _encode(record: LeaseRecord) -> bytes:
    return record.model_dump_json().encode()
