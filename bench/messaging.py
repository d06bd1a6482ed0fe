"""Messaging, lifecycle events and registry: latency and rates on one embedded server.

    python bench/messaging.py --n 1000

Starts its own nats-server (loopback) and uses two connections in one Python process: a receiver
(present, reading its inbox / running an event listener) and a sender. Phases:

- ``send → Delivered``: awaited one by one to a live agent that acknowledges after its (empty)
  handler; per-message latency (store + consumer push + delete + ack notice + presence race).
- ``send enqueue`` / ``send keyed``: awaited one by one to an absent agent (store only).
- ``read_pending`` snapshot of the queued messages.
- ``stream 20 chunks``: ``send_streaming`` until ``End``.
- ``emit``: awaited one by one; ``listener catch-up``: a fresh listener applying all of them
  (seen-marker check, descendant merge, marker write, ack) from the stream.
- ``reserve_thread``: uncontended reservations of fresh threads (read + CAS + session write).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import coord
from coord.events import Progress, TurnEnded
from coord.mailbox import Agent, Delivered, End
from coord.presence import AgentInfo
from coord.server import NatsServer

console = Console(width=120)


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> tuple[float, list[float]]:
    """Run ``op(i)`` n times one by one; total seconds and per-call latencies (ms)."""
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        lat.append((time.perf_counter() - t) * 1000)
    return time.perf_counter() - start, lat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(n: int) -> None:
    rows: list[tuple[str, int, float, list[float] | None]] = []
    with NatsServer() as server:
        async with (
            coord.connect(server.url, namespace="bench") as recv,
            coord.connect(server.url, namespace="bench") as send,
        ):
            # --- mailbox ------------------------------------------------------------------
            async with recv.presence.join(AgentInfo(id="rx")):

                async def serve() -> None:
                    async with recv.mailbox.inbox("rx") as inbox:
                        async for msg in inbox:
                            for i in range(int(msg.text) if msg.streaming else 0):
                                await msg.chunk(f"chunk {i}")

                server_task = asyncio.create_task(serve())
                await send.mailbox.send(Agent(id="rx"), "0")  # warm up

                async def delivered(i: int) -> None:
                    assert isinstance(await send.mailbox.send(Agent(id="rx"), "0"), Delivered)

                total, lat = await timed(n, delivered)
                rows.append(("send → Delivered (live agent)", n, total, lat))

                async def streamed(i: int) -> None:
                    items = [x async for x in send.mailbox.send_streaming(Agent(id="rx"), "20")]
                    assert isinstance(items[-1], End) and len(items) == 22

                total, lat = await timed(max(n // 10, 10), streamed)
                rows.append(("send_streaming, 20 chunks → End", max(n // 10, 10), total, lat))
                server_task.cancel()

            total, lat = await timed(n, lambda i: send.mailbox.send(Agent(id="absent"), "x"))
            rows.append(("send → Enqueued (absent agent)", n, total, lat))
            total, lat = await timed(n, lambda i: send.mailbox.send(Agent(id="absent2"), str(i), key="k"))
            rows.append(("send keyed (latest wins)", n, total, lat))
            start = time.perf_counter()
            pending = await send.mailbox.read_pending("absent")
            rows.append(
                (f"read_pending snapshot ({len(pending)} msgs)", len(pending), time.perf_counter() - start, None)
            )

            # --- events -------------------------------------------------------------------
            async def emit(i: int) -> None:
                event = TurnEnded(agent="kid", turn=i) if i % 2 else Progress(agent=f"kid{i % 50}", fraction=0.5)
                assert await send.events.emit("boss", event)

            total, lat = await timed(n, emit)
            rows.append(("events.emit (awaited)", n, total, lat))
            start = time.perf_counter()
            async with recv.events.listener("boss") as listener:
                await listener.catch_up(timeout=120)
            rows.append(("listener catch-up (apply + ack)", n, time.perf_counter() - start, None))

            # --- registry -----------------------------------------------------------------
            async with send.presence.join(AgentInfo(id="owner")):
                total, lat = await timed(
                    max(n // 2, 10), lambda i: send.registry.reserve_thread(f"t{i}", agent_id="owner")
                )
                rows.append(("reserve_thread (uncontended)", max(n // 2, 10), total, lat))

    table = Table(title=f"messaging, events, registry — n={n} (2-core machine, server and clients sharing it)")
    for col in ("operation", "count", "seconds", "ops/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "operation" else "right")
    for name, count, total, latencies in rows:
        table.add_row(
            name,
            str(count),
            f"{total:.3f}",
            f"{count / total:,.0f}",
            f"{statistics.median(latencies):.2f}" if latencies else "",
            f"{pct(latencies, 0.99):.2f}" if latencies else "",
        )
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="operations per phase")
    asyncio.run(main(parser.parse_args().n))
