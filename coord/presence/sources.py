"""Where a presence watcher learns who is present: the presence bucket itself, or the roster.

Each source keeps a *view* (the agents present as far as it has seen) fed by a
:class:`coord.kv.KeyWatch`, and calls ``on_change(source, agent_id)`` when an agent's entry in the
view changed (joined, left, info or holder changed): never for a renewal. :class:`PresenceWatcher`
turns the changes of the source it follows into events, and diffs two views when it switches.

- :class:`DirectSource` follows ``{ns}_presence``: one message per renewal of every agent watched.
- :class:`RosterSource` follows ``{ns}_roster``: the ``leader`` key (the reclaimer's lease, one
  message per renewal of its holder) and the ``agent.*`` keys the holder keeps (one message per
  change). It says whether a **live, ready** holder keeps the roster (:meth:`RosterSource.live`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from coord.kv import MSG_TTL, Bucket, Entry, KeyWatch
from coord.lease import LEADER, Term, is_live, read_term
from coord.presence._store import PresenceStore, _applied_ttl, classify
from coord.presence.models import AgentInfo, LeftReason
from coord.presence.roster import agent_key, decode_entry
from coord.presence.timing import enforced_ttl

__all__ = ["DirectSource", "Gone", "Holder", "RosterSource", "Source"]

log = logging.getLogger("corral.presence")

HEARTBEAT = 1.0
"""Consumer idle heartbeat: a lost consumer is re-created after two missed beats."""
GONE_KEPT = 10_000
"""Departures a source remembers (for the reason of a Left found by a diff; without it, ``expired``)."""


@dataclass(frozen=True)
class Holder:
    """An agent as one source sees it."""

    info: AgentInfo
    tag: str
    """Which incarnation holds the id: the instance nonce (presence) or host, pid and start (roster)."""
    revision: int
    """Revision of the value that announced this incarnation or its info."""
    at: datetime
    """When the server stored that value."""
    roster: bool
    """True if seen in the roster."""


@dataclass(frozen=True)
class Gone:
    """The latest departure of an agent a source saw."""

    reason: LeftReason
    revision: int
    at: datetime


def same_incarnation(old: Holder, new: Holder) -> bool:
    """Whether two holders of one id are one process's membership (then only its info may differ)."""
    if old.roster == new.roster:
        return old.tag == new.tag
    return _identity(old.info) == _identity(new.info)


def _identity(info: AgentInfo) -> str:
    return f"{info.host}|{info.pid}|{info.started_at.isoformat()}"


OnChange = Callable[["Source", str], None]


class Source:
    """A view of the present agents fed by key watches (see the module docstring)."""

    def __init__(self, on_change: OnChange) -> None:
        self.view: dict[str, Holder] = {}
        """The agents present as far as this source has seen."""
        self.gone: dict[str, Gone] = {}
        """The latest departure seen of each agent not in :attr:`view`."""
        self._on_change = on_change
        self._watches: list[KeyWatch] = []

    @property
    def revision(self) -> int:
        """Highest revision delivered so far."""
        return max((w.revision for w in self._watches), default=0)

    async def start(self, within: float | None = None) -> None:
        """Subscribe and return once the entries that existed are in the view."""
        for watch in self._watches:
            await watch.start(within=within)

    async def stop(self) -> None:
        """Unsubscribe; idempotent."""
        for watch in self._watches:
            await watch.stop()

    def _set(self, agent_id: str, holder: Holder) -> None:
        old = self.view.get(agent_id)
        if old is not None and old.tag == holder.tag and old.info == holder.info:
            return  # a renewal (or the same value again): nothing changed
        self.view[agent_id] = holder
        self.gone.pop(agent_id, None)
        self._on_change(self, agent_id)

    def _drop(self, agent_id: str, gone: Gone) -> None:
        self.gone.pop(agent_id, None)
        self.gone[agent_id] = gone
        if len(self.gone) > GONE_KEPT:  # bounded under churn: the oldest departures are forgotten first
            del self.gone[next(iter(self.gone))]
        if self.view.pop(agent_id, None) is not None:
            self._on_change(self, agent_id)


class DirectSource(Source):
    """The presence bucket itself (all keys, or ``agent_id``'s): what the roster's keeper follows."""

    def __init__(self, store: PresenceStore, on_change: OnChange, *, agent_id: str | None = None) -> None:
        super().__init__(on_change)
        self._last_seq = 0
        self._watches = [KeyWatch(store.bucket, self._on_entry, keys=agent_id or ">", heartbeat=HEARTBEAT)]

    def _on_entry(self, entry: Entry) -> None:
        if entry.revision <= self._last_seq:  # the watch delivers in stream order; older means replayed
            return
        self._last_seq = entry.revision
        change = classify(entry)
        if change.tombstone is not None:
            self._drop(entry.key, Gone(change.tombstone, entry.revision, change.at))
            return
        if change.record is None:
            log.warning(
                "presence: skipping malformed value of key %r at revision %d (%s)",
                entry.key,
                entry.revision,
                change.problem,
            )
            return
        self._set(entry.key, Holder(change.record.info(), change.record.instance, entry.revision, change.at, False))


class RosterSource(Source):
    """The roster and the lease of its keeper (all agents, or ``agent_id``'s key and ``leader``).

    ``ttl`` and ``interval`` are the namespace's presence timing: a holder whose lease value has
    not been seen written for ``enforced_ttl(ttl) + interval`` is not live, whatever TTL its value
    claims (the lease's TTL is never longer than the presence TTL). ``on_leader`` is called for
    every message of the lease key.
    """

    def __init__(
        self,
        roster: Bucket,
        on_change: OnChange,
        on_leader: Callable[[], None],
        *,
        ttl: float,
        interval: float,
        agent_id: str | None = None,
    ) -> None:
        super().__init__(on_change)
        self._bucket = roster
        self._agent_id = agent_id
        self._on_leader = on_leader
        self._ttl, self._interval = ttl, interval
        self._revisions: dict[str, int] = {}
        self.term: Term | None = None
        """The lease's term as last seen (None: vacant, or a value that is nobody's)."""
        self._term_ttl = ttl
        self._seen_at = 0.0
        if agent_id is None:
            self._watches = [KeyWatch(roster, self._on_entry, keys=">", heartbeat=HEARTBEAT)]
        else:
            self._watches = [
                KeyWatch(roster, self._on_entry, keys=LEADER, heartbeat=HEARTBEAT),
                KeyWatch(roster, self._on_entry, keys=agent_key(agent_id), heartbeat=HEARTBEAT),
            ]

    def live(self, now: float) -> bool:
        """Whether a live, ready holder keeps the roster at ``now`` (a monotonic time)."""
        return self.live_for(now) > 0

    def live_for(self, now: float) -> float:
        """Seconds the holder counts as live from ``now`` if no renewal is seen meanwhile (0: not live)."""
        if self.term is None or not self.term.record.ready:
            return 0.0
        if not is_live(self._seen_at, now, ttl=self._term_ttl, interval=self._interval):
            return 0.0
        return max(1e-3, self._seen_at + enforced_ttl(self._term_ttl) + self._interval - now)

    async def refresh(self) -> None:
        """Read the watched agent key now (a watch of one agent follows it and the lease separately)."""
        if self._agent_id is not None:
            entry = await self._bucket.get(agent_key(self._agent_id))
            if entry is not None:
                self._on_entry(entry)

    def _on_entry(self, entry: Entry) -> None:
        # One ordered watch of the whole bucket needs one mark; a one-agent watch has two watches
        # (and a direct read on a switch), so a mark per key.
        slot = entry.key if self._agent_id is not None else ""
        if entry.revision <= self._revisions.get(slot, 0):
            return
        self._revisions[slot] = entry.revision
        if entry.key == LEADER:
            self._on_lease(entry)
            return
        agent_id, state, problem = decode_entry(entry)
        if agent_id is None or state is None:
            log.warning("presence: skipping roster key %r at revision %d (%s)", entry.key, entry.revision, problem)
            return
        at = entry.time or datetime.now(UTC)
        if isinstance(state, AgentInfo):
            self._set(agent_id, Holder(state, _identity(state), entry.revision, at, True))
        else:
            self._drop(agent_id, Gone(state, entry.revision, at))

    def _on_lease(self, entry: Entry) -> None:
        self.term, problem = read_term(entry)
        self._seen_at = asyncio.get_running_loop().time()
        claimed = _applied_ttl(entry.headers.get(MSG_TTL, "")) if self.term is not None else None
        self._term_ttl = min(claimed, self._ttl) if claimed else self._ttl
        if problem:
            log.warning("presence: the roster's lease value at revision %d is nobody's (%s)", entry.revision, problem)
        self._on_leader()
