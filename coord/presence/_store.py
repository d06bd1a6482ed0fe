"""Agent keys in the presence bucket: records, their tombstones, and compare-and-set on the key's revision.

Everything goes through :class:`coord.kv.Bucket`, which gives what presence needs together: the
``Nats-TTL`` header on every renewal with the expected revision, and the server's expiry markers
(``Nats-Marker-Reason: MaxAge``) read as tombstones, so a create over an expired key succeeds.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from coord.errors import Conflict, KeyExists, PresenceConflict
from coord.kv import MSG_TTL, Bucket, Entry, Op, ttl_header
from coord.presence.models import AgentInfo, LeftReason, _Record, decode_record, encode_record
from coord.presence.timing import enforced_ttl

__all__ = [
    "LEFT_REASON",
    "IdHeld",
    "Latest",
    "PresenceStore",
    "classify",
    "enforced_ttl",
    "tombstone_reason",
    "ttl_header",
]

log = logging.getLogger("corral.presence")

LEFT_REASON = "Corral-Left-Reason"
"""Header on a DEL we write after a loss, so watchers report that departure as ``expired``."""


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
    ttl: float | None = None
    """The value's ``Nats-TTL`` in seconds as the server applies it (whole seconds); None if unreadable."""

    @property
    def kind(self) -> Literal["value", "tombstone", "malformed"]:
        """What the message is."""
        if self.tombstone is not None:
            return "tombstone"
        return "value" if self.record is not None else "malformed"


def tombstone_reason(entry: Entry) -> LeftReason | None:
    """Why ``entry`` removes its agent (``graceful``/``expired``), or None if it is a value."""
    if entry.op is Op.PUT:
        return None
    if entry.op is Op.EXPIRED:
        return "expired"  # the per-key TTL ran out
    if entry.op in (Op.DELETE, Op.PURGE) and entry.headers.get(LEFT_REASON) == "expired":
        return "expired"
    return "graceful"  # deleted by the agent, or removed by an operator


def classify(entry: Entry) -> Latest:
    """Turn one entry of an agent's key into a :class:`Latest`.

    corral writes every presence value with a per-message TTL (``Nats-TTL``), so a value without
    one is not corral's (e.g. a plain ``$KV`` publish by another client) and is *malformed*,
    whatever its body: never a live agent, and never a reason for the key's holder to give up.
    """
    at = entry.time or datetime.now(UTC)
    reason = tombstone_reason(entry)
    if reason is not None:
        return Latest(seq=entry.revision, at=at, record=None, tombstone=reason)
    record, problem = decode_record(entry.value, entry.key)
    if record is not None and not entry.headers.get(MSG_TTL):
        record, problem = None, f"no {MSG_TTL} header: not written by corral"
    ttl = _applied_ttl(entry.headers.get(MSG_TTL, ""))
    return Latest(seq=entry.revision, at=at, record=record, problem=problem, ttl=ttl)


_DURATION = re.compile(r"(\d{1,9})(ms|s|m|h)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _applied_ttl(header: str) -> float | None:
    """Seconds a ``Nats-TTL`` value keeps a message (``"3s"``, ``"1500ms"``, ``"20"``), truncated as the server does."""
    match = _DURATION.fullmatch(header.strip())
    if match is None:
        return None
    return enforced_ttl(int(match[1]) * _UNIT[match[2] or "s"])


class IdHeld(PresenceConflict):
    """A live value of another instance holds the agent id; :attr:`holder` is that value."""

    def __init__(self, holder: Latest, record: _Record) -> None:
        self.holder = holder
        """The holder's latest message."""
        self.record = record
        """Its value (``holder.record``)."""
        super().__init__(held_message(record))


class PresenceStore:
    """Create, renew, delete and read agent keys with compare-and-set on the key's revision."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        """The presence bucket."""
        self.stream = bucket.stream
        """The stream behind it."""
        self.prefix = bucket.prefix
        """Subject prefix of its keys."""

    def subject(self, agent_id: str) -> str:
        """Subject of ``agent_id``'s key."""
        return self.bucket.subject(agent_id)

    async def latest(self, agent_id: str, within: float | None = None, *, leader: bool = False) -> Latest | None:
        """The latest message of the key (value, tombstone or malformed), or None if it has none.

        ``leader`` asks the stream's leader: what a membership checks about its own key after a lost
        race must not come from a replica that is still catching up (it would adopt a stale revision
        and keep losing until the key expired).
        """
        entry = await self.bucket.get(agent_id, patience=within, leader=leader)
        return None if entry is None else classify(entry)

    async def write(self, info: AgentInfo, instance: str, *, last: int, ttl: float, within: float | None = None) -> int:
        """Write the record with a TTL, only if the key's latest revision is ``last``; return the new one.

        Raises :class:`~coord.errors.Conflict` when the key is not at ``last``.
        """
        return await self.bucket.update(info.id, encode_record(info, instance), last=last, ttl=ttl, patience=within)

    async def create(self, info: AgentInfo, instance: str, *, ttl: float, within: float | None = None) -> int:
        """Create the key for a new membership; return its revision.

        Succeeds when the key is absent, a tombstone (DEL, or a server expiry marker) or malformed.
        Raises :class:`IdHeld` (a :class:`PresenceConflict`) when another instance's live value holds it.
        """
        data = encode_record(info, instance)
        for _ in range(5):
            try:
                return await self.bucket.create(info.id, data, ttl=ttl, patience=within)
            except KeyExists as held:
                current = classify(held.entry)
            if current.record is not None:
                if current.record.instance == instance:
                    return current.seq  # our own earlier attempt landed; its ack was lost
                raise IdHeld(current, current.record)
            log.warning("presence: replacing malformed value of %r (%s)", info.id, current.problem)
            try:
                return await self.bucket.update(info.id, data, last=current.seq, ttl=ttl, patience=within)
            except Conflict:
                continue
        raise PresenceConflict(f"agent id {info.id!r} keeps changing under us; another process is joining with it")

    async def delete(
        self, agent_id: str, *, last: int, reason: LeftReason = "graceful", within: float | None = None
    ) -> int:
        """Delete the key (DEL tombstone) only if its latest revision is ``last``; return the tombstone's."""
        headers = {LEFT_REASON: "expired"} if reason == "expired" else None
        return await self.bucket.delete(agent_id, last=last, headers=headers, patience=within)


def held_message(record: _Record) -> str:
    """The one-line refusal naming the process that holds ``record``'s id."""
    since = record.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"agent id {record.id!r} is held by another live process (host {record.host}, pid {record.pid}, "
        f"role {record.role}, started {since}); wait for it to leave or expire, or use another id"
    )
