"""Regression tests for dispatcher faults: reconciling past a bad record, bounded stop, memory of finished
tasks, and notifications that must be set aside without stopping the work beside them."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import coord
from coord.server import NatsServer
from coord.tasks import TaskRecord, TaskStatus, Transition
from coord.wire import Result, Spec
from dispatch import Dispatcher, result_of
from tests.helpers_wait import eventually
from workers import Context, Worker, as_handler


async def _ok(spec: Spec, ctx: Context) -> Result:
    return Result.success(summary=spec.task_id)


def spec_of(task_id: str, queue: str = "q") -> dict[str, object]:
    return Spec(task_id=task_id, queue=queue).model_dump(mode="json")


async def finish_without_a_push(conn: coord.Coord, task_id: str) -> TaskRecord:
    """Claim ``task_id`` and write its succeeded record straight into the bucket: no result is pushed."""
    claim = await conn.tasks.claim(task_id, "w-elsewhere")
    done = claim.record.model_copy(
        update={
            "status": TaskStatus.SUCCEEDED,
            "claim": None,
            "result": Result.success(summary=f"{task_id} done quietly").model_dump(mode="json"),
            "transition": Transition.COMPLETED,
            "updated_at": datetime.now(UTC),
        }
    )
    revision = await conn.tasks.bucket.update(task_id, done.model_dump_json().encode(), last=claim.revision)
    return done.model_copy(update={"revision": revision})


async def restart(server: NatsServer, conn: coord.Coord) -> None:
    """Stop and start ``server`` on its store; return once ``conn`` has reconnected."""
    reconnects = conn.nc.stats["reconnects"]
    await asyncio.to_thread(server.stop, remove_store=False)
    await asyncio.to_thread(server.start)

    async def reconnected() -> bool:
        return conn.nc.is_connected and conn.nc.stats["reconnects"] > reconnects

    await eventually(reconnected, 15, "the client to reconnect")


# --- reconciling ---------------------------------------------------------------------------------


async def test_reconciling_survives_an_undecodable_record_and_still_resolves_results_whose_push_was_missed(
    own_server: NatsServer, namespace: str
) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        dispatcher = await Dispatcher(conn, reclaimer=False, reconcile_interval=0.2).start()
        try:
            await dispatcher.submit_many([Spec(task_id=t, queue="q") for t in ("bad", "first", "second")])
            waits = {t: asyncio.create_task(dispatcher.wait(t, 60)) for t in ("bad", "first", "second")}
            await conn.tasks.bucket.put("bad", b"not json")
            first = await finish_without_a_push(conn, "first")
            # Without a reconnect the awaited records are read every interval, "bad" in the same batch.
            assert await asyncio.wait_for(waits["first"], 10) == first
            assert not waits["bad"].done()

            second = await finish_without_a_push(conn, "second")
            await restart(own_server, conn)  # the loop went on after failing to decode "bad"
            assert await asyncio.wait_for(waits["second"], 10) == second
            assert result_of(second).summary == "second done quietly"
            assert not waits["bad"].done(), "an undecodable record resolves nothing"
        finally:
            started = time.monotonic()
            await dispatcher.stop()
            stopped_in = time.monotonic() - started
            for wait in waits.values():
                wait.cancel()
    assert stopped_in < 1.0, f"stop() took {stopped_in:.2f}s"


async def test_a_lost_result_push_resolves_within_the_reconcile_interval_without_a_reconnect(
    coord_conn: coord.Coord,
) -> None:
    interval = 0.5
    dispatcher = await Dispatcher(coord_conn, reclaimer=False, reconcile_interval=interval).start()
    try:
        await dispatcher.submit(Spec(task_id="quiet", queue="q"))
        waiting = asyncio.create_task(dispatcher.wait("quiet", 30))
        await asyncio.sleep(2 * interval)  # awaited for longer than an interval: every pass reads it
        reconnects = coord_conn.nc.stats["reconnects"]
        done = await finish_without_a_push(coord_conn, "quiet")  # its push is lost: none was sent
        started = time.monotonic()
        assert await asyncio.wait_for(waiting, 30) == done
        took = time.monotonic() - started
        assert coord_conn.nc.stats["reconnects"] == reconnects, "resolved by a reconnect, not by the reconcile"
        assert took < interval + 1.0, f"a lost push cost {took:.2f}s with reconcile_interval={interval}"
    finally:
        await dispatcher.stop()


# --- stopping -----------------------------------------------------------------------------------


async def test_stop_returns_within_5s_while_the_server_is_sigstopped(own_server: NatsServer, namespace: str) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        dispatcher = await Dispatcher(conn, reconcile_interval=0.2).start()
        assert dispatcher.reclaimer is not None
        ids = await dispatcher.submit_many([Spec(task_id=f"t{i}", queue="q") for i in range(5)])
        waits = [asyncio.create_task(dispatcher.wait(t)) for t in ids]
        await conn.tasks.claim("t0", "ghost")  # the next sweep asks the server whether "ghost" is present

        async def seen_by_the_reclaimer() -> bool:
            assert dispatcher.reclaimer is not None
            return bool(dispatcher.reclaimer.claims_of("ghost"))

        await eventually(seen_by_the_reclaimer, 5, "the reclaimer to see the claim")
        own_server.pause()
        try:
            await asyncio.sleep(1.5)  # a sweep is now waiting for the paused server
            started = time.monotonic()
            await asyncio.wait_for(dispatcher.stop(), 6)
            took = time.monotonic() - started
        finally:
            own_server.resume()
        assert not any(w.done() for w in waits), "the awaited tasks were still pending"
        for wait in waits:
            wait.cancel()
    assert took < 5.5, f"stop() took {took:.2f}s with the server paused"


# --- memory -------------------------------------------------------------------------------------


async def test_finished_tasks_leave_the_dispatchers_memory_and_can_still_be_awaited(coord_conn: coord.Coord) -> None:
    worker = Worker(coord_conn, ["q"], as_handler(_ok), concurrency=32)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_started(), 10)
        async with Dispatcher(coord_conn, reclaimer=False, max_in_flight=1000) as dispatcher:
            ids = await dispatcher.submit_many([Spec(task_id=f"t{i:03d}", queue="q") for i in range(500)])
            records = [r async for r in dispatcher.as_completed(ids, timeout=60)]
            assert sorted(r.task_id for r in records) == ids
            assert all(r.status is TaskStatus.SUCCEEDED for r in records)
            assert len(dispatcher._waiting) == 0
            assert not dispatcher._since and not dispatcher._holding and not dispatcher._waiters
            again = await dispatcher.wait("t007", 5)
            assert again.status is TaskStatus.SUCCEEDED and result_of(again).summary == "t007"
            assert (await dispatcher.result("t499", 5)).summary == "t499"
            assert len(dispatcher._waiting) == 0, "a wait for a finished task leaves nothing behind"
    finally:
        worker.stop()
        await running
    assert worker.stats.succeeded == 500


# --- poisoned notifications ---------------------------------------------------------------------


async def test_poisoned_notifications_are_set_aside_and_a_valid_task_beside_them_still_runs(
    coord_conn: coord.Coord,
) -> None:
    names, tasks, js = coord_conn.names, coord_conn.tasks, coord_conn.js
    poisoned = ["naive-record", "naive-visible", "unknown-field", "wrong-types", "far-future"]
    records = {t: await tasks.schedule(t, queue="q", spec=spec_of(t)) for t in poisoned}
    for task_id in poisoned:  # only the crafted notification below is left for each of them
        await js.purge_stream(names.dispatch_stream, subject=names.notification_subject("q", task_id))

    def head(task_id: str) -> dict[str, object]:
        record = records[task_id]
        return {"task_id": task_id, "revision": record.revision, "epoch": 0, "visible_at": None}

    naive_record = json.loads(records["naive-record"].model_dump_json())
    naive_record["created_at"] = naive_record["updated_at"] = "2025-06-01T12:00:00"
    bodies = {
        "naive-record": {**head("naive-record"), "record": naive_record},
        "naive-visible": {**head("naive-visible"), "visible_at": "2025-06-01T12:00:00"},
        "unknown-field": {**head("unknown-field"), "priority": 5},
        "wrong-types": {**head("wrong-types"), "revision": "latest", "epoch": [0]},
        "far-future": {**head("far-future"), "visible_at": "9999-12-31T23:59:59+00:00"},
    }
    for task_id, body in bodies.items():
        await js.publish(
            names.notification_subject("q", task_id),
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": f"crafted-{task_id}"},
        )
    await tasks.schedule("good", queue="q", spec=spec_of("good"))

    worker = Worker(coord_conn, ["q"], as_handler(_ok))
    running = asyncio.create_task(worker.run())
    started = time.monotonic()
    try:

        async def good_done() -> bool:
            return (await tasks.get("good")).status is TaskStatus.SUCCEEDED

        await eventually(good_done, 15, "the valid task to run")

        async def four_dead_letters() -> bool:
            return worker.stats.dead_lettered == 4

        await eventually(four_dead_letters, 10, "the four malformed notifications to be dead-lettered")
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - started)))  # watch the far-future one for 5 s
        info = await js.consumer_info(names.dispatch_stream, names.queue_consumer("q"))
    finally:
        worker.stop()
        await running
    letters = await coord_conn.dead_letters.read("dispatch")
    assert sorted(letter.subject or "" for letter in letters) == sorted(
        names.notification_subject("q", t) for t in poisoned[:4]
    )
    assert all("malformed notification" in letter.reason for letter in letters)
    # six messages reached the consumer; only the far-future one may have come back, once at most
    assert info.delivered.consumer_seq is not None and info.delivered.consumer_seq <= 7
    assert (info.num_ack_pending, info.num_pending) == (1, 0), "the far-future notification is held back"
    assert worker.stats.claimed == worker.stats.succeeded == 1
    for task_id in poisoned:  # nothing was lost: each stays pending for the reclaimer to notify again
        record = await tasks.get(task_id)
        assert (record.status, record.epoch) == (TaskStatus.PENDING, 0)
