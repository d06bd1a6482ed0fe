"""``corral queues``: set a queue's fleet-wide limits, and list queues with their limits and usage."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from coord.errors import InvalidInput
from coord.limits import KEEP, MAX_CONCURRENCY, Keep, QueueLimits, Rate, RateState, Slot, parse_rate, recent_rate
from corral.cli._common import Options, console, options, print_json, run
from corral.cli._errors import check_tokens, usage

app = typer.Typer(name="queues", help="Queues: fleet-wide limits (concurrency, rate) and usage.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    """Add the ``queues`` command group to ``parent``."""
    parent.add_typer(app, name="queues")


def _concurrency(text: str | None) -> int | Keep | None:
    """``--concurrency``: a whole number in 1..MAX, or 0/``none`` to remove the limit; KEEP when not given."""
    if text is None:
        return KEEP
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise usage(
            f"must be a whole number, or 0 or none to remove the limit (got {text!r})", "--concurrency"
        ) from None
    if value < 0:
        raise usage(f"must be >= 0 (0 or none removes the limit) (got {value})", "--concurrency")
    if value > MAX_CONCURRENCY:
        raise usage(f"must be <= {MAX_CONCURRENCY} (got {value})", "--concurrency")
    return value or None


def _rate(text: str | None) -> Rate | Keep | None:
    if text is None:
        return KEEP
    try:
        return parse_rate(text)
    except InvalidInput as err:
        raise usage(str(err), "--rate") from None


def _limits_json(queue: str, limits: QueueLimits | None) -> dict[str, Any]:
    rate = limits.rate if limits else None
    return {
        "queue": queue,
        "concurrency": limits.concurrency if limits else None,
        "rate": None if rate is None else str(rate),
        "rate_per_second": None if rate is None else rate.per_second,
        "updated_at": None if limits is None else limits.updated_at.isoformat(),
    }


def _describe(limits: QueueLimits | None) -> str:
    if limits is None:
        return "no limits"
    parts = []
    if limits.concurrency is not None:
        parts.append(f"concurrency {limits.concurrency}")
    if limits.rate is not None:
        parts.append(f"rate {limits.rate}")
    return ", ".join(parts)


async def _limit(
    opts: Options, queue: str, concurrency: int | Keep | None, rate: Rate | Keep | None, as_json: bool
) -> None:
    async with opts.connect() as coord:
        limits = await coord.limits.set(queue, concurrency=concurrency, rate=rate)
    if as_json:
        print_json(_limits_json(queue, limits))
    else:
        console.print(f"queue [bold]{queue}[/]: {_describe(limits)}", highlight=False)


@app.command("limit")
def limit(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="The queue to limit.")],
    concurrency: Annotated[
        str | None,
        typer.Option(
            "--concurrency",
            help=f"Most tasks of the queue running at once, fleet-wide (1..{MAX_CONCURRENCY}; 0 or none removes it).",
        ),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate", help="Most task starts across the fleet: R/s or R/m (e.g. 20/s, 90/m; 0 or none removes it)."
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every limit of the queue.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the limits now in force as JSON.")] = False,
) -> None:
    """Set, change or remove a queue's fleet-wide limits; a limit not named is kept. Running workers follow at once."""
    check_tokens({"QUEUE": queue})
    chosen_concurrency, chosen_rate = _concurrency(concurrency), _rate(rate)
    if clear:
        if concurrency is not None or rate is not None:
            raise usage("excludes --concurrency and --rate", "--clear")
        chosen_concurrency = chosen_rate = None
    elif concurrency is None and rate is None:
        raise usage("give --concurrency, --rate or --clear")
    run(_limit(options(ctx), queue, chosen_concurrency, chosen_rate, json_out))


def _slot_json(slot: Slot) -> dict[str, Any]:
    holder = slot.holder
    return {
        "slot": slot.index,
        "task_id": holder.task_id if holder else None,
        "epoch": holder.epoch if holder else None,
        "worker_id": holder.worker_id if holder else None,
        "since": holder.at.isoformat() if holder else None,
    }


def _row(
    queue: str, limits: QueueLimits | None, held: list[Slot], state: RateState | None, queued: int, now: float
) -> dict[str, Any]:
    rate = limits.rate if limits else None
    row = _limits_json(queue, limits)
    row.pop("updated_at")
    row.update(
        {
            "queued": queued,
            "slots_held": len(held),
            "slots": [_slot_json(s) for s in held],
            "recent_rate": None if rate is None else round(recent_rate(state, now), 3),
        }
    )
    return row


async def _ls(opts: Options, as_json: bool) -> None:
    async with opts.connect() as coord:
        limits = await coord.limits.all()
        slots = await coord.limits.slots()
        rates = await coord.limits.rate_states()
        subjects = await coord.tasks.queued_notifications()
        prefix = coord.names.dispatch_subjects.removesuffix(">")
    queued: dict[str, int] = {}
    for subject in subjects:
        queue = subject.removeprefix(prefix).split(".", 1)[0]
        queued[queue] = queued.get(queue, 0) + 1
    now = time.time()
    queues = sorted(set(limits) | {s.queue for s in slots} | set(queued))
    rows = [
        _row(q, limits.get(q), [s for s in slots if s.queue == q], rates.get(q), queued.get(q, 0), now) for q in queues
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} queue(s)")
    for column in ("queue", "queued", "concurrency", "running", "rate", "recent rate"):
        table.add_column(column, no_wrap=True, justify="left" if column == "queue" else "right")
    for row in rows:
        limited = row["concurrency"] is not None
        table.add_row(
            row["queue"],
            str(row["queued"]),
            str(row["concurrency"]) if limited else "-",
            f"{row['slots_held']}/{row['concurrency']}"
            if limited
            else (str(row["slots_held"]) if row["slots_held"] else "-"),
            row["rate"] or "-",
            "-" if row["recent_rate"] is None else f"{row['recent_rate']:.1f}/s",
        )
    console.print(table)


@app.command("ls")
def ls(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array, one object per queue.")] = False,
) -> None:
    """List queues (with limits, slots held or notifications queued): limits, running, recent start rate."""
    run(_ls(options(ctx), json_out))
