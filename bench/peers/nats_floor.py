"""Raw nats-py floors: what JetStream itself costs on this machine for the same scenario, no framework.

* ``reply``: the producer publishes each task to a JetStream work-queue stream (acknowledged
  publishes, pipelined per batch); 2 worker processes pull batches of 256, publish a core-NATS
  reply per message and ack it.
* ``kv-batch``: the producer also creates a KV record per task (pipelined per batch) and puts its
  revision in the message; workers do 2 compare-and-set updates per task (claim, complete),
  pipelined over the fetched batch, then ack. No reply: a round ends when the work queue is empty.
* ``kv-serial``: as ``kv-batch``, but each task's two CAS are awaited one by one, then a reply.

The worker processes run :mod:`bench.peers.nats_floor_worker` (nats-py only, quick to start).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

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
from bench.peers.nats_floor_worker import DURABLE
from coord.ids import new_id


def run_reply(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Floor (a): JetStream work queue + reply."""
    return asyncio.run(_run(scenario, brokers, "reply"))


def run_kv_batch(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Floor (b): JetStream + 2 KV CAS per task pipelined per batch, no reply."""
    return asyncio.run(_run(scenario, brokers, "kv-batch"))


def run_kv_serial(scenario: Scenario, brokers: Brokers) -> SystemResult:
    """Floor (c): JetStream + 2 KV CAS awaited one by one + reply."""
    return asyncio.run(_run(scenario, brokers, "kv-serial"))


async def _run(scenario: Scenario, brokers: Brokers, mode: str) -> SystemResult:
    assert brokers.nats_url is not None
    url = brokers.nats_url
    res = SystemResult(f"nats-{mode}", f"raw nats-py {mode}", versions=versions("nats-py"))
    tag = new_id("f").replace("-", "")[:12].upper()
    stream, bucket = f"FLOOR{tag}", f"floor{tag}"
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=stream, subjects=[f"{stream}.q"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE
            )
        )
        await js.add_consumer(
            stream,
            ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1, ack_wait=60),
        )
        kv = await js.create_key_value(bucket=bucket, history=1, storage=StorageType.FILE) if mode != "reply" else None
        waiting: dict[str, asyncio.Future[None]] = {}

        async def on_reply(msg: Msg) -> None:
            fut = waiting.pop(msg.data.decode(), None)
            if fut is not None and not fut.done():
                fut.set_result(None)

        sub = await nc.subscribe(f"{stream}.r", cb=on_reply)

        async def submit(ids: list[str]) -> None:
            for i in range(0, len(ids), scenario.batch):
                chunk = ids[i : i + scenario.batch]
                if kv is not None:
                    revs = await asyncio.gather(*(kv.create(f"t.{t}", b"pending") for t in chunk))
                    await asyncio.gather(
                        *(
                            js.publish(f"{stream}.q", t.encode(), headers={"rev": str(r)})
                            for t, r in zip(chunk, revs, strict=True)
                        )
                    )
                else:
                    await asyncio.gather(*(js.publish(f"{stream}.q", t.encode()) for t in chunk))

        async def drained(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while (await js.stream_info(stream)).state.messages:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"work queue not drained after {timeout}s")
                await asyncio.sleep(0.002)

        async def batch(prefix: str, n: int) -> None:
            ids = [f"{prefix}-{j}" for j in range(n)]
            if mode == "kv-batch":
                await submit(ids)
                await drained(scenario.timeout())
                return
            loop = asyncio.get_running_loop()
            futs = [loop.create_future() for _ in ids]
            waiting.update(zip(ids, futs, strict=True))
            await submit(ids)
            await asyncio.wait_for(asyncio.gather(*futs), scenario.timeout())

        env = child_env()
        logdir = Path(tempfile.mkdtemp(prefix="peers-nats-"))
        log = logdir / "workers.log"
        procs = [
            spawn(["-m", "bench.peers.nats_floor_worker", url, stream, mode, bucket], env, log)
            for _ in range(scenario.workers)
        ]
        try:

            async def pulling() -> bool:
                return int((await js.consumer_info(stream, DURABLE)).num_waiting or 0) >= scenario.workers

            await await_until(pulling, procs, f"{scenario.workers} floor workers not pulling", log)
            await batch("w", scenario.warmup)
            alive_or_raise(procs, log)
            meter = CpuMeter([p.pid for p in procs], brokers.nats_pid)
            res.rates = await atimed_rounds(scenario, meter, lambda r: batch(f"r{r}", scenario.tasks))
            meter.report(res)
            if mode == "kv-batch":
                res.note = "no reply: a round ends when the work queue is drained; latency not measured"
            else:
                one: Callable[[int], Awaitable[None]] = lambda i: batch(f"l{i}", 1)  # noqa: E731
                res.latencies_ms = await alatencies(scenario.latency, one)
        finally:
            stop(procs)
            shutil.rmtree(logdir, ignore_errors=True)
            await sub.unsubscribe()
            await js.delete_stream(stream)
            if kv is not None:
                await js.delete_key_value(bucket)
    finally:
        await nc.close()
    return res
