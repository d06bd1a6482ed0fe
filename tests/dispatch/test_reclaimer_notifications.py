"""No pending task without a deliverable notification (real server): a notification its consumer gave up
on (max_deliver), a purged one, and one on a subject no consumer reads are each dealt with by the sweep,
and the task is then run by a worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats.js.errors
import pytest

import coord
from coord.authconfig import parse_grant, write_auth
from coord.consumer import SERVER_MAX_DELIVER, create_queue_consumers, queue_consumer_config
from coord.errors import PermissionDenied
from coord.naming import Names
from coord.roles import Role, inbox_prefix, permissions_for
from coord.server import NatsServer
from coord.streams import Stream
from coord.tasks import TaskStatus
from coord.wire import Result, Spec
from dispatch import Reclaimer
from workers import Context, Worker

SWEEP = 0.2
RENOTIFY_AFTER = 2.0
BOUND = RENOTIFY_AFTER + RENOTIFY_AFTER / 2 + SWEEP + 2.0
"""docs/architecture.md "Lost notifications": renotify_after + min(renotify_after / 2, 10 s) + the sweep,
plus 2 s for a loaded machine."""


async def _done(spec: Spec, ctx: Context) -> Result:
    return Result.success()


@asynccontextmanager
async def worker(conn: coord.Coord) -> AsyncIterator[Worker]:
    running = Worker(conn, ["q"], _done, concurrency=2, worker_id="w1")
    task = asyncio.create_task(running.run())
    try:
        await asyncio.wait_for(running.wait_started(), 10)
        yield running
    finally:
        running.stop()
        await task


async def _normal_consumer(conn: coord.Coord, queue: str) -> str:
    """Create ``queue``'s consumers (as its first parent does) and name the one of the normal level."""
    await create_queue_consumers(conn.nc, conn.js, conn.names, queue)
    durable = queue_consumer_config(conn.names, queue).durable_name
    assert durable is not None
    return durable


async def _schedule(conn: coord.Coord, task_id: str, queue: str) -> None:
    await conn.tasks.schedule(task_id, queue=queue, spec=Spec(task_id=task_id, queue=queue).model_dump(mode="json"))


async def _status(conn: coord.Coord, task_id: str, want: TaskStatus, within: float) -> None:
    async with asyncio.timeout(within):
        while (await conn.tasks.get(task_id)).status is not want:
            await asyncio.sleep(0.05)


async def _stored(conn: coord.Coord, subject: str) -> list[int]:
    """Sequences of the messages stored on ``subject`` (a work-queue stream admits no ordered consumer)."""
    found: list[int] = []
    while True:
        try:
            msg = await conn.js.get_msg(
                conn.names.dispatch_stream, seq=found[-1] + 1 if found else 1, subject=subject, next=True
            )
        except nats.js.errors.NotFoundError:
            return found
        found.append(msg.seq or 0)


async def _subjects(conn: coord.Coord) -> set[str]:
    return await Stream(conn.js, conn.nc, conn.names.dispatch_stream).subjects(conn.names.dispatch_subjects)


@pytest.mark.parametrize(
    ("reclaimers", "candidate"),
    [(1, True), (2, True), (2, False)],
    ids=["one", "two-elected", "two-acting-at-once"],  # acting at once: a fail-over overlap
)
async def test_a_notification_naked_until_max_deliver_is_removed_and_its_task_renotified_once_and_run(
    nats_server: NatsServer, coord_conn: coord.Coord, reclaimers: int, candidate: bool
) -> None:
    names = coord_conn.names
    subject = names.notification_subject("q", "t")
    await _schedule(coord_conn, "t", "q")
    durable = await _normal_consumer(coord_conn, "q")
    pull = await coord_conn.js.pull_subscribe_bind(durable, stream=names.dispatch_stream)
    naks = 0
    async with asyncio.timeout(30):  # a gate forced to refuse: NAK at once, every time
        while naks < SERVER_MAX_DELIVER:
            for msg in await pull.fetch(1, timeout=5):
                await msg.nak()
                naks += 1
    (stranded,) = await _stored(coord_conn, subject)
    async with asyncio.timeout(10):  # the server gives up on it: nothing ack-pending, its ack floor below it
        while (info := await coord_conn.js.consumer_info(names.dispatch_stream, durable)).num_ack_pending:
            with contextlib.suppress(TimeoutError):
                assert not await pull.fetch(1, timeout=0.5)  # never delivered again
    assert info.delivered.stream_seq == stranded and info.ack_floor.stream_seq < stranded
    with contextlib.suppress(TimeoutError):
        assert not await pull.fetch(1, timeout=1.0)
    assert await _stored(coord_conn, subject) == [stranded]
    await pull.unsubscribe()
    async with contextlib.AsyncExitStack() as stack:
        conns = [coord_conn] + [
            await stack.enter_async_context(coord.connect(nats_server.url, namespace=coord_conn.namespace))
            for _ in range(reclaimers - 1)
        ]
        sweepers = [
            await stack.enter_async_context(
                Reclaimer(c, sweep_interval=SWEEP, renotify_after=RENOTIFY_AFTER, candidate=candidate)
            )
            for c in conns
        ]
        async with asyncio.timeout(BOUND):
            while await _stored(coord_conn, subject) in ([stranded], []):
                await asyncio.sleep(0.1)
        await asyncio.sleep(2 * RENOTIFY_AFTER)  # every reclaimer has made passes over it since
        renewed = await _stored(coord_conn, subject)
        assert len(renewed) == 1 and renewed[0] > stranded  # one fresh notification, whatever the reclaimers
        assert sum(s.removed for s in sweepers) == 1 and sum(s.renotified for s in sweepers) == 1
        async with worker(coord_conn):
            await _status(coord_conn, "t", TaskStatus.SUCCEEDED, 10)


async def test_a_notification_naked_with_a_delay_is_not_taken_for_given_up(coord_conn: coord.Coord) -> None:
    names = coord_conn.names
    await _schedule(coord_conn, "d", "q")
    durable = await _normal_consumer(coord_conn, "q")
    pull = await coord_conn.js.pull_subscribe_bind(durable, stream=names.dispatch_stream)
    (msg,) = await pull.fetch(1, timeout=5)
    await msg.nak(delay=30)  # e.g. a gate waiting for a slot, or a task not visible yet
    (seq,) = await _stored(coord_conn, names.notification_subject("q", "d"))
    async with Reclaimer(coord_conn, sweep_interval=SWEEP, renotify_after=RENOTIFY_AFTER) as reclaimer:
        await asyncio.sleep(BOUND)
        assert reclaimer.removed == 0 and reclaimer.renotified == 0
    assert await _stored(coord_conn, names.notification_subject("q", "d")) == [seq]
    await pull.unsubscribe()


async def test_a_purged_notification_is_published_again_and_its_task_run(coord_conn: coord.Coord) -> None:
    names = coord_conn.names
    await _schedule(coord_conn, "p", "q")
    (seq,) = await _stored(coord_conn, names.notification_subject("q", "p"))
    await coord_conn.js.delete_msg(names.dispatch_stream, seq)
    async with Reclaimer(coord_conn, sweep_interval=SWEEP, renotify_after=RENOTIFY_AFTER) as reclaimer:
        async with asyncio.timeout(BOUND):
            while not await _stored(coord_conn, names.notification_subject("q", "p")):
                await asyncio.sleep(0.1)
        assert reclaimer.renotified == 1
        async with worker(coord_conn):
            await _status(coord_conn, "p", TaskStatus.SUCCEEDED, 10)


async def test_messages_no_consumer_reads_are_removed_and_waiting_ones_are_kept(coord_conn: coord.Coord) -> None:
    names, ns = coord_conn.names, coord_conn.namespace
    await _schedule(coord_conn, "w", "unserved")  # no worker yet: it waits, untouched
    waiting = await _stored(coord_conn, names.notification_subject("unserved", "w"))
    unread = [f"{ns}.dispatch.q", f"{ns}.dispatch.q.t.bogus", f"{ns}.dispatch.q.t.normal", f"{ns}.dispatch.a.b.c.d"]
    # A stream provisioned before its subjects were narrowed still takes them (a narrowed one refuses
    # them: tests/coord/test_dispatch_subjects.py); what they left behind is removed by the sweep.
    info = await coord_conn.js.stream_info(names.dispatch_stream)
    narrowed = info.config.subjects
    info.config.subjects = [f"{ns}.dispatch.>"]
    await coord_conn.js.update_stream(info.config)
    for subject in unread:
        await coord_conn.js.publish(subject, b"{}")
    info.config.subjects = narrowed
    await coord_conn.js.update_stream(info.config)
    async with Reclaimer(coord_conn, sweep_interval=SWEEP, renotify_after=RENOTIFY_AFTER) as reclaimer:
        async with asyncio.timeout(BOUND):
            while await _subjects(coord_conn) != {names.notification_subject("unserved", "w")}:
                await asyncio.sleep(0.1)
        assert reclaimer.removed == len(unread) and reclaimer.renotified == 0
    assert await _stored(coord_conn, names.notification_subject("unserved", "w")) == waiting


def test_only_the_sweeping_roles_may_delete_notifications() -> None:
    names = Names("perm")
    delete = f"$JS.API.STREAM.MSG.DELETE.{names.dispatch_stream}"
    for role, allowed in ((Role.reclaimer, True), (Role.parent, True), (Role.worker, False), (Role.scheduler, False)):
        granted = permissions_for(names, "x1", {role})
        assert granted is not None and (delete in granted.publish_allow) is allowed, role


async def test_a_reclaimer_credential_removes_what_a_worker_credential_may_not(tmp_path: Path) -> None:
    names = Names("perm")
    creds = tmp_path / "creds"
    write_auth(creds, names, [parse_grant(g) for g in ("provisioner:admin", "worker:w1", "reclaimer:r1")])

    def auth(identity: str) -> coord.Auth:
        return coord.Auth(nkeys_seed=str(creds / f"{identity}.nk"), inbox_prefix=inbox_prefix(names, identity))

    with NatsServer(store_dir=tmp_path / "store", config_extra=(creds / "auth.conf").read_text()) as server:
        async with (
            coord.connect(server.url, namespace="perm", auth=auth("admin"), provision="apply") as admin,
            coord.connect(server.url, namespace="perm", auth=auth("w1")) as worker,
            coord.connect(server.url, namespace="perm", auth=auth("r1")) as reclaimer,
        ):
            # a stream provisioned before its subjects were narrowed (a narrowed one refuses the subject)
            info = await admin.js.stream_info(names.dispatch_stream)
            narrowed, info.config.subjects = info.config.subjects, ["perm.dispatch.>"]
            await admin.js.update_stream(info.config)
            stray = Stream(worker.js, worker.nc, names.dispatch_stream)
            seq = await stray.publish("perm.dispatch.q", b"{}")  # a worker may publish notifications ...
            info.config.subjects = narrowed
            await admin.js.update_stream(info.config)
            with pytest.raises(PermissionDenied):
                await asyncio.wait_for(stray.delete(seq), 5)  # ... but never delete one
            async with Reclaimer(reclaimer, sweep_interval=SWEEP, renotify_after=RENOTIFY_AFTER) as sweeping:
                async with asyncio.timeout(BOUND):
                    while await _subjects(reclaimer):
                        await asyncio.sleep(0.1)
                assert sweeping.removed == 1
