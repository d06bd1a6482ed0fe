"""corral: a Dispatcher in the producer, 2 ``corral worker`` processes at concurrency 256 (as bench/dispatch.py).

``corral-reclaimer`` is the same with a standalone ``corral reclaimer`` process holding the reclaimer
role (the deployment docs/scale.md recommends; the parent's embedded reclaimer is a standby), its CPU
counted with the workers'."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys

import coord
from bench.dispatch import ROOT, spawn_workers, stop, wait_present
from bench.peers.common import Brokers, CpuMeter, Scenario, SystemResult, alatencies, atimed_rounds, versions
from coord.heap import freeze_startup
from coord.ids import new_id
from coord.lease import LEADER, read_term
from coord.wire import Spec
from dispatch import Dispatcher

CONCURRENCY = 256
LABEL = f"corral (Dispatcher + 2 `corral worker` x c={CONCURRENCY})"
LABEL_RECLAIMER = f"corral + `corral reclaimer` (Dispatcher + 2 `corral worker` x c={CONCURRENCY})"


def run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Run the scenario on corral against the run's nats-server."""
    return asyncio.run(_run(scenario, brokers, standalone=False))


def run_with_reclaimer(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """The same with a standalone ``corral reclaimer`` holding the reclaimer role."""
    return asyncio.run(_run(scenario, brokers, standalone=True))


def spawn_reclaimer(url: str, ns: str) -> subprocess.Popen[bytes]:
    """A ``corral reclaimer`` process for namespace ``ns``."""
    return subprocess.Popen(
        [sys.executable, "-m", "corral", "--server", url, "--namespace", ns, "--replicas", "1", "reclaimer"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _standalone_holds(c: coord.Coord, within: float = 30.0) -> None:
    """Return once a standalone reclaimer holds the lease, ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        term, _ = read_term(await c.roster.get(LEADER))
        if term is not None and term.record.preferred and term.record.ready:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no standalone reclaimer held the lease within {within:g}s")


async def _run(scenario: Scenario, brokers: Brokers, *, standalone: bool) -> SystemResult:
    assert brokers.nats_url is not None
    url = brokers.nats_url
    name, label = ("corral-reclaimer", LABEL_RECLAIMER) if standalone else ("corral", LABEL)
    res = SystemResult(name, label, versions=versions("corral", "nats-py"))
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
        if standalone:
            procs.append(spawn_reclaimer(url, ns))  # its CPU is counted with the workers'
        try:
            await wait_present(c, [f"bw{i}" for i in range(scenario.workers)])
            if standalone:
                await _standalone_holds(c)
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
                meter.report(res)
                res.latencies_ms = await alatencies(scenario.latency, one)
        finally:
            gc.unfreeze()  # the peers that run after this one in the same process start as before
            stop(procs)
    return res
