"""taskiq + taskiq-nats: pull-based JetStream broker, results in a NATS object store, ``taskiq worker --workers 2``.

The worker side builds the same broker from ``PEERS_NATS_URL`` / ``PEERS_TASKIQ_TAG``
(``python -m taskiq worker bench.peers.taskiq_peer:broker``). The producer awaits each task's
``wait_result`` in order, polling every 10 ms (taskiq's default is 200 ms).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import nats
from taskiq import AsyncBroker
from taskiq.exceptions import ResultGetError, ResultIsReadyError
from taskiq.kicker import AsyncKicker
from taskiq.task import AsyncTaskiqTask
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker

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

TASK = "peers.noop"
POLL = 0.01
PULL_BATCH = 1
"""taskiq-nats' default. Larger batches need ``pull_consume_timeout`` (else a fetch waits for a full
batch), and then nats-py's fetch can raise a bare ``asyncio.TimeoutError`` that taskiq-nats does
not catch: the worker process dies and taskiq restarts it."""
MAX_ASYNC = 256


def make_broker(url: str, tag: str) -> AsyncBroker:
    """The broker both sides use: stream, subject, durable and result bucket named after ``tag``."""
    backend: NATSObjectStoreResultBackend[None] = NATSObjectStoreResultBackend(url, bucket_name=f"taskiq{tag}")
    return PullBasedJetStreamBroker(
        url,
        subject=f"taskiq.{tag}",
        stream_name=f"TASKIQ{tag}",
        durable=f"d{tag}",
        pull_consume_batch=PULL_BATCH,
    ).with_result_backend(backend)


broker = make_broker(os.environ.get("PEERS_NATS_URL", "nats://127.0.0.1:4222"), os.environ.get("PEERS_TASKIQ_TAG", "x"))
"""The broker the worker processes load."""


@broker.task(task_name=TASK)  # type: ignore[untyped-decorator]  # taskiq is not followed (pyproject), so Any
async def noop() -> None:
    """The task: nothing."""


def run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Run the scenario on taskiq against the run's nats-server."""
    return asyncio.run(_run(scenario, brokers))


async def _run(scenario: Scenario, brokers: Brokers) -> SystemResult:
    assert brokers.nats_url is not None
    res = SystemResult("taskiq", "taskiq", versions=versions("taskiq", "taskiq-nats", "nats-py"))
    tag = new_id("q").replace("-", "")[:12]
    producer = make_broker(brokers.nats_url, tag)
    await producer.startup()  # creates the stream, consumer and result bucket before the workers start
    kicker: AsyncKicker[[], None] = AsyncKicker(TASK, producer, {})
    env = child_env(PEERS_NATS_URL=brokers.nats_url, PEERS_TASKIQ_TAG=tag)
    log = Path(tempfile.mkdtemp(prefix="peers-taskiq-")) / "workers.log"
    procs = [
        spawn(
            [
                "-m",
                "taskiq",
                "worker",
                f"{__name__}:broker",
                "--workers",
                str(scenario.workers),
                "--max-async-tasks",
                str(MAX_ASYNC),
                "--log-level",
                "WARNING",
            ],
            env,
            log,
        )
    ]
    nats_client = await nats.connect(brokers.nats_url)
    try:
        refused = [0]

        async def batch(n: int, timeout: float) -> None:
            sent: list[AsyncTaskiqTask[None]] = []
            for i in range(0, n, scenario.batch):
                sent += await asyncio.gather(*(kicker.kiq() for _ in range(min(scenario.batch, n - i))))
            deadline = time.monotonic() + timeout
            for task in sent:
                while True:
                    try:
                        r = await task.wait_result(check_interval=POLL, timeout=timeout)
                        break
                    except (ResultIsReadyError, ResultGetError) as exc:
                        # nats-py's ObjectStore.get leaves an ordered consumer behind per read and
                        # nats-server refuses more than 1,000 per stream (err_code 10026): wait for
                        # the old ones to expire, as a user would have to, and count it.
                        if "10026" not in str(exc.__cause__) or time.monotonic() > deadline:
                            raise
                        refused[0] += 1
                        await asyncio.sleep(0.1)
                if r.is_err:
                    raise RuntimeError(f"task failed: {r.error}")

        async def one(_i: int) -> None:
            await batch(1, 10)

        js = nats_client.jetstream()

        async def pulling() -> bool:  # each worker process keeps a pull request waiting while idle
            return int((await js.consumer_info(f"TASKIQ{tag}", f"d{tag}")).num_waiting or 0) >= scenario.workers

        await await_until(pulling, procs, f"{scenario.workers} taskiq workers not pulling", log)
        await batch(scenario.warmup, 120)
        alive_or_raise(procs, log)
        meter = CpuMeter([p.pid for p in procs], brokers.nats_pid)
        res.rates = await atimed_rounds(scenario, meter, lambda _r: batch(scenario.tasks, scenario.timeout()))
        meter.report(res)
        res.latencies_ms = await alatencies(scenario.latency, one)
        res.note = f"pull batch {PULL_BATCH}, result polled every {POLL * 1000:.0f} ms"
        if refused[0]:
            res.note += (
                f"; {refused[0]} result reads refused by the 1,000-consumers-per-stream limit "
                "(one consumer left per read), retried after 100 ms"
            )
    finally:
        stop(procs)
        await nats_client.close()
        await producer.shutdown()
        shutil.rmtree(log.parent, ignore_errors=True)
    return res
