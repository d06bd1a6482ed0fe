"""The parent of the long-run test, in a process of its own as a real parent is: ``python -m
tests.chaos.helpers_long_run_parent URL NAMESPACE ROUNDS TASKS`` runs the rounds through one
Dispatcher and prints one JSON line: tasks/s and RSS after each round, whether anything was kept of
a finished task, and how long ``stop()`` took."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

import psutil

import coord
from dispatch import Dispatcher
from tests.chaos.helpers_fleet import specs, stop_within, wait_all


async def main(url: str, namespace: str, rounds: int, tasks: int) -> None:
    me = psutil.Process()
    rates: list[float] = []
    rss: list[int] = []
    kept: list[int] = []
    async with coord.connect(url, namespace=namespace) as conn:
        assert await conn.presence.wait_present("w1", 20) and await conn.presence.wait_present("w2", 20)
        dispatcher = await Dispatcher(conn).start()
        try:
            for round_ in range(rounds):
                started = time.monotonic()
                ids = await dispatcher.submit_many(specs(f"r{round_}-", tasks, seconds=0))
                await wait_all(dispatcher, ids, 120)
                rates.append(tasks / (time.monotonic() - started))
                gc.collect()
                rss.append(me.memory_info().rss)
                kept.append(len(dispatcher._waiting))
        finally:
            stopped = await stop_within(dispatcher)
    print(json.dumps({"rates": rates, "rss": rss, "kept": kept, "stop_s": stopped}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
