"""``corral tasks``: list tasks, show one with its journal, cancel or retry one by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from coord.tasks import JournalEntry, TaskRecord, TaskStatus
from corral.cli._common import Options, console, options, print_json, run
from corral.cli._errors import check_tokens, usage

app = typer.Typer(name="tasks", help="Inspect and steer tasks: ls, show, cancel, retry.", no_args_is_help=True)

_STYLE = {
    TaskStatus.PENDING: "yellow",
    TaskStatus.CLAIMED: "cyan",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "red",
    TaskStatus.DEAD: "bold red",
    TaskStatus.CANCELLED: "dim",
}


def register(parent: typer.Typer) -> None:
    """Add the ``tasks`` command group to ``parent``."""
    parent.add_typer(app, name="tasks")


def _record_json(record: TaskRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json")
    data["revision"] = record.revision
    return data


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (datetime.now(UTC) - when).total_seconds()
    suffix = "ago" if seconds >= 0 else "from now"
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s {suffix}"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m {suffix}"
    return f"{seconds / 3600:.1f}h {suffix}"


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


async def _ls(opts: Options, queue: str | None, status: str | None, as_json: bool, limit: int) -> None:
    async with opts.connect() as coord:
        records = await coord.tasks.list(queue=queue, status=status)
    records.sort(key=lambda r: (r.created_at, r.task_id))
    shown = records[-limit:] if limit else records
    if as_json:
        print_json([_record_json(r) for r in shown])
        return
    table = Table(
        title=f"{len(records)} task(s)" + (f", newest {len(shown)} shown" if len(shown) < len(records) else "")
    )
    for column in ("task", "queue", "status", "attempt", "epoch", "worker", "updated", "note"):
        table.add_column(column, no_wrap=column in ("task", "status"))
    for r in shown:
        worker = r.claim.worker_id if r.claim else (r.last_worker or "")
        note = r.error or ("" if r.result is None else _short(r.result, 40))
        if r.visible_at and r.status is TaskStatus.PENDING:
            note = f"retry {_ago(r.visible_at)}; {note}"
        table.add_row(
            r.task_id,
            r.queue,
            f"[{_STYLE[r.status]}]{r.status.value}[/]",
            f"{r.attempt}/{r.max_attempts}",
            str(r.epoch),
            worker,
            _ago(r.updated_at),
            _short(note, 50),
        )
    console.print(table)


@app.command("ls")
def ls(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Only tasks of this queue.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only tasks in this status (pending, claimed, succeeded, ...).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most the newest N (0 = all).", min=0)] = 200,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array of records.")] = False,
) -> None:
    """List tasks, oldest first (one pass over the task bucket)."""
    check_tokens({"--queue": queue})
    if status is not None and status not in {s.value for s in TaskStatus}:
        raise usage(f"must be one of {', '.join(s.value for s in TaskStatus)} (got {status!r})", "--status")
    run(_ls(options(ctx), queue, status, json_out, 0 if json_out else limit))


def _journal_row(entry: JournalEntry) -> tuple[str, ...]:
    detail = entry.error or ""
    if entry.record.progress is not None and entry.transition.value == "heartbeat":
        detail = f"progress {_short(entry.record.progress, 40)}"
    if entry.transition.value == "completed":
        detail = f"result {_short(entry.record.result, 40)}"
    return (
        str(entry.revision),
        entry.at.strftime("%H:%M:%S.%f")[:-3],
        entry.transition.value,
        f"[{_STYLE[entry.status]}]{entry.status.value}[/]",
        str(entry.attempt),
        str(entry.epoch),
        entry.worker_id or "",
        _short(detail, 50),
    )


async def _show(opts: Options, task_id: str, as_json: bool) -> None:
    async with opts.connect() as coord:
        record = await coord.tasks.get(task_id)
        journal = await coord.tasks.journal(task_id)
    if as_json:
        print_json(
            {
                "record": _record_json(record),
                "journal": [e.model_dump(mode="json", exclude={"record"}) for e in journal],
            }
        )
        return
    console.print(
        f"[bold]{record.task_id}[/] on queue [bold]{record.queue}[/]: "
        f"[{_STYLE[record.status]}]{record.status.value}[/] (revision {record.revision})",
        highlight=False,
    )
    lines = [
        ("attempt", f"{record.attempt} of {record.max_attempts}"),
        ("epoch", str(record.epoch)),
        ("lease", f"{record.timeout}s" if record.timeout else "store default"),
        ("created", f"{record.created_at.isoformat()} ({_ago(record.created_at)})"),
        ("updated", f"{record.updated_at.isoformat()} ({_ago(record.updated_at)})"),
    ]
    if record.claim:
        c = record.claim
        lines.append(("claim", f"{c.claim_id} by {c.worker_id}, epoch {c.epoch}, deadline {_ago(c.deadline)}"))
    if record.visible_at:
        lines.append(("visible", f"{record.visible_at.isoformat()} ({_ago(record.visible_at)})"))
    if record.parent:
        lines.append(("parent", record.parent))
    lines.append(("spec", _short(record.spec, 200)))
    if record.progress is not None:
        lines.append(("progress", _short(record.progress, 200)))
    if record.result is not None:
        lines.append(("result", _short(record.result, 200)))
    if record.error:
        lines.append(("error", _short(record.error, 200)))
    for name, value in lines:
        console.print(f"  [dim]{name:>9}[/] {value}", highlight=False)
    table = Table(title="journal")
    for column in ("rev", "at (UTC)", "transition", "status", "attempt", "epoch", "worker", "detail"):
        table.add_column(column)
    for entry in journal:
        table.add_row(*_journal_row(entry))
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the record and its journal as JSON.")] = False,
) -> None:
    """Print a task's record and its journal (every successful transition)."""
    check_tokens({"TASK_ID": task_id})
    run(_show(options(ctx), task_id, json_out))


async def _cancel(opts: Options, task_id: str, as_json: bool) -> None:
    async with opts.connect() as coord:
        record = await coord.tasks.cancel(task_id)
    if as_json:
        print_json(_record_json(record))
    else:
        console.print(f"[dim]cancelled[/] {task_id} (revision {record.revision})", highlight=False)


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the new record as JSON.")] = False,
) -> None:
    """Cancel a pending or claimed task (a running worker's result will be rejected)."""
    check_tokens({"TASK_ID": task_id})
    run(_cancel(options(ctx), task_id, json_out))


async def _retry(opts: Options, task_id: str, as_json: bool) -> None:
    async with opts.connect() as coord:
        record = await coord.tasks.retry(task_id)
    if as_json:
        print_json(_record_json(record))
    else:
        console.print(
            f"[yellow]pending[/] {task_id} again with {record.max_attempts} fresh attempt(s) "
            f"(revision {record.revision})",
            highlight=False,
        )


@app.command("retry")
def retry(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the new record as JSON.")] = False,
) -> None:
    """Put a dead or failed task back in its queue with fresh attempts."""
    check_tokens({"TASK_ID": task_id})
    run(_retry(options(ctx), task_id, json_out))
