"""The child processes of bench/fanout.py: a parent (a default Dispatcher at a fixed rate) and an agent simulator.

Both speak a line protocol with the bench on stdin/stdout: the child prints ``ready`` once it is set
up, reads one JSON line (the go: rate and measurement window, for a parent) or waits, and on the
line ``stop`` (or end of input) it stops and prints one JSON line with what it did. A parent also
prints one JSON line as its window closes: the tasks it finished in the window and their latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import time
from typing import Any

import coord
from coord.ids import new_id
from coord.kv import MSG_TTL, ttl_header
from coord.naming import kv_subject_prefix
from coord.presence import AgentInfo
from coord.presence.models import encode_record
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher

TICK = 0.05
"""Seconds between an agent simulator's bursts of renewals: small enough to look steady."""

QUEUE = "bench"
"""The queue the parents submit to and the two no-op workers serve."""


async def _line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def _stopped(stop: asyncio.Event) -> None:
    line = await _line()
    while line and line.strip() != "stop":
        line = await _line()
    stop.set()


def _say(obj: object) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


async def parent(plan: dict[str, Any]) -> None:
    """One parent: a default Dispatcher submitting ``rate`` tasks/s and awaiting every result.

    ``plan["reclaimer"]`` False builds it without its embedded reclaimer (the floor: its own work only).
    """
    name = plan["name"]
    async with (
        coord.connect(plan["url"], namespace=plan["ns"], name=name) as conn,
        Dispatcher(conn, reclaimer=plan.get("reclaimer", True)) as d,
    ):
        _say("ready")
        go = json.loads(await _line())
        rate, w0, w1 = float(go["rate"]), float(go["w0"]), float(go["w1"])
        stop = asyncio.Event()
        stopper = asyncio.create_task(_stopped(stop))
        latencies: list[float] = []
        counts = {"submitted": 0, "done": 0, "in_window": 0, "failed": 0, "timed_out": 0}
        drains: set[asyncio.Task[None]] = set()

        async def window_report() -> None:
            await asyncio.sleep(max(0.0, w1 - time.time()))
            ordered = sorted(latencies)
            _say(
                {
                    "in_window": counts["in_window"],
                    "p50_ms": 1000 * statistics.median(ordered) if ordered else None,
                    "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else None,
                }
            )

        reporter = asyncio.create_task(window_report())

        async def collect(ids: list[str], sent: float) -> None:
            received = 0
            try:
                async for record in d.as_completed(ids, timeout=120):
                    now = time.time()
                    received += 1
                    counts["done"] += 1
                    if w0 <= now < w1:
                        counts["in_window"] += 1
                        latencies.append(now - sent)
                    counts["failed"] += int(record.status is not TaskStatus.SUCCEEDED)
            except TimeoutError:
                counts["timed_out"] += len(ids) - received

        # One task at a time, evenly spaced (a random phase keeps parents apart): each task costs
        # its parent the same messages whatever its share of the rate, so per-task numbers compare
        # across parent counts. A parent that falls behind catches up in one batch. Rate 0: idle.
        start = time.time() + random.uniform(0, 1 / rate) if rate else 0.0
        if not rate:
            await stop.wait()
        while not stop.is_set():
            due = math.floor(rate * (time.time() - start)) + 1 - counts["submitted"]
            if due > 0:
                n = counts["submitted"]
                specs = [Spec(task_id=f"{name}-{n + j}", queue=QUEUE) for j in range(min(due, 500))]
                sent = time.time()
                ids = await d.submit_many(specs)
                counts["submitted"] += len(ids)
                drain = asyncio.create_task(collect(ids, sent))
                drains.add(drain)
                drain.add_done_callback(drains.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, start + counts["submitted"] / rate - time.time()))
        if drains:
            await asyncio.wait(drains, timeout=20)
        for drain in list(drains):
            drain.cancel()
        stopper.cancel()
        await reporter
        _say(counts)


async def agents(plan: dict[str, Any]) -> None:
    """Renew ``plan["ids"]`` every presence interval with the bytes and TTL a real Membership writes.

    Each renewal is one pipelined publish to the agent's key with the ``Nats-TTL`` header and a
    reply subject for the stream's ack (one subscription counts them all): every presence follower
    sees these agents exactly as it sees real ones, at a fraction of a Membership's cost.
    """
    name = plan["name"]
    async with coord.connect(plan["url"], namespace=plan["ns"], name=name) as conn:
        nc = conn.nc
        prefix = kv_subject_prefix(conn.names.presence_bucket)
        interval = conn.presence.interval
        headers = {MSG_TTL: ttl_header(conn.presence.ttl)}
        instance = new_id("sim")
        writes = [(prefix + a, encode_record(AgentInfo(id=a, role="agent"), instance)) for a in plan["ids"]]
        inbox = f"_INBOX.{name}"
        stats = {"sent": 0, "acked": 0, "errors": 0, "late_ticks": 0}

        async def on_ack(msg: Any) -> None:
            stats["acked"] += 1
            stats["errors"] += int(b'"error"' in msg.data)

        await nc.subscribe(inbox, cb=on_ack)
        ticks = max(1, round(interval / TICK))
        slices = [writes[k::ticks] for k in range(ticks)]
        stop = asyncio.Event()
        stopper: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        k = 0
        while not stop.is_set():
            for subject, data in slices[k % ticks]:
                await nc.publish(subject, data, reply=inbox, headers=headers)
            stats["sent"] += len(slices[k % ticks])
            k += 1
            if k == ticks:  # every agent written once: wait for the acks, then say so
                await nc.flush()
                deadline = loop.time() + 30
                while stats["acked"] < len(writes) and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                _say("ready")
                stopper = asyncio.create_task(_stopped(stop))
            next_at += interval / ticks
            delay = next_at - loop.time()
            if delay < 0:
                stats["late_ticks"] += 1
                next_at = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))
        if stopper is not None:
            stopper.cancel()
        await nc.flush()
    _say(stats)


ROLES = {"parent": parent, "agents": agents}
"""The child roles, by name: ``python -m bench._fanout_roles ROLE PLAN_JSON``."""


if __name__ == "__main__":
    asyncio.run(ROLES[sys.argv[1]](json.loads(sys.argv[2])))
