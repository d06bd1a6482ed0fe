"""The KV floor: every bucket corral keeps (tasks, presence, registry) is read and written here.

A :class:`Bucket` talks to the stream behind a JetStream KV bucket directly, because corral needs
what nats-py's ``KeyValue`` does not give together: a per-message TTL on a compare-and-set, the
headers of every entry, the server's expiry markers, and a write whose outcome is settled when its
answer was lost. The rules, each in exactly one place:

* **Tombstones.** An entry whose ``KV-Operation`` is ``DEL``/``PURGE`` or that carries a
  ``Nats-Marker-Reason`` (the server's ``MaxAge``/``Remove``/``Purge`` markers) is a tombstone
  (:class:`Op`); everything else is a value.
* **Compare-and-set.** Writes name the revision they replace (``Nats-Expected-Last-Subject-Sequence``;
  0 = the key has never been written since its last purge). Both of the server's wrong-last-sequence
  answers (10071, 10164) raise :class:`~coord.errors.Conflict`.
* **Unknown outcomes.** A write that timed out or met a 503 may have landed. It is settled by reading
  the key from the stream leader: still at the expected revision → write again; our exact value
  (or tombstone) there → it landed, at that revision; anything else → ``Conflict``. Record bytes carry
  a fresh timestamp or nonce, so equal bytes mean our write.
* **Transient trouble** (timeouts, no responders, 503 during an election) is retried for the bucket's
  ``patience`` (or the call's) and then raised as :class:`~coord.errors.Unavailable`.
* **TTLs** are formatted and validated by :func:`ttl_header` only (whole seconds as ``"3s"``, at
  least 1 s: nats-server refuses shorter ones and applies whole seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from coord.errors import Conflict, InvalidInput, KeyExists, Unavailable
from coord.naming import kv_stream_name, kv_subject_prefix
from coord.retry import TRANSIENT, is_transient, retry_transient
from coord.streams import stream_snapshot

__all__ = [
    "EXPECTED_LAST",
    "KV_OPERATION",
    "MARKER_REASON",
    "MSG_TTL",
    "WRONG_LAST_SEQUENCE",
    "Bucket",
    "Entry",
    "KeyWatch",
    "Op",
    "conflicts",
    "operation",
    "ttl_header",
]

log = logging.getLogger("corral.kv")

KV_OPERATION = "KV-Operation"
"""Header marking a KV delete (``DEL``) or purge (``PURGE``)."""
MARKER_REASON = "Nats-Marker-Reason"
"""Header of a marker the server itself wrote (``MaxAge`` when a per-key TTL ran out)."""
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
"""Header of a compare-and-set: the revision the write replaces."""
MSG_TTL = "Nats-TTL"
"""Header giving one message its own TTL."""
ROLLUP = "Nats-Rollup"
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""JSStreamWrongLastSequenceErrF and JSStreamWrongLastSequenceConstantErr."""
MIN_TTL = 1.0


class Op(StrEnum):
    """What one entry of a key is: a value or one of the tombstones."""

    PUT = "put"
    """A value."""
    DELETE = "delete"
    """``KV-Operation: DEL`` (a client deleted the key)."""
    PURGE = "purge"
    """``KV-Operation: PURGE`` (a client purged the key's history)."""
    EXPIRED = "expired"
    """The server's ``MaxAge`` marker: the entry's TTL ran out."""
    REMOVED = "removed"
    """Another server marker (``Remove``/``Purge``: an operator removed it)."""


def operation(headers: Mapping[str, str] | None) -> Op:
    """The :class:`Op` of an entry with these headers (the one tombstone rule)."""
    if not headers:
        return Op.PUT
    op = headers.get(KV_OPERATION)
    if op == "DEL":
        return Op.DELETE
    if op == "PURGE":
        return Op.PURGE
    marker = headers.get(MARKER_REASON)
    if marker is not None:
        return Op.EXPIRED if marker == "MaxAge" else Op.REMOVED
    return Op.PUT


def ttl_header(seconds: float) -> str:
    """The ``Nats-TTL`` value for ``seconds``; :class:`InvalidInput` unless a finite number >= 1 s.

    Whole seconds are written as ``"3s"``; a fraction as milliseconds (``"1500ms"``), which the
    server accepts but applies in whole seconds.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise InvalidInput(f"ttl must be a number of seconds, got {seconds!r}")
    if seconds < MIN_TTL:
        raise InvalidInput(
            f"ttl must be at least {MIN_TTL:g}s (nats-server refuses shorter per-message TTLs), got {seconds:g}"
        )
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


async def conflicts(what: str, attempts: int) -> AsyncIterator[int]:
    """The one retry rhythm of compare-and-set loops: yields attempt numbers 0, 1, ... ``attempts - 1``.

    From the second attempt on it first steps aside for a jittered 0..2·n ms, so a busy writer
    cannot starve the others; once the attempts are spent it raises :class:`~coord.errors.Conflict`
    naming ``what``. Use ``async for attempt in conflicts(...)`` with a ``continue`` after each lost race.
    """
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        yield attempt
    raise Conflict(f"{what}: gave up after {attempts} conflicting writes")


@dataclass(frozen=True, slots=True)
class Entry:
    """The latest message of one key: a value or a tombstone, at a revision."""

    key: str
    """The key."""
    revision: int
    """Its stream sequence (what a compare-and-set names)."""
    op: Op
    """Value or which tombstone."""
    value: bytes | None
    """The bytes of a value (None for a tombstone, and for a value read headers-only)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Every header of the message."""
    time: datetime | None = None
    """When the server stored it."""

    @property
    def deleted(self) -> bool:
        """True for a tombstone."""
        return self.op is not Op.PUT


def _entry(
    key: str, revision: int, headers: Mapping[str, str] | None, data: bytes | None, at: datetime | None
) -> Entry:
    op = operation(headers)
    return Entry(key, revision, op, (data or b"") if op is Op.PUT else None, dict(headers or {}), at)


class Bucket:
    """One KV bucket (see the module docstring for the rules every method follows).

    ``patience`` is how long a call keeps retrying through server unavailability unless the call
    names its own; ``request_timeout`` bounds each request.
    """

    def __init__(
        self, js: JetStreamContext, nc: NATS, name: str, *, patience: float = 15.0, request_timeout: float = 5.0
    ) -> None:
        self.js = js
        """JetStream context the bucket is reached through."""
        self.nc = nc
        """The connection (retries stop once it is closed for good)."""
        self.name = name
        """The bucket's name."""
        self.stream = kv_stream_name(name)
        """The stream behind the bucket."""
        self.prefix = kv_subject_prefix(name)
        """Subject prefix of the bucket's keys (``$KV.{bucket}.``)."""
        self.patience = patience
        """Default seconds a call keeps retrying through server unavailability."""
        self.request_timeout = request_timeout
        """Longest wait for one request."""

    def tuned(self, *, patience: float, request_timeout: float) -> Bucket:
        """The same bucket with another default ``patience`` and ``request_timeout``."""
        return Bucket(self.js, self.nc, self.name, patience=patience, request_timeout=request_timeout)

    def subject(self, key: str) -> str:
        """The stream subject of ``key``."""
        return self.prefix + key

    def key_of(self, subject: str) -> str:
        """The key of a stream subject of this bucket."""
        return subject[len(self.prefix) :]

    # --- reading ---------------------------------------------------------------------------------
    async def get(self, key: str, *, patience: float | None = None, leader: bool = False) -> Entry | None:
        """The latest entry of ``key`` (value or tombstone), or None if the key has no message.

        Reads are served by any replica (direct get) unless ``leader``: a replica may lag the
        leader by a moment, which compare-and-set writes tolerate.
        """
        subject = self.subject(key)

        async def call() -> Entry | None:
            try:
                msg = await self.js.get_msg(self.stream, subject=subject, direct=not leader)
            except nats.js.errors.NotFoundError:
                return None
            return _entry(key, msg.seq or 0, msg.headers, msg.data, msg.time)

        return await retry_transient(call, nc=self.nc, within=self._patience(patience), what=f"read {self.name}/{key}")

    async def scan(self, prefix: str = "", *, include_deleted: bool = False) -> list[Entry]:
        """The latest entry of every key starting with ``prefix`` (tombstones only if asked), in stream order."""
        msgs = await retry_transient(
            lambda: stream_snapshot(self.js, self.stream, self.subject(prefix) + ">", last_per_subject=True),
            nc=self.nc,
            within=self.patience,
            what=f"scan {self.name}/{prefix}*",
        )
        entries = [self._from_msg(m) for m in msgs]
        return entries if include_deleted else [e for e in entries if not e.deleted]

    def _from_msg(self, msg: Msg, *, headers_only: bool = False) -> Entry:
        meta = msg.metadata
        entry = _entry(self.key_of(msg.subject), meta.sequence.stream, msg.headers, msg.data, meta.timestamp)
        if headers_only and entry.op is Op.PUT:
            return Entry(entry.key, entry.revision, entry.op, None, entry.headers, entry.time)
        return entry

    def watch(
        self,
        on_entry: Callable[[Entry], Awaitable[None] | None],
        *,
        keys: str = ">",
        headers_only: bool = False,
        heartbeat: float = 1.0,
        on_ready: Callable[[], None] | None = None,
    ) -> KeyWatch:
        """A :class:`KeyWatch` of the keys matching ``keys`` (a subject pattern below the bucket)."""
        return KeyWatch(self, on_entry, keys=keys, headers_only=headers_only, heartbeat=heartbeat, on_ready=on_ready)

    # --- writing ---------------------------------------------------------------------------------
    async def create(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        headers: Mapping[str, str] | None = None,
        patience: float | None = None,
    ) -> int:
        """Write ``value`` if ``key`` has no live value (absent, or a tombstone); return its revision.

        Raises :class:`~coord.errors.KeyExists` (carrying the live :class:`Entry`) otherwise.
        """
        last = 0
        for _ in range(8):
            try:
                return await self._write(key, value, headers, last=last, ttl=ttl, op=Op.PUT, patience=patience)
            except Conflict:
                pass
            entry = await self.get(key, patience=patience, leader=True)
            if entry is not None and not entry.deleted:
                raise KeyExists(f"{self.name}: key {key!r} already exists (revision {entry.revision})", entry)
            last = entry.revision if entry is not None else 0
        raise Conflict(f"{self.name}: key {key!r} keeps changing; cannot create it")

    async def update(
        self,
        key: str,
        value: bytes,
        *,
        last: int,
        ttl: float | None = None,
        headers: Mapping[str, str] | None = None,
        patience: float | None = None,
    ) -> int:
        """Replace revision ``last`` of ``key`` with ``value``; return the new revision.

        Raises :class:`~coord.errors.Conflict` when the key is not at ``last``.
        """
        return await self._write(key, value, headers, last=last, ttl=ttl, op=Op.PUT, patience=patience)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        headers: Mapping[str, str] | None = None,
        patience: float | None = None,
    ) -> int:
        """Write ``value`` whatever is there; return its revision."""
        return await self._write(key, value, headers, last=None, ttl=ttl, op=Op.PUT, patience=patience)

    async def delete(
        self,
        key: str,
        *,
        last: int | None = None,
        headers: Mapping[str, str] | None = None,
        patience: float | None = None,
    ) -> int:
        """Write a ``DEL`` tombstone (only over revision ``last`` when given); return its revision."""
        marked = {**(headers or {}), KV_OPERATION: "DEL"}
        return await self._write(key, b"", marked, last=last, ttl=None, op=Op.DELETE, patience=patience)

    async def purge(self, key: str, *, patience: float | None = None) -> int:
        """Drop ``key``'s history and leave a ``PURGE`` tombstone; return its revision."""
        marked = {KV_OPERATION: "PURGE", ROLLUP: "sub"}
        return await self._write(key, b"", marked, last=None, ttl=None, op=Op.PURGE, patience=patience)

    # --- the write engine ------------------------------------------------------------------------
    def _patience(self, patience: float | None) -> float:
        return self.patience if patience is None else patience

    async def _write(
        self,
        key: str,
        data: bytes,
        extra: Mapping[str, str] | None,
        *,
        last: int | None,
        ttl: float | None,
        op: Op,
        patience: float | None,
    ) -> int:
        subject = self.subject(key)
        headers = dict(extra or {})
        if last is not None:
            headers[EXPECTED_LAST] = str(last)
        if ttl is not None:
            headers[MSG_TTL] = ttl_header(ttl)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._patience(patience)
        pause = 0.05
        uncertain = False  # an earlier attempt may have landed without us hearing back
        while True:
            timeout = max(0.05, min(self.request_timeout, deadline - loop.time()))
            try:
                ack = await self.js.publish(subject, data, timeout=timeout, headers=dict(headers))
                return ack.seq
            except nats.js.errors.APIError as err:
                if err.err_code in WRONG_LAST_SEQUENCE:
                    if uncertain:
                        landed = await self._landed(key, data, op, last)
                        if landed is not None:
                            return landed
                    raise Conflict(
                        f"{self.name}: key {key!r} changed concurrently (expected revision {last})"
                    ) from None
                if not is_transient(err):
                    raise
                failure: Exception = err
            except TRANSIENT as err:
                failure = err
            uncertain = True
            if self.nc.is_closed or loop.time() + pause > deadline:
                raise Unavailable(
                    f"write {self.name}/{key}: the NATS server did not answer ({failure or type(failure).__name__})"
                ) from failure
            log.debug("write %s/%s: %s; retrying in %.2fs", self.name, key, failure, pause)
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)
            if last is None:
                continue  # unconditional: writing again is harmless
            try:
                entry = await self.get(key, patience=0, leader=True)
            except Exception:
                continue  # still unreachable: write again (a wrong-last answer is then settled above)
            if (entry.revision if entry is not None else 0) == last:
                continue
            if entry is not None and _same(entry, data, op):
                return entry.revision
            raise Conflict(f"{self.name}: key {key!r} changed concurrently (expected revision {last})")

    async def _landed(self, key: str, data: bytes, op: Op, last: int | None) -> int | None:
        """The revision at which our write is the key's latest entry, or None if it is not."""
        entry = await self.get(key, leader=True)
        if entry is None or entry.revision == last or not _same(entry, data, op):
            return None
        return entry.revision


def _same(entry: Entry, data: bytes, op: Op) -> bool:
    return entry.op is op and (op is not Op.PUT or entry.value == data)


class KeyWatch:
    """Every change of the keys a pattern matches, fed to a callback: the latest entry of each key first.

    One ordered push consumer (last entry per key, then every write) with an idle heartbeat, so a
    consumer lost to a server restart or a leader move is noticed within two heartbeats and
    re-created from the last revision seen (nats-py does this), with nothing skipped or repeated.
    :meth:`start` returns once every entry that existed when it subscribed has been passed to
    ``on_entry`` (:attr:`ready`), also when the pattern matches nothing. ``on_entry`` runs for one
    entry at a time; an exception there is logged and the watch goes on.
    """

    def __init__(
        self,
        bucket: Bucket,
        on_entry: Callable[[Entry], Awaitable[None] | None],
        *,
        keys: str = ">",
        headers_only: bool = False,
        heartbeat: float = 1.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.bucket = bucket
        """The watched bucket."""
        self.ready = asyncio.Event()
        """Set once the entries that existed at the start have been delivered."""
        self._on_entry = on_entry
        self._on_ready = on_ready
        self._keys = keys
        self._headers_only = headers_only
        self._heartbeat = heartbeat
        self._sub: JetStreamContext.PushSubscription | None = None
        self._target: int | None = None
        self._seen_consumer_seq = 0
        self._last_arrival = 0.0
        self._settler: asyncio.Task[None] | None = None
        self._stopped = False
        self.revision = 0
        """Highest revision delivered so far."""

    async def start(self, *, within: float | None = None) -> KeyWatch:
        """Subscribe (once) and wait until :attr:`ready` (``TimeoutError`` after ``within`` seconds)."""
        if self._sub is None and not self._stopped:
            self._sub = await retry_transient(
                self._subscribe, nc=self.bucket.nc, within=self.bucket.patience, what=f"watch {self.bucket.name}"
            )
            info = await self._sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            self._target = (delivered or 0) + (info.num_pending or 0)
            self._check_ready()
            if not self.ready.is_set():
                self._settler = asyncio.create_task(self._settle_readiness(), name=f"watch-ready-{self.bucket.name}")
        async with asyncio.timeout(within):
            await self.ready.wait()
        return self

    async def _subscribe(self) -> JetStreamContext.PushSubscription:
        return await self.bucket.js.subscribe(
            self.bucket.subject(self._keys),
            stream=self.bucket.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            headers_only=self._headers_only,
            idle_heartbeat=self._heartbeat,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=60.0,
        )

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        self._last_arrival = asyncio.get_running_loop().time()
        self._seen_consumer_seq = max(self._seen_consumer_seq, meta.sequence.consumer)
        entry = self.bucket._from_msg(msg, headers_only=self._headers_only)
        self.revision = max(self.revision, entry.revision)
        try:
            result = self._on_entry(entry)
            if result is not None:
                await result
        except Exception:
            log.exception(
                "watch of %s: could not handle key %s at revision %d", self.bucket.name, entry.key, entry.revision
            )
        if meta.num_pending == 0:
            self._set_ready()
        self._check_ready()

    def _check_ready(self) -> None:
        if self._target is not None and self._seen_consumer_seq >= self._target:
            self._set_ready()

    def _set_ready(self) -> None:
        if self.ready.is_set():
            return
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    async def _settle_readiness(self) -> None:
        """Entries counted at the start may be replaced before they are delivered: ask the server again."""
        with contextlib.suppress(asyncio.CancelledError):
            while not self.ready.is_set() and self._sub is not None:
                await asyncio.sleep(self._heartbeat)
                quiet = asyncio.get_running_loop().time() - self._last_arrival >= self._heartbeat
                with contextlib.suppress(Exception):
                    if quiet and not (await self._sub.consumer_info()).num_pending:
                        self._set_ready()

    async def stop(self) -> None:
        """Unsubscribe; idempotent."""
        self._stopped = True
        settler, self._settler = self._settler, None
        if settler is not None:
            settler.cancel()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def __aenter__(self) -> KeyWatch:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
