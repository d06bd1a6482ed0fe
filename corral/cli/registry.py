"""``corral registry``: list sessions, reserve a thread, end sessions, reap dead owners, show chains."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from coord.registry import LiveOwner, Reserved, Session
from corral.cli._common import Options, console, options, print_json, run
from corral.cli._errors import check_tokens, warn

app = typer.Typer(name="registry", help="Sessions and thread reservations.", no_args_is_help=True)

EXIT_LIVE_OWNER = 3
"""Exit code of ``reserve`` when a live session already owns the thread."""


def register(parent: typer.Typer) -> None:
    """Add the ``registry`` command group to ``parent``."""
    parent.add_typer(app, name="registry")


def _session_json(session: Session, alive: bool | None = None) -> dict[str, object]:
    data: dict[str, object] = session.model_dump(mode="json")
    if alive is not None:
        data["alive"] = alive
    return data


def _age(started: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - started).total_seconds()))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


@app.command("ls")
def ls(
    ctx: typer.Context,
    alive_only: Annotated[
        bool, typer.Option("--alive-only", help="Only active sessions whose agent is present.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List sessions, most recent first, with whether each one's agent is alive."""
    rows = run(_ls(options(ctx), alive_only))
    if json_out:
        print_json([_session_json(s, alive) for s, alive in rows])
        return
    table = Table(title=f"{len(rows)} session(s)", title_justify="left")
    for column in ("session", "agent", "status", "alive", "thread", "parent", "age"):
        table.add_column(column)
    for s, alive in rows:
        table.add_row(
            s.id,
            s.agent_id,
            s.status,
            "yes" if alive else "no",
            s.thread or "-",
            s.parent_session or "-",
            _age(s.started_at),
        )
    console.print(table)


async def _ls(opts: Options, alive_only: bool) -> list[tuple[Session, bool]]:
    async with opts.connect() as coord:
        sessions = await coord.registry.list_sessions(alive_only=alive_only)
        if alive_only:
            return [(s, True) for s in sessions]
        present = await coord.presence.present_ids()
        return [(s, s.status == "active" and s.agent_id in present) for s in sessions]


@app.command("reserve")
def reserve(
    ctx: typer.Context,
    thread: Annotated[str, typer.Argument(help="Thread to reserve.")],
    agent_id: Annotated[str, typer.Option("--as", help="Owning agent id (its presence is the owner's liveness).")],
    path: Annotated[str | None, typer.Option(help="Working directory to record (lookup key).")] = None,
    parent_session: Annotated[str | None, typer.Option(help="Parent session id.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Reserve THREAD for AGENT_ID, reaping a dead owner first. Exit 0: Reserved; exit 3: LiveOwner.

    AGENT_ID should be present (e.g. `corral presence hold --id AGENT_ID`): a session whose agent
    is absent is dead at once, so it is reserved with a warning and the next reserve reaps it.
    """
    check_tokens({"THREAD": thread, "--as": agent_id, "--parent-session": parent_session})
    outcome, present = run(_reserve(options(ctx), thread, agent_id, path, parent_session))
    if isinstance(outcome, Reserved) and not present:
        warn(
            f"agent {agent_id!r} is not present, so session {outcome.session.id} is dead from the start: the next "
            f"reserve of {thread} reaps it (keep the agent present, e.g. corral presence hold --id {agent_id})",
            as_json=json_out,
        )
    if json_out:
        kind = "reserved" if isinstance(outcome, Reserved) else "live_owner"
        print_json({"outcome": kind, "agent_present": present, **outcome.model_dump(mode="json")})
    elif isinstance(outcome, Reserved):
        reaped = f" (reaped dead session {outcome.reaped.id})" if outcome.reaped else ""
        typer.echo(f"Reserved {thread}: session {outcome.session.id}{reaped}")
    else:
        owner = outcome.session
        typer.echo(f"LiveOwner {thread}: session {owner.id} of live agent {owner.agent_id}")
    if isinstance(outcome, LiveOwner):
        raise typer.Exit(EXIT_LIVE_OWNER)


async def _reserve(
    opts: Options, thread: str, agent_id: str, path: str | None, parent_session: str | None
) -> tuple[Reserved | LiveOwner, bool]:
    async with opts.connect() as coord:
        result: Reserved | LiveOwner = await coord.registry.reserve_thread(
            thread, agent_id=agent_id, path=path, parent_session=parent_session
        )
        return result, agent_id in await coord.presence.present_ids()


_JSON_SESSION = typer.Option("--json", help="Print the session as JSON.")


def _ended(session: Session, json_out: bool) -> None:
    if json_out:
        print_json(_session_json(session))
    else:
        typer.echo(f"{session.id} {session.status}")


@app.command("complete")
def complete(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="Session to mark complete.")],
    json_out: Annotated[bool, _JSON_SESSION] = False,
) -> None:
    """Mark a session complete and release its thread."""
    check_tokens({"SESSION_ID": session_id})
    _ended(run(_end(options(ctx), session_id, "complete")), json_out)


@app.command("abandon")
def abandon(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="Session to mark abandoned.")],
    json_out: Annotated[bool, _JSON_SESSION] = False,
) -> None:
    """Mark a session abandoned and release its thread."""
    check_tokens({"SESSION_ID": session_id})
    _ended(run(_end(options(ctx), session_id, "abandon")), json_out)


async def _end(opts: Options, session_id: str, how: str) -> Session:
    async with opts.connect() as coord:
        if how == "complete":
            result: Session = await coord.registry.complete(session_id)
            return result
        result = await coord.registry.abandon(session_id)
        return result


@app.command("reap")
def reap(
    ctx: typer.Context,
    thread: Annotated[str, typer.Argument(help="Thread whose dead owners to reap.")],
    json_out: Annotated[bool, typer.Option("--json", help='Print {"thread", "reaped"}.')] = False,
) -> None:
    """Abandon the sessions on THREAD whose agent is gone from presence."""
    check_tokens({"THREAD": thread})
    count = run(_reap(options(ctx), thread))
    if json_out:
        print_json({"thread": thread, "reaped": count})
    else:
        typer.echo(f"reaped {count} dead session(s) on {thread}")


async def _reap(opts: Options, thread: str) -> int:
    async with opts.connect() as coord:
        result: int = await coord.registry.reap_dead(thread)
        return result


@app.command("chain")
def chain(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="Leaf session.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array, root first.")] = False,
) -> None:
    """Show the session's actor chain, root to leaf."""
    check_tokens({"SESSION_ID": session_id})
    sessions = run(_chain(options(ctx), session_id))
    if json_out:
        print_json([_session_json(s) for s in sessions])
        return
    for depth, s in enumerate(sessions):
        typer.echo(f"{'  ' * depth}{s.id} ({s.agent_id}, {s.status})")


async def _chain(opts: Options, session_id: str) -> list[Session]:
    async with opts.connect() as coord:
        result: list[Session] = await coord.registry.actor_chain(session_id)
        return result
