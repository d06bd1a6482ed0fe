"""Large specs and results through the namespace's Object Store bucket, on a real server (64 MiB)."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest
from nats.js.errors import NotFoundError

import coord
from coord.blobs import BlobRef
from coord.errors import InvalidRecord, StaleClaim, TaskExists
from coord.tasks import TaskStatus
from coord.tasks.size import inline_limit, record_limit
from coord.wire import Result, Spec
from dispatch import Dispatcher
from tests.helpers_loop import ticker  # noqa: F401 - a fixture
from workers import Context, Worker

MIB = 1 << 20


async def _object_exists(conn: coord.Coord, ref: BlobRef) -> bool:
    store = await conn.js.object_store(conn.names.blobs_bucket)
    try:
        await store.get_info(ref.name)
    except NotFoundError:
        return False
    return True


async def test_a_64_mib_spec_and_result_round_trip_through_blobs_with_the_loop_ticking(
    coord_conn: coord.Coord,
    ticker: list[float],  # noqa: F811 - the fixture
) -> None:
    tasks = coord_conn.tasks
    spec = {"data": "s" * (64 * MIB)}
    rss = psutil.Process(os.getpid()).memory_info().rss
    started = time.monotonic()
    pending = await tasks.schedule("t1", queue="q", spec=spec)
    assert pending.spec is None and pending.spec_blob is not None and pending.spec_blob.size > 64 * MIB
    assert len(pending.model_dump_json()) < 4096, "the record holds the reference only"
    claim = await tasks.claim("t1", "w1")
    assert await tasks.values.spec_of(claim.record) == spec
    result = {"out": "r" * (64 * MIB)}
    done = await tasks.complete(claim, result)
    assert done.status is TaskStatus.SUCCEEDED and done.result is None and done.result_blob is not None
    resolved = await tasks.resolved(await tasks.get("t1"))
    assert resolved.result == result and resolved.spec == spec
    elapsed = time.monotonic() - started
    grown = (psutil.Process(os.getpid()).memory_info().rss - rss) / MIB
    print(f"64 MiB spec and result: {elapsed:.1f}s, RSS grew {grown:.0f} MiB, longest loop gap {max(ticker):.2f}s")
    assert max(ticker) < 2.0, f"the event loop stalled for {max(ticker):.2f}s"
    # chunked: no message near the server's max payload
    info = await coord_conn.js.stream_info(f"OBJ_{coord_conn.names.blobs_bucket}")
    assert info.state.messages >= 2 * (64 * MIB) // coord_conn.nc.max_payload


async def test_values_at_the_inline_limit_stay_in_the_record(coord_conn: coord.Coord) -> None:
    limit = inline_limit(coord_conn.nc.max_payload)
    small = await coord_conn.tasks.schedule("t1", queue="q", spec="x" * (limit - 2))
    large = await coord_conn.tasks.schedule("t2", queue="q", spec="x" * (limit - 1))
    assert small.spec_blob is None and small.spec == "x" * (limit - 2)
    assert large.spec_blob is not None and large.spec is None
    assert limit < record_limit(coord_conn.nc.max_payload)


async def test_a_missing_or_replaced_blob_is_a_clear_error_naming_the_task(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    record = await tasks.schedule("t1", queue="q", spec={"data": "d" * MIB})
    assert record.spec_blob is not None
    store = await coord_conn.js.object_store(coord_conn.names.blobs_bucket)
    await store.put(record.spec_blob.name, b'{"data":"forged"}')  # same name, other bytes
    with pytest.raises(InvalidRecord, match=r"task 't1': its spec blob .* is not the one the record names"):
        await tasks.resolved(record)
    await store.delete(record.spec_blob.name)
    with pytest.raises(InvalidRecord, match=r"task 't1': its spec blob .* is missing"):
        await tasks.values.spec_of(record)


async def test_a_blob_written_under_a_stale_claim_is_never_referenced_and_is_deleted(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    await tasks.schedule("t1", queue="q", spec=None)
    stale = await tasks.claim("t1", "w1")
    await tasks.reclaim("t1", stale.claim_id, reason="lease ran out")
    before = (await coord_conn.js.stream_info(f"OBJ_{coord_conn.names.blobs_bucket}")).state.messages
    with pytest.raises(StaleClaim):
        await tasks.complete(stale, {"out": "late" * MIB})
    record = await tasks.get("t1")
    assert record.status is TaskStatus.PENDING and record.result_blob is None and record.result is None
    store = await coord_conn.js.object_store(coord_conn.names.blobs_bucket)
    infos = await store.list(ignore_deletes=False)
    assert infos and all(i.deleted for i in infos), "the late blob was marked deleted"
    after = (await coord_conn.js.stream_info(f"OBJ_{coord_conn.names.blobs_bucket}")).state.messages
    assert after > before, "it had been written (its chunks expire with the bucket's max_age)"


async def test_resubmitting_a_large_spec_is_idempotent_and_another_is_refused(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    first = await tasks.schedule("t1", queue="q", spec={"data": "a" * MIB})
    again = await tasks.schedule("t1", queue="q", spec={"data": "a" * MIB})
    assert again.revision == first.revision and again.spec_blob == first.spec_blob
    with pytest.raises(TaskExists, match="spec: existing"):
        await tasks.schedule("t1", queue="q", spec={"data": "b" * MIB})


async def test_a_large_spec_may_not_start_after_its_blob_could_expire(coord_conn: coord.Coord) -> None:
    retention = coord_conn.settings.task_retention
    with pytest.raises(ValueError, match="spec: task 't1' has a spec of"):
        await coord_conn.tasks.schedule("t1", queue="q", spec="x" * MIB, delay=retention + 60)
    with pytest.raises(NotFoundError):
        await (await coord_conn.js.object_store(coord_conn.names.blobs_bucket)).list()  # nothing written


async def test_a_worker_fails_a_task_whose_spec_blob_is_gone_with_the_reason(coord_conn: coord.Coord) -> None:
    ran: list[str] = []

    async def handler(spec: Spec, ctx: Context) -> Result:
        ran.append(ctx.task_id)
        return Result.success()

    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        await dispatcher.submit(Spec(task_id="t1", queue="q", payload="p" * MIB))
        record = await coord_conn.tasks.get("t1")
        assert record.spec_blob is not None
        await (await coord_conn.js.object_store(coord_conn.names.blobs_bucket)).delete(record.spec_blob.name)
        worker = Worker(coord_conn, ["q"], handler)
        running = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 15
            while not (record := await coord_conn.tasks.get("t1")).terminal:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
    assert ran == []
    assert record.status is TaskStatus.FAILED and record.error is not None
    assert "the spec could not be read" in record.error and "is missing" in record.error
