"""Chaos: on a 3-node cluster, the leaders of the tasks bucket, the presence bucket and the dispatch
stream are SIGKILLed in turn under load and restarted; three rounds. Nothing stops, nobody departs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import coord
from coord.presence import Left
from coord.server import NatsCluster, NatsServer
from dispatch import Dispatcher
from tests.chaos.helpers_fleet import Fleet, completions, specs, stop_within, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROUNDS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(3, store_root=tmp_path / "cluster") as c:
        yield c


async def _leader(conn: coord.Coord, cluster: NatsCluster, stream: str) -> NatsServer:
    async with asyncio.timeout(30):
        while True:
            try:
                info = await conn.js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return next(n for n in cluster.nodes if n.name == info.cluster.leader)
            except Exception:
                pass
            await asyncio.sleep(0.2)


async def test_leader_kills_of_tasks_presence_and_dispatch_streams_lose_nothing_and_stop_nobody(
    cluster: NatsCluster, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    fleet = Fleet(cluster.url, namespace, subprocess_env, tmp_path, replicas=3)
    try:
        async with coord.connect(cluster.url, namespace=namespace, replicas=3) as conn:
            departures: list[Left] = []
            watcher = await conn.presence.watch(include_existing=False).start()

            async def watch() -> None:
                async for change in watcher:
                    if isinstance(change, Left):
                        departures.append(change)

            watching = asyncio.create_task(watch())
            fleet.spawn("w1")
            fleet.spawn("w2")
            assert await conn.presence.wait_present("w1", 30) and await conn.presence.wait_present("w2", 30)
            dispatcher = await Dispatcher(conn).start()
            names = conn.names
            streams = [f"KV_{names.tasks_bucket}", f"KV_{names.presence_bucket}", names.dispatch_stream]
            ids: list[str] = []
            outages: list[tuple[str, float]] = []
            try:
                for round_ in range(ROUNDS):
                    for stream in streams:
                        batch = await dispatcher.submit_many(specs(f"r{round_}{stream[-4:]}-", 150, seconds=0.05))
                        ids += batch
                        leader = await _leader(conn, cluster, stream)
                        await asyncio.sleep(0.3)  # under load
                        killed = time.monotonic()
                        await asyncio.to_thread(leader.kill)
                        await wait_all(dispatcher, batch, 90)
                        outages.append((stream, time.monotonic() - killed))
                        await asyncio.to_thread(leader.start)
                await wait_all(dispatcher, ids, 90)
            finally:
                await stop_within(dispatcher)
                watching.cancel()
                await watcher.stop()
            assert fleet.dead() == {}, {w: fleet.log(w)[-3000:] for w in fleet.dead()}
            counts = await completions(conn, ids)
            assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
            if departures:
                for w in ("w1", "w2"):
                    print(w, [line for line in fleet.log(w).splitlines() if "presence" in line or "lost" in line][-12:])
                print("departures", departures, "outages", outages)
            assert [d.agent_id for d in departures] == [], "losing one node of three must make no worker depart"
            print("batch completion after each leader kill (s):", [(s, round(t, 2)) for s, t in outages])
    finally:
        fleet.close()
