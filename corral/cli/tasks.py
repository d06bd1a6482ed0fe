"""``corral tasks``: list tasks, show one with its journal, cancel or retry one by hand."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from coord.tasks import JournalEntry, TaskRecord, TaskStatus, journal_of
from coord.wire import Result, Spec
from corral.cli._bounds import COUNT, bounded
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


DEFAULT_LIMIT = 200
"""Rows ``tasks ls`` shows without ``--limit`` (the newest ones); ``--json`` prints every record."""


def register(parent: typer.Typer) -> None:
    """Add the ``tasks`` command group to ``parent``."""
    parent.add_typer(app, name="tasks")


def _record_json(record: TaskRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json", exclude={"journal"})
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


def _out(*renderables: RenderableType) -> Console:
    """The console to print ``renderables`` on: off a terminal, one wide enough that nothing is cut or wrapped."""
    if console.is_terminal:
        return console
    wide = console.options.update_width(100_000)
    need = max(Measurement.get(console, wide, r).maximum for r in renderables)
    return Console(file=sys.stdout, width=max(console.width, need), highlight=False)


def _spec(record: TaskRecord) -> Spec | None:
    """The record's spec as a wire :class:`Spec` (None when the task was scheduled with other JSON)."""
    try:
        return Spec.model_validate(record.spec)
    except ValidationError:
        return None


def _payload(record: TaskRecord) -> Any:
    """What the task was given: the Spec's ``payload``, or the whole spec when it is not a Spec."""
    spec = _spec(record)
    return record.spec if spec is None else spec.payload


def _result_text(result: Result) -> str:
    """A result in one line: its kind and summary, else its output."""
    if result.summary:
        return f"{result.kind.value}: {result.summary}"
    return result.kind.value if result.output is None else f"{result.kind.value}: {_short(result.output, 60)}"


def _note(record: TaskRecord) -> str:
    outcome = record.outcome()
    if record.status is TaskStatus.SUCCEEDED and outcome is not None:
        note = outcome.summary or ("" if outcome.output is None else _short(outcome.output, 40))
    else:
        note = record.error or ""
    if record.visible_at and record.status is TaskStatus.PENDING and not _delayed(record):
        note = f"retry {_ago(record.visible_at)}; {note}" if note else f"retry {_ago(record.visible_at)}"
    return note


def _delayed(record: TaskRecord) -> bool:
    """True for a pending task waiting for the start it was submitted with (not for a retry backoff)."""
    return (
        record.status is TaskStatus.PENDING
        and record.attempt == 0
        and record.not_before is not None
        and record.visible_at is not None
        and record.visible_at > datetime.now(UTC)
    )


def _status(record: TaskRecord) -> str:
    """The status column: ``pending (delayed until 12:00:03)`` (local time; with the date when not today),
    plus the priority when it is not normal."""
    text = f"[{_STYLE[record.status]}]{record.status.value}[/]"
    if _delayed(record):
        assert record.visible_at is not None
        local = record.visible_at.astimezone()
        same_day = local.date() == datetime.now(local.tzinfo).date()
        text += f" (delayed until {local.strftime('%H:%M:%S' if same_day else '%Y-%m-%d %H:%M:%S')})"
    if record.priority != "normal":
        text += f", {record.priority.value}"
    return text


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
        table.add_column(column, no_wrap=column != "note", min_width=len(column))
    for r in shown:
        worker = r.claim.worker_id if r.claim else (r.last_worker or "")
        note = _note(r)
        table.add_row(
            r.task_id,
            r.queue,
            _status(r),
            f"{r.attempt}/{r.max_attempts}",
            str(r.epoch),
            worker,
            _ago(r.updated_at),
            escape(_short(note, 50)),
        )
    _out(table).print(table)


@app.command("ls")
def ls(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Only tasks of this queue.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only tasks in this status (pending, claimed, succeeded, ...).")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Show at most the newest N; 0 = all (default: 200 in the table, all with --json).",
            callback=bounded(COUNT),
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array of records.")] = False,
) -> None:
    """List tasks, oldest first (one pass over the task bucket)."""
    check_tokens({"--queue": queue})
    if status is not None and status not in {s.value for s in TaskStatus}:
        raise usage(f"must be one of {', '.join(s.value for s in TaskStatus)} (got {status!r})", "--status")
    chosen = limit if limit is not None else (0 if json_out else DEFAULT_LIMIT)
    run(_ls(options(ctx), queue, status, json_out, chosen))


def _journal_row(entry: JournalEntry, record: TaskRecord) -> tuple[str, ...]:
    detail = entry.error or ""
    if entry.progress is not None:
        detail = f"progress {_short(entry.progress, 40)}"
    outcome = record.outcome()
    if entry.transition.value == "completed" and entry.revision == record.revision and outcome is not None:
        detail = f"result {_result_text(outcome)}"
    return (
        str(entry.revision),
        entry.at.strftime("%H:%M:%S.%f")[:-3],
        entry.transition.value,
        f"[{_STYLE[entry.status]}]{entry.status.value}[/]",
        str(entry.attempt),
        str(entry.epoch),
        entry.worker_id or "",
        escape(_short(detail, 50)),
    )


async def _show(opts: Options, task_id: str, as_json: bool) -> None:
    async with opts.connect() as coord:
        record = await coord.tasks.resolved(await coord.tasks.get(task_id))  # spec and result from blobs too
    journal = journal_of(record)
    outcome = record.outcome()
    if as_json:
        print_json(
            {
                "record": _record_json(record),
                "payload": _payload(record),
                "outcome": None if outcome is None else outcome.model_dump(mode="json"),
                "journal": [e.model_dump(mode="json") for e in journal],
            }
        )
        return
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
    spec = _spec(record)
    if spec is not None and spec.title:
        lines.append(("title", spec.title))
    if spec is not None and spec.files:
        lines.append(("files", " ".join(spec.files)))
    if spec is not None and spec.workspace_dir:
        lines.append(("workspace", spec.workspace_dir))
    if spec is not None and spec.thread:
        lines.append(("thread", spec.thread))
    lines.append(("payload", _short(_payload(record), 200)))
    if record.progress is not None:
        lines.append(("progress", _short(record.progress, 200)))
    if outcome is not None:
        lines.append(("result", _short(_result_text(outcome), 200)))
        if outcome.summary and outcome.output is not None:
            lines.append(("output", _short(outcome.output, 200)))
    if record.error:
        lines.append(("error", _short(record.error, 200)))
    for what, ref in (("spec", record.spec_blob), ("result", record.result_blob)):
        if ref is not None:
            lines.append((f"{what} blob", f"{ref.name} ({ref.size} bytes, {ref.digest})"))
    dropped = f", {record.journal_dropped} earlier entries dropped" if record.journal_dropped else ""
    table = Table(title=f"journal (first and latest transitions{dropped})")
    for column in ("rev", "at (UTC)", "transition", "status", "attempt", "epoch", "worker", "detail"):
        table.add_column(column, no_wrap=column != "detail", min_width=len(column))
    for entry in journal:
        table.add_row(*_journal_row(entry, record))
    head = (
        f"[bold]{record.task_id}[/] on queue [bold]{record.queue}[/]: "
        f"[{_STYLE[record.status]}]{record.status.value}[/] (revision {record.revision})"
    )
    texts = [head, *(f"  [dim]{name:>9}[/] {escape(value)}" for name, value in lines)]
    out = _out(table, *texts)
    for text in texts:
        out.print(text, highlight=False)
    out.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the record and its journal as JSON.")] = False,
) -> None:
    """Print a task's record and its journal (its first and latest transitions; the count of dropped ones)."""
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
