"""``corral reclaimer``: run a standalone reclaimer until interrupted."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli._bounds import SWEEP, bounded
from corral.cli._common import Options, console, options, print_json, run, setting_help, until_signalled
from corral.cli._errors import check_setting
from corral.cli._logging import setup_logging
from dispatch.reclaimer import Reclaimer


def register(app: typer.Typer) -> None:
    """Add ``reclaimer`` to ``app``."""
    app.command("reclaimer")(reclaimer)


async def _serve(opts: Options, sweep: float | None, as_json: bool) -> int:
    async with opts.connect(name="corral-reclaimer") as coord, Reclaimer(coord, sweep_interval=sweep) as rec:
        events = until_signalled(rec.events)
        if not as_json:
            console.print(f"reclaimer watching namespace [bold]{coord.namespace}[/] on {opts.server}", highlight=False)
        async for event in events:
            if as_json:
                print_json(event.__dict__)
            else:
                after = f" {event.detected_after:.2f}s after departure" if event.detected_after is not None else ""
                console.print(
                    f"reclaimed {event.task_id} from {event.worker_id} ({event.reason}) -> {event.status}{after}",
                    highlight=False,
                )
    return 0


def reclaimer(
    ctx: typer.Context,
    sweep: Annotated[
        float | None,
        typer.Option(
            help=setting_help("Seconds between sweeps (deadlines, lost notifications).", "sweep_interval"),
            callback=bounded(SWEEP),
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per reclaim.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each reclaim and re-notification at INFO.")
    ] = False,
) -> None:
    """Give departed workers' claims back to the queue (several may run at once)."""
    check_setting("--sweep", "sweep_interval", sweep)
    setup_logging(verbose)
    raise typer.Exit(run(_serve(options(ctx), sweep, json_out)))
