"""One agent's MCP server: :func:`build_server` puts an :class:`AgentSession`'s tools and resources on an SDK server.

Resources (subscribe to be told when they change, instead of polling): ``corral://inbox`` (the
messages waiting; changes when mail arrives or is acknowledged), ``corral://tasks`` (the tasks this
agent submitted and the claims it holds; changes when a watched task ends or a claim is taken or
settled), ``corral://fleet`` (who is present; changes on every join, leave and update) and
``corral://task/{task_id}`` (one task; changes when a task this agent submitted ends).

Every error a tool meets reaches the agent as one line naming the tool and what to change.
"""

from __future__ import annotations

import json
from typing import Any

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from pydantic import ValidationError

from coord.errors import CorralError
from coord.validation import describe
from corral import __version__
from corral.mcp import tools_agents, tools_tasks
from corral.mcp.models import TaskView
from corral.mcp.notify import Notifier
from corral.mcp.session import FLEET_URI, INBOX_URI, TASKS_URI, AgentSession

__all__ = ["CorralMCP", "build_server"]

INSTRUCTIONS = (
    "corral: you are one agent of a fleet coordinated on NATS. fleet_* shows who is present; mail_* "
    "sends and reads messages (mail_read can wait for mail); task_submit/task_wait delegate work and "
    "collect results; task_claim/task_heartbeat/task_complete take work from a queue; event_report "
    "tells your parent how your turn went; thread_* reserves a thread so no one else works on it."
)


def one_line(tool: str, err: ToolError) -> str:
    """The one-line message an agent sees for ``err`` raised by ``tool``."""
    cause = err.__cause__
    if isinstance(cause, ValidationError):
        return f"{tool}: {describe(cause)}"
    if isinstance(cause, CorralError | ValueError):
        return f"{tool}: {cause}".replace("\n", " ")
    if isinstance(cause, TimeoutError):
        return f"{tool}: timed out ({cause or 'no answer in time'})"
    if isinstance(err, UnexpectedToolError):
        return f"{tool}: failed unexpectedly (see the server's log)"
    return str(err).replace("\n", " ")


class CorralMCP(MCPServer[Any]):
    """An SDK server whose tool errors are one line an agent can act on."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Call ``name``; a failure is a ``ToolError`` with one line (see :func:`one_line`)."""
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as err:
            raise ToolError(one_line(name, err)) from None


def build_server(session: AgentSession, notifier: Notifier) -> CorralMCP:
    """The MCP server of ``session``'s agent, telling ``notifier``'s subscribers about resource changes."""
    server = CorralMCP(
        name="corral",
        version=__version__,
        instructions=INSTRUCTIONS,
        subscriptions=notifier.bus,
        log_level="WARNING",
    )
    lowlevel = server._lowlevel_server  # the SDK has no public hook for resources/subscribe yet
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, notifier.subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, notifier.unsubscribe)
    tools_agents.register(server, session)
    tools_tasks.register(server, session)
    coord = session.coord

    @server.resource(INBOX_URI, name="inbox", mime_type="application/json")
    async def inbox() -> str:
        """The messages waiting in this agent's inbox (ids, senders, bodies), oldest first."""
        found = await coord.mailbox.read_pending(session.agent_id, limit=100)
        return json.dumps([{"id": m.id, "sender": m.sender, "tag": m.tag, "key": m.key, "body": m.text} for m in found])

    @server.resource(TASKS_URI, name="tasks", mime_type="application/json")
    async def tasks() -> str:
        """The tasks this agent submitted (newest last) and the claims it holds."""
        records = await coord.tasks.read_many(session.submitted)
        return json.dumps(
            {
                "submitted": [
                    TaskView.of(records[t]).model_dump(mode="json") for t in session.submitted if t in records
                ],
                "held": [TaskView.of(c.record).model_dump(mode="json") for c in session.held.values()],
            }
        )

    @server.resource(FLEET_URI, name="fleet", mime_type="application/json")
    async def fleet() -> str:
        """Who is present now (their presence values)."""
        return json.dumps([a.model_dump(mode="json") for a in await coord.presence.list()])

    @server.resource("corral://task/{task_id}", name="task", mime_type="application/json")
    async def task(task_id: str) -> str:
        """One task's state and result."""
        return TaskView.of(await coord.tasks.get(task_id)).model_dump_json()

    return server
