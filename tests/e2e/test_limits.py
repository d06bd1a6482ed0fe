"""Fleet-wide queue limits held by real worker processes (measured from the handlers' own start and end
times), and a SIGKILLed holder's slot coming back when its claim is reclaimed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from pydantic import JsonValue

import coord
from coord.limits import LimitsView, Rate
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher
from tests.e2e.conftest import WorkerFactory

HANDLER = "tests.e2e.helpers_limits:timed"
TTL = 1.5


def runs(log: Path) -> list[dict[str, Any]]:
    """Every finished run the handlers recorded."""
    return [json.loads(p.read_text()) for p in log.glob("*.json")]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one instant (one ending as another starts: not both)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


async def start_fleet(conn: coord.Coord, spawn_worker: WorkerFactory, n: int, concurrency: int) -> list[str]:
    ids = [f"w{i}" for i in range(n)]
    for worker_id in ids:
        spawn_worker(worker_id, handler=HANDLER, concurrency=concurrency, ttl=TTL)
    for worker_id in ids:
        assert await conn.presence.wait_present(worker_id, 30), f"{worker_id} did not start"
    return ids


async def test_a_concurrency_limit_of_2_holds_across_3_workers_of_concurrency_4(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    await coord_conn.limits.set("q", concurrency=2)
    await start_fleet(coord_conn, spawn_worker, 3, 4)
    specs = [Spec(task_id=f"c{i}", queue="q", payload={"seconds": 0.3, "log": str(tmp_path)}) for i in range(24)]
    async with Dispatcher(coord_conn) as dispatcher:
        ids = await dispatcher.submit_many(specs)
        async with asyncio.timeout(90):
            async for record in dispatcher.as_completed(ids):
                assert record.status is TaskStatus.SUCCEEDED, (record.task_id, record.error)
    done = runs(tmp_path)
    assert sorted(r["task"] for r in done) == sorted(ids)  # each ran once, all finished
    # never a 3rd, and both slots were used (the fleet could run 12 at once, any one worker 4)
    assert most_at_once([(r["start"], r["end"]) for r in done]) == 2
    async with asyncio.timeout(5):  # every slot given back once its worker has nothing more to run
        while await coord_conn.limits.slots("q"):
            await asyncio.sleep(0.1)


async def test_a_rate_of_20_per_second_holds_within_10_percent_over_30_seconds_across_4_workers(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    await coord_conn.limits.set("q", rate=Rate(count=20, per="s"))
    await start_fleet(coord_conn, spawn_worker, 4, 4)
    specs = [Spec(task_id=f"r{i}", queue="q", payload={"seconds": 0.05, "log": str(tmp_path)}) for i in range(700)]
    async with Dispatcher(coord_conn) as dispatcher:
        await dispatcher.submit_many(specs)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            done = runs(tmp_path)
            if done and max(r["start"] for r in done) - min(r["start"] for r in done) >= 31:
                break
            await asyncio.sleep(0.5)
    starts = sorted(r["start"] for r in runs(tmp_path))
    window = [s for s in starts if starts[0] + 1 <= s < starts[0] + 31]  # 30 s, past the first second
    assert 540 <= len(window) <= 660, f"{len(window)} starts in 30 s (20/s would be 600)"
    busiest = max(sum(1 for s in starts if t <= s < t + 1) for t in starts)
    assert busiest <= 22, f"{busiest} starts within one second: a burst"
    assert len({r["worker"] for r in runs(tmp_path)}) == 4


async def test_a_sigkilled_holders_slot_returns_within_ttl_plus_1s(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    await coord_conn.limits.set("q", concurrency=1)
    view = await LimitsView(coord_conn.limits, ["q"]).start()
    try:
        async with Dispatcher(coord_conn) as dispatcher:
            w0 = spawn_worker("w0", handler=HANDLER, concurrency=2, ttl=TTL)
            assert await coord_conn.presence.wait_present("w0", 30)
            payload: JsonValue = {"first": 60, "seconds": 0.1, "log": str(tmp_path)}
            await dispatcher.submit(Spec(task_id="long", queue="q", payload=payload))
            async with asyncio.timeout(15):
                while [s.holder.worker_id for s in view.held_slots() if s.holder] != ["w0"]:
                    await view.changed()
            spawn_worker("w1", handler=HANDLER, concurrency=2, ttl=TTL)
            assert await coord_conn.presence.wait_present("w1", 30)
            await dispatcher.submit(Spec(task_id="next", queue="q", payload={"seconds": 0.1, "log": str(tmp_path)}))
            await asyncio.sleep(0.5)
            # w1 is idle with room for 2, and "next" waits: the slot w0 holds limits the whole fleet
            assert [s.holder.task_id for s in view.held_slots() if s.holder] == ["long"]
            assert not runs(tmp_path)
            w0.kill()
            killed = time.monotonic()
            async with asyncio.timeout(TTL + 5):
                while any(s.holder is None or s.holder.worker_id == "w0" for s in view.held_slots()):
                    await view.changed()
            returned = time.monotonic() - killed
            long, later = await dispatcher.wait("long", 30), await dispatcher.wait("next", 30)
    finally:
        await view.stop()
    assert returned <= TTL + 1.0, f"the slot came back {returned:.2f}s after SIGKILL (TTL {TTL}s)"
    assert (long.status, later.status) == (TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED)
    assert {(r["task"], r["worker"]) for r in runs(tmp_path)} == {("long", "w1"), ("next", "w1")}
