"""``corral reclaimer``: run a standalone reclaimer (a preferred candidate for the namespace's one
active reclaimer: a parent holding the lease hands it over) until interrupted, or show who holds the
lease (``--status``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from coord.lease import LEADER, LeaseRecord, Term, is_live, read_term
from coord.presence.timing import enforced_ttl
from corral.cli._bounds import SWEEP, bounded
from corral.cli._common import Options, console, options, print_json, run, setting_help, until_signalled
from corral.cli._errors import check_setting
from corral.cli._logging import setup_logging
from dispatch.reclaimer import Reclaimer


def register(app: typer.Typer) -> None:
    """Add ``reclaimer`` to ``app``."""
    app.command("reclaimer")(reclaimer)


def _holder(term: Term | None) -> dict[str, Any] | None:
    if term is None:
        return None
    r = term.record
    asker = r.wanted_by.holder if r.wanted_by is not None else None
    return {
        "holder": r.holder,
        "host": r.host,
        "pid": r.pid,
        "since": r.since.isoformat(),
        "ready": r.ready,
        "standalone": r.preferred,
        "asked_by": asker,
    }


def _kind(record: LeaseRecord) -> str:
    return "standalone" if record.preferred else "in a parent"


def _describe(term: Term | None) -> str:
    if term is None:
        return "none seen yet (the lease is vacant or being taken)"
    r = term.record
    return f"{r.holder} on {r.host} (pid {r.pid}, {_kind(r)}){'' if r.ready else ', taking over'}"


async def _serve(opts: Options, sweep: float | None, as_json: bool) -> int:
    def on_role(active: bool, holder: Term | None) -> None:
        if as_json:
            print_json({"role": "active" if active else "standby", "id": rec.id, "active": _holder(holder)})
        elif active:
            console.print(f"active: this reclaimer ({rec.id}) holds the lease and reclaims", highlight=False)
        else:
            console.print(f"standby: {rec.id}; active reclaimer: {_describe(holder)}", highlight=False)

    async with opts.connect(name="corral-reclaimer") as coord:
        rec = Reclaimer(coord, sweep_interval=sweep, on_role=on_role, preferred=True)
        if not as_json:
            console.print(
                f"reclaimer {rec.id} campaigning in namespace [bold]{coord.namespace}[/] on {opts.server}",
                highlight=False,
            )
        async with rec:
            async for event in until_signalled(rec.events):
                if as_json:
                    print_json(event.__dict__)
                else:
                    after = f" {event.detected_after:.2f}s after departure" if event.detected_after is not None else ""
                    console.print(
                        f"reclaimed {event.task_id} from {event.worker_id} ({event.reason}) -> {event.status}{after}",
                        highlight=False,
                    )
    return 0


async def _status(opts: Options, as_json: bool) -> int:
    async with opts.connect(name="corral-reclaimer-status") as coord:
        entry = await coord.roster.get(LEADER)
        ttl, interval = coord.settings.presence_ttl, coord.settings.presence_interval
        namespace = coord.namespace
    term, why = read_term(entry)
    age = (datetime.now(UTC) - term.at).total_seconds() if term is not None and term.at is not None else None
    # A value not renewed for the enforced TTL plus an interval is a dead holder's (ages use this host's
    # clock against the server's: for display only, candidates never compare clocks).
    live = term is not None and (age is None or is_live(0.0, max(age, 0.0), ttl=ttl, interval=interval))
    out: dict[str, Any] = {
        "namespace": namespace,
        "state": "held" if live else ("stale" if term is not None else ("nobody's" if why else "vacant")),
        "active": _holder(term),
        "revision": term.revision if term is not None else None,
        "renewed_ago_s": round(age, 3) if age is not None else None,
        "expires_within_s": enforced_ttl(ttl),
        "why": why or None,
    }
    if as_json:
        print_json(out)
        return 0
    if term is not None:
        r = term.record
        since = (datetime.now(UTC) - r.since).total_seconds()
        renewed = f", renewed {age:.1f}s ago" if age is not None else ""
        state = "" if live else " [STALE: not renewed within the TTL; a candidate will take over]"
        console.print(
            f"active reclaimer in {namespace}: {r.holder} on {r.host} (pid {r.pid}, {_kind(r)}), since "
            f"{r.since.isoformat(timespec='seconds')} ({since:.0f}s), {'ready' if r.ready else 'not ready'}"
            f"{renewed}{state}",
            highlight=False,
        )
    elif why:
        console.print(f"no active reclaimer in {namespace}: the lease holds nobody's value ({why})", highlight=False)
    else:
        console.print(f"no active reclaimer in {namespace}: the lease is vacant", highlight=False)
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
    status: Annotated[
        bool, typer.Option("--status", help="Print who holds the reclaimer lease (since when, ready) and exit.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON line per reclaim and role change (with --status: one object).")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each reclaim and re-notification at INFO.")
    ] = False,
) -> None:
    """Give departed workers' claims back to the queue. Several may run: one is elected active, the others
    stand by and take over when it stops or dies."""
    check_setting("--sweep", "sweep_interval", sweep)
    setup_logging(verbose)
    if status:
        raise typer.Exit(run(_status(options(ctx), json_out)))
    raise typer.Exit(run(_serve(options(ctx), sweep, json_out)))
