"""``corral schedules``: add, list, pause, resume and remove recurring schedules (``corral scheduler`` runs them)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from coord.errors import Conflict
from coord.schedules import Schedule
from corral.cli._bounds import ATTEMPTS, TIMEOUT, bounded
from corral.cli._common import Options, console, fail, invalid, options, print_json, run
from corral.cli._errors import EXIT_USAGE, check_tokens, parse_json

app = typer.Typer(name="schedules", help="Recurring schedules: add, ls, pause, resume, rm.", no_args_is_help=True)

_FLAGS = {
    "name": "NAME",
    "cron": "--cron",
    "timezone": "--timezone",
    "task": "--queue",
    "task.queue": "--queue",
    "task.title": "--title",
    "task.files": "--file",
    "task.payload": "--payload",
    "task.max_attempts": "--max-attempts",
    "task.timeout": "--timeout",
}
"""The flag behind each Schedule field, for error messages."""

_NAME_HELP = "Schedule name (A-Z a-z 0-9 _ -, at most 100 chars; its tasks are NAME-UNIXSECONDS)."


def register(parent: typer.Typer) -> None:
    """Add the ``schedules`` command group to ``parent``."""
    parent.add_typer(app, name="schedules")


def _as_json(schedule: Schedule, now: datetime) -> dict[str, Any]:
    data = schedule.model_dump(mode="json")
    upcoming = schedule.upcoming(now)
    data["next_tick"] = None if upcoming is None else upcoming.isoformat()
    data["revision"] = schedule.revision
    return data


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return ""
    seconds = (at - now).total_seconds()
    rel = f"in {seconds:.0f}s" if seconds >= 0 else f"{-seconds:.0f}s ago"
    return f"{at.strftime('%Y-%m-%d %H:%M:%S')} ({rel})"


def _say(schedule: Schedule, verb: str, as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        print_json(_as_json(schedule, now))
        return
    upcoming = schedule.upcoming(now)
    then = f"; next tick {_when(upcoming, now)} UTC" if upcoming else ""
    console.print(f"{verb} schedule [bold]{schedule.name}[/] ({escape(schedule.cron)}){then}", highlight=False)


async def _add(opts: Options, schedule: Schedule, replace: bool, as_json: bool) -> None:
    async with opts.connect() as coord:
        try:
            stored = await coord.schedules.add(schedule, replace=replace)
        except Conflict:
            fail(f"schedule {schedule.name!r} already exists (--replace replaces it)", EXIT_USAGE, "NAME")
    _say(stored, "replaced" if replace else "added", as_json)


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=_NAME_HELP)],
    cron: Annotated[
        str,
        typer.Option(
            "--cron", help='Cron expression: 5 fields ("*/5 * * * *"), or 6 with seconds first ("*/2 * * * * *").'
        ),
    ],
    timezone: Annotated[str, typer.Option("--timezone", "--tz", help="IANA time zone of the expression.")] = "UTC",
    queue: Annotated[str, typer.Option("--queue", "-q", help="Queue each tick's task is dispatched on.")] = "default",
    title: Annotated[str, typer.Option(help="Short human title of each task.")] = "",
    file: Annotated[list[str], typer.Option("--file", help="Absolute path the tasks work on (repeatable).")] = [],  # noqa: B006
    payload: Annotated[str | None, typer.Option(help="JSON payload for the handler (the same every tick).")] = None,
    max_attempts: Annotated[
        int, typer.Option(help="Claims allowed per task before dead-lettering.", callback=bounded(ATTEMPTS))
    ] = 3,
    timeout: Annotated[float | None, typer.Option(help="Lease in seconds.", callback=bounded(TIMEOUT))] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Add it paused (resume starts it).")] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an existing schedule of that name (its last tick is kept).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the stored schedule as JSON.")] = False,
) -> None:
    """Add a recurring schedule: every tick submits one task (run `corral scheduler` to fire them)."""
    data = parse_json("--payload", payload)
    fields = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "paused": paused,
        "task": {
            "queue": queue,
            "title": title,
            "files": file,
            "payload": data,
            "max_attempts": max_attempts,
            "timeout": timeout,
        },
    }
    try:
        schedule = Schedule.model_validate(fields)
    except ValidationError as err:
        invalid(err, _FLAGS)
    run(_add(options(ctx), schedule, replace, json_out), _FLAGS)


async def _ls(opts: Options, as_json: bool) -> None:
    async with opts.connect() as coord:
        schedules = await coord.schedules.list()
    now = datetime.now(UTC)
    if as_json:
        print_json([_as_json(s, now) for s in schedules])
        return
    table = Table(title=f"{len(schedules)} schedule(s)")
    for column in ("name", "cron", "timezone", "queue", "state", "next tick (UTC)", "last tick (UTC)", "last task"):
        table.add_column(column, no_wrap=True, min_width=len(column))
    for s in schedules:
        table.add_row(
            s.name,
            escape(s.cron),
            s.timezone,
            s.task.queue,
            "[yellow]paused[/]" if s.paused else "[green]active[/]",
            _when(s.upcoming(now), now),
            _when(s.last_tick, now),
            s.last_task or "",
        )
    out = console
    if not console.is_terminal:  # a pipe or a log gets every column whole
        need = Measurement.get(console, console.options.update_width(100_000), table).maximum
        out = Console(file=sys.stdout, width=max(console.width, need), highlight=False)
    out.print(table)


@app.command("ls")
def ls(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array of schedules.")] = False,
) -> None:
    """List schedules with their next tick and the last tick submitted."""
    run(_ls(options(ctx), json_out))


async def _rm(opts: Options, name: str, as_json: bool) -> None:
    async with opts.connect() as coord:
        await coord.schedules.remove(name)
    if as_json:
        print_json({"name": name, "removed": True})
    else:
        console.print(f"removed schedule [bold]{name}[/]", highlight=False)


@app.command("rm")
def rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove a schedule (its tasks already submitted stay)."""
    check_tokens({"NAME": name})
    run(_rm(options(ctx), name, json_out))


async def _pause(opts: Options, name: str, pause: bool, as_json: bool) -> None:
    async with opts.connect() as coord:
        schedule = await (coord.schedules.pause(name) if pause else coord.schedules.resume(name))
    _say(schedule, "paused" if pause else "resumed", as_json)


@app.command("pause")
def pause(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the stored schedule as JSON.")] = False,
) -> None:
    """Stop submitting a schedule's ticks (ticks missed while paused are not made up)."""
    check_tokens({"NAME": name})
    run(_pause(options(ctx), name, True, json_out))


@app.command("resume")
def resume(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the stored schedule as JSON.")] = False,
) -> None:
    """Submit a paused schedule's ticks again, from the next one on."""
    check_tokens({"NAME": name})
    run(_pause(options(ctx), name, False, json_out))
