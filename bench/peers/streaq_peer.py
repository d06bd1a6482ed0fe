"""streaq on Redis streams: 2 ``streaq run`` worker processes, concurrency 32; the producer awaits each result.

What this follows (streaq 7.2): its README and ``benchmarks/`` (``bench_streaq.py``: a ``Worker``
at ``concurrency=32`` for no-op tasks, enqueued inside ``async with worker``; workers started with
the ``streaq`` command, in 7.2 ``streaq run module:worker``), and its docs' ``Worker.enqueue_many`` (one
Redis pipeline for many tasks) and ``Task.result()`` to wait for a result. ``Task.result()``
subscribes to the task's own pub/sub channel and reads the result key, one subscription per task:
slow for thousands of results, so the results are awaited 32 at a time (the bound streaq's
benchmark puts on Redis connections) and the row also reports **executions/s**: tasks run per second
as the workers see them, from the round's start to the latest ``finish_time`` the workers recorded.
The worker side builds the same worker from ``PEERS_REDIS_URL`` / ``PEERS_STREAQ_QUEUE``
(``python -m streaq run bench.peers.streaq_peer:worker``; streaq's command logs each task at INFO).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from streaq import Worker

from bench.peers.common import (
    Brokers,
    CpuMeter,
    Scenario,
    SystemResult,
    alatencies,
    alive_or_raise,
    atimed_rounds,
    await_until,
    child_env,
    spawn,
    stop,
    versions,
)
from coord.ids import new_id

CONCURRENCY = 32
"""Tasks per worker at once, as streaq's no-op benchmark runs them."""
RESULTS_AT_ONCE = 32
"""``Task.result()`` calls in flight in the producer (each holds a pub/sub subscription)."""


def make_worker(url: str, queue: str) -> tuple[Worker[Any], Any]:
    """A streaq worker on ``queue`` and its no-op task (the producer enqueues through its own)."""
    w: Worker[Any] = Worker(redis_url=url, queue_name=queue, concurrency=CONCURRENCY)

    async def noop() -> None:
        """The task: nothing."""

    return w, w.task(name="noop")(noop)


worker, noop = make_worker(
    os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379"), os.environ.get("PEERS_STREAQ_QUEUE", "default")
)
"""The worker ``streaq run`` starts in each worker process."""


def run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Run the scenario on streaq against the run's redis-server."""
    return asyncio.run(_run(scenario, brokers))


async def _run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    assert brokers.redis_url is not None
    res = SystemResult("streaq", "streaq", versions=versions("streaq", "coredis"))
    queue = f"streaq-{new_id('q')}"
    producer, task = make_worker(brokers.redis_url, queue)
    env = child_env(PEERS_REDIS_URL=brokers.redis_url, PEERS_STREAQ_QUEUE=queue)
    log = Path(tempfile.mkdtemp(prefix="peers-streaq-")) / "workers.log"
    procs = [spawn(["-m", "streaq", "run", f"{__name__}:worker"], env, log) for _ in range(scenario.workers)]
    try:
        async with producer:
            gate = asyncio.Semaphore(RESULTS_AT_ONCE)

            async def result(t: Any, timeout: float) -> int:
                async with gate:
                    r = await t.result(timeout=timeout)
                if not r.success:
                    raise RuntimeError(f"task failed: {r.exception}")
                return int(r.finish_time)

            async def batch(n: int, timeout: float, executions: list[float] | None = None) -> None:
                started_ms = time.time() * 1000
                sent: list[Any] = []
                for i in range(0, n, scenario.batch):
                    chunk = [task.enqueue() for _ in range(min(scenario.batch, n - i))]
                    await producer.enqueue_many(chunk)
                    sent += chunk
                finished = await asyncio.wait_for(asyncio.gather(*(result(t, timeout) for t in sent)), timeout)
                if executions is not None:
                    executions.append(n / max(1e-3, (max(finished) - started_ms) / 1000))

            ran_ms: list[float] = []

            async def one(_i: int) -> None:
                submitted_ms = time.time() * 1000
                r = await (await task.enqueue()).result(timeout=10)
                ran_ms.append(r.finish_time - submitted_ms)

            health = f"{producer.prefix}:health:*"

            async def healthy() -> bool:  # each worker keeps a health key once it runs
                return len(await producer.redis.keys(health)) >= scenario.workers

            await await_until(healthy, procs, f"{scenario.workers} streaq workers not running", log)
            await batch(scenario.warmup, 120)
            alive_or_raise(procs, log)
            meter = CpuMeter([p.pid for p in procs], brokers.redis_pid)
            res.rates = await atimed_rounds(
                scenario, meter, lambda _r: batch(scenario.tasks, scenario.timeout(), res.executions)
            )
            meter.report(res)
            res.latencies_ms = await alatencies(scenario.latency, one)
            res.note = (
                f"concurrency {CONCURRENCY} per worker; results awaited {RESULTS_AT_ONCE} at a time "
                "(one pub/sub subscription each)"
            )
            if ran_ms:
                res.note += f"; one at a time the task had run {statistics.median(ran_ms):.1f} ms (p50) after submit"
    finally:
        stop(procs)
        shutil.rmtree(log.parent, ignore_errors=True)
    return res
