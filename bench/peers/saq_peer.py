"""saq on Redis: 2 ``saq`` worker processes; the producer collects results with ``Queue.map`` / ``Queue.apply``.

Two rows:

- ``saq``: saq's defaults, worker ``concurrency`` 10 and results polled every 0.5 s (the default
  ``poll_interval`` of ``Queue.map`` and ``Queue.apply``).
- ``saq-tuned``: ``concurrency`` 100 jobs per worker and results polled every 5 ms.

What this follows (saq 0.26): its README and docs run workers with ``saq module.settings`` (a
settings dict with ``queue``, ``functions`` and ``concurrency``; ``--workers`` forks more processes,
here each worker process is started on its own so the CPU meter and shutdown see each one). Its
enqueue-and-await API is ``Queue.map(func, iter_kwargs, poll_interval=...)`` for many jobs and
``Queue.apply(func, poll_interval=...)`` for one: both poll the job records (one ``MGET``) every
``poll_interval`` seconds, default 0.5, and sleep one interval more after the poll that saw the last
result, so one job at a time takes two intervals. saq's own benchmark (``benchmarks/simple.py``)
runs no-op jobs at ``concurrency`` 10, streaq's saq benchmark at 32; the tuned row takes issue 23's
100 per worker and 5 ms polling. The worker side reads ``PEERS_REDIS_URL`` / ``PEERS_SAQ_QUEUE`` /
``PEERS_SAQ_CONCURRENCY`` (``python -m saq bench.peers.saq_peer.settings``).

Jobs are enqueued only after a worker's first sweep (each worker sweeps at start, then every 60 s,
one sweep per 60 s across workers by a lock key). saq's sweep aborts a job it finds in the active
list whose status is not yet ``active``, and a job sits there between its dequeue and its start: a
sweep during the warm-up aborted a job (``Status.ABORTED ... swept``) and ``Queue.map`` raised for
the whole batch. A long-running saq deployment is past its first sweep; the later ones (every 60 s)
fall after this bench's rounds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from saq import Queue

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

DEFAULT_CONCURRENCY = 10
"""saq's ``Worker`` default."""
DEFAULT_POLL = 0.5
"""saq's ``Queue.map`` / ``Queue.apply`` default ``poll_interval``."""
TUNED_CONCURRENCY = 100
TUNED_POLL = 0.005


async def noop(ctx: dict[str, Any]) -> None:
    """The task: nothing."""


settings: dict[str, Any] = {
    "queue": Queue.from_url(
        os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379"), name=os.environ.get("PEERS_SAQ_QUEUE", "default")
    ),
    "functions": [noop],
    "concurrency": int(os.environ.get("PEERS_SAQ_CONCURRENCY", str(DEFAULT_CONCURRENCY))),
}
"""The worker settings ``saq`` loads in each worker process."""


def run_default(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """saq as installed: concurrency 10 per worker, results polled every 0.5 s."""
    return asyncio.run(_run(scenario, brokers, DEFAULT_CONCURRENCY, DEFAULT_POLL))


def run_tuned(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """saq tuned for throughput: concurrency 100 per worker, results polled every 5 ms."""
    return asyncio.run(_run(scenario, brokers, TUNED_CONCURRENCY, TUNED_POLL))


async def _run(scenario: Scenario, brokers: Brokers, concurrency: int, poll: float) -> SystemResult:
    assert brokers.redis_url is not None
    res = SystemResult("saq", "saq", versions=versions("saq", "redis", "hiredis"))
    name = f"saq-{new_id('q')}"
    queue = Queue.from_url(brokers.redis_url, name=name)
    await queue.connect()
    redis = queue.redis
    clients_before = len(await redis.client_list())
    env = child_env(PEERS_REDIS_URL=brokers.redis_url, PEERS_SAQ_QUEUE=name, PEERS_SAQ_CONCURRENCY=str(concurrency))
    log = Path(tempfile.mkdtemp(prefix="peers-saq-")) / "workers.log"
    procs = [spawn(["-m", "saq", f"{__name__}.settings", "--quiet"], env, log) for _ in range(scenario.workers)]
    try:

        async def batch(n: int, timeout: float) -> None:
            results = await queue.map("noop", [{} for _ in range(n)], timeout=timeout, poll_interval=poll)
            if len(results) != n:
                raise RuntimeError(f"{len(results)} results for {n} jobs")

        async def one(_i: int) -> None:
            await queue.apply("noop", timeout=10, poll_interval=poll)

        async def connected() -> bool:  # each worker holds its own Redis connections once it is up
            return len(await redis.client_list()) >= clients_before + scenario.workers

        async def swept() -> bool:  # a worker's first sweep has run: the next is 60 s away (its lock)
            return bool(await redis.exists(queue.namespace("sweep")))

        await await_until(connected, procs, f"{scenario.workers} saq workers not connected", log)
        await await_until(swept, procs, "no saq worker swept its queue at start", log)
        await batch(scenario.warmup, 120)
        alive_or_raise(procs, log)
        meter = CpuMeter([p.pid for p in procs], brokers.redis_pid)
        res.rates = await atimed_rounds(scenario, meter, lambda _r: batch(scenario.tasks, scenario.timeout()))
        meter.report(res)
        res.latencies_ms = await alatencies(scenario.latency, one)
        res.note = f"concurrency {concurrency} per worker, results polled every {poll * 1000:g} ms"
    finally:
        stop(procs)
        await queue.disconnect()
        shutil.rmtree(log.parent, ignore_errors=True)
    return res
