"""``corral demo``: a live fleet on an embedded server, with a worker killed and one paused mid-task.

It starts NATS (unless ``--server`` is given), spawns worker processes, submits tasks, SIGKILLs one
worker while it holds claims and SIGSTOPs another until its claims are reclaimed and re-run, then
resumes it so its late results are rejected by the claim fencing. The screen shows progress, the
workers and the events as they happen; the summary gives the counts and detection latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coord.connection import Coord, connect
from coord.errors import InvalidInput
from coord.ids import new_id
from coord.presence import Joined, Left
from coord.presence.timing import check_timing
from coord.server import DURABLE_SYNC, NatsServer
from coord.settings import Settings
from coord.validation import Bound
from coord.wire import Result, Spec
from corral.cli._bounds import PORT, PRESENCE_TTL, bounded
from corral.cli._common import console, options, print_json, run, setting_help
from corral.cli._errors import EXIT_USAGE, CliError
from corral.cli.ui import alongside
from corral.ui import DEFAULT_PORT
from dispatch.dispatcher import Dispatcher
from dispatch.reclaimer import ReclaimEvent
from workers.context import Context

QUEUE = "demo"
JOIN_WITHIN = 30.0
"""Seconds a worker process has to join presence."""
FINISH_WITHIN = 120.0
"""Seconds the tasks have to finish."""


async def work(spec: Spec, ctx: Context) -> Result:
    """The demo handler: sleep for ``payload.seconds`` and say who did it."""
    seconds = spec.payload.get("seconds", 0.5) if isinstance(spec.payload, dict) else 0.5
    if not isinstance(seconds, int | float | str):
        raise InvalidInput(f"payload.seconds must be a number, got {seconds!r}")
    await asyncio.sleep(float(seconds))
    return Result.success(
        summary=f"{spec.title} done by {ctx.worker_id} (epoch {ctx.epoch})",
        output={"worker": ctx.worker_id, "epoch": ctx.epoch},
    )


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo)


@dataclass
class _WorkerProc:
    id: str
    proc: asyncio.subprocess.Process
    state: str = "starting"
    inflight: int = 0
    stderr: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None


@dataclass
class _Tally:
    succeeded: int = 0
    failed: int = 0
    reclaimed: int = 0
    stale_rejected: int = 0
    taken_away: int = 0
    detection: list[float] = field(default_factory=list)
    reruns: set[str] = field(default_factory=set)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=14))


class _Demo:
    def __init__(
        self, coord: Coord, url: str, workers: int, tasks: int, concurrency: int, ttl: float, quiet: bool
    ) -> None:
        self.coord, self.url = coord, url
        self.n_workers, self.n_tasks, self.concurrency, self.ttl = workers, tasks, concurrency, ttl
        self.quiet = quiet
        self.workers: dict[str, _WorkerProc] = {}
        self.tally = _Tally()
        self.started = time.monotonic()
        self.kill_time: dict[str, float] = {}
        self.finished = asyncio.Event()
        """Set once every task has finished (the chaos stops waiting for claims to strike)."""
        self.progress = Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.bar = self.progress.add_task("tasks", total=tasks)

    def note(self, text: str) -> None:
        self.tally.log.append(f"[dim]{time.monotonic() - self.started:6.2f}s[/] {text}")

    def render(self) -> Group:
        table = Table(title="workers", expand=False)
        for col in ("worker", "state", "in flight"):
            table.add_column(col)
        for w in self.workers.values():
            colour = {"running": "green", "killed": "red", "paused": "yellow", "failed closed": "magenta"}.get(
                w.state, "white"
            )
            table.add_row(w.id, f"[{colour}]{w.state}[/]", str(w.inflight))
        events = Table.grid()
        for line in self.tally.log:
            events.add_row(line)
        return Group(self.progress, table, events)

    async def spawn_workers(self) -> None:
        for i in range(self.n_workers):
            wid = f"demo-w{i + 1}"
            argv = [
                sys.executable,
                "-m",
                "corral",
                "--server",
                self.url,
                "--namespace",
                self.coord.namespace,
                "worker",
                "-q",
                QUEUE,
                "--handler",
                "corral.cli.demo:work",
                "-c",
                str(self.concurrency),
                "--id",
                wid,
                "--ttl",
                str(self.ttl),
                "--interval",
                str(_interval(self.ttl)),
                "--grace",
                "5",
            ]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            worker = _WorkerProc(wid, proc)
            worker.reader = asyncio.create_task(self._read_stderr(worker))
            self.workers[wid] = worker
        for wid, worker in self.workers.items():
            joined = asyncio.ensure_future(self.coord.presence.wait_present(wid, JOIN_WITHIN))
            exited = asyncio.ensure_future(worker.proc.wait())
            await asyncio.wait({joined, exited}, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            if not joined.done() or joined.result() is None:
                joined.cancel()
                if worker.reader is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(worker.reader, 2)
                why = (
                    f"exited with code {worker.proc.returncode}"
                    if worker.proc.returncode is not None
                    else (f"did not join within {JOIN_WITHIN:g}s")
                )
                said = "; ".join(line for line in worker.stderr[-3:] if line.strip())
                raise CliError(f"demo worker {wid} {why}" + (f": {said}" if said else ""))
            worker.state = "running"
            self.note(f"[green]joined[/] {wid}")

    async def _read_stderr(self, worker: _WorkerProc) -> None:
        assert worker.proc.stderr is not None
        async for raw in worker.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            worker.stderr.append(line)
            match = re.search(r"stale_rejected=(\d+)", line)
            if match:
                self.tally.stale_rejected += int(match.group(1))
            match = re.search(r"taken_away=(\d+)", line)
            if match:
                self.tally.taken_away += int(match.group(1))
            if "elsewhere; stopping its handler" in line:
                self.note(f"[magenta]handler stopped[/] on {worker.id} (its claim was reclaimed while it was paused)")
            if "late result" in line and "rejected" in line:
                self.note(f"[magenta]late result rejected[/] from {worker.id} (claim was reclaimed)")
            if "presence lost" in line and worker.state != "failed closed":
                worker.state = "failed closed"
                self.note(f"[magenta]{worker.id} found its presence gone: failed closed[/]")

    async def watch_presence(self) -> None:
        async with self.coord.presence.watch() as changes:
            async for change in changes:
                if isinstance(change, Left) and change.agent_id in self.workers:
                    after = ""
                    if change.agent_id in self.kill_time:
                        after = f" {time.monotonic() - self.kill_time[change.agent_id]:.2f}s after the signal"
                    self.note(f"[red]left[/] {change.agent_id} ({change.reason}){after}")
                elif isinstance(change, Joined) and change.agent.id in self.workers:
                    self.workers[change.agent.id].inflight = change.agent.inflight

    async def watch_reclaims(self, dispatcher: Dispatcher) -> None:
        assert dispatcher.reclaimer is not None
        while True:
            event: ReclaimEvent = await dispatcher.reclaimer.events.get()
            self.tally.reclaimed += 1
            self.tally.reruns.add(event.task_id)
            if event.worker_id in self.kill_time:
                self.tally.detection.append(time.monotonic() - self.kill_time[event.worker_id])
            self.note(f"[yellow]reclaimed[/] {event.task_id} from {event.worker_id} -> {event.status}")

    def refresh_inflight(self, dispatcher: Dispatcher) -> None:
        assert dispatcher.reclaimer is not None
        for w in self.workers.values():
            w.inflight = len(dispatcher.reclaimer.claims_of(w.id))

    async def wait_for_claims(self, dispatcher: Dispatcher, worker: str, within: float = 20) -> None:
        deadline = time.monotonic() + within
        assert dispatcher.reclaimer is not None
        claims = dispatcher.reclaimer.claims_of
        while not claims(worker) and not self.finished.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def chaos(self, dispatcher: Dispatcher) -> None:
        ids = list(self.workers)
        victim = ids[0]
        await self.wait_for_claims(dispatcher, victim)
        if self.finished.is_set():
            self.note("every task finished before a worker could be killed mid-task")
            return
        held = len(dispatcher.reclaimer.claims_of(victim)) if dispatcher.reclaimer else 0
        self.workers[victim].proc.send_signal(signal.SIGKILL)
        self.kill_time[victim] = time.monotonic()
        self.workers[victim].state = "killed"
        self.note(f"[red]SIGKILL[/] {victim} while it held {held} claim(s)")
        if len(ids) < 3:
            return
        paused = ids[1]
        await self.wait_for_claims(dispatcher, paused)
        if self.finished.is_set():
            return
        held = len(dispatcher.reclaimer.claims_of(paused)) if dispatcher.reclaimer else 0
        self.workers[paused].proc.send_signal(signal.SIGSTOP)
        self.kill_time[paused] = time.monotonic()
        self.workers[paused].state = "paused"
        self.note(f"[yellow]SIGSTOP[/] {paused} while it held {held} claim(s)")
        await asyncio.sleep(self.ttl + 2.0)
        self.workers[paused].proc.send_signal(signal.SIGCONT)
        self.note(f"SIGCONT {paused}: its results are now late")

    async def run(self, live: Live | None) -> dict[str, object]:
        async with Dispatcher(self.coord, parent_id=new_id("demo-parent")) as dispatcher:
            background = [
                asyncio.create_task(self.watch_presence()),
                asyncio.create_task(self.watch_reclaims(dispatcher)),
            ]
            try:
                await self.spawn_workers()
            except BaseException:
                for task in background:
                    task.cancel()
                await self.stop_workers()
                raise
            rng = random.Random(7)
            specs = [
                Spec(
                    task_id=new_id("demo"),
                    queue=QUEUE,
                    title=f"task {i + 1}",
                    payload={"seconds": round(rng.uniform(0.4, 1.6), 2)},
                    timeout=30,
                )
                for i in range(self.n_tasks)
            ]
            ids = await dispatcher.submit_many(specs)
            self.note(f"submitted {len(ids)} tasks to {len(self.workers)} workers")
            chaos = asyncio.create_task(self.chaos(dispatcher))
            try:
                async for record in dispatcher.as_completed(ids, timeout=FINISH_WITHIN):
                    if record.status == "succeeded":
                        self.tally.succeeded += 1
                    else:
                        self.tally.failed += 1
                    self.progress.advance(self.bar)
                    self.refresh_inflight(dispatcher)
                    if live:
                        live.update(self.render())
            except TimeoutError:
                chaos.cancel()
                for task in background:
                    task.cancel()
                await self.stop_workers()
                done = self.tally.succeeded + self.tally.failed
                raise CliError(f"only {done} of {self.n_tasks} demo tasks finished within {FINISH_WITHIN:g}s") from None
            self.finished.set()
            await chaos
            await self.stop_workers()
            for task in background:
                task.cancel()
            reruns_ok = 0
            for task_id in self.tally.reruns:
                record = await self.coord.tasks.get(task_id)
                reruns_ok += record.status == "succeeded"
            det = sorted(self.tally.detection)
            return {
                "tasks": self.n_tasks,
                "succeeded": self.tally.succeeded,
                "failed": self.tally.failed,
                "reclaimed": self.tally.reclaimed,
                "reclaimed_then_succeeded": reruns_ok,
                "late_results_rejected": self.tally.stale_rejected,
                "late_runs_stopped": self.tally.taken_away,
                "detection_latency_s": {"min": round(det[0], 3), "max": round(det[-1], 3)} if det else None,
                "presence_ttl_s": self.ttl,
                "elapsed_s": round(time.monotonic() - self.started, 2),
            }

    async def stop_workers(self) -> None:
        for w in self.workers.values():
            if w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGCONT)
                    w.proc.send_signal(signal.SIGTERM)
        for w in self.workers.values():
            try:
                await asyncio.wait_for(w.proc.wait(), 15)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()
            if w.reader:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.reader, 2)


async def _demo(
    url: str | None,
    namespace: str,
    workers: int,
    tasks: int,
    concurrency: int,
    ttl: float | None,
    as_json: bool,
    ui_port: int | None = None,
) -> int:
    settings = Settings.load()
    if ttl is None:
        ttl = settings.presence_ttl
    server = None
    if url is None:
        server = NatsServer(sync_interval=DURABLE_SYNC)  # acknowledged writes survive a crash
        await asyncio.to_thread(server.start)
        url = server.url
        if not as_json:
            console.print(f"embedded NATS started at [bold]{url}[/]", highlight=False)
    try:
        async with (
            connect(url, namespace=namespace, settings=settings) as coord,
            alongside(coord, ui_port, as_json=as_json),
        ):
            demo = _Demo(coord, url, workers, tasks, concurrency, ttl, as_json)
            if as_json:
                summary = await demo.run(None)
            else:
                with Live(demo.render(), console=console, refresh_per_second=8) as live:
                    refresher = asyncio.create_task(_refresh(live, demo))
                    try:
                        summary = await demo.run(live)
                    finally:
                        refresher.cancel()
                    live.update(demo.render())
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)
    ok = summary["succeeded"] == tasks and summary["failed"] == 0
    return 0 if ok else 1


async def _refresh(live: Live, demo: _Demo) -> None:
    while True:
        await asyncio.sleep(0.125)
        live.update(demo.render())


def _print_summary(summary: dict[str, object]) -> None:
    table = Table(title="corral demo: summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    labels = {
        "tasks": "tasks submitted",
        "succeeded": "succeeded (each recorded once)",
        "failed": "failed",
        "reclaimed": "claims reclaimed from departed workers",
        "reclaimed_then_succeeded": "reclaimed tasks re-run and succeeded",
        "late_results_rejected": "late results rejected (stale claim)",
        "late_runs_stopped": "late runs stopped (claim taken before they finished)",
        "detection_latency_s": "signal -> reclaimed (s)",
        "presence_ttl_s": "presence TTL (s)",
        "elapsed_s": "elapsed (s)",
    }
    for key, label in labels.items():
        value = summary[key]
        if isinstance(value, dict):
            value = f"{value['min']:.2f} .. {value['max']:.2f}"
        table.add_row(label, str(value))
    console.print(table)


def _interval(ttl: float) -> float:
    """The presence heartbeat interval of the demo's workers for a presence TTL of ``ttl``."""
    return max(0.2, ttl / 3)


def demo(
    ctx: typer.Context,
    workers: Annotated[
        int, typer.Option("--workers", "-N", callback=bounded(Bound(1, 32, integer=True)), help="Worker processes.")
    ] = 4,
    tasks: Annotated[
        int, typer.Option("--tasks", "-M", callback=bounded(Bound(1, 100_000, integer=True)), help="Tasks to submit.")
    ] = 40,
    concurrency: Annotated[
        int, typer.Option(callback=bounded(Bound(1, 64, integer=True)), help="Tasks each worker runs at once.")
    ] = 2,
    ttl: Annotated[
        float | None,
        typer.Option(
            callback=bounded(Bound(PRESENCE_TTL.lo, 30, "s")),
            help=setting_help("Presence TTL of the workers (s).", "presence_ttl"),
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="No live screen; print the summary as JSON.")] = False,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the web dashboard (corral ui) while it runs.")] = True,
    ui_port: Annotated[
        int, typer.Option(callback=bounded(PORT), help="Port of the dashboard (a free one if busy; 0: any).")
    ] = DEFAULT_PORT,
) -> None:
    """Run a fleet on an embedded NATS, kill one worker and pause another mid-task, show the recovery.

    With the global --server (or CORRAL_URL) it uses that NATS instead, in a fresh namespace.
    """
    if workers < 2:
        raise CliError(
            f"must be >= 2: the demo SIGKILLs one worker and another must finish its tasks (got {workers})",
            code=EXIT_USAGE,
            field="--workers",
        )
    if ttl is not None:
        try:
            check_timing(_interval(ttl), ttl)
        except InvalidInput as err:
            raise CliError(str(err), code=EXIT_USAGE, field="--ttl") from None
    opts = options(ctx)
    url = opts.server if opts.server_given else None
    namespace = new_id("demo").replace("-", "")[:20]
    port = ui_port if ui else None
    raise typer.Exit(run(_demo(url, namespace, workers, tasks, concurrency, ttl, json_out, port)))
