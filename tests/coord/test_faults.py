"""Regression tests for substrate faults: watches that never became ready, leaked consumers, retention,
reclaims decided on a stale view, a watch that lost its consumer, a poisoned event."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import DeliverPolicy

import coord
from coord.errors import NotFound, StaleClaim
from coord.events import Errored, ReceivedEvent, TurnEnded
from coord.kv import Entry, KeyWatch, Op
from coord.naming import Names
from coord.presence import AgentInfo
from coord.server import NatsServer
from coord.tasks import ScheduleRequest, TaskStatus, TaskStore, Transition
from tests.helpers_wait import eventually


async def sleep_until(when: datetime) -> None:
    await asyncio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))


def namespace_streams(names: Names) -> list[str]:
    return [
        f"KV_{names.presence_bucket}",
        f"KV_{names.tasks_bucket}",
        f"KV_{names.registry_bucket}",
        f"KV_{names.schedules_bucket}",
        f"KV_{names.limits_bucket}",
        f"KV_{names.roster_bucket}",
        f"OBJ_{names.blobs_bucket}",
        names.dispatch_stream,
        names.events_stream,
        names.inbox_stream,
    ]


# --- watches over nothing --------------------------------------------------------------------------


async def _absent_at_once(conn: coord.Coord, agent_id: str) -> None:
    started = time.monotonic()
    assert await conn.presence.wait_absent(agent_id, 5) is True
    took = time.monotonic() - started
    assert took < 1.0, f"wait_absent({agent_id!r}) took {took:.2f}s: its watch never became ready"


async def test_waiting_for_an_absent_agent_is_true_at_once_whatever_the_presence_bucket_held(
    coord_conn: coord.Coord,
) -> None:
    await _absent_at_once(coord_conn, "nobody")  # never written
    async with coord_conn.presence.join(AgentInfo(id="somebody"), interval=0.5, ttl=2):
        await _absent_at_once(coord_conn, "nobody")  # another agent's key only
        assert await coord_conn.presence.wait_absent("somebody", 0.5) is False
    await _absent_at_once(coord_conn, "somebody")  # a tombstone
    await coord_conn.js.purge_stream(f"KV_{coord_conn.names.presence_bucket}")
    await _absent_at_once(coord_conn, "nobody")  # emptied: nothing left, the stream's sequence past 0
    await _absent_at_once(coord_conn, "somebody")


async def _ready_at_once(store: TaskStore) -> None:
    """An index over ``store``'s empty bucket is ready within a second; listing (with and without it) too."""
    started = time.monotonic()
    async with await store.index().start(within=5) as index:
        assert time.monotonic() - started < 1.0, "an index over an emptied bucket must be ready at once"
        assert index.ready and len(index) == 0
        assert await asyncio.wait_for(store.list(), 1) == []
    assert await asyncio.wait_for(store.list(), 1) == []  # the scan, without an index


async def _written_then_emptied(conn: coord.Coord) -> None:
    ids = [f"t{i}" for i in range(20)]
    await conn.tasks.schedule_many([ScheduleRequest(task_id=t, queue="q", spec=None) for t in ids])
    bucket = conn.tasks.bucket
    for i, task_id in enumerate(ids):
        await (bucket.delete(task_id) if i % 2 else bucket.purge(task_id))


async def test_an_index_and_a_scan_of_an_emptied_tasks_bucket_are_ready_at_once(
    coord_conn: coord.Coord, nats_server: NatsServer
) -> None:
    await _ready_at_once(coord_conn.tasks)  # never written
    await _written_then_emptied(coord_conn)
    await _ready_at_once(coord_conn.tasks)  # only tombstones left
    stream = coord_conn.tasks.bucket.stream
    await coord_conn.js.purge_stream(stream)
    assert (await coord_conn.js.stream_info(stream)).state.messages == 0
    # nothing left, though the stream's sequence is past 0: a process starting now finds it at once
    async with coord.connect(nats_server.url, namespace=coord_conn.namespace) as fresh:
        await _ready_at_once(fresh.tasks)


async def test_listing_through_an_index_of_a_purged_bucket_answers_at_once_for_the_store_that_wrote_it(
    coord_conn: coord.Coord,
) -> None:
    await _written_then_emptied(coord_conn)
    await coord_conn.js.purge_stream(coord_conn.tasks.bucket.stream)
    await _ready_at_once(coord_conn.tasks)


# --- journals -----------------------------------------------------------------------------------------


async def test_reading_two_thousand_journals_in_a_row_leaves_no_consumer_behind(coord_conn: coord.Coord) -> None:
    ids = [f"j{i}" for i in range(2000)]
    for start in range(0, len(ids), 500):
        await coord_conn.tasks.schedule_many(
            [ScheduleRequest(task_id=t, queue="q", spec=None) for t in ids[start : start + 500]]
        )
    for task_id in ids:
        entries = await coord_conn.tasks.journal(task_id)
        assert [(e.status, e.transition) for e in entries] == [(TaskStatus.PENDING, Transition.SCHEDULED)]
    stream = coord_conn.names.events_stream
    assert (await coord_conn.js.stream_info(stream)).state.consumer_count == 0
    assert await coord_conn.js.consumers_info(stream) == []


async def test_a_ready_watch_follows_with_one_consumer_and_a_stop_leaves_none(coord_conn: coord.Coord) -> None:
    await coord_conn.tasks.schedule_many([ScheduleRequest(task_id=f"w{i}", queue="q", spec=None) for i in range(20)])
    stream = f"KV_{coord_conn.names.tasks_bucket}"
    subscriptions_before = len(coord_conn.nc._subs)
    for round_ in range(3):
        seen: list[str] = []

        def on_entry(entry: Entry, seen: list[str] = seen) -> None:
            seen.append(entry.key)

        watch = KeyWatch(coord_conn.tasks.bucket, on_entry, headers_only=True)
        await watch.start(within=5)
        # the last-per-key snapshot is swapped for one consumer that follows from the next revision
        policies: list[str] = []
        for _ in range(100):
            consumers = await coord_conn.js.consumers_info(stream)
            policies = [str(c.config.deliver_policy) for c in consumers if c.push_bound]
            if policies == [DeliverPolicy.BY_START_SEQUENCE.value]:
                break
            await asyncio.sleep(0.05)
        assert policies == [DeliverPolicy.BY_START_SEQUENCE.value]
        assert len(coord_conn.nc._subs) == subscriptions_before + 1
        late = f"late{round_}"
        await coord_conn.tasks.schedule(task_id=late, queue="q", spec=None)
        await eventually(lambda late=late, seen=seen: late in seen, 5, "the follower to deliver a later write")
        await watch.stop()
        assert len(coord_conn.nc._subs) == subscriptions_before
    bound: list[str] = []
    for _ in range(40):  # the server notices the interest is gone a moment after the unsubscribe
        bound = [c.name for c in await coord_conn.js.consumers_info(stream) if c.push_bound]
        if not bound:
            break
        await asyncio.sleep(0.05)
    assert bound == []


# --- retention and size limits --------------------------------------------------------------------


async def test_a_finished_record_expires_after_the_retention_and_a_pending_one_stays(
    nats_server: NatsServer, namespace: str
) -> None:
    settings = coord.Settings.load(task_retention=2)
    async with coord.connect(nats_server.url, namespace=namespace, settings=settings) as conn:
        store = conn.tasks
        await store.schedule("done", queue="q", spec=None)
        await store.schedule("waiting", queue="q", spec=None)
        async with store.index() as index:
            await store.complete(await store.claim("done", "w1"), "ok")
            finished = time.monotonic()
            await eventually(
                lambda: (e := index.entry("done")) is not None and e.status is TaskStatus.SUCCEEDED,
                2,
                "the index to see the completion",
            )
            await eventually(lambda: index.entry("done") is None, 8, "the index to drop the expired record")
            gone = time.monotonic() - finished
            assert gone >= 1.5, f"the record went {gone:.2f}s after it finished, before its 2 s retention"
            with pytest.raises(NotFound):
                await store.get("done")
            assert [r.task_id for r in await store.list()] == ["waiting"]  # through the index
            assert index.entry("waiting") is not None
        latest = await store.bucket.get("done")
        assert latest is not None and latest.op is Op.EXPIRED, "the server's expiry marker is what watchers see"
        assert [(r.task_id, r.status) for r in await store.list()] == [("waiting", TaskStatus.PENDING)]  # scan


async def test_every_stream_and_bucket_of_a_namespace_is_created_with_the_byte_limit(
    nats_server: NatsServer, namespace: str
) -> None:
    settings = coord.Settings.load(max_bytes=48 << 20)
    async with coord.connect(nats_server.url, namespace=namespace, settings=settings) as conn:
        limits = {name: (await conn.js.stream_info(name)).config.max_bytes for name in namespace_streams(conn.names)}
        found: set[str] = set()
        offset = 0
        while True:  # every stream of the server, page by page: none of this namespace is missing above
            page = await conn.js.streams_info(offset)
            found.update(i.config.name for i in page if i.config.name and namespace in i.config.name)
            if not page:
                break
            offset += len(page)
    assert limits == dict.fromkeys(namespace_streams(conn.names), settings.max_bytes)
    assert found == set(limits)


# --- reclaims and watches after a restart ----------------------------------------------------------


async def test_a_deadline_reclaim_is_decided_on_the_fresh_record_after_a_heartbeat(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    await tasks.schedule("t1", queue="q", spec=None)
    claim = await tasks.claim("t1", "w1", lease=1)
    old_deadline = claim.deadline
    await sleep_until(old_deadline - timedelta(seconds=0.2))  # 0.8 s into the 1 s lease
    await tasks.heartbeat(claim)
    new_deadline = claim.deadline
    assert new_deadline > old_deadline + timedelta(seconds=0.5)
    await sleep_until(old_deadline + timedelta(seconds=0.2))  # 1.2 s: past the old deadline, not the new one
    assert old_deadline < datetime.now(UTC) < new_deadline
    before = await tasks.get("t1")
    journal = await tasks.journal("t1")
    with pytest.raises(StaleClaim, match="not overdue"):
        await tasks.reclaim("t1", claim.claim_id, reason="deadline", overdue_only=True)
    after = await tasks.get("t1")
    assert (after.revision, after.status, after.error) == (before.revision, TaskStatus.CLAIMED, None)
    assert await tasks.journal("t1") == journal, "a refused reclaim writes nothing"
    await sleep_until(new_deadline)
    await asyncio.sleep(0.05)
    reclaimed = await tasks.reclaim("t1", claim.claim_id, reason="deadline", overdue_only=True)
    assert (reclaimed.status, reclaimed.error, reclaimed.transition) == (
        TaskStatus.PENDING,
        "deadline",
        Transition.RECLAIMED,
    )


async def test_a_running_index_sees_a_heartbeat_written_after_a_server_restart_within_seconds(
    own_server: NatsServer, namespace: str
) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        tasks = conn.tasks
        await tasks.schedule("t1", queue="q", spec=None)
        claim = await tasks.claim("t1", "w1", lease=60)
        async with tasks.index() as index:
            await eventually(
                lambda: (e := index.entry("t1")) is not None and e.revision == claim.revision, 2, "the claim"
            )
            await asyncio.to_thread(own_server.stop, remove_store=False)
            await asyncio.to_thread(own_server.start)
            await eventually(lambda: conn.nc.is_connected, 10, "the client to reconnect")
            await tasks.heartbeat(claim)
            took = await eventually(
                lambda: (e := index.entry("t1")) is not None and e.revision == claim.revision,
                10,
                "the index to see the heartbeat",
            )
            entry = index.entry("t1")
    # nats-py checks an ordered consumer's activity every 2 idle heartbeats (1 s each) and re-creates it after a
    # whole quiet check period, so a lost consumer is replaced 2-4 s after the loss (a watch without one: ~20 s).
    assert took < 4.5, f"the index saw a heartbeat written after the restart only after {took:.2f}s"
    assert entry is not None and entry.deadline is not None
    assert abs(entry.deadline - claim.deadline) < timedelta(milliseconds=1)  # the index keeps milliseconds


# --- events ------------------------------------------------------------------------------------------


async def test_an_event_with_a_naive_time_is_dead_lettered_and_later_events_about_that_child_still_apply(
    coord_conn: coord.Coord,
) -> None:
    subject = coord_conn.names.event_subject("boss", "kid", "errored")
    naive = {"id": "ev-naive", "agent": "kid", "kind": "errored", "message": "naive", "at": "2025-01-01T12:00:00"}
    await coord_conn.js.publish(subject, json.dumps(naive).encode())
    handled: list[str] = []

    def on_event(received: ReceivedEvent) -> None:
        handled.append(received.event.id)

    later: list[TurnEnded | Errored] = [TurnEnded(agent="kid", turn=2), Errored(agent="kid", message="disk full")]
    async with coord_conn.events.listener("boss", on_event=on_event) as listener:
        await listener.catch_up()
        for event in later:
            assert await coord_conn.events.emit("boss", event)
        await listener.catch_up()
    assert handled == [e.id for e in later]
    kid = (await coord_conn.events.descendants("boss"))["kid"]
    assert (kid.last_turn, kid.last_error, kid.direct) == (2, "disk full", True)
    assert kid.last_event_at is not None and kid.last_event_at.tzinfo is not None
    [letter] = await coord_conn.dead_letters.read("events")
    assert letter.subject == subject and "at" in letter.reason and "ev-naive" in letter.body
