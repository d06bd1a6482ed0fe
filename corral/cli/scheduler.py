"""``corral scheduler``: submit the ticks of every schedule until interrupted (several may run at once)."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli._common import Options, console, options, print_json, run, until_signalled
from corral.cli._logging import setup_logging
from dispatch.scheduler import Scheduler


def register(app: typer.Typer) -> None:
    """Add ``scheduler`` to ``app``."""
    app.command("scheduler")(scheduler)


async def _serve(opts: Options, as_json: bool) -> int:
    async with opts.connect(name="corral-scheduler") as coord, Scheduler(coord) as sched:
        events = until_signalled(sched.events)
        if as_json:
            print_json({"ready": True, "schedules": sorted(sched.schedules)})
        else:
            console.print(
                f"scheduler running {len(sched.schedules)} schedule(s) of namespace [bold]{coord.namespace}[/] "
                f"on {opts.server}",
                highlight=False,
            )
        async for event in events:
            if as_json:
                print_json(
                    {
                        "schedule": event.schedule,
                        "tick": event.tick.isoformat(),
                        "task_id": event.task_id,
                        "late": round(event.late, 3),
                    }
                )
            else:
                console.print(
                    f"{event.schedule}: tick {event.tick:%Y-%m-%d %H:%M:%S} UTC -> task {event.task_id}"
                    + (f" ({event.late:.1f}s late)" if event.late >= 1 else ""),
                    highlight=False,
                )
    return 0


def scheduler(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line when ready, then one per tick.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Submit one task per tick of every schedule (any number may run: each tick is one task)."""
    setup_logging(verbose)
    raise typer.Exit(run(_serve(options(ctx), json_out)))
