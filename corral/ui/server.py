"""A running dashboard: the read model, its feeds, the hub and the HTTP server, started and stopped together."""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from types import TracebackType

from aiohttp import web

from coord.connection import Coord
from coord.errors import CorralError, InvalidInput
from corral.ui.app import build_app
from corral.ui.feeds import Feeds
from corral.ui.guard import Guard, parse_allowed_hosts
from corral.ui.hub import Hub
from corral.ui.model import ReadModel

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "check_trace_url"]

log = logging.getLogger("corral.ui")

DEFAULT_HOST = "127.0.0.1"
"""Where the dashboard listens unless told otherwise: this machine only."""
DEFAULT_PORT = 8470
"""The dashboard's port unless told otherwise (0: any free port)."""


def check_trace_url(template: str | None) -> str | None:
    """``template`` if it is an http(s) URL containing ``{trace_id}``; :class:`InvalidInput` otherwise."""
    if template is None:
        return None
    if "{trace_id}" not in template or not template.startswith(("http://", "https://")):
        raise InvalidInput(
            f"--trace-url: must be an http(s) URL containing {{trace_id}} "
            f"(e.g. http://localhost:16686/trace/{{trace_id}}), got {template!r}"
        )
    return template


class Dashboard:
    """``corral ui`` on one connection: ``async with Dashboard(coord) as d: print(d.url)``.

    Watches the namespace once (however many browsers connect) and serves the page, the JSON API and
    the event stream on ``host:port``. Read-only unless ``allow_actions``. Answers only requests whose
    ``Host`` (and ``Origin``, if any) is ``host:port``, ``localhost`` on loopback, or one of
    ``allowed_hosts`` (``host[:port]``, e.g. a reverse proxy's name); :class:`InvalidInput` for a
    malformed one.
    """

    def __init__(
        self,
        coord: Coord,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        allow_actions: bool = False,
        trace_url: str | None = None,
        interval: float = 0.5,
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        self.host = host
        """The address listened on."""
        self.port = port
        """The port listened on (the real one once started)."""
        self.allow_actions = allow_actions
        """Whether retry and cancel are allowed."""
        self.model = ReadModel(coord.namespace)
        """What the dashboard knows."""
        self.hub = Hub(self.model, interval=interval)
        """What pushes it to browsers."""
        self._feeds = Feeds(coord, self.model)
        self.guard = Guard(host, parse_allowed_hosts(allowed_hosts))
        """Host, Origin and action-token checks (see :mod:`corral.ui.guard`)."""
        self._app = build_app(
            coord, self.model, self.hub, self.guard, allow_actions=allow_actions, trace_url=check_trace_url(trace_url)
        )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where a browser finds the dashboard."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self, *, ready_within: float = 30.0) -> Dashboard:
        """Listen, start the watches and wait (up to ``ready_within`` s) until agents and tasks are loaded.

        A port already in use is :class:`~coord.errors.CorralError` naming ``--port``; an address that
        cannot be listened on, one naming ``--host``.
        """
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            flag = "--port" if err.errno == errno.EADDRINUSE else "--host"
            raise CorralError(f"{flag}: cannot listen on {self.host}:{self.port}: {err.strerror or err}") from None
        self._runner = runner
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        self.guard.port = self.port
        self._feeds.start()
        self.hub.start()
        if not await self._feeds.wait_ready(ready_within):
            log.warning("dashboard: presence or tasks not loaded within %.0fs; serving what is known", ready_within)
        return self

    async def stop(self) -> None:
        """Stop serving and watching; idempotent."""
        await self.hub.stop()
        await self._feeds.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Dashboard:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
