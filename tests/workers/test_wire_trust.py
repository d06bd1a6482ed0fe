"""A notification only wakes a worker: what it claims and runs comes from the stored record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

import coord
from coord.tasks import TaskRecord, TaskStatus
from coord.wire import Result, Spec
from dispatch import Dispatcher
from workers import Context, Worker


async def _forge_notification(conn: coord.Coord, record: TaskRecord, **changes: Any) -> None:
    """Publish a notification of ``record`` carrying a record changed by ``changes`` (an attacker's; the
    field does not exist any more, so such a message is dead-lettered as malformed)."""
    forged = json.loads(record.model_dump_json())
    forged.update(changes)
    body = {
        "task_id": record.task_id,
        "revision": record.revision,
        "epoch": record.epoch,
        "visible_at": None,
        "record": {**forged, "status": "pending", "claim": None},
    }
    await conn.js.publish(
        conn.names.notification_subject(record.queue, record.task_id),
        json.dumps(body).encode(),
        headers={"Nats-Msg-Id": f"forged-{record.task_id}-{record.revision}"},
    )


async def _drop_queued_notifications(conn: coord.Coord) -> None:
    await conn.js.purge_stream(conn.names.dispatch_stream)


async def _run_worker(conn: coord.Coord, seen: list[Spec], until: asyncio.Event | None = None) -> Worker:
    async def handler(spec: Spec, ctx: Context) -> Result:
        seen.append(spec)
        if until is not None:
            until.set()
        return Result.success(output="ran")

    return Worker(conn, ["q"], handler)


async def test_a_forged_notification_cannot_change_the_payload_a_worker_runs(coord_conn: coord.Coord) -> None:
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        await dispatcher.submit(Spec(task_id="t1", queue="q", payload={"do": "the real thing"}, max_attempts=2))
        stored = await coord_conn.tasks.get("t1")
        await _drop_queued_notifications(coord_conn)
        forged_spec = {**stored.spec, "payload": {"do": "rm -rf /"}, "max_attempts": 1000}
        await _forge_notification(
            coord_conn, stored, spec=forged_spec, parent="p-attacker", max_attempts=1000, meta={"x": "y"}
        )
        seen: list[Spec] = []
        worker = await _run_worker(coord_conn, seen)
        running = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(10):
                while worker.stats.dead_lettered < 1:  # the forged one is set aside as malformed ...
                    await asyncio.sleep(0.05)
            await coord_conn.tasks.notify(stored, force=True)  # ... and a true one runs what is stored
            record = await dispatcher.wait("t1", 15)
        finally:
            worker.stop()
            await running
    assert [s.payload for s in seen] == [{"do": "the real thing"}]
    assert record.status is TaskStatus.SUCCEEDED
    assert (record.parent, record.max_attempts, record.spec) == (stored.parent, 2, stored.spec)
    assert "x" not in record.meta


async def test_a_forged_notification_cannot_make_a_finished_task_run_again(coord_conn: coord.Coord) -> None:
    pushes: list[bytes] = []
    seen: list[Spec] = []
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        sub = await coord_conn.nc.subscribe(
            coord_conn.names.results_subject(dispatcher.parent_id), cb=_collect_into(pushes)
        )
        await dispatcher.submit(Spec(task_id="t1", queue="q"))
        pending = await coord_conn.tasks.get("t1")
        worker = await _run_worker(coord_conn, seen)
        running = asyncio.create_task(worker.run())
        try:
            done = await dispatcher.wait("t1", 15)
            assert done.status is TaskStatus.SUCCEEDED
            # The attacker replays the notification of the pending revision, "record" and all.
            await _forge_notification(coord_conn, pending)
            await _forge_notification(coord_conn, done)  # and the finished revision, marked pending
            await asyncio.sleep(1.5)
            assert worker.stats.dropped_notifications + worker.stats.dead_lettered >= 2
        finally:
            worker.stop()
            await running
            await sub.unsubscribe()
    after = await coord_conn.tasks.get("t1")
    assert len(seen) == 1
    assert (after.status, after.revision, after.epoch) == (TaskStatus.SUCCEEDED, done.revision, done.epoch)
    assert len(pushes) == 1
    kinds = [e.transition.value for e in await coord_conn.tasks.journal("t1")]
    assert kinds.count("claimed") == 1 and kinds.count("completed") == 1


async def test_a_forged_notification_of_a_task_that_does_not_exist_is_dropped(coord_conn: coord.Coord) -> None:
    fake = TaskRecord.model_validate(
        {
            "task_id": "ghost",
            "queue": "q",
            "status": "pending",
            "spec": {"task_id": "ghost", "queue": "q"},
            "created_at": "2026-01-01T00:00:00+00:00",
            "updated_at": "2026-01-01T00:00:00+00:00",
        }
    )
    await _forge_notification(coord_conn, fake.model_copy(update={"revision": 1}))
    seen: list[Spec] = []
    worker = await _run_worker(coord_conn, seen)
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.stats.dropped_notifications + worker.stats.dead_lettered < 1:
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running
    assert seen == []
    info = await coord_conn.js.stream_info(coord_conn.names.dispatch_stream)
    assert info.state.messages == 0


def _collect_into(into: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
    async def collect(msg: Msg) -> None:
        into.append(msg.data)

    return collect


async def test_a_forged_presence_write_neither_stops_a_worker_nor_gets_its_claim_reclaimed(
    coord_conn: coord.Coord,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(spec: Spec, ctx: Context) -> Result:
        started.set()
        await release.wait()
        return Result.success(output="finished")

    async with Dispatcher(coord_conn) as dispatcher:  # its reclaimer watches presence
        worker = Worker(coord_conn, ["q"], slow, worker_id="victim", presence_interval=0.3, presence_ttl=2)
        running = asyncio.create_task(worker.run())
        try:
            await dispatcher.submit(Spec(task_id="t1", queue="q"))
            await asyncio.wait_for(started.wait(), 10)
            held = await coord_conn.tasks.get("t1")
            forged = json.dumps({"id": "victim", "instance": "attacker", "host": "evil", "pid": 1}).encode()
            await coord_conn.js.publish(coord_conn.presence._store.subject("victim"), forged)  # no TTL, no CAS
            await asyncio.sleep(3.0)  # past the presence TTL and the reclaimer's reaction time
            now = await coord_conn.tasks.get("t1")
            assert not running.done()
            assert now.status is TaskStatus.CLAIMED and now.claim is not None and held.claim is not None
            assert (now.claim.claim_id, now.epoch) == (held.claim.claim_id, held.epoch)
            present = await coord_conn.presence.get("victim")
            assert present is not None and present.host != "evil"
            release.set()
            record = await dispatcher.wait("t1", 10)
        finally:
            release.set()
            worker.stop()
            await running
    assert record.status is TaskStatus.SUCCEEDED and record.epoch == held.epoch
