"""Presence: who is alive, with departures seen as they happen (no polling).

Each agent owns one key in the ``{ns}_presence`` KV bucket (value: :class:`AgentInfo` JSON plus an
instance nonce) written with a per-key TTL and renewed by compare-and-set. A graceful leave deletes
the key (DEL); an expiry makes the server write a PURGE marker (``Nats-Marker-Reason: MaxAge``).
Watchers turn both into :class:`Left` events. See ``docs/presence.md``.

Note: nats-server applies per-message TTLs in whole seconds (``"1500ms"`` is accepted and acts as
1 s) and refuses TTLs under 1 s; :class:`Membership` fails closed on the enforced value.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from typing import TYPE_CHECKING

from coord.ids import validate_id
from coord.presence._store import PresenceStore, enforced_ttl, ttl_header
from coord.presence.membership import LostCallback, Membership
from coord.presence.models import (
    AgentInfo,
    Joined,
    Left,
    LeftReason,
    LossReason,
    MembershipLost,
    PresenceEvent,
    Updated,
)
from coord.presence.watcher import PresenceWatcher

if TYPE_CHECKING:
    from coord.connection import Coord

__all__ = [
    "AgentInfo",
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
    "Updated",
    "enforced_ttl",
    "ttl_header",
]

log = logging.getLogger("corral.presence")


class Presence:
    """Presence of agents in one namespace: join, watch, list, wait. Get it as ``coord.presence``."""

    def __init__(self, coord: Coord) -> None:
        self._coord = coord
        self._store = PresenceStore(coord.js, coord.names)

    @property
    def connection_closed(self) -> bool:
        """True once the underlying NATS connection was closed (it will not come back)."""
        return bool(self._coord.nc.is_closed)

    def join(
        self,
        info: AgentInfo,
        *,
        interval: float = 1.0,
        ttl: float = 3.0,
        on_lost: LostCallback | None = None,
        rejoin: bool = True,
        wait: float = 0.0,
    ) -> Membership:
        """Become present as ``info.id``: ``async with presence.join(info) as m:`` (or ``await``).

        Renews every ``interval`` s with TTL ``ttl`` (>= 1 s; whole seconds are enforced by the
        server). Entering raises :class:`~coord.errors.PresenceConflict` while another live process
        holds the id (after waiting up to ``wait`` s for it to go). ``on_lost`` is called with a
        :class:`MembershipLost` when the membership fails closed; unless ``rejoin=False`` it then
        re-joins with a fresh instance (not when the id was taken). Bad timing raises ``ValueError``
        at once, before any NATS call.
        """
        if not isinstance(info, AgentInfo):
            raise TypeError(f"info must be an AgentInfo, got {type(info).__name__}")
        return Membership(
            self, self._store, info, interval=interval, ttl=ttl, on_lost=on_lost, rejoin=rejoin, wait=wait
        )

    def watch(self, *, include_existing: bool = True, updates: bool = False) -> PresenceWatcher:
        """Joined / Left events for every agent: ``async with presence.watch() as w: async for ev in w``.

        Entering returns once the agents present now are known (``w.present``). With
        ``include_existing`` a :class:`Joined` is yielded for each of them first. ``updates=True``
        also yields :class:`Updated` when a present agent changes its info.
        """
        return PresenceWatcher(self._coord.js, self._store, include_existing=include_existing, updates=updates)

    def watch_agent(self, agent_id: str, *, include_existing: bool = True) -> PresenceWatcher:
        """Like :meth:`watch`, for one agent id only (cheap: one key)."""
        validate_id(agent_id, "agent_id")
        return PresenceWatcher(self._coord.js, self._store, include_existing=include_existing, agent_id=agent_id)

    async def present_ids(self) -> set[str]:
        """Ids of the agents present now."""
        async with self.watch(include_existing=False) as watcher:
            return set(watcher.present)

    async def list(self) -> builtins.list[AgentInfo]:
        """Info of every agent present now, sorted by id. Malformed values are skipped (and logged)."""
        async with self.watch(include_existing=False) as watcher:
            present = watcher.present
        return [present[agent_id] for agent_id in sorted(present)]

    async def get(self, agent_id: str) -> AgentInfo | None:
        """Info of ``agent_id`` if it is present, else None (also while only an expiry marker is left)."""
        validate_id(agent_id, "agent_id")
        latest = await self._store.latest(agent_id)
        if latest is None or latest.tombstone is not None:
            return None
        if latest.record is None:
            log.warning("presence: malformed value of key %r at revision %d (%s)", agent_id, latest.seq, latest.problem)
            return None
        return latest.record.info()

    async def wait_absent(self, agent_id: str, timeout: float) -> bool:
        """True as soon as ``agent_id`` is absent (at once if it is), False if still present after ``timeout`` s."""
        validate_id(agent_id, "agent_id")
        try:
            async with asyncio.timeout(timeout), self.watch_agent(agent_id, include_existing=False) as watcher:
                if agent_id not in watcher.present:
                    return True
                async for event in watcher:
                    if isinstance(event, Left):
                        return True
        except TimeoutError:
            return False
        return False  # pragma: no cover - the watch ended early

    async def wait_present(self, agent_id: str, timeout: float) -> AgentInfo | None:
        """The agent's info as soon as ``agent_id`` is present (at once if it is), None after ``timeout`` s."""
        validate_id(agent_id, "agent_id")
        try:
            async with asyncio.timeout(timeout), self.watch_agent(agent_id, include_existing=True) as watcher:
                async for event in watcher:
                    if isinstance(event, Joined):
                        return event.agent
        except TimeoutError:
            return None
        return None  # pragma: no cover - the watch ended early
