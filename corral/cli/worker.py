"""``corral worker``: run a worker (a Python handler or a command) on one or more queues."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from coord.connection import Coord
from coord.errors import InvalidInput, PresenceLost
from coord.heap import freeze_startup
from coord.presence import HolderWait
from corral.cli._bounds import CONCURRENCY, PRESENCE_INTERVAL, PRESENCE_TTL, TIMEOUT, WAIT, bounded
from corral.cli._common import Options, check_presence_flags, fail, options, print_json, run, setting_help
from corral.cli._errors import EXIT_USAGE, CliError, check_setting, check_tokens
from corral.cli._logging import setup_logging
from workers.handlers import CommandHandler, Handler, load_handler
from workers.runtime import Worker

if TYPE_CHECKING:
    # The context class TyperGroup's methods take: typer vendors click as typer._click and exports
    # only the subclass typer.Context, so the override below can only name the base from there.
    from typer._click import Context as ClickContext

EXIT_PRESENCE_LOST = 4


class _CommandOrSubcommand(TyperGroup):
    """``corral worker [OPTIONS] -- CMD...`` runs a worker; ``corral worker run-one ...`` is a subcommand."""

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        protected = list(ctx._protected_args)
        if protected and protected[0] not in self.commands:
            ctx._protected_args = []
            ctx.args = protected + ctx.args
            return ctx.args
        return rest


worker_app = typer.Typer(cls=_CommandOrSubcommand, invoke_without_command=True, no_args_is_help=False)


def register(app: typer.Typer) -> None:
    """Add ``worker`` and ``worker run-one`` to ``app``."""
    app.add_typer(worker_app, name="worker")


def _handler(handler: str | None, command: list[str]) -> Handler:
    if (handler is None) == (not command):
        fail("give exactly one of --handler module:function or -- COMMAND ARGS...", EXIT_USAGE)
    if handler is not None:
        # As `python -m` would: a handler module in the current directory is found without PYTHONPATH.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            return load_handler(handler)
        except InvalidInput as err:
            fail(str(err), EXIT_USAGE, "--handler")
    if shutil.which(command[0]) is None:
        fail(f"command {command[0]!r} not found (is it on PATH? a typo of a subcommand such as run-one?)", EXIT_USAGE)
    return CommandHandler(command)


_STATS = (
    "claimed",
    "succeeded",
    "failed",
    "stale_rejected",
    "released",
    "dead_lettered",
    "taken_away",
    "presence_losses",
    "unrecorded",
)
"""The counters a worker reports when it stops."""


_COUNTDOWNS: set[asyncio.Task[None]] = set()


def _show_wait(wait: HolderWait) -> None:
    """On a terminal, show how long the join still waits for the previous holder's key to expire.

    The reason is logged once by coord (a warning line on stderr, terminal or not).
    """
    if sys.stderr.isatty():
        task = asyncio.get_running_loop().create_task(_countdown(wait))
        _COUNTDOWNS.add(task)
        task.add_done_callback(_COUNTDOWNS.discard)


async def _countdown(wait: HolderWait) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    columns = (TextColumn(f"waiting for the previous holder of {wait.agent_id}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("wait", total=max(wait.seconds, 0.1))
        while not wait.ended.is_set():
            progress.update(bar, completed=min(loop.time() - start, wait.seconds))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await wait.ended.wait()


async def _serve(opts: Options, worker_id: str | None, make_worker: Callable[[Coord], Worker], as_json: bool) -> int:
    async with opts.connect(name=f"corral-worker {worker_id or ''}") as coord:
        coord.presence.on_wait = _show_wait
        worker = make_worker(coord)
        freeze_startup()  # connected, handler imported: what exists now lives as long as the process
        typer.echo(
            f"worker {worker.worker_id} serving {', '.join(worker.queues)} (concurrency {worker.concurrency}) "
            f"on {opts.server}, namespace {coord.namespace}",
            err=True,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        lost: PresenceLost | None = None
        try:
            await worker.run()
        except PresenceLost as err:
            lost = err
        finally:
            stats = {name: getattr(worker.stats, name) for name in _STATS}
            if as_json:
                print_json({"event": "stopped", "worker_id": worker.worker_id, **stats})
            else:
                counts = " ".join(f"{name}={value}" for name, value in stats.items())
                typer.echo(f"worker {worker.worker_id}: {counts}", err=True)
        if lost is not None:
            raise CliError(f"worker {worker.worker_id}: presence lost, failed closed: {lost}", code=EXIT_PRESENCE_LOST)
    return 0


@worker_app.callback(context_settings={"allow_extra_args": True, "allow_interspersed_args": False})
def worker(
    ctx: typer.Context,
    queue: Annotated[list[str], typer.Option("--queue", "-q", help="Queue to take work from (repeatable).")] = [],  # noqa: B006
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", callback=bounded(CONCURRENCY), help="Tasks run at once.")
    ] = 1,
    worker_id: Annotated[str | None, typer.Option("--id", help="Agent id (default: random).")] = None,
    handler: Annotated[str | None, typer.Option(help="Python handler as module:function.")] = None,
    lease: Annotated[
        float | None,
        typer.Option(help="Claim lease in seconds (default: the task's timeout).", callback=bounded(TIMEOUT)),
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(help=setting_help("Presence TTL in seconds.", "presence_ttl"), callback=bounded(PRESENCE_TTL)),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            help=setting_help("Presence heartbeat interval in seconds.", "presence_interval"),
            callback=bounded(PRESENCE_INTERVAL),
        ),
    ] = None,
    grace: Annotated[
        float, typer.Option(callback=bounded(WAIT), help="Seconds in-flight work may finish on SIGTERM.")
    ] = 10.0,
    exit_on_loss: Annotated[
        bool,
        typer.Option(
            "--exit-on-loss",
            help="Exit (code 4) when presence is lost instead of failing closed and joining again.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Log at INFO level (presence joins and leaves, shutdown), not only warnings."
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON line when it stops (its counts); errors as JSON.")
    ] = False,
) -> None:
    """Run a worker: `corral worker -q Q --handler mod:func` or `corral worker -q Q -- CMD ARGS...`.

    A command handler gets the spec as JSON on stdin (and CORRAL_* env vars) and prints a Result
    JSON on stdout. SIGTERM/SIGINT: stop fetching, finish in-flight work within --grace, release
    the rest, leave presence. A server outage is a pause: past the presence TTL the worker fails
    closed (its claims go to others), then joins again and takes work. Restarted with the id of a
    crashed predecessor on this host, it takes the id back at once; a predecessor it cannot prove
    gone (another host, another container) is waited for until its key expires. Exit code 4 if its
    presence was lost for good (another process took its id, or --exit-on-loss), 1 if another live
    process holds the id, or on any other failure.
    """
    if ctx.invoked_subcommand:
        return
    if not queue:
        fail("is required (repeat it to serve several queues)", EXIT_USAGE, "--queue")
    opts = options(ctx)
    check_tokens({"--queue": queue, "--id": worker_id})
    check_setting("--lease", "lease", lease)
    check_presence_flags(opts, interval, ttl)
    setup_logging(verbose)
    make_worker = functools.partial(
        Worker,
        queues=queue,
        handler=_handler(handler, list(ctx.args)),
        concurrency=concurrency,
        worker_id=worker_id,
        lease=lease,
        presence_ttl=ttl,
        presence_interval=interval,
        grace=grace,
        exit_on_loss=exit_on_loss,
    )
    raise typer.Exit(run(_serve(opts, worker_id, make_worker, json_out)))


async def _run_one(
    opts: Options, task_id: str, worker_agent_id: str, handler: Handler, ttl: float | None, as_json: bool
) -> int:
    async with opts.connect(name=f"corral-run-one {worker_agent_id}") as coord:
        worker = Worker(coord, [], handler, worker_id=worker_agent_id, presence_ttl=ttl)
        try:
            record = await worker.run_one(task_id)
        except PresenceLost as err:
            raise CliError(
                f"worker {worker_agent_id}: presence lost, failed closed: {err}", code=EXIT_PRESENCE_LOST
            ) from None
        if as_json:
            print_json({"task_id": task_id, "status": str(record.status)})
        else:
            typer.echo(f"task {task_id}: {record.status}", err=True)
        return 0 if record.status == "succeeded" else 1


@worker_app.command("run-one", context_settings={"allow_extra_args": True, "allow_interspersed_args": False})
def run_one(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Option(help="The task to claim and run.")],
    worker_agent_id: Annotated[str, typer.Option(help="Agent id to run as (present while running).")],
    handler: Annotated[str | None, typer.Option(help="Python handler as module:function.")] = None,
    ttl: Annotated[
        float | None,
        typer.Option(help=setting_help("Presence TTL in seconds.", "presence_ttl"), callback=bounded(PRESENCE_TTL)),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log at INFO level (presence joins and leaves), not only warnings.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help='Print {"task_id", "status"}; errors as JSON.')] = False,
) -> None:
    """Claim one task, run it, report, exit (the parent-spawns-worker flow).

    Exit 0 if the task succeeded, 1 otherwise. Everything comes from flags; see
    dispatch.build_worker_command.
    """
    opts = options(ctx)
    check_tokens({"--task-id": task_id, "--worker-agent-id": worker_agent_id})
    check_presence_flags(opts, None, ttl)
    setup_logging(verbose)
    chosen = _handler(handler, list(ctx.args))
    raise typer.Exit(run(_run_one(opts, task_id, worker_agent_id, chosen, ttl, json_out)))
