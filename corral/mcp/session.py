"""One MCP server process is one agent: :class:`AgentSession` holds what that agent is on NATS.

For the life of the session it holds the agent's presence (role, tags, harness in the value), its
tag bindings, its event listener (so the tree below it is kept), a wake-up on its inbox, the claims
it took through the worker intake (:mod:`corral.mcp.work`; tokens never leave this process; the
leases are extended here at a third of their length)
and, once it acts as a parent, a :class:`dispatch.Dispatcher` with its embedded reclaimer. If the
process dies, the presence key expires after the TTL and the substrate does the rest: claims are
reclaimed, thread reservations become free, senders queue instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import api as js_api

from coord.aio import stop_tasks
from coord.connection import Coord
from coord.errors import CorralError, StaleClaim
from coord.events import EventListener
from coord.ids import new_id, validate_id
from coord.presence import AgentInfo, Membership
from coord.tasks import Claim
from corral.mcp.work import Claims
from dispatch import Dispatcher

__all__ = ["AgentSession"]

log = logging.getLogger("corral.mcp")

INBOX_URI = "corral://inbox"
TASKS_URI = "corral://tasks"
FLEET_URI = "corral://fleet"
KEEP_SUBMITTED = 1000
"""How many of its submitted task ids a session remembers for its tasks resource."""


class AgentSession:
    """The agent an MCP server process is: presence, claims, inbox wake-ups, dispatcher (see module doc).

    ``changed`` is called with a resource URI whenever that resource's content changed.
    """

    def __init__(
        self,
        coord: Coord,
        *,
        agent_id: str | None = None,
        role: str = "agent",
        tags: list[str] | None = None,
        harness: str | None = None,
        parent: str | None = None,
        changed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.coord = coord
        self.agent_id = validate_id(agent_id or new_id("agent"), "agent_id")
        """This agent's id (its presence key, its inbox, its claims' worker id)."""
        self.info = AgentInfo(id=self.agent_id, role=role, tags=tags or [], harness=harness, parent=parent)
        """What the agent publishes as its presence (validated here, before any NATS call)."""
        self.session_id = new_id("s")
        """The registry session this process reserves threads under (ends with the process)."""
        self.held: dict[str, Claim] = {}
        """Claims this agent holds, by task id (the tokens stay in this process)."""
        self.submitted: list[str] = []
        """Ids of the tasks this agent submitted (the newest :data:`KEEP_SUBMITTED`)."""
        self.mail_generation = 0
        """Counts inbox arrivals seen; a reader waits for it to move."""
        self._mail = asyncio.Condition()
        self._changed = changed
        self._membership: Membership | None = None
        self._listener: EventListener | None = None
        self._dispatcher: Dispatcher | None = None
        self._dispatcher_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._inbox_sub: object | None = None
        self._claims: Claims | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> AgentSession:
        """Join presence (PresenceConflict while another live process is this agent), bind tags, listen."""
        self._membership = await self.coord.presence.join(self.info)
        self._claims = Claims(self.coord, self.agent_id, self._membership.present)
        for tag in self.info.tags:
            try:
                await self.coord.mailbox.bind_tag(tag, self.agent_id)
            except CorralError as err:
                log.warning("mcp: could not bind tag %s to %s: %s", tag, self.agent_id, err)
        self._listener = self.coord.events.listener(self.agent_id, parent=self.info.parent)
        await self._listener.start()
        self._inbox_sub = await self.coord.js.subscribe(
            self.coord.names.inbox_filter(self.agent_id),
            stream=self.coord.names.inbox_stream,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.NEW,
            idle_heartbeat=2.0,
            cb=self._on_mail,
        )
        self._tasks = [
            asyncio.create_task(self._keep_leases(), name=f"mcp-leases-{self.agent_id}"),
            asyncio.create_task(self._watch_fleet(), name=f"mcp-fleet-{self.agent_id}"),
        ]
        return self

    async def stop(self) -> None:
        """Leave: give held claims back, stop listening, leave presence; never raises."""
        await stop_tasks(self._tasks, within=2.0, what=f"mcp session {self.agent_id}")
        claims, self._claims = self._claims, None
        if claims is not None:
            for claim in list(self.held.values()):
                await claims.give_back(claim)
            await claims.close()
        self.held.clear()
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.stop()
        sub = self._inbox_sub
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        if self._membership is not None:
            with contextlib.suppress(Exception):
                await self._membership.leave()

    async def __aenter__(self) -> AgentSession:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what the tools use ------------------------------------------------------------------
    async def dispatcher(self) -> Dispatcher:
        """This agent's dispatcher (started on first use: only a parent needs the parent permissions)."""
        async with self._dispatcher_lock:
            if self._dispatcher is None:
                self._dispatcher = await Dispatcher(self.coord, parent_id=self.agent_id).start()
            return self._dispatcher

    def remember(self, task_ids: list[str]) -> None:
        """Keep ``task_ids`` as submitted by this agent and tell subscribers when each one ends."""
        self.submitted = (self.submitted + [t for t in task_ids if t not in self.submitted])[-KEEP_SUBMITTED:]
        for task_id in task_ids:
            self._tasks.append(asyncio.create_task(self._tell_end(task_id), name=f"mcp-watch-{task_id}"))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def claim(self, queue: str, wait: float) -> Claim | None:
        """Claim the next task of ``queue`` through the worker intake (:class:`Claims`), waiting up to
        ``wait`` s; the claim is held (its lease extended) until it is settled, lost or given back."""
        if self._claims is None:
            raise CorralError(f"agent {self.agent_id} is not started (or has left)")
        claim = await self._claims.claim(queue, wait)
        if claim is not None:
            self.hold(claim)
        return claim

    def hold(self, claim: Claim) -> None:
        """Keep ``claim`` (its lease extended from here on) and publish the new in-flight count."""
        self.held[claim.task_id] = claim
        self._inflight()

    def drop(self, task_id: str) -> None:
        """Forget the claim on ``task_id`` (it was settled or lost) and give back its limits slot."""
        if self._claims is not None:
            self._claims.ended(task_id)
        if self.held.pop(task_id, None) is not None:
            self._inflight()

    async def wait_mail(self, generation: int, timeout: float) -> bool:
        """True once an inbox arrival after ``generation`` was seen, False after ``timeout`` s."""
        async with self._mail:
            try:
                async with asyncio.timeout(timeout):
                    await self._mail.wait_for(lambda: self.mail_generation > generation)
            except TimeoutError:
                return False
        return True

    async def tell(self, uri: str) -> None:
        """Say that resource ``uri`` changed (to whoever subscribed)."""
        if self._changed is not None:
            await self._changed(uri)

    # --- background ----------------------------------------------------------------------------
    def _inflight(self) -> None:
        if self._membership is not None:
            with contextlib.suppress(CorralError):
                self._membership.change(inflight=len(self.held))

    async def _on_mail(self, msg: object) -> None:
        async with self._mail:
            self.mail_generation += 1
            self._mail.notify_all()
        await self.tell(INBOX_URI)

    async def _tell_end(self, task_id: str) -> None:
        dispatcher = await self.dispatcher()
        with contextlib.suppress(Exception):
            await dispatcher.wait(task_id)
            await self.tell(TASKS_URI)
            await self.tell(f"corral://task/{task_id}")

    async def _keep_leases(self) -> None:
        """Extend every held claim at a third of its lease, as a worker runtime does for its handlers."""
        while True:
            pause = min((c.lease / 3 for c in self.held.values()), default=1.0)
            await asyncio.sleep(min(pause, 1.0))
            for claim in list(self.held.values()):
                remaining = claim.deadline.timestamp() - time.time()
                if remaining > claim.lease * 2 / 3:
                    continue
                try:
                    await self.coord.tasks.heartbeat(claim)
                except StaleClaim:
                    log.info("mcp: claim on %s is no longer current; dropped", claim.task_id)
                    self.drop(claim.task_id)
                    await self.tell(TASKS_URI)
                except Exception as err:  # transient (server away): the next beat tries again
                    log.warning("mcp: could not extend the claim on %s: %s", claim.task_id, err)

    async def _watch_fleet(self) -> None:
        while True:
            try:
                async with self.coord.presence.watch(include_existing=False, updates=True) as watcher:
                    async for _ in watcher:
                        await self.tell(FLEET_URI)
            except Exception as err:  # the fleet resource's updates must outlive a server restart
                log.debug("mcp: fleet watch ended (%s); again", err)
                await asyncio.sleep(1.0)
