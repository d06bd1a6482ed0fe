"""``corral submit``: schedule one task, optionally wait for its result."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from coord.connection import Coord
from coord.errors import CorralError
from coord.priority import LEVELS
from coord.tasks import TaskRecord
from coord.wire import Spec, TaskInput
from corral.cli._bounds import ATTEMPTS, DELAY, TIMEOUT, bounded
from corral.cli._common import Options, console, err_console, fail, invalid, options, print_json, run
from corral.cli._errors import EXIT_USAGE, check_tokens, parse_json
from dispatch.dispatcher import Dispatcher, result_of

_FLAGS = {
    "task_id": "--id",
    "queue": "--queue",
    "title": "--title",
    "files": "--file",
    "payload": "--payload",
    "max_attempts": "--max-attempts",
    "timeout": "--timeout",
    "priority": "--priority",
    "not_before": "--at",
    "delay": "--delay",
}
"""The flag behind each TaskInput (and Spec) field, for error messages."""

DEFAULT_WAIT_TIMEOUT = 600.0
"""Seconds ``submit --wait`` waits by default before giving up (exit 2)."""
PROGRESS_EVERY = 0.5
"""Seconds between reads of the task's record while ``--wait`` shows progress on a terminal."""


def default_parent() -> str:
    """The parent id of a CLI submit without ``--parent``: ``cli-{user}-{host}``, the same on every run.

    A task's definition includes its parent, so a stable default is what makes resubmitting the same
    ``--id`` with the same flags idempotent (a random parent per call would redefine the task).
    Characters outside ``A-Z a-z 0-9 _ -`` become ``-``; at most 128 characters.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"cli-{user}-{socket.gethostname()}")[:128]


def register(app: typer.Typer) -> None:
    """Add ``submit`` to ``app``."""
    app.command("submit")(submit)


async def _submit(
    opts: Options, item: TaskInput, parent: str | None, wait: bool, timeout: float, as_json: bool, output: Path | None
) -> int:
    parent_id = parent or default_parent()
    async with opts.connect() as coord, Dispatcher(coord, parent_id=parent_id, reclaimer=False) as dispatcher:
        task_id = await dispatcher.submit(item)
        if not wait:
            if as_json:
                print_json({"task_id": task_id, "status": "pending", "priority": str(item.priority), **_start(item)})
            else:
                when = "".join(f" ({k.replace('_', ' ')} {v})" for k, v in _start(item).items() if v is not None)
                console.print(f"submitted [bold]{task_id}[/] on queue {item.queue}{when}", highlight=False)
            return 0
        progress = asyncio.create_task(_progress(coord, task_id)) if err_console.is_terminal else None
        try:
            record = await dispatcher.wait(task_id, timeout)
        except TimeoutError:
            fail(f"task {task_id} did not finish within {timeout}s (it is still queued or running)", 2)
        finally:
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
        result = result_of(record)
        if output is not None:  # written as it is stored, without a second copy in memory for printing
            await asyncio.to_thread(output.write_text, result.model_dump_json())
        if as_json:
            print_json(
                {
                    "task_id": task_id,
                    "status": str(record.status),
                    "attempt": record.attempt,
                    "epoch": record.epoch,
                    "result": str(output) if output is not None else result.model_dump(mode="json"),
                }
            )
        else:
            style = "green" if result.ok else "red"
            console.print(f"[{style}]{record.status}[/] {task_id}: {result.summary}", highlight=False)
        return 0 if result.ok else 1


def _start(item: TaskInput) -> dict[str, str | float | None]:
    return {"not_before": item.not_before.isoformat() if item.not_before else None, "delay": item.delay}


def parse_at(value: str) -> datetime:
    """``--at``: an ISO 8601 time with a timezone (``2030-01-01T12:00:00+02:00`` or ``...Z``).

    A time without a timezone is refused rather than read as local time: workers and the submitting
    host may be in different zones, and the task record stores an absolute time.
    """
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{value!r} is not an ISO 8601 time (e.g. 2030-01-01T12:00:00Z)", EXIT_USAGE, "--at")
    if when.tzinfo is None or when.utcoffset() is None:
        fail(f"{value!r} has no timezone; add one (Z, +02:00, ...)", EXIT_USAGE, "--at")
    return when


def _describe(task_id: str, record: TaskRecord | None, elapsed: float) -> str:
    if record is None:
        return f"waiting for {task_id} ({elapsed:.0f}s)"
    where = f" by {record.claim.worker_id}" if record.claim else ""
    return (
        f"waiting for {task_id}: {record.status.value}{where}, attempt {record.attempt}/{record.max_attempts} "
        f"({elapsed:.0f}s)"
    )


async def _progress(coord: Coord, task_id: str) -> None:
    """Show the task's status on a terminal's stderr until cancelled (read every PROGRESS_EVERY seconds)."""
    started = time.monotonic()
    with err_console.status(_describe(task_id, None, 0)) as status:
        while True:
            try:
                record: TaskRecord | None = await coord.tasks.get(task_id)
            except CorralError:
                record = None
            status.update(_describe(task_id, record, time.monotonic() - started))
            await asyncio.sleep(PROGRESS_EVERY)


def submit(
    ctx: typer.Context,
    queue: Annotated[str, typer.Option("--queue", "-q", help="Queue to dispatch on.")] = "default",
    task_id: Annotated[str | None, typer.Option("--id", help="Task id (default: random). Idempotent.")] = None,
    title: Annotated[str, typer.Option(help="Short human title.")] = "",
    file: Annotated[list[str], typer.Option("--file", help="Absolute path the task works on (repeatable).")] = [],  # noqa: B006
    payload: Annotated[
        str | None, typer.Option(help="JSON payload for the handler, or @FILE to read it from FILE (any size).")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option(help="Claims allowed before dead-lettering.", callback=bounded(ATTEMPTS))
    ] = 3,
    timeout: Annotated[float | None, typer.Option(help="Lease in seconds.", callback=bounded(TIMEOUT))] = None,
    priority: Annotated[
        str, typer.Option(help="Level within the queue: high (overtakes a backlog), normal or low.")
    ] = "normal",
    delay: Annotated[
        float | None,
        typer.Option(help="Start no earlier than SECONDS after submitting (not with --at).", callback=bounded(DELAY)),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Start no earlier than TIME: ISO 8601 with timezone (not with --delay)."),
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            help="Parent agent id (results are pushed to it; default: cli-USER-HOST, stable, so resubmitting "
            "the same --id with the same flags is idempotent)."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result; exit 1 if it failed.")] = False,
    wait_timeout: Annotated[
        float,
        typer.Option(help="Give up waiting after S seconds (exit 2); the task goes on.", callback=bounded(TIMEOUT)),
    ] = DEFAULT_WAIT_TIMEOUT,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="With --wait: write the task's result (its Result JSON) to FILE instead of printing it with --json.",
        ),
    ] = None,
) -> None:
    """Submit one task; with --wait, print its result."""
    check_tokens({"--parent": parent})
    if delay is not None and at is not None:
        fail("give --delay or --at, not both", EXIT_USAGE, "--delay")
    if priority not in LEVELS:
        fail(f"{priority!r} is not a priority (one of: {', '.join(LEVELS)})", EXIT_USAGE, "--priority")
    data = parse_json("--payload", _payload_text(payload))
    fields = {
        "queue": queue,
        "title": title,
        "files": file,
        "payload": data,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "priority": priority,
        "not_before": parse_at(at) if at is not None else None,
        "delay": delay,
    }
    if task_id is not None:
        fields["task_id"] = task_id
    try:
        item = TaskInput.model_validate(fields)
        Spec.model_validate(item.model_dump())  # the Spec's rules (ranges, lengths) too, before connecting
    except ValidationError as err:
        invalid(err, _FLAGS)
    if output is not None and not wait:
        fail("--output needs --wait", EXIT_USAGE, "--output")
    raise typer.Exit(run(_submit(options(ctx), item, parent, wait, wait_timeout, json_out, output), _FLAGS))


def _payload_text(payload: str | None) -> str | None:
    """``--payload``: the JSON given, or (``@FILE``) the contents of FILE."""
    if payload is None or not payload.startswith("@"):
        return payload
    try:
        return Path(payload[1:]).read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else err
        fail(f"cannot read {payload[1:]!r}: {why}", EXIT_USAGE, "--payload")
