"""What a KV key holds: :class:`Entry`, the one tombstone rule (:class:`Op`), the header names, TTLs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from coord.validation import TTL, check_number

__all__ = [
    "EXPECTED_LAST",
    "KV_OPERATION",
    "MARKER_REASON",
    "MIN_TTL",
    "MSG_TTL",
    "ROLLUP",
    "WRONG_LAST_SEQUENCE",
    "Entry",
    "Op",
    "entry_of",
    "operation",
    "ttl_header",
]

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
MIN_TTL = TTL.lo
"""Shortest per-message TTL nats-server accepts, in seconds."""


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
    """The ``Nats-TTL`` value for ``seconds``; :class:`InvalidInput` unless within :data:`~coord.validation.TTL`.

    That is a finite number from 1 s (nats-server refuses shorter) to
    :data:`~coord.validation.MAX_TTL` (10 years; the server refuses more than ~292), checked before
    anything is sent. Whole seconds are written as ``"3s"``; a fraction as milliseconds
    (``"1500ms"``), which the server accepts but applies in whole seconds.
    """
    check_number("ttl", seconds, TTL)
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


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


def entry_of(
    key: str, revision: int, headers: Mapping[str, str] | None, data: bytes | None, at: datetime | None
) -> Entry:
    op = operation(headers)
    return Entry(key, revision, op, (data or b"") if op is Op.PUT else None, dict(headers or {}), at)
