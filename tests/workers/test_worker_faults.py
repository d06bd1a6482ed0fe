"""Faults around a worker's handlers: stops past the grace, a killed worker, cancellation, results the
store refuses, missing workspaces, chatty commands, a blocked event loop and a consumer deleted under it.

Each test is a regression test: it fails on the defect named in its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import pytest

import coord
from coord.presence import AgentInfo
from coord.server import NatsServer
from coord.settings import Settings
from coord.tasks import Backoff, TaskRecord, TaskStatus, Transition
from coord.wire import Result, Spec, format_result
from dispatch import Dispatcher, result_of
from tests.conftest import PYTHON
from tests.helpers_wait import eventually
from workers import CommandHandler, Context, Handler, Worker, as_handler

CommandWorkerFactory = Callable[..., subprocess.Popen[bytes]]


# --- helpers ---------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def working(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker`` until the block ends (then stop it gracefully and wait for it)."""
    running = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.wait_started())
    await asyncio.wait({running, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        if running.done():
            running.result()  # raises what made the worker fail to start
        running.cancel()
        raise AssertionError("the worker did not start within 20s")
    try:
        yield running
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)


def alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)  # psutil is untyped: its values are Any
    except psutil.NoSuchProcess:
        return False


def peak_rss(pid: int) -> int:
    """Peak resident set size of ``pid`` so far, in bytes (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture
async def dispatcher(coord_conn: coord.Coord) -> AsyncIterator[Dispatcher]:
    coord_conn.tasks.backoff = Backoff(base=0.05, factor=2.0, max=0.2)
    async with Dispatcher(coord_conn, reclaimer=False) as d:
        yield d


@pytest.fixture
def command_worker(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CommandWorkerFactory]:
    """Start ``corral worker -q q -- COMMAND...`` processes; all are killed at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def spawn(worker_id: str, command: list[str]) -> subprocess.Popen[bytes]:
        argv = [
            PYTHON,
            "-m",
            "corral",
            "--server",
            nats_server.url,
            "--namespace",
            namespace,
            "worker",
            "-q",
            "q",
            "-c",
            "1",
            "--id",
            worker_id,
            "--ttl",
            "3",
            "--interval",
            "0.5",
            "-v",
            "--",
            *command,
        ]
        log = open(logs / f"{worker_id}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = logs / f"{worker_id}.log"  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined,no-any-return]


# --- 1. a sync handler past the grace ----------------------------------------------------------------
async def test_a_sync_handler_past_the_grace_is_waited_for_before_its_claim_is_released(
    coord_conn: coord.Coord, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    """Old: the thread kept running after the release; its side effect landed 2.5 s later."""
    cancelled_seen: list[bool] = []

    def slow(spec: Spec, ctx: Context) -> Result:
        (tmp_path / "started").touch()
        time.sleep(2.0)
        cancelled_seen.append(ctx.cancelled.is_set())
        (tmp_path / "ended").write_text(repr(time.time()))  # the handler's side effect, and when it landed
        return Result.success()

    worker = Worker(coord_conn, ["q"], as_handler(slow), grace=0.3)
    async with working(worker) as running:
        await dispatcher.submit(Spec(task_id="t1", queue="q"))
        await eventually((tmp_path / "started").exists, 15, "the handler to start")
        worker.stop()
        await asyncio.wait_for(running, 20)
        returned = time.time()
    await eventually((tmp_path / "ended").exists, 10, "the handler to return")
    ended = float((tmp_path / "ended").read_text())

    async def released() -> bool:
        return any(e.transition is Transition.RELEASED for e in await coord_conn.tasks.journal("t1"))

    await eventually(released, 10, "the release to reach the journal")
    release = [e for e in await coord_conn.tasks.journal("t1") if e.transition is Transition.RELEASED]
    assert len(release) == 1
    assert release[0].at.timestamp() > ended, (
        f"the claim was released {ended - release[0].at.timestamp():.2f}s before the handler returned"
    )
    assert returned >= ended, "run() must return only once the handler has returned"
    assert cancelled_seen == [True], "the handler is told it was cancelled"
    record = await coord_conn.tasks.get("t1")
    assert record.status is TaskStatus.PENDING and record.transition is Transition.RELEASED
    assert record.attempt == 0, "a released attempt is not counted"
    assert worker.stats.released == 1 and worker.stats.succeeded == 0


# --- 2. a SIGKILLed worker's command -----------------------------------------------------------------
PID_SCRIPT = """
import json, os, pathlib, sys, time
spec = json.load(sys.stdin)
target = pathlib.Path(spec["payload"]["pidfile"])
tmp = target.with_suffix(".tmp")
tmp.write_text(str(os.getpid()))
tmp.rename(target)
time.sleep(60)
"""


async def test_a_sigkilled_workers_command_dies_with_it(
    coord_conn: coord.Coord, dispatcher: Dispatcher, command_worker: CommandWorkerFactory, tmp_path: Path
) -> None:
    """Old: the command, in its own session, lived on beside the re-run elsewhere."""
    pidfile = tmp_path / "child.pid"
    worker = command_worker("w1", [PYTHON, "-c", PID_SCRIPT])
    child = 0
    try:
        assert await coord_conn.presence.wait_present("w1", 20), log_of(worker)
        await dispatcher.submit(Spec(task_id="t1", queue="q", payload={"pidfile": str(pidfile)}))
        await eventually(pidfile.exists, 20, "the command to write its pid")
        child = int(pidfile.read_text())
        assert psutil.Process(child).ppid() == worker.pid, "the command is the worker's child"
        assert alive(child)
        worker.kill()
        worker.wait()
        waited = await eventually(lambda: not alive(child), 5, f"the command (pid {child}) to die with its worker")
    finally:
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
    assert waited < 5


# --- 3. cancellation reaches the handler -------------------------------------------------------------
async def test_cancelling_a_running_task_cancels_its_async_handler_promptly_and_nothing_is_written_after(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    """Old: the handler ran to its end (the claim was only found gone at a lease extension)."""
    started = asyncio.Event()
    stopped: list[tuple[float, bool]] = []

    async def waits(spec: Spec, ctx: Context) -> Result:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append((time.monotonic(), ctx.cancelled.is_set()))
            raise
        return Result.success(summary="ran to the end")

    worker = Worker(coord_conn, ["q"], waits)
    async with working(worker):
        await dispatcher.submit(Spec(task_id="t1", queue="q", timeout=30))  # lease extended every 10s
        await asyncio.wait_for(started.wait(), 15)
        cancelled_at = time.monotonic()
        cancelled = await coord_conn.tasks.cancel("t1")
        await eventually(lambda: bool(stopped), 2, "the handler to be cancelled")
        await eventually(lambda: worker.inflight == 0, 5, "the run to end")
        await asyncio.sleep(0.3)  # a late write would land now
        after = await coord_conn.tasks.get("t1")
    delay, flag = stopped[0][0] - cancelled_at, stopped[0][1]
    assert delay < 2, f"the handler was cancelled {delay:.2f}s after the task"
    assert flag, "ctx.cancelled is set for the handler"
    assert after.status is TaskStatus.CANCELLED
    assert after.revision == cancelled.revision, "the worker must write nothing after the cancel"
    assert worker.stats.taken_away == 1
    assert worker.stats.stale_rejected == 0 and worker.stats.succeeded == 0 and worker.stats.released == 0


TRAP_SCRIPT = """
import json, pathlib, signal, sys, time
spec = json.load(sys.stdin)
marks = pathlib.Path(spec["payload"]["marks"])
def term(signum, frame):
    (marks / "terminated").write_text(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
(marks / "started").touch()
time.sleep(30)
(marks / "finished").touch()
"""


async def test_cancelling_a_running_task_sends_its_command_sigterm_promptly(
    coord_conn: coord.Coord, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    """Old: the command ran to its end."""
    worker = Worker(coord_conn, ["q"], CommandHandler([PYTHON, "-c", TRAP_SCRIPT], kill_grace=5))
    async with working(worker):
        await dispatcher.submit(Spec(task_id="t1", queue="q", timeout=30, payload={"marks": str(tmp_path)}))
        await eventually((tmp_path / "started").exists, 15, "the command to start")
        cancelled_at = time.time()
        cancelled = await coord_conn.tasks.cancel("t1")
        await eventually((tmp_path / "terminated").exists, 2, "the command to get SIGTERM")
        await eventually(lambda: worker.inflight == 0, 5, "the run to end")
        await asyncio.sleep(0.3)
        after = await coord_conn.tasks.get("t1")
    assert float((tmp_path / "terminated").read_text()) - cancelled_at < 2
    assert not (tmp_path / "finished").exists()
    assert after.status is TaskStatus.CANCELLED and after.revision == cancelled.revision
    assert worker.stats.taken_away == 1 and worker.stats.stale_rejected == 0


# --- 4. results the store refuses ----------------------------------------------------------------------
async def run_to_the_end(
    coord_conn: coord.Coord, dispatcher: Dispatcher, handler: Handler, spec: Spec
) -> tuple[TaskRecord, Worker]:
    worker = Worker(coord_conn, ["q"], handler, lease=2)
    async with working(worker):
        record = await dispatcher.wait(await dispatcher.submit(spec), 15)
    return record, worker


async def test_a_result_too_large_for_a_blob_fails_the_task_with_the_reason(
    nats_server: NatsServer, namespace: str, dispatcher: Dispatcher
) -> None:
    """Old: the claim stayed; the handler re-ran after every lease until its attempts were spent.
    (A result too large for the record goes to a blob now: tests/coord/test_blobs.py.)"""
    size = 2 << 20
    calls: list[int] = []

    async def huge(spec: Spec, ctx: Context) -> Result:
        calls.append(ctx.attempt)
        return Result.success(output="x" * size)

    settings = Settings.load(max_blob_bytes=1 << 20)
    async with coord.connect(nats_server.url, namespace=namespace, settings=settings) as small:
        record, worker = await run_to_the_end(small, dispatcher, huge, Spec(task_id="t1", queue="q"))
    assert record.status is TaskStatus.FAILED, record
    assert record.error is not None and "could not be recorded" in record.error
    assert "bytes" in record.error and "max_blob_bytes" in record.error, record.error  # says what was wrong
    result = result_of(record)
    assert result.error is not None and result.error.substrate_fault
    assert calls == [1], "the handler runs once"
    assert worker.stats.failed == 1 and worker.stats.unrecorded == 0


async def test_a_result_that_is_not_json_fails_the_task_with_the_reason(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    """Old: the write raised on every attempt and the task stayed claimed."""
    calls: list[int] = []

    def not_a_number(spec: Spec, ctx: Context) -> Result:
        calls.append(ctx.attempt)
        return Result.success(output={"ratio": float("nan")})

    record, _ = await run_to_the_end(coord_conn, dispatcher, as_handler(not_a_number), Spec(task_id="t1", queue="q"))
    assert record.status is TaskStatus.FAILED, record
    assert record.error is not None and "could not be recorded" in record.error
    assert "JSON" in record.error, record.error
    assert calls == [1]


# --- 5. a workspace that is not here ----------------------------------------------------------------------
async def test_a_command_whose_workspace_dir_is_missing_fails_naming_the_directory(
    coord_conn: coord.Coord, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    """Old: the command ran silently in the worker's working directory."""
    marker = tmp_path / "ran"
    missing = tmp_path / "no" / "such" / "workspace"
    script = f"import pathlib, os; pathlib.Path({str(marker)!r}).write_text(os.getcwd())"
    record, _ = await run_to_the_end(
        coord_conn,
        dispatcher,
        CommandHandler([PYTHON, "-c", script]),
        Spec(task_id="t1", queue="q", workspace_dir=str(missing), max_attempts=1),
    )
    assert record.status in (TaskStatus.FAILED, TaskStatus.DEAD), record
    assert record.error is not None and str(missing) in record.error and "does not exist" in record.error
    assert not marker.exists(), f"the command ran anyway, in {marker.read_text()}"


# --- 6. a command that prints a lot --------------------------------------------------------------------------
CHATTY_SCRIPT = """
import json, sys
spec = json.load(sys.stdin)
chunk = (b"x" * 1023 + b"\\n") * 1024
for _ in range(spec["payload"]["mb"]):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write(spec["payload"]["line"].encode() + b"\\n")
"""


async def test_a_command_printing_30_mb_is_recorded_without_the_worker_holding_its_output(
    coord_conn: coord.Coord, dispatcher: Dispatcher, command_worker: CommandWorkerFactory
) -> None:
    """Old: all of stdout was buffered (and decoded and split) in the worker."""
    worker = command_worker("w1", [PYTHON, "-c", CHATTY_SCRIPT])
    assert await coord_conn.presence.wait_present("w1", 20), log_of(worker)

    async def run(task_id: str, mb: int) -> TaskRecord:
        line = format_result(Result.success(summary=f"printed {mb} MB", output={"mb": mb}))
        await dispatcher.submit(Spec(task_id=task_id, queue="q", payload={"mb": mb, "line": line}))
        return await dispatcher.wait(task_id, 30)

    warm = await run("warm-up", 1)  # the command path, its imports and its 1 MB tail buffer
    assert warm.status is TaskStatus.SUCCEEDED, log_of(worker)
    before = peak_rss(worker.pid)
    record = await run("t1", 30)
    grown = peak_rss(worker.pid) - before
    assert record.status is TaskStatus.SUCCEEDED, (record, log_of(worker))
    result = result_of(record)
    assert result.summary == "printed 30 MB" and result.output == {"mb": 30}
    assert grown < 10 << 20, f"the worker's peak RSS grew by {grown / (1 << 20):.1f} MB for 30 MB of output"


# --- 7. a blocked event loop ---------------------------------------------------------------------------------------
async def blocked_loop_reports(
    coord_conn: coord.Coord, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture, *, settle_first: float
) -> tuple[list[str], int]:
    """Run one task whose coroutine handler blocks the loop for 2.5 s (after ``settle_first`` seconds of
    awaiting); return the watchdog's warnings and the worker's ``loop_blocks``."""
    caplog.set_level(logging.WARNING, logger="corral.worker")

    async def blocks(spec: Spec, ctx: Context) -> Result:
        if settle_first:
            await asyncio.sleep(settle_first)
        time.sleep(2.5)  # the mistake: a blocking call inside a coroutine
        return Result.success()

    worker = Worker(coord_conn, ["q"], blocks, presence_ttl=10, presence_interval=1)
    async with working(worker):
        record = await dispatcher.wait(await dispatcher.submit(Spec(task_id="blocker-1", queue="q")), 20)
        blocks_seen = worker.stats.loop_blocks
    assert record.status is TaskStatus.SUCCEEDED
    reports = [r.getMessage() for r in caplog.records if r.name == "corral.worker" and "event loop" in r.getMessage()]
    return reports, blocks_seen


async def test_an_async_handler_blocking_the_event_loop_is_reported_with_its_task_and_counted(
    coord_conn: coord.Coord, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """Old: nothing said why presence renewals and lease extensions stopped."""
    reports, blocks_seen = await blocked_loop_reports(coord_conn, dispatcher, caplog, settle_first=0.5)
    named = [m for m in reports if "event loop blocked" in m and "blocker-1" in m]
    assert named, f"no 'event loop blocked' warning naming the task: {reports}"
    assert blocks_seen >= 1


async def test_an_async_handler_blocking_the_event_loop_as_soon_as_it_starts_is_reported_with_its_task(
    coord_conn: coord.Coord, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that blocks on its first step (the usual case) must be named too."""
    reports, blocks_seen = await blocked_loop_reports(coord_conn, dispatcher, caplog, settle_first=0)
    assert blocks_seen >= 1
    named = [m for m in reports if "event loop blocked" in m and "blocker-1" in m]
    assert named, f"no 'event loop blocked' warning naming the task: {reports}"


# --- 8. a consumer deleted under the worker ------------------------------------------------------------------------
async def test_a_worker_whose_consumer_is_deleted_takes_work_again(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    """Old: the worker stayed present and its queue stalled."""

    async def quick(spec: Spec, ctx: Context) -> Result:
        return Result.success(summary=spec.task_id)

    worker = Worker(coord_conn, ["q"], quick)
    async with working(worker):
        first = await dispatcher.wait(await dispatcher.submit(Spec(task_id="before", queue="q")), 15)
        assert first.status is TaskStatus.SUCCEEDED
        stream, durable = coord_conn.names.dispatch_stream, coord_conn.names.queue_consumer("q")
        assert await coord_conn.js.delete_consumer(stream, durable)
        deleted = time.monotonic()
        await dispatcher.submit(Spec(task_id="after", queue="q"))
        after = await dispatcher.wait("after", 10)
        took = time.monotonic() - deleted
        info = await coord_conn.js.consumer_info(stream, durable)
    assert after.status is TaskStatus.SUCCEEDED and result_of(after).summary == "after"
    assert took < 10
    assert info.name == durable, "the consumer was re-created"


# --- 9. a worker whose id is held ----------------------------------------------------------------------------------
async def test_a_worker_whose_id_is_held_on_another_host_waits_for_the_key_then_serves_and_a_live_twin_is_refused(
    coord_conn: coord.Coord, command_worker: CommandWorkerFactory, subprocess_env: dict[str, str]
) -> None:
    """Old: it exited at once, "agent id 'w1' is held by another live process"."""
    store = coord_conn.presence._store
    await store.write(AgentInfo(id="w1", host="another-node", pid=4321), "old-pod", last=0, ttl=4)
    written = time.monotonic()
    worker = command_worker("w1", [PYTHON, "-c", "print('{}')"])

    async def ours() -> bool:
        info = await coord_conn.presence.get("w1")
        return info is not None and info.pid == worker.pid

    await eventually(ours, 15, "the worker to be present once the old key expired")
    took = time.monotonic() - written
    assert 3.5 < took < 4 + 2 + 3, f"present {took:.1f}s after a 4 s key was written"
    told = [line for line in log_of(worker).splitlines() if "cannot be proved gone" in line]
    assert len(told) == 1 and "another host (another-node)" in told[0] and "waiting up to" in told[0], told
    # The same command again while it runs: refused with the clear message, exit 1; the first stays.
    twin = await asyncio.to_thread(
        subprocess.run, worker.args, env=subprocess_env, capture_output=True, text=True, timeout=30
    )
    assert twin.returncode == 1
    assert "error: agent id 'w1' is held by another live process" in " ".join(twin.stderr.split())
    assert worker.poll() is None
