"""The one size rule (coord/tasks/size.py) on a real server: accepted tasks always fit, records that do
not fit end ``dead`` with the reason (never a loop), the journal stays bounded and counts what it drops."""

from __future__ import annotations

import asyncio
import time

import pytest

import coord
from coord.errors import InvalidTransition, PayloadTooLarge
from coord.tasks import Backoff, TaskRecord, TaskStatus, TaskStore
from coord.tasks.journal import KEPT_FIRST, MAX_ENTRIES
from coord.tasks.size import check_fits, record_limit, worst_case
from coord.wire import Result, Spec
from dispatch import Dispatcher
from tests.helpers_loop import ticker  # noqa: F401 - a fixture
from workers import Context, Worker


@pytest.fixture
def store(coord_conn: coord.Coord) -> TaskStore:
    return coord_conn.tasks.tuned(backoff=Backoff(base=0.05), visibility_tolerance=0.0)


def _padded(record: TaskRecord, room: int, max_payload: int) -> TaskRecord:
    """``record`` with meta that leaves exactly ``room`` bytes below the record limit."""
    empty = len(record.model_copy(update={"meta": {"k": ""}}).model_dump_json())
    return record.model_copy(update={"meta": {"k": "x" * (record_limit(max_payload) - room - empty)}})


async def _plant(store: TaskStore, record: TaskRecord) -> TaskRecord:
    """Write ``record`` as a foreign writer would, past the submit check (and notify it)."""
    revision = await store.bucket.create(record.task_id, record.model_dump_json().encode())
    planted = record.model_copy(update={"revision": revision})
    await store.notify(planted)
    return planted


async def test_a_task_that_could_not_be_claimed_is_refused_at_submit_naming_the_field_and_sizes(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    """Old: only the pending record was sized; a claim then failed for ever (and NAKed for ever)."""
    pending = await store.schedule("t0", queue="q")
    meta = _padded(pending, 100, coord_conn.nc.max_payload).meta  # fits as pending, not once claimed
    with pytest.raises(PayloadTooLarge) as refused:
        await store.schedule("t1", queue="q", meta=meta)
    message = str(refused.value)
    assert "task 't1': meta is" in message and "at its worst" in message
    assert f"the server accepts {record_limit(coord_conn.nc.max_payload)}" in message
    assert [r.task_id async for r in store.iter()] == ["t0"]


async def test_a_record_that_cannot_be_claimed_goes_dead_with_the_reason(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    """Old: PayloadTooLarge on every claim, the record stayed pending for ever."""
    base = await store.schedule("t0", queue="q", spec=None)
    planted = await _plant(store, _padded(base.model_copy(update={"task_id": "t1"}), 300, coord_conn.nc.max_payload))
    with pytest.raises(InvalidTransition, match="cannot be claimed, it is dead now"):
        await store.claim("t1", "w1", record=planted)
    dead = await store.get("t1")
    assert dead.status is TaskStatus.DEAD and dead.claim is None
    assert dead.error is not None and "the record cannot be written" in dead.error and "bytes" in dead.error
    with pytest.raises(InvalidTransition):
        await store.claim("t1", "w2")  # permanent


async def test_a_worker_sets_aside_a_task_that_cannot_be_claimed_and_it_ends_dead(
    coord_conn: coord.Coord, store: TaskStore
) -> None:
    """Old: the intake treated PayloadTooLarge as transient: NAK, dead letter after 10, renotify, for ever."""
    base = await store.schedule("t0", queue="other", spec=None)
    await _plant(
        store, _padded(base.model_copy(update={"task_id": "t1", "queue": "q"}), 300, coord_conn.nc.max_payload)
    )
    ran: list[str] = []

    async def handler(spec: Spec, ctx: Context) -> Result:
        ran.append(ctx.task_id)
        return Result.success()

    worker = Worker(coord_conn, ["q"], handler)
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 15
        while (await store.get("t1")).status is not TaskStatus.DEAD:
            assert time.monotonic() < deadline, "the task did not go dead"
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert ran == []


async def test_an_outcome_that_cannot_fit_ends_the_task_once_and_the_loop_keeps_ticking(
    coord_conn: coord.Coord,
    store: TaskStore,
    ticker: list[float],  # noqa: F811 - the fixture
) -> None:
    """Old: _settle swapped result for failure and retried with no bound and no pause; the size check
    failed locally, so the event loop froze (50,886 fail() calls in 4 s), heartbeats stopped.
    (On the old code this test never returns: the loop is frozen.)"""
    grown: list[int] = []

    async def handler(spec: Spec, ctx: Context) -> Result:
        # A foreign writer grows the claimed record (as a record written by older code would be) ...
        current = await store.get(ctx.task_id)
        bigger = _padded(current, 300, coord_conn.nc.max_payload)
        grown.append(await store.bucket.update(ctx.task_id, bigger.model_dump_json().encode(), last=current.revision))
        return Result.success(output="r" * 20_000)  # ... so that neither this result nor a failure fits

    worker = Worker(coord_conn, ["q"], handler)
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        running = asyncio.create_task(worker.run())
        try:
            record = await dispatcher.wait(await dispatcher.submit(Spec(task_id="t1", queue="q")), 20)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
    assert grown, "the handler ran"
    assert record.status is TaskStatus.DEAD, record
    assert record.error is not None and "the record cannot be written" in record.error
    assert len(record.model_dump_json()) <= record_limit(coord_conn.nc.max_payload)
    assert worker.stats.failed <= 1 and worker.stats.unrecorded == 0
    assert max(ticker) < 1.0, f"the event loop stalled for {max(ticker):.1f}s"


async def test_the_journal_keeps_the_first_and_the_latest_entries_and_counts_the_dropped(store: TaskStore) -> None:
    await store.schedule("t1", queue="q", spec=None, max_attempts=1000)
    for i in range(40):
        claim = await store.claim("t1", f"w{i}")
        await store.release(claim)
    record = await store.get("t1")
    journal = await store.journal("t1")
    written = 1 + 2 * 40
    assert len(journal) == MAX_ENTRIES and record.journal_dropped == written - MAX_ENTRIES
    assert [e.transition.value for e in journal[:KEPT_FIRST]] == ["scheduled", "claimed", "released", "claimed"]
    assert journal[-1].revision == record.revision and journal[-1].transition.value == "released"
    check_fits(record, store.bucket.nc.max_payload)  # still within its worst case
    assert len(worst_case(record, store.bucket.nc.max_payload).model_dump_json()) > len(record.model_dump_json())


async def test_a_reclaim_that_cannot_fit_makes_the_task_dead_and_so_does_a_record_too_large_for_anything(
    store: TaskStore, coord_conn: coord.Coord
) -> None:
    """Old: the journal grew the record on every attempt, so a reclaim could hit the same wall for ever."""
    max_payload = coord_conn.nc.max_payload
    await store.schedule("t1", queue="q", spec=None)
    claim = await store.claim("t1", "w1")
    grown = _padded(await store.get("t1"), 50, max_payload)
    await store.bucket.update("t1", grown.model_dump_json().encode(), last=claim.revision)
    dead = await store.reclaim("t1", claim.claim_id, reason="lease ran out " * 100)
    assert dead.status is TaskStatus.DEAD and dead.error is not None and dead.error.startswith("the record cannot")
    assert len(dead.model_dump_json()) <= record_limit(max_payload)
    # A pending record whose definition alone is over the limit (but under the server's max payload):
    base = await store.schedule("t2", queue="q", spec=None)
    huge = _padded(base.model_copy(update={"task_id": "t3"}), -500, max_payload)
    await _plant(store, huge)
    with pytest.raises(InvalidTransition, match="it is dead now"):
        await store.claim("t3", "w1")
    gone = await store.get("t3")
    assert (
        gone.status is TaskStatus.DEAD and gone.meta == {} and gone.error == "the record cannot be written: too large"
    )
