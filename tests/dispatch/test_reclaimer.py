"""The reclaimer: claims of departed, absent or overdue workers go back to the queue, live ones stay."""

from __future__ import annotations

import asyncio

import coord
from coord.presence import AgentInfo
from coord.tasks import TaskStatus
from dispatch import Reclaimer
from dispatch.reclaimer import ReclaimReason


async def _status(conn: coord.Coord, task_id: str, want: TaskStatus, within: float) -> None:
    async with asyncio.timeout(within):
        while (await conn.tasks.get(task_id)).status is not want:
            await asyncio.sleep(0.05)


async def test_claims_of_a_worker_absent_at_start_are_reclaimed_by_the_rebuild(coord_conn: coord.Coord) -> None:
    await coord_conn.tasks.schedule("t1", queue="q", spec=None)
    await coord_conn.tasks.claim("t1", "ghost")
    async with Reclaimer(coord_conn) as reclaimer:
        event = await asyncio.wait_for(reclaimer.events.get(), 5)
    assert (event.task_id, event.worker_id, event.reason) == ("t1", "ghost", "worker-absent")
    record = await coord_conn.tasks.get("t1")
    assert record.status is TaskStatus.PENDING and record.attempt == 1 and record.error == "worker-absent"


async def test_a_departure_reclaims_every_claim_of_that_worker_and_no_other(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    for task_id in ("a1", "a2", "b1"):
        await tasks.schedule(task_id, queue="q", spec=None)
    async with coord_conn.presence.join(AgentInfo(id="wb"), interval=0.3, ttl=2):
        leaving = await coord_conn.presence.join(AgentInfo(id="wa"), interval=0.3, ttl=2)
        await tasks.claim("a1", "wa")
        await tasks.claim("a2", "wa")
        await tasks.claim("b1", "wb")
        async with Reclaimer(coord_conn, sweep_interval=60) as reclaimer:
            await leaving.leave()
            events = [await asyncio.wait_for(reclaimer.events.get(), 5) for _ in range(2)]
            assert sorted(e.task_id for e in events) == ["a1", "a2"]
            assert {e.reason for e in events} == {"worker-left:graceful"}
            assert (await tasks.get("b1")).status is TaskStatus.CLAIMED
            assert reclaimer.claims_of("wb") == {"b1": (await tasks.get("b1")).claim.claim_id}  # type: ignore[union-attr]


async def test_an_overdue_claim_is_reclaimed_by_the_sweep_and_a_heartbeated_one_is_not(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    await tasks.schedule("late", queue="q", spec=None)
    await tasks.schedule("alive", queue="q", spec=None)
    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2):
        await tasks.claim("late", "w1", lease=1)
        alive = await tasks.claim("alive", "w1", lease=1)
        async with Reclaimer(coord_conn, sweep_interval=0.2) as reclaimer:
            for _ in range(6):
                await asyncio.sleep(0.4)
                alive = await tasks.heartbeat(alive)
            event = await asyncio.wait_for(reclaimer.events.get(), 5)
            assert (event.task_id, event.reason) == ("late", "deadline")
            assert reclaimer.events.empty()
    assert (await tasks.get("alive")).status is TaskStatus.CLAIMED


def test_reclaim_reasons_are_an_enum_whose_values_are_the_stored_error_text() -> None:
    assert [r.value for r in ReclaimReason] == [
        "worker-left:expired",
        "worker-left:graceful",
        "deadline",
        "worker-absent",
    ]
    assert ReclaimReason.left("expired") is ReclaimReason.WORKER_LEFT_EXPIRED
    assert ReclaimReason.left("graceful").departure == "graceful"
    assert ReclaimReason.DEADLINE.departure is None and ReclaimReason.WORKER_ABSENT.departure is None
