"""Queue limits in the worker runtime (in one process): a limit set or removed while workers run applies to
their next claims, and a saturated limited queue waits on its slots instead of fetching in a loop."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import coord
from coord.limits import parse_rate
from coord.server import NatsServer
from coord.wire import Result, Spec
from dispatch import Dispatcher
from workers import Context, Worker


class Probe:
    """A handler that counts how many of its runs overlap."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.peak = 0
        self.starts: list[float] = []

    async def __call__(self, spec: Spec, ctx: Context) -> Result:
        self.starts.append(time.monotonic())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            payload = spec.payload if isinstance(spec.payload, dict) else {}
            seconds = payload.get("seconds", self.seconds)
            assert isinstance(seconds, int | float), seconds
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return Result.success()


@asynccontextmanager
async def workers(url: str, namespace: str, probe: Probe, n: int, concurrency: int) -> AsyncIterator[None]:
    """``n`` workers, each on a connection of its own, running ``probe``."""
    conns = [await coord.connect(url, namespace=namespace) for _ in range(n)]
    fleet = [Worker(c, ["q"], probe, concurrency=concurrency, worker_id=f"w{i}") for i, c in enumerate(conns)]
    running = [asyncio.create_task(w.run()) for w in fleet]
    try:
        await asyncio.gather(*(asyncio.wait_for(w.wait_started(), 10) for w in fleet))
        yield
    finally:
        for worker in fleet:
            worker.stop()
        await asyncio.gather(*running)
        for conn in conns:
            await conn.close()


async def run_all(dispatcher: Dispatcher, specs: Sequence[Spec]) -> None:
    ids = await dispatcher.submit_many(specs)
    async with asyncio.timeout(30):
        async for _ in dispatcher.as_completed(ids):
            pass


async def test_a_limit_set_or_removed_on_running_workers_applies_to_their_next_claims(
    nats_server: NatsServer, coord_conn: coord.Coord
) -> None:
    probe = Probe(0.1)
    async with workers(nats_server.url, coord_conn.namespace, probe, 2, 4), Dispatcher(coord_conn) as dispatcher:
        await coord_conn.limits.set("q", concurrency=1)
        await asyncio.sleep(0.5)  # the workers follow the limits bucket: a watch hop
        await run_all(dispatcher, [Spec(task_id=f"a{i}", queue="q") for i in range(8)])
        assert probe.peak == 1
        await coord_conn.limits.clear("q")
        await asyncio.sleep(0.5)
        await run_all(dispatcher, [Spec(task_id=f"b{i}", queue="q") for i in range(16)])
        assert probe.peak > 1
    assert await coord_conn.limits.slots("q") == []


async def test_a_saturated_limited_queue_is_not_fetched_in_a_loop(
    nats_server: NatsServer, coord_conn: coord.Coord
) -> None:
    probe = Probe(0.05)
    await coord_conn.limits.set("q", concurrency=1)
    async with workers(nats_server.url, coord_conn.namespace, probe, 3, 4), Dispatcher(coord_conn) as dispatcher:
        specs = [Spec(task_id="long", queue="q", payload={"seconds": 3})]
        specs += [Spec(task_id=f"t{i}", queue="q") for i in range(5)]
        await run_all(dispatcher, specs)
        names = coord_conn.names
        info = await coord_conn.js.consumer_info(names.dispatch_stream, names.queue_consumer("q"))
    assert probe.peak == 1
    # 6 notifications: each worker fetches one at the start (two go back); then, for 3 s and after, only
    # the slot's holder fetches, one at a time (a fetch loop would have delivered them dozens of times)
    assert info.delivered.consumer_seq <= 10, f"{info.delivered.consumer_seq} deliveries of 6 notifications"


async def test_a_per_minute_rate_spaces_starts_beyond_the_reservation_horizon(
    nats_server: NatsServer, coord_conn: coord.Coord
) -> None:
    probe = Probe(0.0)
    await coord_conn.limits.set("q", rate=parse_rate("80/m"))  # one start every 0.75 s
    async with workers(nats_server.url, coord_conn.namespace, probe, 2, 4), Dispatcher(coord_conn) as dispatcher:
        await run_all(dispatcher, [Spec(task_id=f"t{i}", queue="q") for i in range(6)])
        names = coord_conn.names
        info = await coord_conn.js.consumer_info(names.dispatch_stream, names.queue_consumer("q"))
    gaps = [b - a for a, b in itertools.pairwise(sorted(probe.starts))]
    assert len(probe.starts) == 6 and min(gaps) >= 0.7, gaps
    assert sum(gaps) <= 5 * 0.75 + 1.0, gaps  # and no slower than the rate (waits are exact, not polled)
    assert info.delivered.consumer_seq <= 8, f"{info.delivered.consumer_seq} deliveries of 6 notifications"
