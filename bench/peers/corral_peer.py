"""corral: a Dispatcher in the producer, 2 ``corral worker`` processes at concurrency 256 (as bench/dispatch.py)."""

from __future__ import annotations

import asyncio
import gc

import coord
from bench.dispatch import spawn_workers, stop, wait_present
from bench.peers.common import Brokers, CpuMeter, Scenario, SystemResult, alatencies, atimed_rounds, versions
from coord.heap import freeze_startup
from coord.ids import new_id
from coord.wire import Spec
from dispatch import Dispatcher

CONCURRENCY = 256
LABEL = f"corral (Dispatcher + 2 `corral worker` x c={CONCURRENCY})"


def run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Run the scenario on corral against the run's nats-server."""
    return asyncio.run(_run(scenario, brokers))


async def _run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    assert brokers.nats_url is not None
    url = brokers.nats_url
    res = SystemResult("corral", LABEL, versions=versions("corral", "nats-py"))
    ns = new_id("p").replace("-", "")[:16]
    async with coord.connect(url, namespace=ns) as c:
        beat = c.settings  # one server: corral's own presence timing for it
        procs = spawn_workers(
            url,
            ns,
            scenario.workers,
            CONCURRENCY,
            "_handlers:noop",
            replicas=1,
            ttl=beat.presence_ttl,
            interval=beat.presence_interval,
        )
        try:
            await wait_present(c, [f"bw{i}" for i in range(scenario.workers)])
            in_flight = max(20_000, scenario.tasks + scenario.batch)
            async with Dispatcher(c, max_in_flight=in_flight) as d:
                freeze_startup()  # as docs/tasks.md ("Performance") advises a long-running parent

                async def batch(prefix: str, n: int) -> None:
                    ids: list[str] = []
                    for i in range(0, n, scenario.batch):
                        specs = [
                            Spec(task_id=f"{prefix}-{j}", queue="bench") for j in range(i, min(n, i + scenario.batch))
                        ]
                        ids += await d.submit_many(specs)
                    async for _ in d.as_completed(ids, timeout=scenario.timeout()):
                        pass

                async def one(i: int) -> None:
                    await d.wait(await d.submit(Spec(task_id=f"l{i}", queue="bench")), 10)

                await batch("w", scenario.warmup)
                meter = CpuMeter([p.pid for p in procs], brokers.nats_pid)
                res.rates = await atimed_rounds(scenario, meter, lambda r: batch(f"r{r}", scenario.tasks))
                res.cpu = meter.split()
                res.producer_rss_mb = meter.rss_mb
                res.latencies_ms = await alatencies(scenario.latency, one)
        finally:
            gc.unfreeze()  # the peers that run after this one in the same process start as before
            stop(procs)
    return res
