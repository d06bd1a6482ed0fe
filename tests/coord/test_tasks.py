"""The task store's transitions, one at a time, against a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

import nats.aio.msg
import nats.js.errors
import pytest
from pydantic import ValidationError

import coord
from coord.errors import (
    Conflict,
    InvalidId,
    InvalidInput,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    StaleClaim,
    TaskExists,
)
from coord.tasks import (
    Backoff,
    Notification,
    ResultNotice,
    ScheduleRequest,
    TaskStatus,
    TaskStore,
    Transition,
)
from coord.tasks.journal import KEPT_HEARTBEATS


async def notifications(conn: coord.Coord, queue: str) -> list[tuple[str, Notification]]:
    """Every notification still in the dispatch stream for ``queue``: (Nats-Msg-Id, body)."""
    found: list[tuple[str, Notification]] = []
    seq = 1
    while True:
        try:
            msg = await conn.js.get_msg(
                conn.names.dispatch_stream, seq=seq, subject=conn.names.queue_filter(queue), next=True
            )
        except nats.js.errors.NotFoundError:
            return found
        assert msg.seq is not None and msg.data is not None
        seq = msg.seq + 1
        found.append(((msg.headers or {}).get("Nats-Msg-Id", ""), Notification.model_validate_json(msg.data)))


async def events_stream_messages(conn: coord.Coord) -> int:
    info = await conn.js.stream_info(conn.names.events_stream)
    return info.state.messages


@pytest.fixture
def store(coord_conn: coord.Coord) -> TaskStore:
    """A store whose retries back off by 50-100 ms (so tests can wait them out)."""
    return coord_conn.tasks.tuned(backoff=Backoff(base=0.1), visibility_tolerance=0.0)


# --- scheduling -----------------------------------------------------------------------------------


async def test_schedule_creates_a_pending_record_and_notifies_its_queue(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    record = await store.schedule("t1", queue="q", spec={"n": 1}, max_attempts=2, timeout=5, parent="p1")
    assert record.status is TaskStatus.PENDING
    assert (record.attempt, record.epoch, record.max_attempts, record.timeout) == (0, 0, 2, 5.0)
    assert record.revision > 0
    assert await store.get("t1") == record
    [(msg_id, note)] = await notifications(coord_conn, "q")
    assert (note.task_id, note.revision, note.epoch) == ("t1", record.revision, 0)
    assert msg_id == f"t1:0:{record.revision}"


async def test_scheduling_the_same_task_twice_returns_the_existing_record(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    first = await store.schedule("t1", queue="q", spec=[1, 2])
    again = await store.schedule("t1", queue="q", spec=[1, 2], meta={"traceparent": "ignored-for-identity"})
    assert again == first and again.revision == first.revision
    assert len(await notifications(coord_conn, "q")) == 1  # the repeat notification was deduplicated


async def test_scheduling_an_existing_id_with_another_definition_raises_task_exists(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec={"a": 1})
    with pytest.raises(TaskExists, match=r"spec: existing \{'a': 1\}, requested \{'a': 2\}"):
        await store.schedule("t1", queue="q", spec={"a": 2})
    with pytest.raises(TaskExists, match="queue"):
        await store.schedule("t1", queue="other", spec={"a": 1})


async def test_schedule_many_pipelines_and_keeps_the_order(store: TaskStore, coord_conn: coord.Coord) -> None:
    requests = [ScheduleRequest(task_id=f"t{i}", queue="q", spec=i) for i in range(50)]
    records = await store.schedule_many(requests)
    assert [r.task_id for r in records] == [f"t{i}" for i in range(50)]
    assert all(r.status is TaskStatus.PENDING for r in records)
    assert len({r.revision for r in records}) == 50
    assert len(await notifications(coord_conn, "q")) == 50
    again = await store.schedule_many(requests[:5])
    assert [r.revision for r in again] == [r.revision for r in records[:5]]


# --- claims ---------------------------------------------------------------------------------------


async def test_claim_hands_the_raw_token_to_the_worker_and_stores_only_its_hash(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    await store.schedule("t1", queue="q", spec=None, timeout=7)
    before = datetime.now(UTC)
    claim = await store.claim("t1", "w1")
    assert claim.epoch == 1 and claim.record.attempt == 1
    assert claim.lease == 7.0
    assert before + timedelta(seconds=7) <= claim.deadline <= datetime.now(UTC) + timedelta(seconds=7)
    kv = await coord_conn.kv(coord_conn.names.tasks_bucket)
    stored = (await kv.get("t1")).value
    assert stored is not None
    assert claim.token.encode() not in stored
    data = json.loads(stored)
    assert data["claim"]["token_sha256"] == hashlib.sha256(claim.token.encode()).hexdigest()
    assert data["status"] == "claimed" and data["claim"]["worker_id"] == "w1"
    assert "revision" not in data


async def test_claiming_a_claimed_task_is_a_conflict_and_an_ended_one_an_invalid_transition(
    store: TaskStore,
) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    with pytest.raises(Conflict, match="already claimed by w1"):
        await store.claim("t1", "w2")
    await store.complete(claim, "done")
    with pytest.raises(InvalidTransition, match="succeeded"):
        await store.claim("t1", "w2")


async def test_epoch_strictly_increases_with_every_claim(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=5)
    epochs = []
    claim = await store.claim("t1", "w1")
    epochs.append(claim.epoch)
    await store.release(claim)
    claim = await store.claim("t1", "w2")
    epochs.append(claim.epoch)
    await store.reclaim("t1", claim.claim_id, reason="worker-left")
    claim = await store.claim("t1", "w3")
    epochs.append(claim.epoch)
    failed = await store.fail(claim, "boom")
    assert failed.visible_at is not None
    await asyncio.sleep((failed.visible_at - datetime.now(UTC)).total_seconds() + 0.01)
    claim = await store.claim("t1", "w1")
    epochs.append(claim.epoch)
    assert epochs == [1, 2, 3, 4]


async def test_claim_from_a_stale_notification_uses_the_current_record(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    await store.schedule("t1", queue="q", spec=None)
    [(_, stale)] = await notifications(coord_conn, "q")
    first = await store.claim("t1", "w1")
    await store.release(first)  # pending again, at a newer revision
    claim = await store.claim("t1", "w2", revision=stale.revision)
    assert claim.worker_id == "w2" and claim.epoch == 2 and claim.record.attempt == 1


# --- heartbeat, complete, fail, release ------------------------------------------------------------


async def test_heartbeat_extends_the_deadline_and_records_progress(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1", lease=2)
    first_deadline, first_revision = claim.deadline, claim.revision
    await asyncio.sleep(0.05)
    same = await store.heartbeat(claim, progress={"done": 3, "of": 10})
    assert same is claim
    assert claim.deadline > first_deadline and claim.revision > first_revision
    record = await store.get("t1")
    assert record.progress == {"done": 3, "of": 10}
    assert record.claim is not None and record.claim.deadline == claim.deadline
    assert record.transition is Transition.HEARTBEAT


async def test_complete_records_the_result_once(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    done = await store.complete(claim, {"answer": 42})
    assert done.status is TaskStatus.SUCCEEDED and done.result == {"answer": 42} and done.claim is None
    with pytest.raises(StaleClaim):
        await store.complete(claim, {"answer": 43})
    assert (await store.get("t1")).result == {"answer": 42}


async def test_heartbeat_racing_complete_from_the_same_worker_both_land(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    outcomes = await asyncio.gather(store.heartbeat(claim), store.complete(claim, "r"), return_exceptions=True)
    final = await store.get("t1")
    assert final.status is TaskStatus.SUCCEEDED and final.result == "r"
    # the heartbeat either landed first or found the claim finished: never an error other than StaleClaim
    assert all(not isinstance(o, BaseException) or isinstance(o, StaleClaim) for o in outcomes)


async def test_fail_with_retry_backs_off_and_notifies_with_visible_at(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=3)
    claim = await store.claim("t1", "w1")
    before = datetime.now(UTC)
    record = await store.fail(claim, "flaky")
    assert record.status is TaskStatus.PENDING and record.error == "flaky" and record.attempt == 1
    assert record.visible_at is not None
    assert before + timedelta(seconds=0.05) <= record.visible_at <= datetime.now(UTC) + timedelta(seconds=0.1)
    with pytest.raises(InvalidTransition, match="backing off"):
        await store.claim("t1", "w2")
    notes = await notifications(coord_conn, "q")
    assert len(notes) == 2 and notes[-1][1].visible_at == record.visible_at
    assert notes[-1][1].revision == record.revision
    await asyncio.sleep((record.visible_at - datetime.now(UTC)).total_seconds() + 0.01)
    assert (await store.claim("t1", "w2")).record.attempt == 2


async def test_backoff_grows_exponentially_with_jitter() -> None:
    backoff = Backoff(base=1.0, factor=2.0, max=10.0, jitter=0.5)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert len(set(delays)) > 1
    assert Backoff(base=0).delay(3) == 0.0


async def test_fail_when_attempts_are_spent_is_dead_and_without_retry_is_failed(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=1)
    claim = await store.claim("t1", "w1")
    dead = await store.fail(claim, "boom")
    assert dead.status is TaskStatus.DEAD and dead.error == "boom"
    await store.schedule("t2", queue="q", spec=None, max_attempts=5)
    claim = await store.claim("t2", "w1")
    failed = await store.fail(claim, "bad input", retry=False)
    assert failed.status is TaskStatus.FAILED and failed.attempt == 1


async def test_a_failure_report_is_kept_as_the_attempts_result_until_the_next_claim(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=2)
    report = {"kind": "fail", "error": {"message": "disk full"}}
    pending = await store.fail(await store.claim("t1", "w1"), "disk full", result=report)
    assert pending.status is TaskStatus.PENDING and pending.result == report
    assert pending.visible_at is not None
    await asyncio.sleep((pending.visible_at - datetime.now(UTC)).total_seconds() + 0.01)
    claim = await store.claim("t1", "w2")
    assert claim.record.result is None  # a new attempt starts clean
    dead = await store.fail(claim, "disk still full", result={**report, "again": True})
    assert dead.status is TaskStatus.DEAD and dead.result == {**report, "again": True}


async def test_release_gives_the_task_back_without_counting_the_attempt(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=1)
    for _ in range(3):  # with max_attempts=1 only uncounted attempts can repeat
        claim = await store.claim("t1", "w1")
        released = await store.release(claim)
        assert released.status is TaskStatus.PENDING and released.attempt == 0 and released.visible_at is None
    assert len(await notifications(coord_conn, "q")) == 4
    assert (await store.claim("t1", "w1")).epoch == 4


# --- reclaim, cancel, retry -----------------------------------------------------------------------


async def test_reclaim_puts_the_task_back_and_counts_the_attempt(store: TaskStore, coord_conn: coord.Coord) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=2)
    claim = await store.claim("t1", "w1")
    record = await store.reclaim("t1", claim.claim_id, reason="worker-left:expired")
    assert record.status is TaskStatus.PENDING and record.attempt == 1 and record.claim is None
    assert record.error == "worker-left:expired" and record.last_worker == "w1"
    assert len(await notifications(coord_conn, "q")) == 2
    claim = await store.claim("t1", "w2")
    dead = await store.reclaim("t1", claim.claim_id)
    assert dead.status is TaskStatus.DEAD  # a task that kills its workers does not loop forever


async def test_reclaim_of_a_claim_that_is_not_current_is_stale(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    with pytest.raises(StaleClaim, match="c-other"):
        await store.reclaim("t1", "c-other")
    await store.complete(claim, None)
    with pytest.raises(StaleClaim, match="succeeded"):
        await store.reclaim("t1", claim.claim_id)


async def test_a_result_from_a_reclaimed_worker_is_rejected_and_not_recorded(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    old = await store.claim("t1", "w1")
    await store.reclaim("t1", old.claim_id, reason="deadline")
    new = await store.claim("t1", "w2")
    revision = (await store.get("t1")).revision
    for late in (store.complete(old, "late"), store.heartbeat(old), store.fail(old, "x"), store.release(old)):
        with pytest.raises(StaleClaim, match="no longer current"):
            await late
    record = await store.get("t1")
    assert record.revision == revision and record.result is None
    assert record.claim is not None and record.claim.claim_id == new.claim_id
    assert all(e.revision <= revision for e in await store.journal("t1"))


async def test_a_forged_token_is_rejected(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    claim.token = "not-the-token"
    with pytest.raises(StaleClaim, match="token"):
        await store.complete(claim, "forged")
    assert (await store.get("t1")).status is TaskStatus.CLAIMED


async def test_cancel_makes_a_claim_stale_and_is_idempotent(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    cancelled = await store.cancel("t1")
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.claim is None
    assert (await store.cancel("t1")).revision == cancelled.revision  # nothing written the second time
    with pytest.raises(StaleClaim):
        await store.complete(claim, "too late")
    await store.schedule("t2", queue="q", spec=None)
    assert (await store.cancel("t2")).status is TaskStatus.CANCELLED
    with pytest.raises(InvalidTransition, match="only a dead or failed task"):
        await store.retry("t2")


async def test_ended_tasks_cannot_be_cancelled(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    await store.complete(await store.claim("t1", "w1"), "ok")
    with pytest.raises(InvalidTransition, match="succeeded; it cannot be cancelled"):
        await store.cancel("t1")


async def test_retry_by_hand_revives_a_dead_task_with_fresh_attempts(store: TaskStore, coord_conn: coord.Coord) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=1)
    await store.fail(await store.claim("t1", "w1"), "boom")
    revived = await store.retry("t1")
    assert revived.status is TaskStatus.PENDING and revived.attempt == 0 and revived.epoch == 1
    claim = await store.claim("t1", "w2")
    assert claim.epoch == 2
    await store.fail(claim, "boom again")
    await store.retry("t1")
    ids = [msg_id for msg_id, _ in await notifications(coord_conn, "q")]
    assert len(ids) == 3 and len(set(ids)) == 3  # each pending episode is notified; none deduplicated away


async def test_retry_of_a_task_that_has_not_ended_badly_is_an_invalid_transition(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    with pytest.raises(InvalidTransition, match="pending"):
        await store.retry("t1")
    await store.complete(await store.claim("t1", "w1"), "ok")
    with pytest.raises(InvalidTransition, match="succeeded"):
        await store.retry("t1")


async def test_unknown_task_ids_are_not_found(store: TaskStore) -> None:
    for call in (
        store.get("nope"),
        store.claim("nope", "w1"),
        store.cancel("nope"),
        store.retry("nope"),
        store.reclaim("nope", "c-1"),
        store.journal("nope"),
    ):
        with pytest.raises(NotFound, match="'nope' does not exist"):
            await call


# --- results, journal ----------------------------------------------------------------------------


async def test_a_terminal_transition_pushes_a_result_notice_to_the_parent(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    received: asyncio.Queue[ResultNotice] = asyncio.Queue()

    async def on_result(msg: nats.aio.msg.Msg) -> None:
        received.put_nowait(ResultNotice.model_validate_json(msg.data))

    sub = await coord_conn.nc.subscribe(coord_conn.names.results_subject("parent-1"), cb=on_result)
    await store.schedule("t1", queue="q", spec=None, parent="parent-1")
    claim = await store.claim("t1", "w1")
    await store.heartbeat(claim)
    done = await store.complete(claim, "ok")
    notice = await asyncio.wait_for(received.get(), 5)
    assert (notice.task_id, notice.status, notice.revision) == ("t1", TaskStatus.SUCCEEDED, done.revision)
    await asyncio.sleep(0.1)
    assert received.empty()  # only the terminal transition pushes
    await sub.unsubscribe()


async def test_the_journal_holds_every_successful_transition_and_no_rejected_one(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=3)
    first = await store.claim("t1", "w1")
    await store.heartbeat(first, progress=1)
    await store.reclaim("t1", first.claim_id, reason="deadline")
    with pytest.raises(StaleClaim):
        await store.complete(first, "late")
    second = await store.claim("t1", "w2")
    with pytest.raises(Conflict):
        await store.claim("t1", "w3")
    done = await store.complete(second, "ok")
    entries = await store.journal("t1")
    assert [(e.transition, e.status, e.epoch, e.worker_id) for e in entries] == [
        (Transition.SCHEDULED, TaskStatus.PENDING, 0, None),
        (Transition.CLAIMED, TaskStatus.CLAIMED, 1, "w1"),
        (Transition.HEARTBEAT, TaskStatus.CLAIMED, 1, "w1"),
        (Transition.RECLAIMED, TaskStatus.PENDING, 1, "w1"),
        (Transition.CLAIMED, TaskStatus.CLAIMED, 2, "w2"),
        (Transition.COMPLETED, TaskStatus.SUCCEEDED, 2, "w2"),
    ]
    assert entries[-1].revision == done.revision
    assert list(done.journal) == [*entries[:-1], entries[-1].model_copy(update={"revision": 0})]
    assert [e.revision for e in entries] == sorted({e.revision for e in entries})


async def test_the_journal_lives_in_the_record_and_costs_no_message(store: TaskStore, coord_conn: coord.Coord) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    done = await store.complete(claim, "ok")
    stored = await store.get("t1")
    assert [e.transition for e in stored.journal] == [Transition.SCHEDULED, Transition.CLAIMED, Transition.COMPLETED]
    assert stored.journal[-1].revision == 0  # the newest entry is the record's own revision
    assert [e.revision for e in await store.journal("t1")][-1] == done.revision
    assert await events_stream_messages(coord_conn) == 0


async def test_a_long_running_task_keeps_only_its_newest_heartbeats(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    revisions = []
    for i in range(KEPT_HEARTBEATS + 5):
        await store.heartbeat(claim, progress={"done": i})
        revisions.append(claim.revision)
    entries = await store.journal("t1")
    beats = [e for e in entries if e.transition is Transition.HEARTBEAT]
    assert [e.revision for e in beats] == revisions[-KEPT_HEARTBEATS:]
    assert [e.progress for e in beats][-1] == {"done": KEPT_HEARTBEATS + 4}
    assert [e.transition for e in entries[:2]] == [Transition.SCHEDULED, Transition.CLAIMED]


async def test_a_record_written_without_a_journal_reads_as_its_own_transition(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    await store.schedule("t1", queue="q", spec=None)
    kv = await coord_conn.kv(coord_conn.names.tasks_bucket)
    record = await store.get("t1")
    # as corral wrote records before journals lived in them
    old = record.model_dump(mode="json", exclude={"journal"})
    revision = await kv.update("t1", json.dumps(old).encode(), last=record.revision)
    assert [(e.revision, e.transition) for e in await store.journal("t1")] == [(revision, Transition.SCHEDULED)]
    claim = await store.claim("t1", "w1")
    assert [(e.revision, e.transition) for e in await store.journal("t1")] == [
        (revision, Transition.SCHEDULED),
        (claim.revision, Transition.CLAIMED),
    ]


# --- listing, index, watch ------------------------------------------------------------------------


async def _mixed(store: TaskStore) -> None:
    await store.schedule_many(
        [ScheduleRequest(task_id=f"a{i}", queue="alpha", spec=i) for i in range(6)]
        + [ScheduleRequest(task_id=f"b{i}", queue="beta", spec=i) for i in range(3)]
    )
    await store.claim("a0", "w1")
    await store.claim("a1", "w2")
    await store.complete(await store.claim("b0", "w1"), "ok")


async def test_list_filters_by_queue_and_status(store: TaskStore) -> None:
    await _mixed(store)
    assert len(await store.list()) == 9
    assert sorted(r.task_id for r in await store.list(queue="alpha", status="pending")) == ["a2", "a3", "a4", "a5"]
    assert sorted(r.task_id for r in await store.list(status=TaskStatus.CLAIMED)) == ["a0", "a1"]
    assert [r.task_id for r in await store.list(queue="beta", status="succeeded")] == ["b0"]
    assert await store.list(queue="gamma") == []
    with pytest.raises(InvalidInput, match="status 'done' is not a task status"):
        await store.list(status="done")


async def test_a_running_index_answers_lookups_and_list_reads_only_matching_records(store: TaskStore) -> None:
    await _mixed(store)
    async with store.index() as index:
        assert sorted(index.ids(queue="alpha", status=TaskStatus.PENDING)) == ["a2", "a3", "a4", "a5"]
        assert [e.task_id for e in index.claims_of("w2")] == ["a1"]
        assert index.counts()[("beta", TaskStatus.SUCCEEDED)] == 1
        # writes made after the snapshot show up; list waits for this store's own latest write
        claim = await store.claim("a2", "w2")
        assert sorted(r.task_id for r in await store.list(status="claimed")) == ["a0", "a1", "a2"]
        assert sorted(e.task_id for e in index.claims_of("w2")) == ["a1", "a2"]
        assert index.overdue(datetime.now(UTC) + timedelta(seconds=claim.lease + 1))
        assert not index.overdue()
        await store.complete(claim, "ok")
        assert sorted(r.task_id for r in await store.list(queue="alpha", status="claimed")) == ["a0", "a1"]
    assert store._index is None  # back to scanning


async def test_watch_yields_the_snapshot_then_none_then_live_updates(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None)
    await store.schedule("t2", queue="q", spec=None)
    seen: list[tuple[str, TaskStatus] | None] = []
    async with store.watch() as updates:
        async for record in updates:
            seen.append(None if record is None else (record.task_id, record.status))
            if record is None:
                await store.claim("t2", "w1")
            elif len(seen) == 4:
                break
    assert seen == [("t1", TaskStatus.PENDING), ("t2", TaskStatus.PENDING), None, ("t2", TaskStatus.CLAIMED)]


# --- bad input ------------------------------------------------------------------------------------


async def _nothing_written(store: TaskStore, coord_conn: coord.Coord, task_id: str) -> None:
    with pytest.raises(NotFound):
        await store.get(task_id)
    assert await notifications(coord_conn, "q") == []
    assert await events_stream_messages(coord_conn) == 0


async def test_an_oversized_record_is_refused_before_anything_is_written(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    too_big = {"k": "x" * coord_conn.nc.max_payload}  # meta stays in the record (a large spec goes to a blob)
    with pytest.raises(PayloadTooLarge, match=r"task 't1': meta is \d+ bytes, which makes the record \d+ bytes"):
        await store.schedule("t1", queue="q", meta=too_big)
    with pytest.raises(PayloadTooLarge):
        await store.schedule_many(
            [
                ScheduleRequest(task_id="t0", queue="q", spec=1),
                ScheduleRequest(task_id="t1", queue="q", meta=too_big),
            ]
        )
    await _nothing_written(store, coord_conn, "t1")
    with pytest.raises(NotFound):
        await store.get("t0")  # the batch was refused as a whole


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": "3"}, "max_attempts"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"spec": {1, 2}}, "spec"),
        ({"spec": object()}, "spec"),
        ({"meta": {"k": 1}}, "meta"),
        ({"parent": "a.b"}, "parent"),
    ],
)
async def test_wrong_types_are_refused_naming_the_field(
    store: TaskStore, coord_conn: coord.Coord, kwargs: dict[str, object], field: str
) -> None:
    arguments: dict[str, object] = {"queue": "q", "spec": None, **kwargs}
    with pytest.raises(ValidationError, match=field):
        await store.schedule("t1", **arguments)  # type: ignore[arg-type]
    await _nothing_written(store, coord_conn, "t1")


@pytest.mark.parametrize(
    ("task_id", "queue", "field"), [("a.b", "q", "task_id"), (7, "q", "task_id"), ("t", "q>", "queue")]
)
async def test_bad_ids_are_refused_naming_the_field(
    store: TaskStore, coord_conn: coord.Coord, task_id: object, queue: str, field: str
) -> None:
    with pytest.raises(InvalidId, match=field):
        await store.schedule(task_id, queue=queue, spec=None)  # type: ignore[arg-type]
    assert await events_stream_messages(coord_conn) == 0


async def test_bad_results_and_leases_are_refused_and_leave_the_claim_current(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    await store.schedule("t1", queue="q", spec=None)
    with pytest.raises(InvalidInput, match="lease"):
        await store.claim("t1", "w1", lease=-5)
    with pytest.raises(InvalidId, match="worker_id"):
        await store.claim("t1", "w 1")
    claim = await store.claim("t1", "w1")
    revision = claim.revision
    with pytest.raises(InvalidInput, match="result must be a JSON value"):
        await store.complete(claim, {"when": datetime.now(UTC)})
    with pytest.raises(InvalidInput, match="progress must be a JSON value"):
        await store.heartbeat(claim, progress={1, 2})
    with pytest.raises(InvalidInput, match="error must be a string"):
        await store.fail(claim, 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="progress is 5002 bytes of JSON; at most 4096"):
        await store.heartbeat(claim, progress="p" * 5000)
    record = await store.get("t1")
    assert record.revision == revision and record.status is TaskStatus.CLAIMED
    assert (await store.fail(claim, "result too large")).status is TaskStatus.PENDING


async def test_a_scan_without_an_index_never_ends_before_every_existing_task(coord_conn: coord.Coord) -> None:
    # nats-py's KV watcher can signal "no more entries" while the entries are still in flight;
    # a scan must see every task every time.
    await coord_conn.tasks.schedule_many([ScheduleRequest(task_id=f"s{i}", queue="q", spec=i) for i in range(50)])
    for _ in range(20):
        assert len(await coord_conn.tasks.list()) == 50


async def test_a_record_a_caller_holds_never_changes_under_later_writes(coord_conn: coord.Coord) -> None:
    """Writes fill in the records they make themselves (no copy); the ones handed to them stay as they were."""
    tasks = coord_conn.tasks
    scheduled = await tasks.schedule("held-1", queue="q")
    pending = await tasks.get("held-1")
    seen = [(r, r.model_dump(), r.revision) for r in (scheduled, pending)]
    claim = await tasks.claim("held-1", "w1", record=pending)
    claimed = claim.record
    seen.append((claimed, claimed.model_dump(), claimed.revision))
    done = await tasks.complete(claim, {"ok": True})
    assert done.revision > claimed.revision > pending.revision
    assert len(done.journal) == 3 and [e.revision for e in done.journal[:2]] == [pending.revision, claimed.revision]
    for record, dumped, revision in seen:
        assert (record.model_dump(), record.revision) == (dumped, revision)
