"""The worker runtime in one process: handler outcomes, retries, command handlers, progress."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator

import pytest

import coord
from coord.priority import Priority
from coord.tasks import Backoff, TaskStatus, Transition
from coord.wire import Result, Spec, format_result
from dispatch import Dispatcher, result_of
from workers import CommandHandler, Context, Handler, Worker, as_handler


@pytest.fixture
async def dispatcher(coord_conn: coord.Coord) -> AsyncIterator[Dispatcher]:
    coord_conn.tasks.backoff = Backoff(base=0.05, factor=2.0, max=0.2)
    async with Dispatcher(coord_conn, reclaimer=False) as d:
        yield d


async def run_until(coord_conn: coord.Coord, handler: Handler, dispatcher: Dispatcher, spec: Spec) -> Result:
    worker = Worker(coord_conn, ["q"], handler)
    running = asyncio.create_task(worker.run())
    try:
        return result_of(await dispatcher.wait(await dispatcher.submit(spec), 20))
    finally:
        worker.stop()
        await running


async def test_a_raising_handler_is_retried_then_dead_lettered_when_attempts_are_spent(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    calls: list[int] = []

    def boom(spec: Spec, ctx: Context) -> Result:
        calls.append(ctx.attempt)
        raise RuntimeError("disk on fire")

    result = await run_until(coord_conn, as_handler(boom), dispatcher, Spec(task_id="t1", queue="q", max_attempts=3))
    record = await coord_conn.tasks.get("t1")
    assert record.status is TaskStatus.DEAD
    assert calls == [1, 2, 3]
    assert result.error is not None and "disk on fire" in result.error.message


async def test_a_fail_result_is_an_answer_recorded_without_retry(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    calls: list[int] = []

    async def says_no(spec: Spec, ctx: Context) -> Result:
        calls.append(ctx.epoch)
        return Result.failure("the tests do not pass", summary="gave up")

    result = await run_until(coord_conn, says_no, dispatcher, Spec(task_id="t1", queue="q"))
    assert (await coord_conn.tasks.get("t1")).status is TaskStatus.FAILED
    assert calls == [1]
    assert result.summary == "gave up" and result.error is not None and not result.error.substrate_fault


async def test_a_command_handler_gets_the_spec_on_stdin_and_its_result_line_is_recorded(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    line = format_result(Result.success(summary="X"))
    script = (
        "import json, os, sys; spec = json.load(sys.stdin); print('working...'); "
        f"print({line!r}.replace('X', spec['title'] + ' @' + os.environ['CORRAL_EPOCH']))"
    )
    result = await run_until(
        coord_conn,
        CommandHandler([sys.executable, "-c", script]),
        dispatcher,
        Spec(task_id="t1", queue="q", title="a|b"),
    )
    assert result.ok and result.summary == "a|b @1"


async def test_a_command_never_sees_the_workers_nats_credentials(
    coord_conn: coord.Coord, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CORRAL_PASSWORD", "CORRAL_TOKEN", "CORRAL_NKEY", "CORRAL_CREDS", "CORRAL_TLS_KEY"):
        monkeypatch.setenv(name, "secret")
    monkeypatch.setenv("CORRAL_HARMLESS", "kept")
    line = format_result(Result.success(summary="X"))
    script = (
        "import os; leaked = sorted(k for k, v in os.environ.items() if v == 'secret'); "
        f"print({line!r}.replace('X', ','.join(leaked) + '|' + os.environ['CORRAL_HARMLESS']))"
    )
    result = await run_until(
        coord_conn, CommandHandler([sys.executable, "-c", script]), dispatcher, Spec(task_id="t1", queue="q")
    )
    assert result.ok and result.summary == "|kept"


async def test_a_command_exiting_non_zero_without_a_result_fails_with_its_stderr(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    script = "import sys; sys.stderr.write('missing credentials\\n'); sys.exit(7)"
    result = await run_until(
        coord_conn,
        CommandHandler([sys.executable, "-c", script]),
        dispatcher,
        Spec(task_id="t1", queue="q", max_attempts=1),
    )
    assert not result.ok and result.error is not None
    assert "exited with 7" in result.error.message and "missing credentials" in result.error.message


async def test_heartbeat_from_the_handler_records_progress_and_extends_the_deadline(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    seen: list[tuple[object, object]] = []

    async def reports(spec: Spec, ctx: Context) -> Result:
        before = (await coord_conn.tasks.get(spec.task_id)).claim
        await asyncio.sleep(0.05)
        await ctx.heartbeat({"done": 1, "of": 2})
        after = await coord_conn.tasks.get(spec.task_id)
        assert before is not None and after.claim is not None
        seen.append((after.progress, after.claim.deadline > before.deadline))
        return Result.success()

    assert (await run_until(coord_conn, reports, dispatcher, Spec(task_id="t1", queue="q", timeout=5))).ok
    assert seen == [({"done": 1, "of": 2}, True)]


async def test_a_handler_outlasting_its_lease_keeps_its_claim_and_a_short_one_extends_nothing(
    coord_conn: coord.Coord,
) -> None:
    async def slow(spec: Spec, ctx: Context) -> Result:
        seconds = spec.payload["seconds"] if isinstance(spec.payload, dict) else 0
        assert isinstance(seconds, int | float), seconds
        await asyncio.sleep(seconds)
        return Result.success()

    parent = Dispatcher(coord_conn)  # its reclaimer's sweep would take back an overdue claim at once
    assert parent.reclaimer is not None
    parent.reclaimer.sweep_interval = 0.2
    async with parent:
        worker = Worker(coord_conn, ["q"], slow, lease=1.5)
        running = asyncio.create_task(worker.run())
        try:
            long_id = await parent.submit(Spec(task_id="long", queue="q", payload={"seconds": 4.0}))
            short_id = await parent.submit(Spec(task_id="short", queue="q", payload={"seconds": 0.05}))
            long, short = await parent.wait(long_id, 20), await parent.wait(short_id, 20)
        finally:
            worker.stop()
            await running
    assert (long.status, long.epoch, long.attempt) == (TaskStatus.SUCCEEDED, 1, 1)
    beats = [e.transition for e in await coord_conn.tasks.journal("long")].count(Transition.HEARTBEAT)
    assert beats >= 4, f"a 4 s run on a 1.5 s lease was extended {beats} times"
    assert (short.status, short.epoch) == (TaskStatus.SUCCEEDED, 1)
    assert Transition.HEARTBEAT not in [e.transition for e in await coord_conn.tasks.journal("short")]


async def test_an_idle_worker_takes_each_task_at_once_on_every_priority_level(
    coord_conn: coord.Coord, dispatcher: Dispatcher
) -> None:
    async def ok(spec: Spec, ctx: Context) -> Result:
        return Result.success()

    worker = Worker(coord_conn, ["q"], ok, concurrency=256)
    running = asyncio.create_task(worker.run())
    try:
        assert await coord_conn.presence.wait_present(worker.worker_id, 10)
        took: list[float] = []
        levels = [Priority.NORMAL] * 10 + [Priority.HIGH] * 5 + [Priority.LOW] * 5 + [Priority.NORMAL] * 5
        for i, level in enumerate(levels):  # one at a time, to a worker that idles on all three levels
            started = time.monotonic()
            await dispatcher.wait(await dispatcher.submit(Spec(task_id=f"t{i}", queue="q", priority=level)), 10)
            took.append(time.monotonic() - started)
    finally:
        worker.stop()
        await running
    # a pull left waiting on the server, or one taken for alive when it had ended, shows as a stall
    # of up to the idle wait (1 s); a few milliseconds is the norm
    assert statistics.median(took) < 0.1, f"submit -> result took {sorted(took)}"
    assert max(took) < 0.5, f"submit -> result took {sorted(took)}"
