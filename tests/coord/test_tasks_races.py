"""Races and faults: concurrent claimers, reclaim against complete, server stops and crashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

import coord
from coord.errors import Conflict, InvalidTransition, StaleClaim
from coord.server import NatsCluster, NatsServer
from coord.tasks import Claim, ScheduleRequest, TaskRecord, TaskStatus, TaskStore, Transition

ROUNDS = 25


@pytest.fixture
async def stores(nats_server: NatsServer, namespace: str) -> AsyncIterator[list[TaskStore]]:
    """Eight stores on eight connections to the same namespace: eight independent actors."""
    conns = [await coord.connect(nats_server.url, namespace=namespace) for _ in range(8)]
    yield [c.tasks for c in conns]
    for c in conns:
        await c.close()


async def test_eight_concurrent_claimers_on_one_task_have_exactly_one_winner(stores: list[TaskStore]) -> None:
    for round_no in range(ROUNDS):
        task_id = f"r{round_no}"
        scheduled = await stores[0].schedule(task_id, queue="q", spec=round_no)
        # half of the claimers take the one-CAS path with the record a notification carries
        outcomes = await asyncio.gather(
            *(
                s.claim(task_id, f"w{i}", revision=scheduled.revision, record=scheduled if i % 2 else None)
                for i, s in enumerate(stores)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, Claim)]
        losers = [o for o in outcomes if not isinstance(o, Claim)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, Conflict) for o in losers), losers
        record = await stores[0].get(task_id)
        assert record.status is TaskStatus.CLAIMED and record.epoch == 1 and record.attempt == 1
        assert record.claim is not None and record.claim.claim_id == winners[0].claim_id
        journal = await stores[0].journal(task_id)
        assert [e.transition for e in journal] == [Transition.SCHEDULED, Transition.CLAIMED]


async def test_a_reclaim_racing_a_complete_has_exactly_one_winner_and_a_consistent_record(
    stores: list[TaskStore],
) -> None:
    worker, reclaimer = stores[0], stores[1]
    wins = {"complete": 0, "reclaim": 0}
    for round_no in range(ROUNDS):
        task_id = f"r{round_no}"
        await worker.schedule(task_id, queue="q", spec=None)
        claim = await worker.claim(task_id, "w1")
        completed, reclaimed = await asyncio.gather(
            worker.complete(claim, {"round": round_no}),
            reclaimer.reclaim(task_id, claim.claim_id, reason="deadline"),
            return_exceptions=True,
        )
        record = await reclaimer.get(task_id)
        journal = [e.transition for e in await reclaimer.journal(task_id)]
        if isinstance(completed, TaskRecord):
            assert isinstance(reclaimed, StaleClaim)
            assert record.status is TaskStatus.SUCCEEDED and record.result == {"round": round_no}
            assert journal == [Transition.SCHEDULED, Transition.CLAIMED, Transition.COMPLETED]
            wins["complete"] += 1
        else:
            assert isinstance(completed, StaleClaim) and isinstance(reclaimed, TaskRecord)
            assert record.status is TaskStatus.PENDING and record.result is None and record.attempt == 1
            assert journal == [Transition.SCHEDULED, Transition.CLAIMED, Transition.RECLAIMED]
            wins["reclaim"] += 1
        assert record.claim is None
    assert sum(wins.values()) == ROUNDS


async def test_a_completion_presenting_an_old_claim_after_a_reclaim_is_stale_and_records_nothing(
    stores: list[TaskStore],
) -> None:
    old_worker, reclaimer, new_worker = stores[0], stores[1], stores[2]
    await old_worker.schedule("t1", queue="q", spec=None)
    old = await old_worker.claim("t1", "w-old")
    await reclaimer.reclaim("t1", old.claim_id, reason="worker-left:expired")
    new = await new_worker.claim("t1", "w-new")
    before = await reclaimer.get("t1")
    with pytest.raises(StaleClaim, match="claimed by w-new at epoch 2"):
        await old_worker.complete(old, "stale result")
    after = await reclaimer.get("t1")
    assert after == before and after.revision == before.revision and after.result is None
    assert old.epoch == 1 and new.epoch == 2  # the fencing number a downstream system can compare
    assert Transition.COMPLETED not in [e.transition for e in await reclaimer.journal("t1")]


async def test_concurrent_reclaimers_and_the_worker_have_exactly_one_winner(stores: list[TaskStore]) -> None:
    for round_no in range(ROUNDS):
        task_id = f"r{round_no}"
        await stores[0].schedule(task_id, queue="q", spec=None)
        claim = await stores[0].claim(task_id, "w1")
        outcomes = await asyncio.gather(
            *(s.reclaim(task_id, claim.claim_id, reason=f"reclaimer-{i}") for i, s in enumerate(stores[1:5])),
            stores[0].complete(claim, "done"),
            return_exceptions=True,
        )
        records = [o for o in outcomes if isinstance(o, TaskRecord)]
        assert len(records) == 1, outcomes
        assert all(isinstance(o, StaleClaim) for o in outcomes if not isinstance(o, TaskRecord)), outcomes
        final = await stores[0].get(task_id)
        assert final.revision == records[0].revision and final.status is records[0].status


async def test_a_cancel_racing_a_complete_leaves_either_a_result_or_a_cancellation(stores: list[TaskStore]) -> None:
    seen = set()
    for round_no in range(ROUNDS):
        task_id = f"r{round_no}"
        await stores[0].schedule(task_id, queue="q", spec=None)
        claim = await stores[0].claim(task_id, "w1")
        completed, cancelled = await asyncio.gather(
            stores[0].complete(claim, "done"), stores[1].cancel(task_id), return_exceptions=True
        )
        final = await stores[1].get(task_id)
        if isinstance(completed, TaskRecord):
            assert isinstance(cancelled, InvalidTransition)
            assert final.status is TaskStatus.SUCCEEDED and final.result == "done"
        else:
            assert isinstance(completed, StaleClaim) and isinstance(cancelled, TaskRecord)
            assert final.status is TaskStatus.CANCELLED and final.result is None
        seen.add(final.status)
    assert seen <= {TaskStatus.SUCCEEDED, TaskStatus.CANCELLED}


async def test_heartbeats_racing_a_reclaim_never_revive_a_reclaimed_claim(stores: list[TaskStore]) -> None:
    worker, reclaimer = stores[0], stores[1]
    await worker.schedule("t1", queue="q", spec=None, max_attempts=10)
    claim = await worker.claim("t1", "w1")

    async def beat() -> int:
        beats = 0
        while True:
            try:
                await worker.heartbeat(claim, progress=beats)
            except StaleClaim:
                return beats
            beats += 1
            await asyncio.sleep(0.001)

    beating = asyncio.create_task(beat())
    await asyncio.sleep(0.05)
    reclaimed = await reclaimer.reclaim("t1", claim.claim_id, reason="deadline")
    beats = await asyncio.wait_for(beating, 5)
    assert beats > 0
    final = await reclaimer.get("t1")
    assert final.status is TaskStatus.PENDING and final.claim is None and final.revision == reclaimed.revision


# --- faults ---------------------------------------------------------------------------------------


async def _until_stopped(server: NatsServer) -> None:
    """SIGSTOP takes effect a moment after it is sent: wait until the process is really stopped."""
    assert server.pid is not None
    process = psutil.Process(server.pid)
    for _ in range(200):
        if process.status() == psutil.STATUS_STOPPED:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nats-server {server.pid} did not stop")


async def test_a_completion_sent_while_the_server_is_stopped_lands_exactly_once(own_server: NatsServer) -> None:
    async with coord.connect(own_server.url, namespace="faults") as conn:
        # a short request timeout so the write's outcome becomes unknown while the server is stopped
        store = conn.tasks.tuned(io_patience=20, request_timeout=0.3)
        await store.schedule("t1", queue="q", spec=None)
        claim = await store.claim("t1", "w1")
        own_server.pause()
        await _until_stopped(own_server)
        try:
            completing = asyncio.create_task(store.complete(claim, "ok"))
            await asyncio.sleep(1.5)
            assert not completing.done()
        finally:
            own_server.resume()
        done = await asyncio.wait_for(completing, 20)
        assert done.status is TaskStatus.SUCCEEDED
        record = await store.get("t1")
        assert record.revision == done.revision and record.result == "ok"
        journal = await store.journal("t1")
        assert [e.transition for e in journal] == [Transition.SCHEDULED, Transition.CLAIMED, Transition.COMPLETED]


async def test_tasks_and_claims_survive_a_server_crash(own_server: NatsServer) -> None:
    async with coord.connect(own_server.url, namespace="faults") as conn:
        store = conn.tasks.tuned(io_patience=30)
        await store.schedule("t1", queue="q", spec={"keep": True})
        claim = await store.claim("t1", "w1")
        own_server.kill()
        await asyncio.sleep(0.2)
        await asyncio.to_thread(own_server.start)
        # the worker's claim is still current after the restart; its heartbeat and result land
        await store.heartbeat(claim, progress="after crash")
        done = await store.complete(claim, "ok")
        assert done.status is TaskStatus.SUCCEEDED and done.spec == {"keep": True}
        with pytest.raises(StaleClaim):
            await store.complete(claim, "again")
        assert [e.transition for e in await store.journal("t1")] == [
            Transition.SCHEDULED,
            Transition.CLAIMED,
            Transition.HEARTBEAT,
            Transition.COMPLETED,
        ]


@pytest.mark.slow
async def test_results_land_exactly_once_when_the_tasks_stream_leader_dies(tmp_path: Path) -> None:
    with NatsCluster(3, store_root=tmp_path / "cluster") as cluster:
        async with coord.connect(cluster.url, namespace="r3", replicas=3) as conn:
            store = conn.tasks.tuned(io_patience=30)
            await store.schedule_many([ScheduleRequest(task_id=f"t{i}", queue="q", spec=i) for i in range(20)])
            claims = await asyncio.gather(*(store.claim(f"t{i}", "w1") for i in range(20)))
            info = await conn.js.stream_info(f"KV_{conn.names.tasks_bucket}")
            assert info.cluster is not None and info.cluster.leader is not None
            leader = next(node for node in cluster.nodes if node.name == info.cluster.leader)
            leader.kill()
            done = await asyncio.wait_for(
                asyncio.gather(*(store.complete(c, {"i": i}) for i, c in enumerate(claims))), 60
            )
            assert all(r.status is TaskStatus.SUCCEEDED for r in done)
            for i, claim in enumerate(claims):
                record = await store.get(f"t{i}")
                assert record.result == {"i": i} and record.revision == done[i].revision
                with pytest.raises(StaleClaim):
                    await store.complete(claim, "twice")
            new_leader = (await conn.js.stream_info(f"KV_{conn.names.tasks_bucket}")).cluster
            assert new_leader is not None and new_leader.leader != leader.name
