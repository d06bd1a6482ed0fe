"""Raw operations on the presence bucket, with the nats-py 2.16 expiry-marker quirks handled.

We publish to ``$KV.{bucket}.{id}`` ourselves instead of using ``kv.put``/``kv.create`` because:

- ``kv.put`` sends no ``Nats-TTL`` and nats-py's ``msg_ttl=`` truncates to whole seconds; we need
  the TTL on every renewal together with ``Nats-Expected-Last-Subject-Sequence``.
- quirk 1: while the server's expiry marker (``Nats-Marker-Reason: MaxAge``, no ``KV-Operation``)
  is the latest message of a key, ``kv.get`` returns an entry with value None instead of raising
  ``KeyNotFoundError``. :meth:`PresenceStore.latest` reads the raw message and its headers instead.
- quirk 2: for the same reason ``kv.create`` raises ``KeyWrongLastSequenceError`` (it only retries
  over ``KV-Operation`` tombstones). :meth:`PresenceStore.create` retries over any tombstone,
  expecting the tombstone's own sequence.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from coord.errors import PresenceConflict
from coord.naming import Names
from coord.presence.models import AgentInfo, LeftReason, _Record, decode_record, encode_record
from coord.provision import kv_stream_name

log = logging.getLogger("corral.presence")

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
MSG_TTL = "Nats-TTL"
LEFT_REASON = "Corral-Left-Reason"
"""Header on a DEL we write after a loss, so watchers report that departure as ``expired``."""
WRONG_LAST_SEQUENCE = 10071
MIN_TTL = 1.0


def ttl_header(ttl: float) -> str:
    """``Nats-TTL`` value for ``ttl`` seconds: ``"3s"``, or the millisecond form ``"1500ms"``."""
    if ttl == int(ttl):
        return f"{int(ttl)}s"
    return f"{round(ttl * 1000)}ms"


def enforced_ttl(ttl: float) -> float:
    """The TTL the server actually applies: nats-server truncates ``Nats-TTL`` to whole seconds."""
    return float(math.floor(ttl))


def is_wrong_last_sequence(err: BaseException) -> bool:
    """True for the server's answer to a failed ``Nats-Expected-Last-Subject-Sequence`` check."""
    return isinstance(err, APIError) and err.err_code == WRONG_LAST_SEQUENCE


@dataclass(frozen=True)
class Latest:
    """The latest message of one agent's key, classified."""

    seq: int
    """Its stream sequence (the key's revision)."""
    at: datetime
    """When the server stored it."""
    record: _Record | None
    """The decoded value; None for a tombstone or a malformed value."""
    tombstone: LeftReason | None = None
    """Set for DEL/PURGE/expiry markers: why the agent is gone."""
    problem: str = ""
    """Why the value is malformed (empty for a good value or a tombstone)."""

    @property
    def kind(self) -> Literal["value", "tombstone", "malformed"]:
        """What the message is."""
        if self.tombstone is not None:
            return "tombstone"
        return "value" if self.record is not None else "malformed"


def tombstone_reason(headers: dict[str, str] | None) -> LeftReason | None:
    """Why a message with these headers removes its key, or None if it is a value."""
    if not headers:
        return None
    op = headers.get(KV_OPERATION)
    if op in ("DEL", "PURGE"):
        return "expired" if headers.get(LEFT_REASON) == "expired" else "graceful"
    marker = headers.get(MARKER_REASON)
    if marker is not None:
        # MaxAge: the per-key TTL ran out. Remove/Purge: an operator removed it by hand.
        return "expired" if marker == "MaxAge" else "graceful"
    return None


def classify(key: str, seq: int, at: datetime, headers: dict[str, str] | None, data: bytes | None) -> Latest:
    """Turn one raw message of ``key`` into a :class:`Latest`."""
    reason = tombstone_reason(headers)
    if reason is not None:
        return Latest(seq=seq, at=at, record=None, tombstone=reason)
    record, problem = decode_record(data, key)
    return Latest(seq=seq, at=at, record=record, problem=problem)


class PresenceStore:
    """Create, renew, delete and read agent keys with compare-and-set on the key's revision."""

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self.js = js
        self.bucket = names.presence_bucket
        self.stream = kv_stream_name(self.bucket)
        self.prefix = f"$KV.{self.bucket}."

    def subject(self, agent_id: str) -> str:
        """Subject of ``agent_id``'s key."""
        return self.prefix + agent_id

    async def latest(self, agent_id: str, within: float | None = None) -> Latest | None:
        """The latest message of the key (value, tombstone or malformed), or None if it has none."""
        try:
            get = self.js.get_msg(self.stream, subject=self.subject(agent_id), direct=True)
            msg: RawStreamMsg = await (asyncio.wait_for(get, within) if within is not None else get)
        except NotFoundError:
            return None
        return classify(agent_id, msg.seq or 0, msg.time or datetime.now(UTC), msg.headers, msg.data)

    async def write(self, info: AgentInfo, instance: str, *, last: int, ttl: float, within: float | None = None) -> int:
        """Write the record with a TTL, only if the key's latest revision is ``last``; return the new one."""
        headers = {MSG_TTL: ttl_header(ttl), EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        ack = await self.js.publish(
            self.subject(info.id), encode_record(info, instance), timeout=within, headers=headers
        )
        return ack.seq

    async def create(self, info: AgentInfo, instance: str, *, ttl: float, within: float | None = None) -> int:
        """Create the key for a new membership; return its revision.

        Succeeds when the key is absent, a tombstone (DEL, or a server expiry marker: quirk 2) or
        malformed. Raises :class:`PresenceConflict` when another instance's live value holds it.
        """
        last = 0
        for _ in range(5):
            try:
                return await self.write(info, instance, last=last, ttl=ttl, within=within)
            except APIError as err:
                if not is_wrong_last_sequence(err):
                    raise
            current = await self.latest(info.id, within)
            if current is None:
                last = 0
            elif current.record is not None:
                if current.record.instance == instance:
                    return current.seq  # our own earlier attempt landed; its ack was lost
                raise PresenceConflict(_held_message(current.record))
            else:
                if current.kind == "malformed":
                    log.warning("presence: replacing malformed value of %r (%s)", info.id, current.problem)
                last = current.seq
        raise PresenceConflict(f"agent id {info.id!r} keeps changing under us; another process is joining with it")

    async def delete(
        self, agent_id: str, *, last: int, reason: LeftReason = "graceful", within: float | None = None
    ) -> int:
        """Delete the key (DEL tombstone) only if its latest revision is ``last``; return the tombstone's."""
        headers = {KV_OPERATION: "DEL", EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        if reason == "expired":
            headers[LEFT_REASON] = "expired"
        ack = await self.js.publish(self.subject(agent_id), b"", timeout=within, headers=headers)
        return ack.seq


def _held_message(record: _Record) -> str:
    since = record.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"agent id {record.id!r} is held by another live process (host {record.host}, pid {record.pid}, "
        f"role {record.role}, started {since}); wait for it to leave or expire, or use another id"
    )
