"""``corral submit``: schedule one task, optionally wait for its result."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError

from coord.wire import Spec, TaskInput
from corral.cli._common import Options, console, fail, invalid, options, print_json, run
from corral.cli._errors import EXIT_USAGE, check_range, check_tokens
from dispatch.dispatcher import Dispatcher, result_of

_FLAGS = {
    "task_id": "--id",
    "queue": "--queue",
    "title": "--title",
    "files": "--file",
    "payload": "--payload",
    "max_attempts": "--max-attempts",
    "timeout": "--timeout",
}
"""The flag behind each TaskInput (and Spec) field, for error messages."""


def register(app: typer.Typer) -> None:
    """Add ``submit`` to ``app``."""
    app.command("submit")(submit)


async def _submit(
    opts: Options, item: TaskInput, parent: str | None, wait: bool, timeout: float | None, as_json: bool
) -> int:
    async with opts.connect() as coord, Dispatcher(coord, parent_id=parent, reclaimer=False) as dispatcher:
        task_id = await dispatcher.submit(item)
        if not wait:
            if as_json:
                print_json({"task_id": task_id, "status": "pending"})
            else:
                console.print(f"submitted [bold]{task_id}[/] on queue {item.queue}", highlight=False)
            return 0
        try:
            record = await dispatcher.wait(task_id, timeout)
        except TimeoutError:
            fail(f"task {task_id} did not finish within {timeout}s (it is still queued or running)", 2)
        result = result_of(record)
        if as_json:
            print_json(
                {
                    "task_id": task_id,
                    "status": str(record.status),
                    "attempt": record.attempt,
                    "epoch": record.epoch,
                    "result": result.model_dump(mode="json"),
                }
            )
        else:
            style = "green" if result.ok else "red"
            console.print(f"[{style}]{record.status}[/] {task_id}: {result.summary}", highlight=False)
        return 0 if result.ok else 1


def submit(
    ctx: typer.Context,
    queue: Annotated[str, typer.Option("--queue", "-q", help="Queue to dispatch on.")] = "default",
    task_id: Annotated[str | None, typer.Option("--id", help="Task id (default: random). Idempotent.")] = None,
    title: Annotated[str, typer.Option(help="Short human title.")] = "",
    file: Annotated[list[str], typer.Option("--file", help="Absolute path the task works on (repeatable).")] = [],  # noqa: B006
    payload: Annotated[str | None, typer.Option(help="JSON payload for the handler.")] = None,
    max_attempts: Annotated[int, typer.Option(help="Claims allowed before dead-lettering.")] = 3,
    timeout: Annotated[float | None, typer.Option(help="Lease in seconds.")] = None,
    parent: Annotated[str | None, typer.Option(help="Parent agent id (results are pushed to it).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result; exit 1 if it failed.")] = False,
    wait_timeout: Annotated[float | None, typer.Option(help="Give up waiting after S seconds (exit 2).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Submit one task; with --wait, print its result."""
    check_tokens({"--parent": parent})
    check_range("--wait-timeout", wait_timeout, gt=0)
    try:
        data = json.loads(payload) if payload is not None else None
    except json.JSONDecodeError as err:
        fail(f"not valid JSON: {err}", EXIT_USAGE, "--payload")
    fields = {
        "queue": queue,
        "title": title,
        "files": file,
        "payload": data,
        "max_attempts": max_attempts,
        "timeout": timeout,
    }
    if task_id is not None:
        fields["task_id"] = task_id
    try:
        item = TaskInput.model_validate(fields)
        Spec.model_validate(item.model_dump())  # the Spec's rules (ranges, lengths) too, before connecting
    except ValidationError as err:
        invalid(err, _FLAGS)
    raise typer.Exit(run(_submit(options(ctx), item, parent, wait, wait_timeout, json_out), _FLAGS))
