"""Regression tests for reclaimer faults: renotify floods, sweeps held up by renotifying, unbounded events."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

import coord
from coord.presence import AgentInfo
from coord.server import NatsServer
from coord.tasks import ScheduleRequest, TaskStatus
from dispatch import Reclaimer
from dispatch.reclaimer import EVENTS_KEPT, ReclaimEvent, ReclaimReason
from tests.helpers_wait import eventually


async def notifications_stored(conn: coord.Coord) -> int:
    return (await conn.js.stream_info(conn.names.dispatch_stream)).state.messages


async def most_notifications_within(conn: coord.Coord, seconds: float) -> int:
    """The largest number of notifications the dispatch stream held at any look during ``seconds``."""
    most = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        most = max(most, await notifications_stored(conn))
        await asyncio.sleep(0.1)
    return most


async def schedule_idle(conn: coord.Coord, ids: list[str], queue: str = "idle") -> None:
    for start in range(0, len(ids), 500):
        await conn.tasks.schedule_many(
            [ScheduleRequest(task_id=t, queue=queue, spec=None) for t in ids[start : start + 500]]
        )


@pytest.mark.parametrize("candidate", [True, False], ids=["elected", "acting-at-once"])  # at once: a fail-over overlap
async def test_two_reclaimers_renotify_nothing_still_queued_and_bring_back_exactly_the_lost_notifications(
    coord_conn: coord.Coord, nats_server: NatsServer, candidate: bool
) -> None:
    names = coord_conn.names
    kept, lost = [f"k{i:03d}" for i in range(190)], [f"l{i:02d}" for i in range(10)]
    await schedule_idle(coord_conn, kept)
    await schedule_idle(coord_conn, lost, queue="lossy")
    assert await notifications_stored(coord_conn) == 200
    async with (
        coord.connect(nats_server.url, namespace=coord_conn.namespace) as other,
        Reclaimer(coord_conn, sweep_interval=0.2, renotify_after=1, candidate=candidate) as first,
        Reclaimer(other, sweep_interval=0.2, renotify_after=1, candidate=candidate) as second,
    ):
        # Every task is pending for longer than renotify_after, but its notification is still queued.
        assert await most_notifications_within(coord_conn, 5.0) == 200
        assert (first.renotified, second.renotified) == (0, 0)

        # One request drops the notifications of the 10 "lossy" tasks (a renotify may follow at once).
        assert await coord_conn.js.purge_stream(names.dispatch_stream, subject=names.queue_filter("lossy"))

        async def all_back() -> bool:
            return await notifications_stored(coord_conn) >= 200

        await eventually(all_back, 5, "the lost notifications to come back")
        assert await most_notifications_within(coord_conn, 1.5) == 200, "each lost notification comes back once"
        queued = await coord_conn.tasks.queued_notifications()
        assert queued == {names.notification_subject("idle", t) for t in kept} | {
            names.notification_subject("lossy", t) for t in lost
        }
        assert first.renotified + second.renotified >= len(lost), "the lost ones were published again"
        assert max(first.renotified, second.renotified) <= len(lost), "and only they"
        assert first.events.empty() and second.events.empty()
    assert all(r.status is TaskStatus.PENDING and r.epoch == 0 for r in await coord_conn.tasks.list())


async def test_an_overdue_claim_is_reclaimed_within_two_sweeps_while_thousands_of_tasks_are_renotified(
    coord_conn: coord.Coord,
) -> None:
    tasks, names = coord_conn.tasks, coord_conn.names
    lost = [f"l{i:04d}" for i in range(3000)]
    await schedule_idle(coord_conn, lost)
    await tasks.schedule("late", queue="busy", spec=None)
    await coord_conn.js.purge_stream(names.dispatch_stream)  # every notification is lost
    await asyncio.sleep(1.0)  # ... and every task has waited for longer than renotify_after

    async def idle_queued() -> int:
        info = await coord_conn.js.stream_info(names.dispatch_stream, subjects_filter=names.queue_filter("idle"))
        return len(info.state.subjects or {})

    sweep = 0.2
    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2):
        claim = await tasks.claim("late", "w1", lease=1)
        async with Reclaimer(coord_conn, sweep_interval=sweep, renotify_after=1) as reclaimer:
            event = await asyncio.wait_for(reclaimer.events.get(), 10)
            renotified_by_then = await idle_queued()
            reclaimed = await tasks.get("late")

            async def all_renotified() -> bool:
                return reclaimer.renotified == len(lost)

            await eventually(all_renotified, 60, "every lost notification to be published again")
        assert await idle_queued() == len(lost)
    assert (event.task_id, event.reason) == ("late", "deadline")
    assert 0 < renotified_by_then < len(lost), "the reclaim must happen while the renotify pass is under way"
    late = (reclaimed.updated_at - claim.deadline).total_seconds()
    assert reclaimed.status is TaskStatus.PENDING and reclaimed.error == "deadline"
    assert late <= 2 * sweep + 0.2, f"reclaimed {late:.2f}s after its deadline (sweeps every {sweep}s)"


async def test_reclaim_events_nobody_reads_are_bounded_to_the_newest_1024(coord_conn: coord.Coord) -> None:
    reclaimer = Reclaimer(coord_conn)
    assert EVENTS_KEPT == 1024
    for i in range(2000):
        reclaimer.events.put_nowait(ReclaimEvent(f"t{i}", "w1", f"c{i}", ReclaimReason.DEADLINE, "pending", None))
        assert reclaimer.events.qsize() <= EVENTS_KEPT
    kept = [reclaimer.events.get_nowait() for _ in range(reclaimer.events.qsize())]
    assert [e.task_id for e in kept] == [f"t{i}" for i in range(2000 - EVENTS_KEPT, 2000)]


async def test_a_reclaimer_nobody_reads_keeps_at_most_1024_events_of_its_reclaims(coord_conn: coord.Coord) -> None:
    ids = [f"g{i:04d}" for i in range(EVENTS_KEPT + 76)]
    await schedule_idle(coord_conn, ids)
    for start in range(0, len(ids), 250):
        await asyncio.gather(*(coord_conn.tasks.claim(t, "ghost") for t in ids[start : start + 250]))
    before = datetime.now(UTC)
    async with Reclaimer(coord_conn, sweep_interval=60) as reclaimer:  # the start's rebuild reclaims them all
        assert reclaimer.reclaimed == len(ids)
        assert reclaimer.events.qsize() == EVENTS_KEPT
    records = await coord_conn.tasks.list()
    assert all(r.status is TaskStatus.PENDING and r.error == "worker-absent" for r in records)
    assert all(r.updated_at >= before for r in records)
