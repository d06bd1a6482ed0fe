"""``corral events``: follow lifecycle events, emit one from a shell agent, show an agent's descendants."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from coord.events import (
    Descendant,
    Errored,
    EventKind,
    Progress,
    ReceivedEvent,
    ScopeSubDelegated,
    ShutDown,
    TurnEnded,
    render_event,
)
from coord.events.service import Events
from coord.events.tree import event_changes
from corral.cli._bounds import FRACTION, SINCE, TURN, bounded
from corral.cli._common import Options, console, fail, invalid, options, print_json, run
from corral.cli._errors import EXIT_USAGE, check_tokens

app = typer.Typer(name="events", help="Lifecycle events: tail, emit, tree.", no_args_is_help=True)

KINDS: tuple[EventKind, ...] = ("turn_ended", "errored", "shut_down", "scope_sub_delegated", "progress")

_EMIT_FLAGS = {
    "agent": "--agent",
    "turn": "--turn",
    "summary": "--text",
    "message": "--text",
    "reason": "--text",
    "sub_agent": "--sub-agent",
    "scope": "--scope",
    "fraction": "--fraction",
}
"""The ``emit`` flag behind each event field (for error messages)."""


def register(parent: typer.Typer) -> None:
    """Add the ``events`` command group to ``parent``."""
    parent.add_typer(app, name="events")


def _received_json(received: ReceivedEvent) -> dict[str, Any]:
    return {"to": received.to, "from": received.sender, "seq": received.seq, **received.event.model_dump(mode="json")}


@app.command("tail")
def tail(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", help="Only events sent to this agent.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    since: Annotated[float, typer.Option(help="Start this many seconds back.", callback=bounded(SINCE))] = 3600.0,
    follow: Annotated[bool, typer.Option(help="Keep printing new events until interrupted.")] = True,
) -> None:
    """Print lifecycle events (one line each), then follow new ones. Read-only: moves no position."""
    run(_tail(options(ctx), agent, json_out, since, follow))


async def _tail(opts: Options, agent: str | None, json_out: bool, since: float, follow: bool) -> None:
    async with opts.connect() as coord:
        async for received in coord.events.tail(agent, since=since, follow=follow):
            if json_out:
                print_json(_received_json(received))
            else:
                at = received.event.at.strftime("%H:%M:%S")
                typer.echo(f"{at} {received.sender}→{received.to}  {render_event(received.event)}")


@app.command("emit")
def emit(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)} (dashes also accepted).")],
    to: Annotated[str, typer.Option("--to", help="Parent agent id.")],
    agent: Annotated[str, typer.Option("--agent", help="The agent the event is about (usually yourself).")],
    text: Annotated[str, typer.Option(help="Summary, error message, reason or progress message.")] = "",
    turn: Annotated[int | None, typer.Option(help="Turn number (turn_ended).", callback=bounded(TURN))] = None,
    sub_agent: Annotated[str | None, typer.Option(help="Spawned agent (scope_sub_delegated).")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Delegated scope item (repeatable).")] = None,
    fraction: Annotated[
        float | None, typer.Option(help="Progress 0..1 (progress).", callback=bounded(FRACTION))
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help='Print {"to", "id", "kind", ...} of the event.')] = False,
) -> None:
    """Durably emit one lifecycle event to a parent (for shell agents). Exits 1 if it could not be stored."""
    name = kind.replace("-", "_")
    if name not in KINDS:
        fail(f"must be one of {', '.join(KINDS)} (got {kind!r})", EXIT_USAGE, "KIND")
    check_tokens({"--to": to})
    if name == "errored" and not text.strip():
        fail("is required for errored: the error message to report", EXIT_USAGE, "--text")
    try:
        event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress
        match name:
            case "turn_ended":
                event = TurnEnded(agent=agent, turn=turn, summary=text)
            case "errored":
                event = Errored(agent=agent, message=text)
            case "shut_down":
                event = ShutDown(agent=agent, reason=text)
            case "scope_sub_delegated":
                if not sub_agent:
                    fail("is required for scope_sub_delegated", EXIT_USAGE, "--sub-agent")
                event = ScopeSubDelegated(agent=agent, sub_agent=sub_agent, scope=scope or [])
            case _:
                event = Progress(agent=agent, message=text, fraction=fraction)
    except ValidationError as err:
        invalid(err, _EMIT_FLAGS)
    if not run(_emit(options(ctx), to, event)):
        fail(f"could not store the event for {to} (server unreachable?)")
    if json_out:
        print_json({"to": to, **event.model_dump(mode="json")})
    else:
        typer.echo(f"emitted {event.id}: {render_event(event)}")


async def _emit(opts: Options, to: str, event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress) -> bool:
    async with opts.connect() as coord:
        result: bool = await coord.events.emit(to, event, timeout=5.0)
        return result


@app.command("tree")
def tree(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="The listening (parent/root) agent.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    from_stream: Annotated[
        bool,
        typer.Option(
            "--from-stream",
            help="Build the tree from the events stored for AGENT, even when a listener has built one.",
        ),
    ] = False,
) -> None:
    """Show AGENT's descendants: its listener's registry, or (no listener ran) the tree its stored events make."""
    found, source = run(_tree(options(ctx), agent, from_stream))
    if json_out:
        print_json([{**d.model_dump(mode="json"), "parent": d.parent(agent)} for d in found])
        return
    origin = "its listener's registry" if source == "listener" else "the events stream"
    table = Table(title=f"{len(found)} descendant(s) of {agent}, from {origin}", title_justify="left")
    for column in ("agent", "parent", "status", "last turn", "last error", "scope"):
        table.add_column(column)
    for d in found:
        table.add_row(
            d.agent,
            d.parent(agent) or "?",
            d.status,
            "-" if d.last_turn is None else str(d.last_turn),
            d.last_error or "-",
            ", ".join(d.scope) or "-",
        )
    console.print(table)


async def _tree(opts: Options, agent: str, from_stream: bool) -> tuple[list[Descendant], str]:
    """The descendants of ``agent`` (sorted) and where they came from: ``listener`` or ``stream``."""
    async with opts.connect() as coord:
        found = {} if from_stream else await coord.events.descendants(agent)
        source = "listener"
        if not found:
            found, source = await _replay(coord.events, agent), "stream"
    return [found[name] for name in sorted(found)], source


async def _replay(events: Events, agent: str) -> dict[str, Descendant]:
    """The tree ``agent``'s stored events make, merged in memory as a listener would (nothing is written).

    Unlike a listener it refuses nothing (no check that a sender is on the chain of parents): it shows
    what was sent, where a listener would drop an event from a sender outside the chain.
    """
    records: dict[str, Descendant] = {}
    async for received in events.tail(agent, since=None, follow=False):
        for name, changes in event_changes(agent, received).items():
            record = records.get(name) or Descendant(agent=name)
            for change in changes:
                record = change(record)
            records[name] = record
    return records
