"""MCP sessions for tests: in-process (the SDK's in-memory client) and real ``corral mcp`` subprocesses over stdio."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

import coord
from corral.mcp import AgentSession, Notifier, build_server
from tests.conftest import PYTHON


@contextlib.asynccontextmanager
async def agent(conn: coord.Coord, agent_id: str, **session_args: Any) -> AsyncIterator[Client]:
    """An agent session on ``conn`` and an SDK client connected to its server in memory."""
    notifier = Notifier()
    session = AgentSession(conn, agent_id=agent_id, changed=notifier.updated, **session_args)
    async with session, Client(build_server(session, notifier)) as client:
        yield client


@contextlib.asynccontextmanager
async def stdio_agent(
    url: str, namespace: str, env: dict[str, str], agent_id: str, *args: str
) -> AsyncIterator[Client]:
    """A real ``python -m corral mcp`` process launched and driven by the SDK's stdio client."""
    params = StdioServerParameters(
        command=PYTHON,
        args=["-m", "corral", "--server", url, "--namespace", namespace, "mcp", "--agent-id", agent_id, *args],
        env=env,
    )
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    """The structured result of ``tool`` (unwrapped when the SDK wraps it as ``result``); fails on a tool error."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} failed: {error_text(result)}"
    content = result.structured_content
    if isinstance(content, dict) and set(content) == {"result"}:
        return content["result"]
    return content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The one-line error of a ``tool`` call that must fail."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    text = error_text(result)
    assert "\n" not in text, text
    return text


def error_text(result: CallToolResult) -> str:
    """The text of a tool result's first content block."""
    block = result.content[0] if result.content else None
    return str(getattr(block, "text", ""))
