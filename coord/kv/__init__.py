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

from coord.kv.bucket import Bucket, conflicts
from coord.kv.entry import (
    EXPECTED_LAST,
    KV_OPERATION,
    MARKER_REASON,
    MIN_TTL,
    MSG_TTL,
    WRONG_LAST_SEQUENCE,
    Entry,
    Op,
    operation,
    ttl_header,
)
from coord.kv.watch import KeyWatch

__all__ = [
    "EXPECTED_LAST",
    "KV_OPERATION",
    "MARKER_REASON",
    "MIN_TTL",
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
