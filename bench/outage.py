"""Outages under load: how long a fleet stops when the server goes away, and what it loses (nothing).

    python bench/outage.py                         # one server stopped for 1, 3, 5, 10 and 20 s
    python bench/outage.py --cluster --rounds 3    # 3 nodes, R3: SIGKILL the leader of each stream

A parent (a Dispatcher in this process) keeps ~200 tasks of 20 ms in flight over 2 `corral worker`
processes (concurrency 16 each). For each fault it records, from the parent's side: the pause (the
longest gap between two results around the fault), the time from the server's return (or the kill,
on a cluster) until results flow again, and at the end how many tasks were lost (never finished) and
how many were recorded twice (more than one ``completed`` transition in their journal), and how
often a worker departed (its presence key left, even if it joined again). Workers must still be
running afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import coord
from bench._servers import start_servers
from coord.ids import new_id
from coord.presence import Left
from coord.tasks import Transition
from coord.wire import Spec
from dispatch import Dispatcher

console = Console()
IN_FLIGHT = 200


def spawn(url: str, ns: str, replicas: int, n: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "corral", "--server", url, "--namespace", ns, "--replicas", str(replicas), "worker"]
    return [
        subprocess.Popen(
            [*argv, "-q", "bench", "--handler", "tests.e2e.helpers_handlers:sleepy", "-c", "16", "--id", f"ow{i}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]


class Load:
    """Keeps IN_FLIGHT tasks in flight and timestamps every result."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.done: list[float] = []
        self.ids: list[str] = []
        self._n = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False

    async def _one(self) -> None:
        while not self._stop:
            task_id = f"o{self._n}"
            self._n += 1
            spec = Spec(task_id=task_id, queue="bench", payload={"seconds": 0.02})
            while True:  # a submit during an outage longer than the store's patience is tried again
                try:
                    await self.dispatcher.submit(spec)
                    break
                except coord.Unavailable:
                    await asyncio.sleep(0.5)
            self.ids.append(task_id)
            await self.dispatcher.wait(task_id, 300)
            self.done.append(time.monotonic())

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._one()) for _ in range(IN_FLIGHT)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.wait_for(asyncio.gather(*self._tasks), 300)

    def pause_around(self, start: float, end: float) -> float:
        """The longest gap between two results between ``start - 1`` and ``end``."""
        stamps = [t for t in self.done if start - 1 <= t <= end]
        return max((b - a for a, b in itertools.pairwise(stamps)), default=end - start)

    def resumed_after(self, since: float) -> float:
        """Seconds from ``since`` to the first result after it."""
        later = [t for t in self.done if t > since]
        return (later[0] - since) if later else float("nan")


class Departures:
    """Counts the workers' departures (``Left`` presence events) while the bench runs."""

    def __init__(self, c: coord.Coord) -> None:
        self.count = 0
        self._c = c
        self._task: asyncio.Task[None] | None = None

    async def _count(self) -> None:
        async with self._c.presence.watch(include_existing=False) as events:
            async for event in events:
                if isinstance(event, Left) and event.agent_id in ("ow0", "ow1"):
                    self.count += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._count())

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.count


async def twice_and_lost(c: coord.Coord, ids: list[str]) -> tuple[int, int]:
    twice = lost = 0
    for start in range(0, len(ids), 64):
        batch = ids[start : start + 64]
        for record, journal in zip(
            await asyncio.gather(*(c.tasks.get(t) for t in batch)),
            await asyncio.gather(*(c.tasks.journal(t) for t in batch)),
            strict=True,
        ):
            lost += record.status != "succeeded"
            twice += sum(e.transition is Transition.COMPLETED for e in journal) > 1
    return twice, lost


Faults = Callable[[coord.Coord, "Load"], Awaitable[list[list[str]]]]
"""Inflicts the faults on a running fleet and returns one table row per fault."""


async def under_load(url: str, replicas: int, faults: Faults) -> list[list[str]]:
    """Run the fleet (2 workers, a parent keeping IN_FLIGHT tasks going), inflict ``faults``, summarize."""
    ns = new_id("o").replace("-", "")[:16]
    async with coord.connect(url, namespace=ns, replicas=replicas) as c:
        procs = spawn(url, ns, replicas, 2)
        try:
            for w in ("ow0", "ow1"):
                await c.presence.wait_present(w, 30)
            departures = Departures(c)
            departures.start()
            dispatcher = await Dispatcher(c).start()
            load = Load(dispatcher)
            await load.start()
            await asyncio.sleep(3)
            rows = await faults(c, load)
            await load.stop()
            await dispatcher.stop()
            twice, lost = await twice_and_lost(c, load.ids)
            alive = sum(p.poll() is None for p in procs)
            departed = await departures.stop()
            summary = f"lost {lost}, twice {twice}, departures {departed}, workers alive {alive}/2"
            return [*rows, [f"{len(load.ids)} tasks in all", "", "", summary]]
        finally:
            for p in procs:
                p.send_signal(signal.SIGKILL)


async def single(lengths: list[float]) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as store, start_servers(False, store_dir=store) as servers:
        (server,) = servers.nodes

        async def stop_and_restart(c: coord.Coord, load: Load) -> list[list[str]]:
            rows = []
            for length in lengths:
                down = time.monotonic()
                await asyncio.to_thread(server.stop, remove_store=False)
                await asyncio.sleep(length)
                await asyncio.to_thread(server.start)
                back = time.monotonic()
                await asyncio.sleep(max(8.0, length))
                pause = load.pause_around(down, time.monotonic())
                rows.append([f"server stopped {length:g} s", f"{pause:.2f}", f"{load.resumed_after(back):.2f}", ""])
            return rows

        return await under_load(servers.url, servers.replicas, stop_and_restart)


async def cluster(rounds: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as store, start_servers(True, store_dir=store) as servers:

        async def kill_leaders(c: coord.Coord, load: Load) -> list[list[str]]:
            rows = []
            streams = [f"KV_{c.names.tasks_bucket}", f"KV_{c.names.presence_bucket}", c.names.dispatch_stream]
            for r in range(rounds):
                for stream in streams:
                    info = await c.js.stream_info(stream)
                    leader = next(n for n in servers.nodes if info.cluster and n.name == info.cluster.leader)
                    killed = time.monotonic()
                    await asyncio.to_thread(leader.kill)
                    await asyncio.sleep(15)
                    what = f"round {r + 1}: SIGKILL leader of {stream.removeprefix('KV_').split('_', 1)[1]}"
                    pause = load.pause_around(killed, time.monotonic())
                    rows.append([what, f"{pause:.2f}", f"{load.resumed_after(killed):.2f}", ""])
                    await asyncio.to_thread(leader.start)
                    await asyncio.sleep(5)
            return rows

        return await under_load(servers.url, servers.replicas, kill_leaders)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", action="store_true", help="3 nodes, R3, leader kills instead of server stops")
    ap.add_argument("--lengths", type=float, nargs="+", default=[1, 3, 5, 10, 20], help="outage lengths (s)")
    ap.add_argument("--rounds", type=int, default=3, help="leader-kill rounds on the cluster")
    args = ap.parse_args()
    rows = asyncio.run(cluster(args.rounds) if args.cluster else single(args.lengths))
    table = Table(title="outage under load: ~200 tasks of 20 ms in flight, 2 worker processes x 16")
    for column in ("fault", "pause (s)", "results again after (s)", "outcome"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
