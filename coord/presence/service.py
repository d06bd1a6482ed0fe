"""The presence service: join, watch, list and wait on the agents of one namespace (``coord.presence``)."""

from __future__ import annotations

import asyncio
import builtins
import logging

from coord.errors import InvalidInput
from coord.ids import validate_id
from coord.kv import Bucket
from coord.presence._store import PresenceStore
from coord.presence.membership import LostCallback, Membership, WaitCallback
from coord.presence.models import AgentInfo, Joined
from coord.presence.watcher import PresenceWatcher, wait_absent
from coord.validation import WAIT, check_number

__all__ = ["Presence"]

log = logging.getLogger("corral.presence")


class Presence:
    """Presence of agents in one namespace: join, watch, list, wait. Get it as ``coord.presence``.

    Built on the presence ``bucket``; ``interval`` and ``ttl`` are the defaults of :meth:`join`.
    With the ``roster`` bucket, watches (and the waits and listings built on them) follow the
    roster while a live, ready reclaimer keeps it: one message per change instead of one per
    renewal (see :class:`~coord.presence.PresenceWatcher`).
    """

    def __init__(
        self, bucket: Bucket, *, roster: Bucket | None = None, interval: float = 1.0, ttl: float = 3.0
    ) -> None:
        self._bucket = bucket
        self._roster = roster
        self._store = PresenceStore(bucket)
        self.interval = interval
        """Default seconds between renewals of a membership."""
        self.ttl = ttl
        """Default TTL of a membership's key."""
        self.on_wait: WaitCallback | None = None
        """Default ``on_wait`` of :meth:`join` (a CLI sets it to show the wait on a terminal)."""

    @property
    def connection_closed(self) -> bool:
        """True once the underlying NATS connection was closed (it will not come back)."""
        return bool(self._bucket.nc.is_closed)

    def join(
        self,
        info: AgentInfo,
        *,
        interval: float | None = None,
        ttl: float | None = None,
        on_lost: LostCallback | None = None,
        rejoin: bool = True,
        wait: float = 0.0,
        on_wait: WaitCallback | None = None,
    ) -> Membership:
        """Become present as ``info.id``: ``async with presence.join(info) as m:`` (or ``await``).

        Renews every ``interval`` s with TTL ``ttl`` (>= 1 s; whole seconds are enforced by the
        server; both default to this service's). A previous holder that is provably gone (this
        host and boot, its pid not running any more: a restart) is replaced at once; one that
        cannot be proved gone (another host, another container) is waited for until its key
        expires, and ``on_wait`` (default :attr:`on_wait`) is told once. Entering raises
        :class:`~coord.errors.PresenceConflict` while another live process holds the id (after
        waiting up to ``wait`` s for it to go). ``on_lost`` is called with a
        :class:`~coord.presence.MembershipLost` when the membership fails closed; unless
        ``rejoin=False`` it then re-joins with a fresh instance (not when the id was taken). Bad
        timing raises :class:`~coord.errors.InvalidInput` at once, before any NATS call.
        """
        if not isinstance(info, AgentInfo):
            raise InvalidInput(f"info must be an AgentInfo, got {type(info).__name__}")
        return Membership(
            self._store,
            info,
            interval=self.interval if interval is None else interval,
            ttl=self.ttl if ttl is None else ttl,
            on_lost=on_lost,
            rejoin=rejoin,
            wait=wait,
            on_wait=self.on_wait if on_wait is None else on_wait,
        )

    def watch(self, *, include_existing: bool = True, updates: bool = False, direct: bool = False) -> PresenceWatcher:
        """Joined / Left events for every agent: ``async with presence.watch() as w: async for ev in w``.

        Entering returns once the agents present now are known (``w.present``). With
        ``include_existing`` a :class:`Joined` is yielded for each of them first. ``updates=True``
        also yields :class:`Updated` when a present agent changes its info. ``direct=True`` follows
        the presence bucket itself, never the roster (one message per renewal of every agent):
        what the roster's keeper, the active reclaimer, must follow.
        """
        return self._watcher(include_existing=include_existing, updates=updates, direct=direct)

    def watch_agent(self, agent_id: str, *, include_existing: bool = True) -> PresenceWatcher:
        """Like :meth:`watch`, for one agent id only (cheap: one key, and the roster's lease)."""
        validate_id(agent_id, "agent_id")
        return self._watcher(include_existing=include_existing, agent_id=agent_id)

    def _watcher(
        self, *, include_existing: bool, updates: bool = False, agent_id: str | None = None, direct: bool = False
    ) -> PresenceWatcher:
        return PresenceWatcher(
            self._store,
            include_existing=include_existing,
            updates=updates,
            agent_id=agent_id,
            roster=None if direct else self._roster,
            ttl=self.ttl,
            interval=self.interval,
        )

    async def present_ids(self) -> set[str]:
        """Ids of the agents present now (read from the presence bucket: exact, no keeper's hop)."""
        async with self.watch(include_existing=False, direct=True) as watcher:
            return set(watcher.present)

    async def list(self) -> builtins.list[AgentInfo]:
        """Info of every agent present now, sorted by id. Malformed values are skipped (and logged).

        Read from the presence bucket (a one-off read costs one message per agent from either).
        """
        async with self.watch(include_existing=False, direct=True) as watcher:
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

    async def held(self, agent_id: str) -> bool:
        """Whether ``agent_id``'s key is held: its latest message is a value, well-formed or not.

        Unlike :meth:`get`, a malformed value (e.g. a plain publish without ``Nats-TTL``) counts as
        held: it is not another holder, and the live holder's next renewal writes over it, so it is
        no evidence that the holder left. Only no message, a tombstone or an expiry marker is absent.
        A read error propagates (an error is not an answer).
        """
        validate_id(agent_id, "agent_id")
        latest = await self._store.latest(agent_id)
        return latest is not None and latest.tombstone is None

    async def wait_absent(self, agent_id: str, timeout: float) -> bool:
        """True as soon as ``agent_id`` is absent (at once if it is), False if still present after ``timeout`` s."""
        validate_id(agent_id, "agent_id")
        check_number("timeout", timeout, WAIT)
        return await wait_absent(self._watcher(include_existing=False, agent_id=agent_id), agent_id, timeout)

    async def wait_present(self, agent_id: str, timeout: float) -> AgentInfo | None:
        """The agent's info as soon as ``agent_id`` is present (at once if it is), None after ``timeout`` s."""
        validate_id(agent_id, "agent_id")
        check_number("timeout", timeout, WAIT)
        try:
            async with asyncio.timeout(timeout), self.watch_agent(agent_id, include_existing=True) as watcher:
                async for event in watcher:
                    if isinstance(event, Joined):
                        return event.agent
        except TimeoutError:
            return None
        return None  # pragma: no cover - the watch ended early
