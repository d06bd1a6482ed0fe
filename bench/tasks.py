"""Task store throughput: claim+complete cycles per second, against raw KV compare-and-set.

Phases (each on fresh pending tasks, each task claimed once and completed once):

* ``raw CAS``: nats-py ``kv.update(key, value, last=rev)`` on a bucket configured like the tasks
  bucket, no corral: the floor of one awaited CAS at a time, and of 64 concurrent chains per client
  (a claim+complete cycle is two CAS, so cycles/s can be at most half these rates).
* ``claim+complete``: ``TaskStore.claim`` with the record a notification inlines (one CAS, no read)
  then ``complete`` (one CAS); and the same with ``claim`` reading the record first (get + CAS).
* ``pipelined``: one client claiming a batch of 64 concurrently, then completing them concurrently
  (how a worker that fetches notifications in batches drives the store).
* ``scan`` / ``index``: finding 100 claimed tasks among all records by a full pass vs a live index.

Each phase runs with 1 client and with 8 concurrent clients (8 connections in this process), and
reports the server's own message rate (``/varz`` in_msgs+out_msgs per second) and CPU use.

    /tmp/venv/bin/python bench/tasks.py --tasks 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import psutil
from nats.js.api import StorageType
from nats.js.kv import KeyValue
from rich.console import Console
from rich.table import Table

import coord
from coord.ids import new_id
from coord.server import NatsServer
from coord.tasks import ScheduleRequest, TaskRecord, TaskStatus, TaskStore

console = Console(width=140)


@dataclass
class Row:
    phase: str
    clients: int
    ops: int
    seconds: float
    server_msgs_per_s: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


class Server:
    """The server under test: its monitoring endpoint and process, if we can see them."""

    def __init__(self, url: str, monitor: str | None, pid: int | None) -> None:
        self.url, self.monitor = url, monitor
        self.proc = psutil.Process(pid) if pid else None

    def msgs(self) -> int:
        if not self.monitor:
            return 0
        with urllib.request.urlopen(f"{self.monitor}/varz", timeout=2) as resp:
            varz = json.load(resp)
        return int(varz["in_msgs"]) + int(varz["out_msgs"])

    def cpu(self) -> float:
        if self.proc is None:
            return 0.0
        times = self.proc.cpu_times()
        return float(times.user + times.system)


async def measure(server: Server, phase: str, clients: int, ops: int, body: Awaitable[None]) -> Row:
    """Run ``body`` (a coroutine not yet started) and time it with the server's message rate and CPU."""
    msgs, cpu, started = server.msgs(), server.cpu(), time.perf_counter()
    await body
    seconds = time.perf_counter() - started
    return Row(phase, clients, ops, seconds, (server.msgs() - msgs) / seconds, (server.cpu() - cpu) / seconds)


RAW_BUCKET = "bench_raw"


async def raw_bucket(conn: coord.Coord) -> None:
    """A KV bucket configured like the tasks bucket (file, history 1, direct get) for the raw baseline."""
    await conn.js.create_key_value(bucket=RAW_BUCKET, history=1, storage=StorageType.FILE, direct=True)


async def raw_cas(conns: Sequence[coord.Coord], per_client: int, batch: int = 1) -> None:
    """``per_client`` CAS updates per connection, ``batch`` keys at a time concurrently."""

    async def chain(kv: KeyValue, key: str, count: int) -> None:
        revision = await kv.create(key, b'{"n":0}')
        for n in range(count):
            revision = await kv.update(key, b'{"n":%d}' % n, last=revision)

    async def one(conn: coord.Coord, index: int) -> None:
        kv = await conn.js.key_value(RAW_BUCKET)
        await asyncio.gather(*(chain(kv, f"raw-{index}-{k}-{new_id()}", per_client // batch) for k in range(batch)))

    await asyncio.gather(*(one(c, i) for i, c in enumerate(conns)))


async def schedule(store: TaskStore, count: int, prefix: str) -> list[TaskRecord]:
    records: list[TaskRecord] = []
    for start in range(0, count, 500):
        batch = [
            ScheduleRequest(task_id=f"{prefix}-{i}", queue="bench", spec={"i": i})
            for i in range(start, min(count, start + 500))
        ]
        records.extend(await store.schedule_many(batch))
    return records


def split(records: list[TaskRecord], parts: int) -> list[list[TaskRecord]]:
    return [records[i::parts] for i in range(parts)]


async def cycles(stores: Sequence[TaskStore], slices: list[list[TaskRecord]], *, inline: bool) -> None:
    async def one(store: TaskStore, records: list[TaskRecord], worker: str) -> None:
        for record in records:
            if inline:
                claim = await store.claim(record.task_id, worker, revision=record.revision, record=record)
            else:
                claim = await store.claim(record.task_id, worker, revision=record.revision)
            await store.complete(claim, None)

    await asyncio.gather(*(one(s, r, f"w{i}") for i, (s, r) in enumerate(zip(stores, slices, strict=True))))


async def pipelined(stores: Sequence[TaskStore], slices: list[list[TaskRecord]], batch: int = 64) -> None:
    async def one(store: TaskStore, records: list[TaskRecord], worker: str) -> None:
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            claims = await asyncio.gather(
                *(store.claim(r.task_id, worker, revision=r.revision, record=r) for r in chunk)
            )
            await asyncio.gather(*(store.complete(c, None) for c in claims))

    await asyncio.gather(*(one(s, r, f"w{i}") for i, (s, r) in enumerate(zip(stores, slices, strict=True))))


async def run(url: str, server: Server, tasks: int, namespace: str) -> list[Row]:
    rows: list[Row] = []
    conns = [await coord.connect(url, namespace=namespace) for _ in range(8)]
    stores = [c.tasks for c in conns]
    try:
        await raw_bucket(conns[0])
        for clients in (1, 8):
            per = tasks // clients
            rows.append(
                await measure(server, "raw CAS (kv.update)", clients, per * clients, raw_cas(conns[:clients], per))
            )
        for clients in (1, 8):
            per = tasks // clients // 64 * 64
            rows.append(
                await measure(
                    server, "raw CAS, pipelined x64", clients, per * clients, raw_cas(conns[:clients], per, batch=64)
                )
            )
        for label, inline in (("claim+complete, inlined record", True), ("claim+complete, claim reads", False)):
            for clients in (1, 8):
                records = await schedule(stores[0], tasks, f"{'in' if inline else 'rd'}{clients}")
                slices = split(records, clients)
                rows.append(
                    await measure(server, label, clients, len(records), cycles(stores[:clients], slices, inline=inline))
                )
        for clients in (1, 8):
            records = await schedule(stores[0], tasks, f"pl{clients}")
            slices = split(records, clients)
            rows.append(
                await measure(
                    server, "claim+complete, pipelined x64", clients, len(records), pipelined(stores[:clients], slices)
                )
            )
        started = time.perf_counter()
        await schedule(stores[0], tasks, "sched")
        rows.append(Row("schedule_many (500/batch)", 1, tasks, time.perf_counter() - started, 0.0, 0.0))
        # finding the 100 claimed tasks among everything above: a full pass vs a live index
        needles = await schedule(stores[0], 100, "needle")
        await asyncio.gather(*(stores[0].claim(r.task_id, "needle-worker", record=r) for r in needles))
        total = len(await stores[0].list())
        started = time.perf_counter()
        found = await stores[0].list(status=TaskStatus.CLAIMED)
        rows.append(Row(f"list(claimed) by scan of {total}", 1, total, time.perf_counter() - started, 0.0, 0.0))
        started = time.perf_counter()
        async with stores[1].index() as index:
            loaded = time.perf_counter() - started
            started = time.perf_counter()
            indexed = await stores[1].list(status=TaskStatus.CLAIMED)
            lookup = time.perf_counter() - started
            assert len(index) == total
        assert {r.task_id for r in indexed} == {r.task_id for r in found} and len(found) == 100
        rows.append(Row(f"index snapshot of {total}", 1, total, loaded, 0.0, 0.0))
        rows.append(Row(f"list(claimed) via index ({len(found)} hits)", 1, len(found), lookup, 0.0, 0.0))
    finally:
        for c in conns:
            await c.close()
    return rows


def show(rows: list[Row], tasks: int) -> None:
    table = Table(title=f"task store, {tasks} tasks per phase (2-core machine, server and clients sharing it)")
    for column in ("phase", "clients", "ops", "seconds", "ops/s", "server msgs/s", "server CPU"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for r in rows:
        table.add_row(
            r.phase,
            str(r.clients),
            str(r.ops),
            f"{r.seconds:.3f}",
            f"{r.rate:,.0f}",
            f"{r.server_msgs_per_s:,.0f}" if r.server_msgs_per_s else "",
            f"{r.server_cpu * 100:.0f}%" if r.server_cpu else "",
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per phase (default 3000)")
    parser.add_argument("--server", help="NATS URL (default: start an embedded server)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--sync-interval", help="JetStream sync_interval of the embedded server (e.g. always)")
    args = parser.parse_args(argv)
    namespace = new_id("bench").replace("-", "")[:20]
    embedded = None if args.server else NatsServer(sync_interval=args.sync_interval).start()
    try:
        if embedded is not None:
            server = Server(embedded.url, f"http://127.0.0.1:{embedded.monitor_port}", embedded.pid)
        else:
            server = Server(args.server, None, None)
        rows = asyncio.run(run(server.url, server, args.tasks, namespace))
    finally:
        if embedded is not None:
            embedded.stop()
    if args.json:
        print(json.dumps([{**r.__dict__, "rate": r.rate} for r in rows]))
    else:
        show(rows, args.tasks)


if __name__ == "__main__":
    main()
