"""The worker intake on the one consumer component, against a real nats-server: every path counts
deliveries and is bounded, a re-pointed consumer is noticed and work resumes once it is set back,
and ``wait_started`` means "present and fetching". Each test fails on the code before the component."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api

import coord
from coord.consumer import RENEW_AT, queue_consumer_config
from coord.naming import Names
from coord.provision import queue_consumers
from coord.tasks import Notification, TaskStatus
from coord.wire import Result, Spec
from workers import Context, Worker
from workers.intake import Intake, Slots
from workers.stats import WorkerStats


async def quick(spec: Spec, ctx: Context) -> Result:
    return Result.success(summary=spec.task_id)


async def _bump_deliveries(conn: coord.Coord, queue: str, times: int) -> None:
    """Have the notification at the head of ``queue`` delivered ``times`` times (NAKed at once each time)."""
    sub = await conn.js.pull_subscribe_bind(conn.names.queue_consumer(queue), stream=conn.names.dispatch_stream)
    for _ in range(times):
        msg = (await sub.fetch(1, timeout=5))[0]
        await msg.nak()
    await sub.unsubscribe()


async def _queued(conn: coord.Coord, queue: str, task_id: str) -> bool:
    return conn.names.notification_subject(queue, task_id) in await conn.tasks.queued_notifications()


async def test_a_notification_refused_by_the_gate_is_counted_and_never_stranded(coord_conn: coord.Coord) -> None:
    """Before: every gate refusal NAKed without looking at the delivery count (here: a notification of
    a limited queue whose record is not there, put back every second), so it was redelivered until
    the server's max_deliver and then sat in the stream for good. Now it is renewed (here: dropped,
    its task does not exist) once it reaches RENEW_AT deliveries."""
    conn = coord_conn
    await queue_consumers(conn.nc, conn.js, conn.names, "lim", apply=True)
    await conn.limits.set("lim", concurrency=5)
    forged = Notification(task_id="ghost", revision=1, epoch=0)
    await conn.js.publish(conn.names.notification_subject("lim", "ghost"), forged.model_dump_json().encode())
    await _bump_deliveries(conn, "lim", RENEW_AT - 1)
    worker = Worker(conn, ["lim"], quick)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_started(), 10)
        async with asyncio.timeout(8):
            while await _queued(conn, "lim", "ghost"):
                await asyncio.sleep(0.1)
        assert worker.stats.dropped_notifications >= 1
    finally:
        worker.stop()
        await running


async def _intake(conn: coord.Coord, queue: str, stats: WorkerStats) -> Intake:
    return Intake(
        conn,
        queue,
        worker_id="w-policy",
        lease=None,
        slots=Slots(1),
        max_batch=1,
        on_claim=lambda claim, record: None,
        present=asyncio.Event(),
        stopping=asyncio.Event(),
        stats=stats,
    )


async def _core_delivery(conn: coord.Coord, subject: str, body: bytes) -> Msg:
    """A message as a core subscriber gets it: no JetStream metadata (its delivery count cannot be read)."""
    sub = await conn.nc.subscribe(subject)
    await conn.nc.publish(subject, body, reply=conn.nc.new_inbox())
    msg = await sub.next_msg(timeout=2)
    await sub.unsubscribe()
    return msg


async def test_a_failing_notification_whose_delivery_count_cannot_be_read_is_dead_lettered_not_retried(
    coord_conn: coord.Coord,
) -> None:
    """Before: any metadata error read as delivery 1, so such a message was put back for ever."""
    conn = coord_conn
    stats = WorkerStats()
    intake = await _intake(conn, "meta", stats)
    note = Notification(task_id="t1", revision=1, epoch=0)
    msg = await _core_delivery(conn, "probe.meta.t1", note.model_dump_json().encode())
    await intake._set_aside(msg, note, RuntimeError("the server went away"))
    assert stats.dead_lettered == 1
    letters = []
    async with asyncio.timeout(5):
        async for letter in conn.dead_letters.tail(since=60):
            letters.append(letter)
            if letter.task_id == "t1":
                break
    assert "unknown number of" in letters[-1].reason


async def test_a_waiting_notification_whose_delivery_count_cannot_be_read_is_renewed_from_the_record(
    coord_conn: coord.Coord,
) -> None:
    """A waiting notification with no readable count is replaced by a fresh one (the stored record
    decides), instead of being put back as if it were its first delivery."""
    conn = coord_conn
    await queue_consumers(conn.nc, conn.js, conn.names, "meta2", apply=True)
    record = await conn.tasks.schedule(task_id="t2", queue="meta2", spec=None)
    await conn.js.purge_stream(conn.names.dispatch_stream, subject=conn.names.notification_subject("meta2", "t2"))
    stats = WorkerStats()
    intake = await _intake(conn, "meta2", stats)
    note = Notification(task_id="t2", revision=record.revision, epoch=record.epoch)
    msg = await _core_delivery(conn, "probe.meta2.t2", note.model_dump_json().encode())
    await intake._wait(msg, note, 1.0)
    assert stats.renewed_notifications == 1
    assert await _queued(conn, "meta2", "t2")


async def test_a_repointed_consumer_is_reported_loudly_and_work_resumes_once_it_is_provisioned_again(
    coord_conn: coord.Coord, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a worker only checked that its consumer existed, so one whose filter was moved to an
    empty subject (by a credential that could update it) starved the queue without a word."""
    caplog.set_level(logging.WARNING, "corral.consumer")
    conn = coord_conn
    names = conn.names
    await queue_consumers(conn.nc, conn.js, names, "rp", apply=True)
    worker = Worker(conn, ["rp"], quick)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_started(), 10)
        hostile = queue_consumer_config(names, "rp")
        hostile.filter_subject = f"{names.namespace}.dispatch.nothing.*"
        await conn.js.add_consumer(names.dispatch_stream, hostile)
        async with asyncio.timeout(15):
            while not any("DIFFERS FROM ITS CONFIGURATION" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.1)
        loud = next(r for r in caplog.records if "DIFFERS" in r.getMessage())
        assert loud.levelno == logging.WARNING and "filter_subject" in loud.getMessage()
        assert "corral provision --queue rp" in loud.getMessage()
        await conn.tasks.schedule(task_id="rp1", queue="rp", spec=Spec(task_id="rp1", queue="rp").stored())
        await asyncio.sleep(1.0)
        assert (await conn.tasks.get("rp1")).status is TaskStatus.PENDING  # nothing to pull while re-pointed
        fixed = await queue_consumers(conn.nc, conn.js, names, "rp", apply=True)  # `corral provision --queue rp`
        assert [s.state.value for s in fixed] == ["unchanged", "updated", "unchanged"]  # high, normal, low
        async with asyncio.timeout(15):
            while (await conn.tasks.get("rp1")).status is not TaskStatus.SUCCEEDED:
                await asyncio.sleep(0.1)
        assert any("as configured again" in r.getMessage() for r in caplog.records)
    finally:
        worker.stop()
        await running


async def test_wait_started_returns_once_the_consumers_exist_and_are_pulled_from(coord_conn: coord.Coord) -> None:
    """Before: wait_started returned once presence was joined, before the intake had looked at (or
    made) its consumers."""
    conn = coord_conn
    worker = Worker(conn, ["ws"], quick)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_started(), 10)
        # at once: the consumer exists, as configured (before, it might not exist yet)
        info = await conn.js.consumer_info(conn.names.dispatch_stream, conn.names.queue_consumer("ws"))
        assert info.config.filter_subject == conn.names.queue_filter("ws")
        # the worker's idle pull was sent before wait_started returned; the server registers it on its own time
        async with asyncio.timeout(1.0):
            while info.num_waiting < 1:
                await asyncio.sleep(0.02)
                info = await conn.js.consumer_info(conn.names.dispatch_stream, conn.names.queue_consumer("ws"))
    finally:
        worker.stop()
        await running


def test_the_queue_consumer_config_is_what_the_server_keeps() -> None:
    config = queue_consumer_config(Names("cfg"), "jobs")
    assert config.ack_policy is js_api.AckPolicy.EXPLICIT and config.filter_subject == "cfg.dispatch.jobs.*"
