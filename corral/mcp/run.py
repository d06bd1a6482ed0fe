"""Running one agent's MCP server: over stdio (what harnesses launch) or loopback HTTP with a bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, cast

import anyio
import uvicorn
from mcp.server.stdio import stdio_server

from coord.aio import first_of
from coord.connection import Coord
from coord.errors import InvalidInput
from corral.mcp.notify import Notifier
from corral.mcp.server import CorralMCP, build_server
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
                await first_of(_serve_stdio(server), terminated.wait())
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


MAX_LINE = 1 << 28
"""Longest protocol message read from stdin (bytes); a longer line is dropped with a warning."""


class _StdinLines:
    """Lines of stdin read on the event loop (a pipe, no thread): a read in progress ends with its task.

    The SDK's own stdin reader blocks a worker thread in ``readline``, which nothing can interrupt: a
    process told to stop would leave gracefully and then hang at exit until its stdin had a line.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls) -> _StdinLines | None:
        """Lines of this process's stdin; None when it is not a pipe, socket or terminal (a regular file)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        except (ValueError, OSError):
            return None
        return cls(reader)

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        dropping = False  # inside a line longer than MAX_LINE: read and dropped in bounded pieces
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                if not end.partial or dropping:
                    raise StopAsyncIteration from None
                line = end.partial
            except asyncio.LimitOverrunError as over:
                if not dropping:
                    print(f"corral mcp: dropped a message longer than {MAX_LINE} bytes", file=sys.stderr)
                dropping = True
                await self._reader.readexactly(over.consumed)
                continue
            if dropping:
                dropping = False  # the end of the dropped line
                continue
            return line.decode("utf-8", errors="replace")


async def _serve_stdio(server: CorralMCP) -> None:
    """``server`` over stdin/stdout until stdin ends; cancellable at any time (see :class:`_StdinLines`)."""
    lines = await _StdinLines.open()
    if lines is None:
        await server.run_stdio_async()
        return
    lowlevel = server._lowlevel_server  # the SDK's run_stdio_async, with a stdin read on the event loop
    async with stdio_server(stdin=cast(anyio.AsyncFile[str], lines)) as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())
