"""The registry: sessions, thread reservations and tag bindings, in the ``{ns}_registry`` KV bucket.

Keys (all JSON values):

- ``session.{id}`` — a :class:`Session`: who runs it (``agent_id``), its parent session, status
  ``active → complete | abandoned``, its thread and lookup keys (path, client instance id, native
  actor key). Terminal sessions are rewritten with a per-key TTL (default 7 days) and then vanish.
- ``thread.{name}`` — a :class:`ThreadReservation` naming the session (and agent) that owns the
  thread. :meth:`Registry.reserve_thread` is one compare-and-set on this key: it either creates it,
  or replaces a reservation whose owner is dead ("reap dead, then reserve" in one CAS). Exactly one
  live owner per thread.
- ``tag.{name}`` — a :class:`TagBinding` (pending, or bound to an agent); used by the mailbox.

Liveness is presence: an active session is alive while its ``agent_id`` is present. When presence
cannot be asked (an error, a timeout), the owner counts as alive — a reservation is never stolen on
a guess. Join presence *before* reserving: an owner that is absent from presence is dead.

:class:`coord.records.RecordStore` is the compare-and-set layer under all of this.
"""

from coord.registry.models import (
    DEFAULT_TERMINAL_TTL,
    LiveOwner,
    LookupValue,
    Reserved,
    Session,
    SessionStatus,
    TagBinding,
    TagState,
    ThreadReservation,
)
from coord.registry.service import Registry

__all__ = [
    "DEFAULT_TERMINAL_TTL",
    "LiveOwner",
    "LookupValue",
    "Registry",
    "Reserved",
    "Session",
    "SessionStatus",
    "TagBinding",
    "TagState",
    "ThreadReservation",
]
