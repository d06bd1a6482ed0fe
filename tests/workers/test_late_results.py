"""A result refused because its claim ended meanwhile is put on the record as a dead letter, not only logged."""

from __future__ import annotations

import asyncio

import coord
from coord.deadletter import LATE_RESULT
from coord.tasks import TaskStatus
from coord.wire import Result, Spec
from workers import Context, as_handler
from workers.execution import Execution, ExecutionStats


async def test_late_result_from_reclaimed_worker_is_rejected_and_recorded_as_a_dead_letter(
    coord_conn: coord.Coord,
) -> None:
    release = asyncio.Event()

    async def slow(spec: Spec, ctx: Context) -> Result:
        await release.wait()
        return Result.success(summary="finished after the claim was taken away")

    await coord_conn.tasks.schedule("t1", queue="q", spec=Spec(task_id="t1", queue="q").model_dump(mode="json"))
    claim = await coord_conn.tasks.claim("t1", "w1", lease=60)
    stats = ExecutionStats()
    # No worker listens on w1's control subject here, so nothing stops the handler: its result arrives late.
    execution = Execution(coord_conn, claim, as_handler(slow), stats=stats, on_done=lambda _: None)
    running = execution.start(None)
    reclaimed = await coord_conn.tasks.reclaim("t1", claim.claim_id, reason="w1 departed")
    release.set()
    await asyncio.wait_for(running, 10)

    after = await coord_conn.tasks.get("t1")
    assert after.revision == reclaimed.revision and after.status is TaskStatus.PENDING, "nothing late was recorded"
    assert stats.stale_rejected == 1
    [letter] = await coord_conn.dead_letters.read(LATE_RESULT)
    assert letter.task_id == "t1"
    assert "w1" in letter.reason and f"epoch {claim.epoch}" in letter.reason
    assert Result.model_validate_json(letter.body).summary == "finished after the claim was taken away"
