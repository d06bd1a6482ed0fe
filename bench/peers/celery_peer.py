"""Celery on Redis (broker and result backend), acks_late: prefork -c 2, or 2 worker processes x threads c=50.

The worker side builds the same app from ``PEERS_REDIS_URL`` and consumes ``PEERS_CELERY_QUEUE``
(``python -m celery -A bench.peers.celery_peer worker ...``). The producer sends with
``send_task`` and collects with ``ResultSet.join_native`` (Redis pub/sub, no polling).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from celery import Celery
from celery.result import AsyncResult, ResultSet

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

TASK = "peers.noop"
THREADS = 50


def make_app(redis_url: str) -> Celery:
    """The Celery app, broker on Redis db 0 and results on db 1, acks_late."""
    app = Celery("peers", broker=f"{redis_url}/0", backend=f"{redis_url}/1")
    app.conf.update(
        task_acks_late=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=os.environ.get("PEERS_CELERY_QUEUE", "celery"),
    )
    return app


app = make_app(os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379"))
"""The app the worker processes load (``-A bench.peers.celery_peer``)."""


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop() -> None:
    """The task: nothing."""


@contextlib.contextmanager
def collected_after() -> Iterator[None]:
    """Run the block with Python's cyclic garbage collector off, then collect.

    Celery 5.6's ``AsyncResult.__del__`` unsubscribes through the backend's shared Redis pub/sub
    connection; when the cyclic collector finalizes a finished result in the middle of another
    subscribe or unsubscribe on that connection, it waits forever on redis-py's ``PubSub`` lock
    (celery/celery#10477, fixed after 5.6.3; seen here as ``--rounds 10`` hanging in
    ``join_native``). Collecting only between Celery calls keeps the finalizers out of the I/O; the
    collection runs inside the timed round, so Celery still pays for its unsubscribes. (celery 5.7
    needs redis-py 6+, which arq <0.29 does not allow in the same environment.)
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        if was_enabled:
            gc.enable()


def run_prefork(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """One Celery worker, prefork pool of ``scenario.workers`` processes."""
    return _run(scenario, brokers, [["--pool", "prefork", "-c", str(scenario.workers)]])


def run_threads(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """``scenario.workers`` Celery worker processes, each a thread pool of 50."""
    return _run(scenario, brokers, [["--pool", "threads", "-c", str(THREADS)]] * scenario.workers)


def _run(scenario: Scenario, brokers: Brokers, pools: list[list[str]]) -> SystemResult:
    assert brokers.redis_url is not None
    res = SystemResult("celery", "celery", versions=versions("celery", "kombu", "redis"))
    queue = f"celery-{new_id('q')}"
    producer = make_app(brokers.redis_url)
    env = child_env(PEERS_REDIS_URL=brokers.redis_url, PEERS_CELERY_QUEUE=queue)
    log = Path(tempfile.mkdtemp(prefix="peers-celery-")) / "workers.log"
    procs = [
        spawn(
            [
                "-m",
                "celery",
                "-A",
                __name__,
                "worker",
                *pool,
                "-Q",
                queue,
                "-n",
                f"w{i}-{queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ],
            env,
            log,
        )
        for i, pool in enumerate(pools)
    ]
    try:

        def batch(n: int, timeout: float) -> None:
            with collected_after():
                sent: list[AsyncResult] = [producer.send_task(TASK, queue=queue) for _ in range(n)]
                ResultSet(sent, app=producer).join_native(timeout=timeout, propagate=True)
                del sent

        deadline = time.monotonic() + 60
        while len(producer.control.ping(timeout=0.5)) < len(pools):  # every worker node answers
            alive_or_raise(procs, log)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pools)} Celery workers not answering ping after 60s")
        batch(scenario.warmup, 120)
        alive_or_raise(procs, log)
        meter = CpuMeter([p.pid for p in procs], brokers.redis_pid)
        res.rates = timed_rounds(scenario, meter, lambda _r: batch(scenario.tasks, scenario.timeout()))
        meter.report(res)
        for _ in range(scenario.latency):
            with collected_after():
                t0 = time.perf_counter()
                producer.send_task(TASK, queue=queue).get(timeout=10)
                res.latencies_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        stop(procs)
        gc.collect()  # AsyncResult.__del__ unsubscribes through Redis: let it run while Redis is up
        producer.close()
        shutil.rmtree(log.parent, ignore_errors=True)
    return res
