"""arq on Redis: 2 ``arq`` worker processes polling every 10 ms, max_jobs 256; the producer awaits each job's result.

The worker side reads its Redis URL and queue from ``PEERS_REDIS_URL`` / ``PEERS_ARQ_QUEUE``
(``python -m arq bench.peers.arq_peer.WorkerSettings``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

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

POLL = 0.01
MAX_JOBS = 256


async def noop(ctx: dict[str, Any]) -> None:
    """The task: nothing."""


class WorkerSettings:
    """arq worker configuration (read by ``arq`` in the worker processes)."""

    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379"))
    queue_name = os.environ.get("PEERS_ARQ_QUEUE", "arq:queue")
    poll_delay = POLL
    max_jobs = MAX_JOBS


def run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Run the scenario on arq against the run's redis-server."""
    return asyncio.run(_run(scenario, brokers))


async def _run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    assert brokers.redis_url is not None
    res = SystemResult("arq", "arq", versions=versions("arq", "redis"))
    queue = f"arq:{new_id('q')}"
    pool = await create_pool(RedisSettings.from_dsn(brokers.redis_url), default_queue_name=queue)
    clients_before = len(await pool.client_list())
    env = child_env(PEERS_REDIS_URL=brokers.redis_url, PEERS_ARQ_QUEUE=queue)
    procs = [spawn(["-m", "arq", f"{__name__}.WorkerSettings"], env) for _ in range(scenario.workers)]
    try:

        async def batch(n: int) -> None:
            jobs: list[Job | None] = []
            for i in range(0, n, scenario.batch):
                jobs += await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(min(scenario.batch, n - i))))
            for job in jobs:
                assert job is not None
                await job.result(timeout=scenario.timeout(), poll_delay=POLL)

        async def one(_i: int) -> None:
            await batch(1)

        async def connected() -> bool:  # each worker holds a Redis connection once it is up
            return len(await pool.client_list()) >= clients_before + scenario.workers

        await await_until(connected, procs, f"{scenario.workers} arq workers not connected")
        await asyncio.wait_for(batch(scenario.warmup), 120)
        alive_or_raise(procs)
        meter = CpuMeter([p.pid for p in procs], brokers.redis_pid)
        res.rates = await atimed_rounds(scenario, meter, lambda _r: batch(scenario.tasks))
        meter.report(res)
        res.latencies_ms = await alatencies(scenario.latency, one)
    finally:
        stop(procs)
        await pool.aclose()
    return res
