"""``corral conformance -- CMD ...``: check a worker written in any language against the protocol."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from corral.cli._common import console, fail, print_json
from corral.cli._errors import EXIT_USAGE
from corral.conformance import KitConfig, Outcome, run_kit
from corral.conformance.kit import FEATURES
from corral.conformance.scenarios import SCENARIOS


def register(app: typer.Typer) -> None:
    """Add ``conformance`` to ``app``."""
    app.command("conformance", context_settings={"allow_extra_args": True, "allow_interspersed_args": False})(
        conformance
    )


_STYLE = {Outcome.PASS: "green", Outcome.FAIL: "red", Outcome.UNSUPPORTED: "yellow"}


def conformance(
    ctx: typer.Context,
    unsupported: Annotated[
        list[str],
        typer.Option("--unsupported", help=f"A feature the worker does not implement ({', '.join(sorted(FEATURES))})."),
    ] = [],  # noqa: B006
    only: Annotated[list[str], typer.Option("--only", help="Run only this scenario (repeatable).")] = [],  # noqa: B006
    log_dir: Annotated[Path | None, typer.Option("--log-dir", help="Where the worker's output goes.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object: the rows and whether all passed.")] = False,
) -> None:
    """Run a worker command through the protocol's scenarios on a private nats-server.

    `corral conformance -- CMD ARGS...`: the command gets CORRAL_URL, CORRAL_NAMESPACE, CORRAL_QUEUE,
    CORRAL_WORKER_ID, CORRAL_PRESENCE_TTL, CORRAL_PRESENCE_INTERVAL and CORRAL_CONCURRENCY (and
    {url} {namespace} {queue} {worker_id} in its arguments are replaced). Prints a pass/fail table;
    exits 1 when a scenario failed, 2 on bad input.
    """
    command = list(ctx.args)
    if not command:
        fail("give the worker command after --, e.g. corral conformance -- node worker.js", EXIT_USAGE)
    unknown = sorted(set(unsupported) - FEATURES)
    if unknown:
        fail(f"--unsupported {unknown[0]!r}: one of {', '.join(sorted(FEATURES))}", EXIT_USAGE, "--unsupported")
    names = [name for name, _ in SCENARIOS]
    wrong = [name for name in only if name not in names]
    if wrong:
        fail(f"--only {wrong[0]!r}: one of {', '.join(names)}", EXIT_USAGE, "--only")
    config = KitConfig(command, unsupported=frozenset(unsupported), only=tuple(only), log_dir=log_dir)
    rows = asyncio.run(run_kit(config))
    ok = all(row.outcome is not Outcome.FAIL for row in rows)
    if json_out:
        print_json({"ok": ok, "rows": [row.as_json() for row in rows]})
    else:
        table = Table(title=f"conformance of: {' '.join(command)}", title_justify="left")
        for column in ("scenario", "outcome", "seconds", "detail"):
            table.add_column(column)
        for row in rows:
            style = _STYLE[row.outcome]
            table.add_row(row.scenario, f"[{style}]{row.outcome.value}[/]", f"{row.seconds:.1f}", row.detail)
        console.print(table)
    if not ok:
        raise typer.Exit(1)
