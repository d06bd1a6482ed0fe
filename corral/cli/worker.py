"""``corral worker``: run a worker (a Python handler or a command) on one or more queues."""

from __future__ import annotations

import asyncio
import shutil
import signal
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from coord.errors import PresenceLost
from corral.cli._common import Options, fail, options, run
from corral.cli._logging import setup_logging
from workers.handlers import CommandHandler, Handler, load_handler
from workers.runtime import Worker

EXIT_PRESENCE_LOST = 4


class _CommandOrSubcommand(TyperGroup):
    """``corral worker [OPTIONS] -- CMD...`` runs a worker; ``corral worker run-one ...`` is a subcommand."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        rest = super().parse_args(ctx, args)
        protected = list(getattr(ctx, "_protected_args", []))
        if protected and protected[0] not in self.commands:
            ctx._protected_args = []  # type: ignore[attr-defined]
            ctx.args = protected + ctx.args
            return ctx.args
        return rest


worker_app = typer.Typer(cls=_CommandOrSubcommand, invoke_without_command=True, no_args_is_help=False)


def register(app: typer.Typer) -> None:
    """Add ``worker`` and ``worker run-one`` to ``app``."""
    app.add_typer(worker_app, name="worker")


def _handler(handler: str | None, command: list[str]) -> Handler:
    if (handler is None) == (not command):
        fail("give exactly one of --handler module:function or -- COMMAND ARGS...")
    if handler is not None:
        try:
            return load_handler(handler)
        except ValueError as err:
            fail(str(err))
    if shutil.which(command[0]) is None:
        fail(f"command {command[0]!r} not found (is it on PATH? a typo of a subcommand such as run-one?)")
    return CommandHandler(command)


async def _serve(opts: Options, worker_kwargs: dict[str, Any]) -> int:
    async with opts.connect(name=f"corral-worker {worker_kwargs.get('worker_id') or ''}") as coord:
        worker = Worker(coord, **worker_kwargs)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        except PresenceLost as err:
            typer.echo(f"worker {worker.worker_id}: presence lost, failed closed: {err}", err=True)
            return EXIT_PRESENCE_LOST
        finally:
            s = worker.stats
            typer.echo(
                f"worker {worker.worker_id}: claimed={s.claimed} succeeded={s.succeeded} failed={s.failed} "
                f"stale_rejected={s.stale_rejected} released={s.released} dead_lettered={s.dead_lettered}",
                err=True,
            )
    return 0


@worker_app.callback(context_settings={"allow_extra_args": True, "allow_interspersed_args": False})
def worker(
    ctx: typer.Context,
    queue: Annotated[list[str], typer.Option("--queue", "-q", help="Queue to take work from (repeatable).")] = [],  # noqa: B006
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Tasks run at once.")] = 1,
    worker_id: Annotated[str | None, typer.Option("--id", help="Agent id (default: random).")] = None,
    handler: Annotated[str | None, typer.Option(help="Python handler as module:function.")] = None,
    lease: Annotated[float | None, typer.Option(help="Claim lease in seconds (default: the task's timeout).")] = None,
    ttl: Annotated[float, typer.Option(help="Presence TTL in seconds.")] = 3.0,
    interval: Annotated[float, typer.Option(help="Presence heartbeat interval in seconds.")] = 1.0,
    grace: Annotated[float, typer.Option(help="Seconds in-flight work may finish on SIGTERM.")] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each claim and result.")] = False,
) -> None:
    """Run a worker: `corral worker -q Q --handler mod:func` or `corral worker -q Q -- CMD ARGS...`.

    A command handler gets the spec as JSON on stdin (and CORRAL_* env vars) and prints a Result
    JSON on stdout. SIGTERM/SIGINT: stop fetching, finish in-flight work within --grace, release
    the rest, leave presence. Exit code 4 if the worker lost its presence and failed closed.
    """
    if ctx.invoked_subcommand:
        return
    if not queue:
        fail("--queue is required (repeat it to serve several queues)")
    setup_logging(verbose)
    kwargs = dict(
        queues=queue,
        handler=_handler(handler, list(ctx.args)),
        concurrency=concurrency,
        worker_id=worker_id,
        lease=lease,
        presence_ttl=ttl,
        presence_interval=interval,
        grace=grace,
    )
    raise typer.Exit(run(_serve(options(ctx), kwargs)))


async def _run_one(opts: Options, task_id: str, worker_agent_id: str, handler: Handler, ttl: float) -> int:
    async with opts.connect(name=f"corral-run-one {worker_agent_id}") as coord:
        worker = Worker(coord, [], handler, worker_id=worker_agent_id, presence_ttl=ttl)
        try:
            record = await worker.run_one(task_id)
        except PresenceLost as err:
            typer.echo(f"worker {worker_agent_id}: presence lost, failed closed: {err}", err=True)
            return EXIT_PRESENCE_LOST
        typer.echo(f"task {task_id}: {record.status}", err=True)
        return 0 if record.status == "succeeded" else 1


@worker_app.command("run-one", context_settings={"allow_extra_args": True, "allow_interspersed_args": False})
def run_one(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Option(help="The task to claim and run.")],
    worker_agent_id: Annotated[str, typer.Option(help="Agent id to run as (present while running).")],
    handler: Annotated[str | None, typer.Option(help="Python handler as module:function.")] = None,
    ttl: Annotated[float, typer.Option(help="Presence TTL in seconds.")] = 3.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Claim one task, run it, report, exit (the parent-spawns-worker flow).

    Exit 0 if the task succeeded, 1 otherwise. Everything comes from flags; see
    dispatch.build_worker_command.
    """
    setup_logging(verbose)
    chosen = _handler(handler, list(ctx.args))
    raise typer.Exit(run(_run_one(options(ctx), task_id, worker_agent_id, chosen, ttl)))
