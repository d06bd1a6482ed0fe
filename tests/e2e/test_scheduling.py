"""Delayed tasks and priorities end to end: real worker processes, start times from the handlers themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from pydantic import JsonValue

import coord
from coord.priority import Priority
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher
from dispatch.reclaimer import Reclaimer
from tests.e2e.conftest import WorkerFactory

pytestmark = pytest.mark.timeout(120)

HANDLER = "tests.e2e.helpers_handlers:timed"


def started(marks: Path) -> dict[str, float]:
    """Task id -> when its handler started (written by the handler itself)."""
    found: dict[str, float] = {}
    for path in marks.glob("*.start"):
        with contextlib.suppress(ValueError):  # being written
            found[path.name.split(".")[0]] = float(path.read_text())
    return found


async def wait_started(marks: Path, count: int, within: float) -> dict[str, float]:
    deadline = time.monotonic() + within
    while len(found := started(marks)) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} tasks started within {within}s"
        await asyncio.sleep(0.05)
    return found


async def test_a_delayed_task_starts_after_its_delay_also_when_the_parent_and_reclaimer_restart(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    spawn_worker("w1", concurrency=2, handler=HANDLER)
    assert await coord_conn.presence.wait_present("w1", 20)
    spec = Spec(task_id="later", queue="q", payload={"marks": str(tmp_path)}, delay=3)
    # a standalone reclaimer sweeping (and looking for lost notifications) all the time: started first,
    # it is the active one (the parent's embedded reclaimer stands by)
    sweeper = await Reclaimer(coord_conn, sweep_interval=0.1, renotify_after=0.2).start()
    assert sweeper.active
    parent = Dispatcher(coord_conn, parent_id="p1")
    await parent.start()
    submitted = time.time()
    await parent.submit(spec)
    await asyncio.sleep(0.8)
    await parent.stop()
    await sweeper.stop()
    assert sweeper.renotified == 0
    await asyncio.sleep(0.7)
    sweeper = await Reclaimer(coord_conn, sweep_interval=0.1, renotify_after=0.2).start()
    assert sweeper.active
    parent = Dispatcher(coord_conn, parent_id="p1")  # the parent comes back, with its own reclaimer
    await parent.start()
    try:
        record = await parent.wait("later", 15)
        assert sweeper.renotified == 0, "the sweep notified a delayed task again"
    finally:
        await sweeper.stop()
        await parent.stop()
    assert record.status is TaskStatus.SUCCEEDED and record.epoch == 1
    began = started(tmp_path)["later"] - submitted
    assert 3.0 <= began <= 4.5, f"the handler started {began:.2f}s after submit (delay 3s)"


async def test_high_priority_work_overtakes_a_queued_backlog(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    async with Dispatcher(coord_conn, reclaimer=False) as parent:
        backlog = [
            Spec(task_id=f"{level}{i:02d}", queue="q", priority=level, payload={"seconds": 0.1, "marks": str(tmp_path)})
            for i in range(40)
            for level in (Priority.NORMAL, Priority.LOW)
        ]
        await parent.submit_many(backlog)
        spawn_worker("w1", concurrency=2, handler=HANDLER)
        await wait_started(tmp_path, 4, 30)
        urgent = [
            Spec(
                task_id=f"high{i:02d}",
                queue="q",
                priority=Priority.HIGH,
                payload={"seconds": 0.1, "marks": str(tmp_path)},
            )
            for i in range(10)
        ]
        await parent.submit_many(urgent)
        async for _ in parent.as_completed([s.task_id for s in urgent], timeout=60):
            pass
    starts = started(tmp_path)
    last_high = max(starts[s.task_id] for s in urgent)
    behind = [s.task_id for s in backlog if s.task_id not in starts or starts[s.task_id] > last_high]
    assert len(behind) > len(backlog) / 2, (
        f"only {len(behind)} of {len(backlog)} backlog tasks started after the last high one"
    )


async def test_low_priority_work_still_progresses_while_high_work_keeps_arriving(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    spawn_worker("w1", concurrency=2, handler=HANDLER)
    assert await coord_conn.presence.wait_present("w1", 20)
    payload: JsonValue = {"seconds": 0.1, "marks": str(tmp_path)}
    async with Dispatcher(coord_conn, reclaimer=False) as parent:
        await parent.submit_many(
            [Spec(task_id=f"low{i:02d}", queue="q", priority=Priority.LOW, payload=payload) for i in range(20)]
        )
        # high work arrives faster than the worker runs it (2 slots x 0.1 s = 20/s), for 3 seconds
        highs: list[str] = []
        began = time.time()
        for i in range(30):
            batch = [
                Spec(task_id=f"high{i:02d}{j}", queue="q", priority=Priority.HIGH, payload=payload) for j in range(3)
            ]
            await parent.submit_many(batch)
            highs += [s.task_id for s in batch]
            await asyncio.sleep(0.1)
        ended = time.time()
        async for _ in parent.as_completed(highs, timeout=60):
            pass
    starts = started(tmp_path)
    lows_meanwhile = [t for t, at in starts.items() if t.startswith("low") and began <= at <= ended]
    highs_meanwhile = [t for t, at in starts.items() if t.startswith("high") and began <= at <= ended]
    # the share is 6 high : 1 low; ask for a third of that, the machine is shared
    assert len(lows_meanwhile) >= 3, f"{len(lows_meanwhile)} low tasks started during the high stream"
    assert len(highs_meanwhile) > 2 * len(lows_meanwhile), (len(highs_meanwhile), len(lows_meanwhile))
