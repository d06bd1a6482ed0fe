"""Running one agent's MCP server: over stdio (what harnesses launch) or loopback HTTP with a bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

from coord.aio import first_of
from coord.connection import Coord
from coord.errors import InvalidInput
from corral.mcp.notify import Notifier
from corral.mcp.server import build_server
from corral.mcp.session import AgentSession

__all__ = ["BearerGuard", "check_loopback", "serve"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``); :class:`InvalidInput` otherwise."""
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise InvalidInput(f"--host {host!r} is not a loopback address (127.0.0.1, ::1 or localhost)")


class BearerGuard:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>`` (else 401)."""

    def __init__(self, app: App, token: str) -> None:
        if not token:
            raise InvalidInput("the bearer token must not be empty")
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await send(
                    {"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]}
                )
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token\n"})
                return
        await self._app(scope, receive, send)


async def serve(
    coord: Coord,
    session_args: dict[str, Any],
    *,
    http: tuple[str, int, str] | None = None,
    announce: Callable[[str, str], None] | None = None,
) -> None:
    """Be the agent ``session_args`` describe (see :class:`AgentSession`) until the client goes away.

    Over stdio by default (until stdin ends, or SIGTERM/SIGINT: either way the session then leaves
    gracefully — claims given back, presence deleted); with ``http=(host, port, token)`` over
    streamable HTTP at ``/mcp`` on a loopback ``host``, every request authenticated with the bearer
    ``token``. ``announce`` is told the agent's id and where it serves (default: a line on stderr;
    stdout is the protocol's).
    """
    if http is not None:
        check_loopback(http[0])
    notifier = Notifier()
    async with AgentSession(coord, changed=notifier.updated, **session_args) as session:
        server = build_server(session, notifier)
        say = announce or (lambda agent, where: print(f"corral mcp: agent {agent} on {where}", file=sys.stderr))
        if http is None:
            say(session.agent_id, "stdio")
            with _until_terminated() as terminated:
                await first_of(server.run_stdio_async(), terminated.wait())
            return
        host, port, token = http
        app = BearerGuard(server.streamable_http_app(host=host), token)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        web = uvicorn.Server(config)
        say(session.agent_id, f"http://{host}:{port}/mcp")
        await web.serve()


@contextlib.contextmanager
def _until_terminated() -> Iterator[asyncio.Event]:
    """An event set on SIGTERM or SIGINT while the block runs (the previous handlers come back after it)."""
    terminated = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, terminated.set)
            installed.append(sig)
    try:
        yield terminated
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
