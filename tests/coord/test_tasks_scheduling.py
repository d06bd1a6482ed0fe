"""Delayed tasks and priority levels in the task store: what the record, the notification and the names say."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

import coord
from coord.errors import InvalidInput, NotYetVisible, TaskExists
from coord.naming import Names
from coord.priority import LEVELS, Priority
from coord.tasks import Notification, TaskStatus
from dispatch.reclaimer import Reclaimer
from tests.coord.test_tasks import notifications


async def test_a_delayed_task_is_pending_until_its_start_and_its_notification_says_so(coord_conn: coord.Coord) -> None:
    store = coord_conn.tasks
    before = datetime.now(UTC)
    record = await store.schedule("d1", queue="q", spec=None, delay=30)
    assert record.status is TaskStatus.PENDING and record.delay == 30
    assert record.visible_at == record.not_before == record.created_at + timedelta(seconds=30)
    assert record.visible_at is not None
    assert before + timedelta(seconds=30) <= record.visible_at <= datetime.now(UTC) + timedelta(seconds=30)
    with pytest.raises(NotYetVisible, match="not due yet"):
        await store.claim("d1", "w1")
    [(_, note)] = await notifications(coord_conn, "q")
    assert note.visible_at == record.visible_at
    at = datetime.now(UTC) + timedelta(hours=2)
    later = await store.schedule("d2", queue="q", spec=None, not_before=at)
    assert later.visible_at == later.not_before == at and later.delay is None
    past = await store.schedule("d3", queue="q", spec=None, not_before=datetime.now(UTC) - timedelta(seconds=5))
    claim = await store.claim("d3", "w1")  # a start in the past is no delay
    assert claim.record.visible_at is None and claim.record.not_before == past.not_before


async def test_resubmitting_with_the_same_start_is_idempotent_and_with_another_is_task_exists(
    coord_conn: coord.Coord,
) -> None:
    store = coord_conn.tasks
    first = await store.schedule("r1", queue="q", spec=None, delay=20)
    await asyncio.sleep(0.05)
    again = await store.schedule("r1", queue="q", spec=None, delay=20)  # the same delay, asked later
    assert again.revision == first.revision and again.visible_at == first.visible_at
    with pytest.raises(TaskExists, match="start: existing delay 20s, requested delay 5s"):
        await store.schedule("r1", queue="q", spec=None, delay=5)
    with pytest.raises(TaskExists, match="start: existing delay 20s, requested at once"):
        await store.schedule("r1", queue="q", spec=None)
    with pytest.raises(TaskExists, match="start: existing delay 20s, requested not_before"):
        await store.schedule("r1", queue="q", spec=None, not_before=first.visible_at)
    with pytest.raises(TaskExists, match="priority: existing"):
        await store.schedule("r1", queue="q", spec=None, delay=20, priority="high")


async def test_bad_starts_and_priorities_are_refused_before_anything_is_written(coord_conn: coord.Coord) -> None:
    store = coord_conn.tasks
    with pytest.raises(ValidationError, match="not_before or delay, not both"):
        await store.schedule("b1", queue="q", delay=1, not_before=datetime.now(UTC))
    with pytest.raises(ValidationError, match="delay"):
        await store.schedule("b1", queue="q", delay=-1)
    with pytest.raises(ValidationError, match="not_before"):
        await store.schedule("b1", queue="q", not_before=datetime(2030, 1, 1))  # no timezone
    with pytest.raises(InvalidInput, match="priority 'urgent' is not a priority level"):
        await store.schedule("b1", queue="q", priority="urgent")
    assert await store.list() == []


async def test_each_priority_level_has_its_own_subject_and_the_task_id_keeps_its_position(
    coord_conn: coord.Coord,
) -> None:
    store = coord_conn.tasks
    for level in LEVELS:
        record = await store.schedule(f"p-{level}", queue="q", spec=None, priority=level)
        assert record.priority is level
    names = coord_conn.names
    queued = await store.queued_notifications()
    assert queued == {names.notification_subject("q", f"p-{level}", level) for level in LEVELS}
    assert names.notification_subject("q", "p-normal") == f"{names.namespace}.dispatch.q.p-normal"
    assert {names.notified_task(s) for s in queued} == {f"p-{level}" for level in LEVELS}
    # the normal consumer's filter (as before) takes only normal notifications
    assert [n.task_id for _, n in await notifications(coord_conn, "q")] == ["p-normal"]


@pytest.mark.parametrize("queue", ["x", "high-x", "low-x", "-x", "q-x", "highx", "h"])
def test_no_queue_name_makes_one_levels_consumer_name_another_queues(queue: str) -> None:
    names = Names("ns")
    others = ["x", "high-x", "low-x", "-x", "q-x", "highx", "h", "high", "low", "igh-x"]
    mine = {names.queue_consumer(queue, level) for level in LEVELS}
    assert len(mine) == len(LEVELS)
    theirs = {names.queue_consumer(q, level) for q in others if q != queue for level in LEVELS}
    assert not mine & theirs
    assert names.queue_consumer(queue, Priority.NORMAL) == f"q-{queue}"  # unchanged for existing fleets


async def test_the_sweep_never_renotifies_a_delayed_task_early_and_heals_a_lost_one_after_its_start(
    coord_conn: coord.Coord,
) -> None:
    store, names = coord_conn.tasks, coord_conn.names
    await store.schedule("lost", queue="q", spec=None, delay=2.0)
    await store.schedule("kept", queue="q", spec=None, delay=2.0, priority="low")
    # the notification of "lost" disappears (an operator purge); "kept" keeps its own
    await coord_conn.js.purge_stream(names.dispatch_stream, subject=names.notification_subject("q", "lost"))
    async with Reclaimer(coord_conn, sweep_interval=60, renotify_after=0.2) as reclaimer:
        await asyncio.sleep(0.5)
        assert await reclaimer.renotify_lost() == 0, "a delayed task was renotified before its start"
        await asyncio.sleep(1.8)
        assert await reclaimer.renotify_lost() == 1
        assert await reclaimer.renotify_lost() == 0, "renotified again while its notification is queued"
    queued = await store.queued_notifications()
    assert queued == {names.notification_subject("q", "lost"), names.notification_subject("q", "kept", "low")}
    [(_, note)] = await notifications(coord_conn, "q")
    assert isinstance(note, Notification) and note.task_id == "lost"
