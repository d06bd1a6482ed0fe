"""The agent-to-agent tools: fleet, mail, lifecycle events, thread reservations.

Each is a thin layer over one service of :class:`coord.Coord`, always acting as the session's agent.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from coord.errors import InvalidInput, NotFound
from coord.events.models import Errored, ScopeSubDelegated, ShutDown, TurnEnded
from coord.ids import Token
from coord.mailbox import InboxMessage
from coord.mailbox.models import Agent, Delivered, Expired, Tag
from coord.registry.models import LiveOwner
from coord.tasks import TaskStatus
from corral.mcp.models import AgentView, Fleet, Inbox, MailItem, Sent, ThreadAnswer, Tree
from corral.mcp.session import INBOX_URI, AgentSession

__all__ = ["MAX_WAIT", "Wait", "register"]

MAX_WAIT = 300.0
"""Longest any tool waits (seconds); a longer wait is refused, not shortened."""

KEEP_READ = 1000
"""How many read, unacknowledged messages a session remembers for mail_ack."""

Wait = Annotated[float, Field(ge=0, le=MAX_WAIT, description="seconds to wait (0..300)")]


def register(server: MCPServer, session: AgentSession) -> None:
    """Add the fleet, mail, event and thread tools of ``session`` to ``server``."""
    coord = session.coord
    read: dict[str, InboxMessage] = {}

    async def holdings() -> dict[str, list[str]]:
        held: dict[str, list[str]] = {}
        for record in await coord.tasks.list(status=TaskStatus.CLAIMED):
            if record.claim is not None:
                held.setdefault(record.claim.worker_id, []).append(record.task_id)
        return held

    @server.tool()
    async def fleet_list() -> Fleet:
        """Who is present in the namespace: each agent's role, tags, harness and the tasks it holds."""
        held = await holdings()
        return Fleet(agents=[AgentView(info=a, holds=held.get(a.id, [])) for a in await coord.presence.list()])

    @server.tool()
    async def fleet_agent(agent_id: Token) -> AgentView:
        """One present agent's details (an error if it is not present)."""
        info = await coord.presence.get(agent_id)
        if info is None:
            raise NotFound(f"agent {agent_id!r} is not present")
        return AgentView(info=info, holds=(await holdings()).get(agent_id, []))

    @server.tool()
    async def mail_send(
        body: Annotated[str, Field(description="the message text")],
        to_agent: Token | None = None,
        to_tag: Token | None = None,
        key: Annotated[
            Token | None, Field(description="latest-wins key: a newer message replaces an unread one")
        ] = None,
        ttl: Annotated[
            float | None, Field(ge=1, le=7 * 86_400, description="drop it if unread after this many s")
        ] = None,
        wait: Annotated[float, Field(ge=0, le=60, description="seconds to wait for a live recipient's ack")] = 5.0,
    ) -> Sent:
        """Send a message to one agent or to whoever holds a tag: delivered (acknowledged) or enqueued.

        A keyed message, or one for an absent agent, is enqueued at once; for a live agent it waits
        up to ``wait`` s for the acknowledgement."""
        if (to_agent is None) == (to_tag is None):
            raise InvalidInput("give exactly one of to_agent or to_tag")
        target = Agent(id=to_agent) if to_agent is not None else Tag(name=str(to_tag))
        outcome = await coord.mailbox.send(
            target,
            body,
            key=key,
            sender=session.agent_id,
            ttl=ttl,
            mode="enqueue" if wait == 0 else "auto",
            timeout=wait or 1.0,  # with mode="enqueue" nothing waits
        )
        if isinstance(outcome, Delivered):
            return Sent(outcome="delivered", id=outcome.id)
        if isinstance(outcome, Expired):
            return Sent(outcome="expired", id=outcome.id)
        return Sent(outcome="enqueued", id=outcome.id, queue=getattr(outcome, "queue", None))

    @server.tool()
    async def mail_read(wait: Wait = 0.0, limit: Annotated[int, Field(ge=1, le=100)] = 20) -> Inbox:
        """The messages waiting in this agent's inbox, oldest first (not acknowledged: use mail_ack).

        With ``wait`` and an empty inbox it waits until a message arrives (woken by the message
        itself) or the wait ends."""
        started = time.monotonic()
        generation = session.mail_generation
        found = await coord.mailbox.read_pending(session.agent_id, limit=limit)
        while not found:
            left = wait - (time.monotonic() - started)
            if left <= 0 or not await session.wait_mail(generation, left):
                break
            generation = session.mail_generation
            found = await coord.mailbox.read_pending(session.agent_id, limit=limit)
        for message in found:
            read[message.id] = message
        while len(read) > KEEP_READ:  # never acknowledged (expired, or read by another process): forget the oldest
            read.pop(next(iter(read)))
        return Inbox(
            messages=[
                MailItem(id=m.id, sender=m.sender, tag=m.tag, key=m.key, sent_at=m.sent_at, body=m.text) for m in found
            ],
            waited_ms=round((time.monotonic() - started) * 1000, 1),
        )

    @server.tool()
    async def mail_ack(ids: Annotated[list[str], Field(min_length=1, max_length=100)]) -> list[str]:
        """Acknowledge messages read with mail_read (they leave the inbox; a waiting sender hears it)."""
        unknown = [i for i in ids if i not in read]
        if unknown:
            raise InvalidInput(f"ids {unknown} were not read by this agent (read them with mail_read first)")
        for message_id in ids:
            await read.pop(message_id).ack()
        await session.tell(INBOX_URI)
        return ids

    @server.tool()
    async def event_report(
        kind: Literal["turn_ended", "errored", "shut_down", "sub_delegated"],
        text: Annotated[str, Field(max_length=4000, description="summary, error message or reason")] = "",
        turn: Annotated[int | None, Field(ge=0)] = None,
        sub_agent: Token | None = None,
        scope: Annotated[list[str], Field(max_length=256)] = [],  # noqa: B006 - pydantic copies defaults
    ) -> bool:
        """Tell this agent's parent (--parent) a lifecycle event; True once it is stored."""
        if session.info.parent is None:
            raise InvalidInput("this agent has no parent (start corral mcp with --parent) to report to")
        me = session.agent_id
        event: TurnEnded | Errored | ShutDown | ScopeSubDelegated
        if kind == "turn_ended":
            event = TurnEnded(agent=me, turn=turn, summary=text)
        elif kind == "errored":
            event = Errored(agent=me, message=text or "error")
        elif kind == "shut_down":
            event = ShutDown(agent=me, reason=text)
        else:
            if sub_agent is None:
                raise InvalidInput("sub_delegated needs sub_agent")
            event = ScopeSubDelegated(agent=me, sub_agent=sub_agent, scope=scope)
        return await coord.events.emit(session.info.parent, event)

    @server.tool()
    async def event_tree() -> Tree:
        """The agents below this one and their last lifecycle events."""
        return Tree(descendants=list((await coord.events.descendants(session.agent_id)).values()))

    @server.tool()
    async def thread_reserve(thread: Token) -> ThreadAnswer:
        """Reserve a thread for this agent; if a live agent holds it, the answer names that owner."""
        answer = await coord.registry.reserve_thread(thread, agent_id=session.agent_id, session_id=session.session_id)
        if isinstance(answer, LiveOwner):
            return ThreadAnswer(thread=thread, state="held", owner=answer.session.agent_id, session=answer.session)
        return ThreadAnswer(thread=thread, state="reserved", owner=session.agent_id, session=answer.session)

    @server.tool()
    async def thread_release(thread: Token) -> ThreadAnswer:
        """Release a thread this agent holds (an error if it does not)."""
        if not await coord.registry.release_thread(thread, session.session_id):
            raise InvalidInput(f"thread {thread!r} is not held by this agent")
        return ThreadAnswer(thread=thread, state="released")

    @server.tool()
    async def thread_owner(thread: Token) -> ThreadAnswer:
        """Who holds a thread now (free when nobody, or when its owner is gone)."""
        owner = await coord.registry.thread_owner(thread)
        if owner is None or not await coord.registry.agent_alive(owner.agent_id):
            return ThreadAnswer(thread=thread, state="free")
        return ThreadAnswer(thread=thread, state="held", owner=owner.agent_id)
