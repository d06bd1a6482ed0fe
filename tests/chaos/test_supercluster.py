"""Chaos: a namespace placed in cluster A of a supercluster, with workers and parents in A and in B.

Cluster A (two nodes) and cluster B (one node) are joined by gateways (tests/helpers_topology.py);
every gateway connection crosses a relay the test owns, which holds each chunk ``WAN`` seconds each
way (a regional link's latency) and can sever them all. The namespace is created from B with
``CORRAL_PLACEMENT__CLUSTER=A``, so its streams live in A.

Measured: one-at-a-time submit → result latency for a parent in A and in B, each with the task run
by a worker in A (queue ``qa``) and in B (queue ``qb``). Then the gateway is cut: A goes on (its
parent submits and gets results from its worker), B's worker loses its claim to A's reclaimer
within TTL + 0.5 s and fails closed, and B's parent waits (a submit started during the cut
completes once the link is back). Healed, B resumes: its worker rejoins and runs its queue again.
Every task completes exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import coord
from coord.wire import Spec
from dispatch import Dispatcher
from tests.chaos.helpers_fleet import Fleet, completions, stop_within, wait_all, worker_env
from tests.helpers_topology import Supercluster, one_at_a_time, percentile, supercluster
from tests.helpers_wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TTL = 2.0
WAN = 0.010
"""One-way latency the relay adds on every gateway connection (a 20 ms round trip between regions)."""
ROUNDS = 20
PLACED = {"CORRAL_PLACEMENT__CLUSTER": "A"}


@pytest.fixture
def sc(tmp_path: Path) -> Iterator[Supercluster]:
    with supercluster(tmp_path / "sc", delay=WAN) as s:
        yield s


async def test_a_namespace_placed_in_cluster_a_serves_both_clusters_and_survives_a_gateway_cut(
    sc: Supercluster, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    settings = coord.Settings.load(placement={"cluster": "A"})
    fleet = Fleet(sc.url_a, namespace, worker_env(subprocess_env, **PLACED), tmp_path)
    extra = ["--ttl", str(TTL), "--interval", "0.5"]
    ids: list[str] = []
    try:
        # Created from B, placed in A.
        async with coord.connect(sc.url_b, namespace=namespace, settings=settings) as conn_b:
            info = await conn_b.js.stream_info(f"KV_{conn_b.names.tasks_bucket}")
            assert info.cluster is not None and info.cluster.name == "A", info.cluster
            async with coord.connect(sc.url_a, namespace=namespace, settings=settings) as conn_a:
                fleet.spawn("wa", concurrency=4, queue="qa", extra=extra, url=sc.url_a)
                fleet.spawn("wb", concurrency=4, queue="qb", extra=extra, url=sc.url_b)
                for worker in ("wa", "wb"):
                    assert await conn_a.presence.wait_present(worker, 30), fleet.log(worker)[-2000:]
                parent_a = await Dispatcher(conn_a).start()
                parent_b = await Dispatcher(conn_b).start()
                try:
                    # Latency per placement: parent in A or B, worker in A or B.
                    latency: dict[str, list[float]] = {}
                    for parent, p_name in ((parent_a, "A"), (parent_b, "B")):
                        for queue in ("qa", "qb"):
                            key = f"parent {p_name}, worker {queue[-1].upper()}"
                            latency[key] = await one_at_a_time(parent, queue, f"l{p_name}{queue}-", ROUNDS)
                            ids += [f"l{p_name}{queue}-{i}" for i in range(ROUNDS)]
                    print(f"\nsubmit→result, one at a time, {ROUNDS} each, gateway RTT {2 * WAN * 1000:g} ms:")
                    for key, took in latency.items():
                        p50, p99 = percentile(took, 0.5), percentile(took, 0.99)
                        print(f"  {key}: p50 {p50 * 1000:.1f} ms, p99 (the max of {ROUNDS}) {p99 * 1000:.1f} ms")
                        assert p50 < 1.0 and p99 < 3.0, (key, p50, p99)

                    # The cut: B's worker is in the middle of a task.
                    slow = Spec(task_id="bslow", queue="qb", payload={"seconds": 6, "marks": str(marks)})
                    ids.append(await parent_b.submit(slow))
                    await eventually(lambda: any(marks.glob("bslow.*.start")), 20, "B's worker to start bslow")
                    cut = time.monotonic()
                    await asyncio.to_thread(sc.relay.cut)
                    waiting = asyncio.create_task(parent_b.submit(Spec(task_id="bcut", queue="qa", payload={})))
                    ids.append("bcut")
                    event = await asyncio.wait_for(parent_a.reclaimer.events.get(), TTL + 5)  # type: ignore[union-attr]
                    back = time.monotonic() - cut
                    print(f"B's claim reclaimed in A {back:.2f}s after the gateway cut (TTL {TTL:g}s)")
                    assert (event.task_id, event.worker_id) == ("bslow", "wb")
                    assert back <= TTL + 0.5, f"B's claim came back {back:.2f}s after the cut"
                    # A goes on.
                    during = await parent_a.submit_many(
                        [Spec(task_id=f"acut{i}", queue="qa", payload={"seconds": 0.05}) for i in range(10)]
                    )
                    ids += during
                    await wait_all(parent_a, during, 20)
                    await eventually(lambda: "failing closed" in fleet.log("wb"), 10, "B's worker to fail closed")
                    assert not waiting.done(), "B's parent cannot have submitted while cut off"
                    cut_for = time.monotonic() - cut

                    # Heal: B resumes.
                    await asyncio.to_thread(sc.relay.heal)
                    healed = time.monotonic()
                    await asyncio.to_thread(sc.wait_joined)
                    assert await asyncio.wait_for(waiting, 30) == "bcut"
                    await eventually(lambda: " re-joined " in fleet.log("wb"), 30, "B's worker to join again")
                    print(f"cut for {cut_for:.1f}s; B rejoined {time.monotonic() - healed:.2f}s after the heal")
                    await wait_all(parent_b, ["bslow", "bcut"], 40)
                    assert (await conn_a.tasks.get("bslow")).last_worker == "wb"
                    after = await one_at_a_time(parent_b, "qb", "after-", 5)
                    ids += [f"after-{i}" for i in range(5)]
                    assert max(after) < 3.0, after
                finally:
                    await stop_within(parent_b)
                    await stop_within(parent_a)
                assert fleet.dead() == {}, {w: fleet.log(w)[-3000:] for w in fleet.dead()}
                counts = await completions(conn_a, ids)
                assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
    finally:
        fleet.close()
