"""Presence: who is alive, with departures seen as they happen (no polling).

Each agent owns one key in the ``{ns}_presence`` KV bucket (value: :class:`AgentInfo` JSON plus an
instance nonce) written with a per-key TTL and renewed by compare-and-set. A graceful leave deletes
the key (DEL); an expiry makes the server write a PURGE marker (``Nats-Marker-Reason: MaxAge``).
Watchers turn both into :class:`Left` events. Watchers follow the roster (``{ns}_roster``, kept by
the active reclaimer with :class:`RosterKeeper`) while its keeper is live: changes only, no
renewals. See ``docs/presence.md``.

Note: nats-server applies per-message TTLs in whole seconds (``"1500ms"`` is accepted and acts as
1 s) and refuses TTLs under 1 s; :class:`Membership` fails closed on the enforced value.
"""

from coord.kv import ttl_header
from coord.presence.membership import LostCallback, Membership, WaitCallback
from coord.presence.models import (
    AgentInfo,
    HolderWait,
    Joined,
    Left,
    LeftReason,
    LossReason,
    MembershipLost,
    PresenceEvent,
    Updated,
)
from coord.presence.roster import RosterKeeper
from coord.presence.service import Presence
from coord.presence.timing import check_timing, enforced_ttl
from coord.presence.watcher import PresenceWatcher

__all__ = [
    "AgentInfo",
    "HolderWait",
    "Joined",
    "Left",
    "LeftReason",
    "LossReason",
    "LostCallback",
    "Membership",
    "MembershipLost",
    "Presence",
    "PresenceEvent",
    "PresenceWatcher",
    "RosterKeeper",
    "Updated",
    "WaitCallback",
    "check_timing",
    "enforced_ttl",
    "ttl_header",
]
