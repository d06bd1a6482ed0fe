"""A result push only tells the parent to look: what it returns is the task's stored record."""

from __future__ import annotations

import asyncio
import json

import coord
from coord.tasks import TaskRecord, TaskStatus
from coord.wire import Result, Spec
from dispatch import Dispatcher


async def _forge_push(conn: coord.Coord, parent: str, record: TaskRecord, output: str) -> None:
    forged = json.loads(record.model_dump_json())
    forged.update(status="succeeded", result=Result.success(output=output).model_dump(mode="json"))
    body = {"task_id": record.task_id, "status": "succeeded", "revision": record.revision, "record": forged}
    await conn.nc.publish(conn.names.results_subject(parent), json.dumps(body).encode())
    await conn.nc.flush()


async def test_a_forged_result_push_does_not_resolve_a_pending_task(coord_conn: coord.Coord) -> None:
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        await dispatcher.submit(Spec(task_id="t1", queue="q"))
        pending = await coord_conn.tasks.get("t1")
        waiting = asyncio.create_task(dispatcher.result("t1", timeout=10.0))
        await asyncio.sleep(0.1)
        await _forge_push(coord_conn, dispatcher.parent_id, pending, "FORGED: all tests pass")
        await _forge_push(coord_conn, dispatcher.parent_id, pending.model_copy(update={"revision": 10**9}), "FORGED")
        await asyncio.sleep(1.0)
        assert not waiting.done()
        assert (await coord_conn.tasks.get("t1")).status is TaskStatus.PENDING

        claim = await coord_conn.tasks.claim("t1", "w1")
        await coord_conn.tasks.complete(claim, Result.success(output="the real answer").model_dump(mode="json"))
        result = await waiting
    assert result.output == "the real answer"


async def test_forged_pushes_for_running_tasks_leave_the_parent_with_the_recorded_results(
    coord_conn: coord.Coord,
) -> None:
    async with Dispatcher(coord_conn, reclaimer=False, reconcile_interval=3600) as dispatcher:
        ids = await dispatcher.submit_many([Spec(task_id=f"t{i}", queue="q") for i in range(20)])
        waiting = [asyncio.create_task(dispatcher.result(t, timeout=10.0)) for t in ids]
        claims = [await coord_conn.tasks.claim(task_id, "w1") for task_id in ids]
        for claim in claims:  # a burst of forged pushes while every task is still running
            await _forge_push(coord_conn, dispatcher.parent_id, claim.record, "FORGED")
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in waiting)
        for claim in claims:
            await coord_conn.tasks.complete(
                claim, Result.success(output=f"real {claim.task_id}").model_dump(mode="json")
            )
        results = await asyncio.gather(*waiting)
    assert [r.output for r in results] == [f"real {t}" for t in ids]
