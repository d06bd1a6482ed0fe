"""dramatiq on Redis: the Redis broker with the Results middleware (Redis result backend), 2 processes x 8 threads.

What this follows (dramatiq 2.2): its docs' Redis setup, ``RedisBroker`` plus
``broker.add_middleware(Results(backend=RedisBackend(...)))`` with results in their own Redis
database, an actor declared with ``store_results=True``; workers started with the ``dramatiq``
command, here ``--processes 2 --threads 8`` (its default is one process per core and 8 threads each);
many messages sent at once as a ``group`` and collected with ``group.get_results(block=True)``, one
with ``message.get_result(block=True)`` -- both a blocking ``BRPOPLPUSH`` on the result key, which
the ``RedisBackend`` docstring calls the recommended backend "as waiting for a result is resource
efficient". The worker side builds the same broker from ``PEERS_REDIS_URL`` / ``PEERS_DRAMATIQ_NS``
(``python -m dramatiq bench.peers.dramatiq_peer``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers.common import (
    Brokers,
    CpuMeter,
    Scenario,
    SystemResult,
    alive_or_raise,
    child_env,
    spawn,
    stop,
    timed_rounds,
    versions,
)
from coord.ids import new_id

PROCESSES = 2
THREADS = 8
ACTOR = "noop"


def make_broker(url: str, namespace: str) -> RedisBroker:
    """The broker both sides use: queues on Redis db 0 under ``namespace``, results on db 1."""
    broker = RedisBroker(url=f"{url}/0", namespace=namespace)
    broker.add_middleware(Results(backend=RedisBackend(url=f"{url}/1", namespace=f"{namespace}-results")))
    return broker


def declare(broker: RedisBroker) -> Any:
    """The no-op actor on ``broker`` (results stored)."""

    def noop() -> None:
        """The task: nothing."""

    return dramatiq.actor(noop, actor_name=ACTOR, broker=broker, store_results=True)


broker = make_broker(
    os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379"), os.environ.get("PEERS_DRAMATIQ_NS", "dramatiq")
)
"""The broker the worker processes load."""
dramatiq.set_broker(broker)
noop = declare(broker)


def run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Run the scenario on dramatiq against the run's redis-server."""
    assert brokers.redis_url is not None
    res = SystemResult("dramatiq", "dramatiq", versions=versions("dramatiq", "redis"))
    ns = f"dramatiq-{new_id('q')}"
    producer = make_broker(brokers.redis_url, ns)
    dramatiq.set_broker(producer)  # Message.get_result looks up the results backend of the global broker
    actor = declare(producer)
    admin = redis.Redis.from_url(f"{brokers.redis_url}/0")
    clients_before = len(admin.client_list())
    env = child_env(PEERS_REDIS_URL=brokers.redis_url, PEERS_DRAMATIQ_NS=ns)
    log = Path(tempfile.mkdtemp(prefix="peers-dramatiq-")) / "workers.log"
    procs = [
        spawn(
            ["-m", "dramatiq", __name__, "--processes", str(PROCESSES), "--threads", str(THREADS), "--skip-logging"],
            env,
            log,
        )
    ]
    try:

        def batch(n: int, timeout: float) -> None:
            g = dramatiq.group([actor.message() for _ in range(n)], broker=producer).run()
            got = sum(1 for _ in g.get_results(block=True, timeout=int(timeout * 1000)))
            if got != n:
                raise RuntimeError(f"{got} results for {n} messages")

        def connected() -> bool:  # each worker process holds its own Redis connections once it consumes
            return len(admin.client_list()) >= clients_before + PROCESSES

        _wait(connected, procs, log, f"{PROCESSES} dramatiq worker processes not connected")
        batch(scenario.warmup, 120)
        alive_or_raise(procs, log)
        meter = CpuMeter([p.pid for p in procs], brokers.redis_pid)
        res.rates = timed_rounds(scenario, meter, lambda _r: batch(scenario.tasks, scenario.timeout()))
        meter.report(res)
        for _ in range(scenario.latency):
            t0 = time.perf_counter()
            actor.send().get_result(block=True, timeout=10_000)
            res.latencies_ms.append((time.perf_counter() - t0) * 1000)
        res.note = f"{PROCESSES} procs x {THREADS} threads, results by blocking pop"
    finally:
        stop(procs)
        producer.close()
        admin.close()
        shutil.rmtree(log.parent, ignore_errors=True)
    return res


def _wait(cond: Callable[[], bool], procs: list[Any], log: Path, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        alive_or_raise(procs, log)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        time.sleep(0.05)
