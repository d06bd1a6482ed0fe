"""Dispatcher behaviour that needs no worker process: backpressure, idempotent resubmits, bad batches."""

from __future__ import annotations

import asyncio

import pytest

import coord
from coord.wire import Result, Spec
from dispatch import Dispatcher
from workers import Context, Worker, as_handler


async def _ok(spec: Spec, ctx: Context) -> Result:
    return Result.success(summary=spec.task_id)


async def test_submit_waits_for_room_and_a_finished_task_frees_it(coord_conn: coord.Coord) -> None:
    async with Dispatcher(coord_conn, max_in_flight=1, reclaimer=False) as dispatcher:
        await dispatcher.submit(Spec(task_id="t1", queue="q"))
        second = asyncio.create_task(dispatcher.submit(Spec(task_id="t2", queue="q")))
        await asyncio.sleep(0.3)
        assert not second.done(), "a full dispatcher must hold the next submit back"
        worker = Worker(coord_conn, ["q"], as_handler(_ok))
        running = asyncio.create_task(worker.run())
        assert await asyncio.wait_for(second, 10) == "t2"
        assert (await dispatcher.result("t2", 10)).summary == "t2"
        worker.stop()
        await running


async def test_resubmitting_a_task_in_flight_takes_no_second_slot(coord_conn: coord.Coord) -> None:
    async with Dispatcher(coord_conn, max_in_flight=1, reclaimer=False) as dispatcher:
        await dispatcher.submit(Spec(task_id="t1", queue="q"))
        assert await asyncio.wait_for(dispatcher.submit(Spec(task_id="t1", queue="q")), 2) == "t1"


async def test_a_batch_naming_one_task_twice_is_refused_before_anything_is_written(coord_conn: coord.Coord) -> None:
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        with pytest.raises(ValueError, match="'t1' appears more than once"):
            await dispatcher.submit_many([Spec(task_id="t1", queue="q"), Spec(task_id="t1", queue="q")])
    assert await coord_conn.tasks.list() == []


async def test_a_bad_spec_names_the_field_and_writes_nothing(coord_conn: coord.Coord) -> None:
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        with pytest.raises(ValueError, match="max_attempts"):
            await dispatcher.submit({"task_id": "t1", "queue": "q", "max_attempts": 0})
        with pytest.raises(ValueError, match="files"):
            await dispatcher.submit({"task_id": "t2", "queue": "q", "files": ["relative/path.py"]})
    assert await coord_conn.tasks.list() == []
