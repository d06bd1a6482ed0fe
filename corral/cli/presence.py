"""``corral presence``: list and watch live agents, or hold an id present for a shell agent."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from coord.errors import PresenceConflict, PresenceLost
from coord.presence import AgentInfo, Joined, Left, Membership, MembershipLost, PresenceEvent, Updated
from corral.cli._bounds import PRESENCE_INTERVAL, PRESENCE_TTL, bounded
from corral.cli._common import (
    Options,
    check_presence_flags,
    console,
    invalid,
    options,
    print_json,
    run,
    setting_help,
)
from corral.cli._errors import CliError, warn

EXIT_HELD = 3
"""Exit code of ``hold`` when the id is held by another live process."""

_HOLD_FLAGS = {"id": "--id", "role": "--role", "tags": "--tag", "queues": "--queue", "parent": "--parent"}
"""The ``hold`` flag behind each AgentInfo field (for error messages)."""

app = typer.Typer(name="presence", help="Who is alive: list, watch, or hold an agent id.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    """Add the ``presence`` command group to ``parent``."""
    parent.add_typer(app, name="presence")


def _age(started: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - started).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


@app.command("ls")
def ls(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array of agent infos.")] = False,
) -> None:
    """List the agents present now."""
    agents = run(_list(options(ctx)))
    if json_out:
        print_json([agent.model_dump(mode="json") for agent in agents])
        return
    table = Table(title=f"{len(agents)} agent(s) present", title_justify="left")
    for column in ("id", "role", "host", "pid", "queues", "inflight/capacity", "age"):
        table.add_column(column, justify="right" if column in ("pid", "inflight/capacity", "age") else "left")
    for a in agents:
        table.add_row(
            a.id,
            a.role,
            a.host,
            str(a.pid),
            ",".join(a.queues) or "-",
            f"{a.inflight}/{a.capacity}",
            _age(a.started_at),
        )
    console.print(table)


async def _list(opts: Options) -> list[AgentInfo]:
    async with opts.connect() as coord:
        agents: list[AgentInfo] = await coord.presence.list()
        return agents


def _event_json(event: PresenceEvent) -> dict[str, Any]:
    if isinstance(event, Left):
        return {
            "event": "left",
            "agent_id": event.agent_id,
            "reason": event.reason,
            "revision": event.revision,
            "at": event.at.isoformat(),
        }
    kind = "joined" if isinstance(event, Joined) else "updated"
    return {
        "event": kind,
        "agent_id": event.agent.id,
        "agent": event.agent.model_dump(mode="json"),
        "revision": event.revision,
    }


def _event_line(event: PresenceEvent) -> str:
    if isinstance(event, Left):
        return f"left    {event.agent_id}  ({event.reason}, at {event.at.strftime('%H:%M:%S.%f')[:-3]})"
    a = event.agent
    verb = "joined " if isinstance(event, Joined) else "updated"
    queues = ",".join(a.queues) or "-"
    return f"{verb} {a.id}  role={a.role} host={a.host} pid={a.pid} queues={queues} inflight={a.inflight}/{a.capacity}"


@app.command("watch")
def watch(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    existing: Annotated[bool, typer.Option(help="First report the agents present now.")] = True,
    updates: Annotated[bool, typer.Option(help="Also report info changes of present agents.")] = False,
) -> None:
    """Print one line per agent that joins or leaves, until Ctrl-C."""
    run(_watch(options(ctx), json_out, existing, updates))


async def _watch(opts: Options, json_out: bool, existing: bool, updates: bool) -> None:
    async with opts.connect() as coord, coord.presence.watch(include_existing=existing, updates=updates) as w:
        async for event in w:
            if json_out:
                print_json(_event_json(event))
            else:
                style = "red" if isinstance(event, Left) else "yellow" if isinstance(event, Updated) else "green"
                console.print(f"[{style}]{_event_line(event)}[/]", highlight=False, soft_wrap=True)


@app.command("hold")
def hold(
    ctx: typer.Context,
    agent_id: Annotated[str, typer.Option("--id", help="Agent id to keep present.")],
    interval: Annotated[
        float | None,
        typer.Option(
            help=setting_help("Seconds between renewals.", "presence_interval"), callback=bounded(PRESENCE_INTERVAL)
        ),
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            help=setting_help("Per-key TTL in seconds (>= 1; the server enforces whole seconds).", "presence_ttl"),
            callback=bounded(PRESENCE_TTL),
        ),
    ] = None,
    role: Annotated[str, typer.Option(help="Role published in the agent info.")] = "agent",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", help="A queue (repeatable).")] = None,
    parent: Annotated[str | None, typer.Option(help="Id of the parent agent.")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help='One JSON line per change: {"event", "agent_id"}; errors as JSON.')
    ] = False,
) -> None:
    """Keep AGENT_ID present until SIGTERM/SIGINT, then leave gracefully (for shell agents and scripts).

    Exits 3 if the id is held by another live process. If presence is lost (e.g. this process was
    paused past the TTL) it says so on stderr and re-joins.
    """
    try:
        info = AgentInfo(id=agent_id, role=role, tags=tag or [], queues=queue or [], parent=parent)
    except ValidationError as err:
        invalid(err, _HOLD_FLAGS)
    opts = options(ctx)
    check_presence_flags(opts, interval, ttl)
    run(_hold(opts, info, interval, ttl, _Say(info.id, json_out)))


class _Say:
    """What ``hold`` tells its caller on stdout: one word and the id a line, or one JSON object a line."""

    def __init__(self, agent_id: str, as_json: bool) -> None:
        self.agent_id, self.as_json = agent_id, as_json

    def __call__(self, event: str) -> None:
        if self.as_json:
            print_json({"event": event, "agent_id": self.agent_id})
        else:
            typer.echo(f"{event} {self.agent_id}")


async def _hold(opts: Options, info: AgentInfo, interval: float | None, ttl: float | None, say: _Say) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_lost(err: PresenceLost) -> None:
        what = "re-joining" if isinstance(err, MembershipLost) and err.rejoining else "giving up"
        warn(f"lost: {err}; {what}", as_json=say.as_json)
        say("lost")

    async with opts.connect() as coord:
        try:
            membership: Membership = await coord.presence.join(info, interval=interval, ttl=ttl, on_lost=on_lost)
        except PresenceConflict as err:
            raise CliError(str(err), code=EXIT_HELD) from None
        say("joined")
        try:
            await _hold_until_stopped(membership, stop, say)
        finally:
            taken = membership.last_loss is not None and membership.last_loss.reason == "taken"
            await membership.leave()
        if taken:
            raise CliError(f"agent id {info.id!r} was taken by another process", code=EXIT_HELD)
        say("left")


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _hold_until_stopped(membership: Membership, stop: asyncio.Event, say: _Say) -> None:
    """Wait for a stop signal or the end of the membership, reporting re-joins on stdout."""
    generation = membership.generation
    while not stop.is_set() and not membership.ended.is_set():
        await _first(stop, membership.ended, membership.lost)
        if membership.lost.is_set() and not stop.is_set():
            await _first(stop, membership.ended, membership.present)
        if membership.generation != generation:
            generation = membership.generation
            say("rejoined")
