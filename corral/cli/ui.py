"""``corral ui``: serve the live web dashboard of a namespace until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Annotated

import typer

from coord.connection import Coord
from coord.errors import CorralError, InvalidInput
from corral.cli._bounds import PORT, bounded
from corral.cli._common import Options, console, fail, options, print_json, run
from corral.ui import DEFAULT_HOST, DEFAULT_PORT, Dashboard, check_trace_url
from corral.ui.guard import ALLOWED_HOSTS_ENV, parse_allowed_hosts


def register(app: typer.Typer) -> None:
    """Add the ``ui`` command to ``app``."""
    app.command("ui")(ui)


async def _serve(
    opts: Options,
    host: str,
    port: int,
    allow_actions: bool,
    trace_url: str | None,
    as_json: bool,
    allowed_hosts: list[str],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with (
        opts.connect(name="corral-ui") as coord,
        Dashboard(
            coord,
            host=host,
            port=port,
            allow_actions=allow_actions,
            trace_url=trace_url,
            allowed_hosts=allowed_hosts,
        ) as dashboard,
    ):
        if as_json:
            print_json({"url": dashboard.url, "namespace": coord.namespace, "allow_actions": allow_actions})
        else:
            mode = "actions allowed (retry, cancel)" if allow_actions else "read-only"
            console.print(
                f"corral dashboard of namespace [bold]{coord.namespace}[/] at [bold]{dashboard.url}[/] ({mode}); "
                "Ctrl-C stops it",
                highlight=False,
                soft_wrap=True,
            )
        await stop.wait()


@contextlib.asynccontextmanager
async def alongside(coord: Coord, port: int | None, *, as_json: bool) -> AsyncIterator[Dashboard | None]:
    """A read-only dashboard of ``coord``'s namespace while the block runs (``corral demo``); None when
    ``port`` is None. A busy ``port`` falls back to a free one. The URL goes to stdout, or to stderr
    with ``as_json`` (stdout then holds only the command's JSON)."""
    if port is None:
        yield None
        return
    try:
        dashboard = await Dashboard(coord, port=port).start()
    except CorralError:
        dashboard = await Dashboard(coord, port=0).start()
    try:
        if as_json:
            print(f"dashboard: {dashboard.url}", file=sys.stderr, flush=True)
        else:
            console.print(
                f"dashboard at [bold]{dashboard.url}[/] while the fleet runs", highlight=False, soft_wrap=True
            )
        yield dashboard
    finally:
        await dashboard.stop()


def ui(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on (0.0.0.0: every interface, so anyone who can reach it sees the fleet).",
        ),
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(callback=bounded(PORT), help="Port to listen on (0: a free one).")
    ] = DEFAULT_PORT,
    allow_actions: Annotated[
        bool,
        typer.Option(
            "--allow-actions", help="Offer retry and cancel (with this process's NATS credentials); read-only without."
        ),
    ] = False,
    trace_url: Annotated[
        str | None,
        typer.Option(
            help="Link each task's trace id to a tracing backend: a URL with {trace_id}, "
            "e.g. http://localhost:16686/trace/{trace_id}.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            envvar=ALLOWED_HOSTS_ENV,
            help="Another name the dashboard answers to, as host[:port] (a reverse proxy's; repeat it, "
            "or comma-separate). Requests with any other Host or Origin are refused.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help='Print {"url": ...} as JSON once serving.')] = False,
) -> None:
    """Serve a live web dashboard of the fleet (agents, queues, tasks, timeline, dead letters) until interrupted."""
    allowed = allowed_host or []
    try:
        check_trace_url(trace_url)
        parse_allowed_hosts(allowed)
    except InvalidInput as err:
        fail(str(err), 2)
    run(_serve(options(ctx), host, port, allow_actions, trace_url, json_out, allowed))
