"""Reading and writing one KV bucket: :class:`Bucket`, and :func:`conflicts`, the one CAS retry rhythm."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from coord.acks import AckedPublisher
from coord.errors import Conflict, KeyExists, Unavailable
from coord.kv.entry import (
    EXPECTED_LAST,
    KV_OPERATION,
    MSG_TTL,
    ROLLUP,
    WRONG_LAST_SEQUENCE,
    Entry,
    Op,
    entry_of,
    ttl_header,
)
from coord.naming import JS_API_PREFIX, direct_get_subject, kv_stream_name, kv_subject_prefix
from coord.permissions import permission_log
from coord.retry import TRANSIENT, Pauses, is_transient, retry_transient
from coord.streams import stream_snapshot

__all__ = ["GET_MANY_CHUNK", "Bucket", "conflicts"]

log = logging.getLogger("corral.kv")

GET_MANY_CHUNK = 256
"""Keys asked for in one batched direct get (the server caps the subjects of one request)."""
_STATUS = "Status"
_SUBJECT = "Nats-Subject"
_SEQUENCE = "Nats-Sequence"
_TIME = "Nats-Time-Stamp"


class conflicts:
    """The one retry rhythm of compare-and-set loops: yields attempt numbers 0, 1, ... ``attempts - 1``.

    From the second attempt on it first steps aside for a jittered 0..2·n ms, so a busy writer
    cannot starve the others; once the attempts are spent it raises :class:`~coord.errors.Conflict`
    naming ``what``. Use ``async for attempt in conflicts(...)`` with a ``continue`` after each lost race.

    An iterator object, not an async generator: a loop left by its first write (the common case)
    leaves nothing for the event loop to finalise (an abandoned async generator costs a thread-safe
    callback, a wake-up of the loop and a task to close it, on every write).
    """

    __slots__ = ("_attempts", "_next", "_what")

    def __init__(self, what: str, attempts: int) -> None:
        self._what = what
        self._attempts = attempts
        self._next = 0

    def __aiter__(self) -> conflicts:
        return self

    async def __anext__(self) -> int:
        attempt = self._next
        if attempt >= self._attempts:
            raise Conflict(f"{self._what}: gave up after {self._attempts} conflicting writes")
        self._next = attempt + 1
        if attempt:
            await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        return attempt


class Bucket:
    """One KV bucket (see the module docstring for the rules every method follows).

    ``patience`` is how long a call keeps retrying through server unavailability unless the call
    names its own; ``request_timeout`` bounds each request.
    """

    def __init__(
        self,
        js: JetStreamContext,
        nc: NATS,
        name: str,
        *,
        patience: float = 15.0,
        request_timeout: float = 5.0,
        acks: AckedPublisher | None = None,
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
        self.acks = acks or AckedPublisher(nc)
        """Where writes are published (one per connection, shared by its buckets and streams)."""

    def tuned(self, *, patience: float, request_timeout: float) -> Bucket:
        """The same bucket with another default ``patience`` and ``request_timeout``."""
        return Bucket(self.js, self.nc, self.name, patience=patience, request_timeout=request_timeout, acks=self.acks)

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
            if not leader:  # a last-by-subject direct get over the connection's one reply subscription
                prefix = getattr(self.js, "_prefix", JS_API_PREFIX)
                answer = await self.acks.request(
                    f"{direct_get_subject(self.stream, prefix)}.{subject}", b"", timeout=self.request_timeout
                )
                return self._direct_entry(key, answer)
            try:
                # the JetStream context's own timeout is not this bucket's request_timeout
                read = self.js.get_msg(self.stream, subject=subject, direct=False)
                msg = await asyncio.wait_for(read, self.request_timeout)
            except nats.js.errors.NotFoundError:
                return None
            except TimeoutError:
                raise nats.errors.TimeoutError from None
            return entry_of(key, msg.seq or 0, msg.headers, msg.data, msg.time)

        return await retry_transient(call, nc=self.nc, within=self._patience(patience), what=f"read {self.name}/{key}")

    def _direct_entry(self, key: str, msg: Msg) -> Entry | None:
        """The entry a direct get answered with; None for "no message" (404); a status is raised as nats-py does."""
        headers = msg.headers or {}
        if not msg.data and _SUBJECT not in headers and (status := headers.get(_STATUS)):
            if status == "404":
                return None
            if status == "503":
                raise nats.errors.NoRespondersError
            raise nats.js.errors.APIError.from_msg(msg)
        stamp = headers.get(_TIME)
        at = js_api.Base._parse_utc_iso(stamp) if stamp else None
        return entry_of(key, int(headers.get(_SEQUENCE) or 0), headers, msg.data, at)

    async def get_many(self, keys: Sequence[str], *, patience: float | None = None) -> dict[str, Entry]:
        """The latest entries (values or tombstones) of ``keys``, by key, read with batched direct gets.

        One request per :data:`GET_MANY_CHUNK` keys (JetStream's ``multi_last`` batch get), served
        by any replica like :meth:`get`; a key without any message is absent from the answer. Each
        request is bounded by ``request_timeout`` and retried through transient trouble for
        ``patience`` (then :class:`~coord.errors.Unavailable`).
        """
        wanted = list(dict.fromkeys(keys))
        if len(wanted) == 1:  # one direct get over the shared reply subscription: no inbox to set up
            entry = await self.get(wanted[0], patience=patience)
            return {} if entry is None else {wanted[0]: entry}
        found: dict[str, Entry] = {}
        for start in range(0, len(wanted), GET_MANY_CHUNK):
            chunk = wanted[start : start + GET_MANY_CHUNK]

            async def call(chunk: list[str] = chunk) -> dict[str, Entry]:
                return await self._get_batch(chunk)

            found.update(
                await retry_transient(
                    call, nc=self.nc, within=self._patience(patience), what=f"read {len(chunk)} keys of {self.name}"
                )
            )
        return found

    async def _get_batch(self, keys: list[str]) -> dict[str, Entry]:
        """One batched direct get: every reply until the server's end-of-batch (204) or not-found (404).

        The replies come over the connection's one reply subscription (:class:`AckedPublisher`), not
        a subscription made and dropped per batch."""
        request = json.dumps({"multi_last": [self.subject(k) for k in keys], "batch": len(keys)}).encode()
        prefix = getattr(self.js, "_prefix", JS_API_PREFIX)
        msgs = await self.acks.request_batch(
            direct_get_subject(self.stream, prefix), request, last=_ends_batch, timeout=self.request_timeout
        )
        found: dict[str, Entry] = {}
        for msg in msgs:
            headers = msg.headers or {}
            subject = headers.get(_SUBJECT)
            if subject is None:  # a status: the end of the batch, nothing found, or an error
                status = headers.get(_STATUS, "")
                if status in ("204", "404"):
                    return found
                if status == "503":
                    raise nats.errors.NoRespondersError
                raise nats.js.errors.APIError.from_msg(msg)
            if not subject.startswith(self.prefix):
                continue  # not a key of this bucket (cannot happen for the subjects we asked)
            stamp = headers.get(_TIME)
            at = js_api.Base._parse_utc_iso(stamp) if stamp else None
            key = self.key_of(subject)
            found[key] = entry_of(key, int(headers.get(_SEQUENCE) or 0), headers, msg.data, at)
        return found

    async def last_revision(self) -> int:
        """The bucket's latest revision (its stream's last sequence; purges do not lower it)."""

        async def call() -> int:
            return int((await self.js.stream_info(self.stream)).state.last_seq or 0)

        return await retry_transient(call, nc=self.nc, within=self.patience, what=f"read the state of {self.name}")

    async def scan(self, prefix: str = "", *, include_deleted: bool = False) -> list[Entry]:
        """The latest entry of every key starting with ``prefix`` (tombstones only if asked), in stream order."""
        msgs = await retry_transient(
            lambda: stream_snapshot(self.js, self.stream, self.subject(prefix) + ">", last_per_subject=True),
            nc=self.nc,
            within=self.patience,
            what=f"scan {self.name}/{prefix}*",
        )
        entries = [self.entry_from(m) for m in msgs]
        return entries if include_deleted else [e for e in entries if not e.deleted]

    def entry_from(self, msg: Msg, *, headers_only: bool = False) -> Entry:
        """The :class:`Entry` a stream message of this bucket is (``headers_only``: its value was not sent)."""
        meta = msg.metadata
        entry = entry_of(self.key_of(msg.subject), meta.sequence.stream, msg.headers, msg.data, meta.timestamp)
        if headers_only and entry.op is Op.PUT:
            return Entry(entry.key, entry.revision, entry.op, None, entry.headers, entry.time)
        return entry

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
        pauses: Pauses | None = None  # built at the first failure: most writes need none
        uncertain = False  # an earlier attempt may have landed without us hearing back
        while True:
            timeout = max(0.05, min(self.request_timeout, deadline - loop.time()))
            try:
                with permission_log(self.nc).guard(subject):  # a refused write is never answered
                    return await self.acks.publish(subject, data, headers=headers, timeout=timeout)
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
            pauses = pauses or Pauses(0.05, 1.0)
            pause = pauses.next()
            if self.nc.is_closed or loop.time() + pause > deadline:
                raise Unavailable(
                    f"write {self.name}/{key}: the NATS server did not answer ({failure or type(failure).__name__})"
                ) from failure
            log.debug("write %s/%s: %s; retrying in %.2fs", self.name, key, failure, pause)
            await asyncio.sleep(pause)
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


def _ends_batch(msg: Msg) -> bool:
    """A batched direct get's answer ends with its first message that is not an entry (a status)."""
    return not (msg.headers and _SUBJECT in msg.headers)


def _same(entry: Entry, data: bytes, op: Op) -> bool:
    return entry.op is op and (op is not Op.PUT or entry.value == data)
