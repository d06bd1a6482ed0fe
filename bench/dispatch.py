"""End-to-end dispatch benchmark: throughput, submit->result latency, detect-and-reclaim after SIGKILL.

    python bench/dispatch.py                      # everything, defaults below
    python bench/dispatch.py --tasks 10000 --workers 2 4 --concurrency 256 --latency-samples 500 --kill-trials 20

Starts its own nats-server (loopback), spawns real `corral worker` processes with a no-op handler,
and measures what the producer sees: a task counts when its result reached the submitting
dispatcher. Prints a table; copy it into bench/RESULTS.md with the machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import coord
from coord.ids import new_id
from coord.server import NatsServer
from coord.wire import Spec
from dispatch import Dispatcher, SpawnedWorker, build_worker_command
from dispatch.spawn import corral_argv

console = Console()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spawn_workers(
    url: str, ns: str, n: int, concurrency: int, handler: str, ttl: float = 3.0, interval: float = 1.0
) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
    }
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral",
                "--server",
                url,
                "--namespace",
                ns,
                "worker",
                "-q",
                "bench",
                "--handler",
                handler,
                "-c",
                str(concurrency),
                "--id",
                f"bw{i}",
                "--ttl",
                str(ttl),
                "--interval",
                str(interval),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


async def wait_present(c: coord.Coord, ids: list[str]) -> None:
    for wid in ids:
        if await c.presence.wait_present(wid, 30) is None:
            raise RuntimeError(f"worker {wid} did not start")


def cpu_seconds(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        out.append(times.user + times.system)
    return out


async def throughput(
    url: str, server_pid: int, n_workers: int, tasks: int, concurrency: int, reclaimer: bool = True
) -> dict[str, float]:
    ns = new_id("b").replace("-", "")[:16]
    async with coord.connect(url, namespace=ns) as c:
        procs = spawn_workers(url, ns, n_workers, concurrency, "_handlers:noop")
        try:
            await wait_present(c, [f"bw{i}" for i in range(n_workers)])
            async with Dispatcher(c, max_in_flight=20_000, reclaimer=reclaimer) as d:
                specs = [Spec(task_id=f"t{i}", queue="bench") for i in range(tasks)]
                pids = [server_pid, os.getpid(), *(p.pid for p in procs)]
                before = cpu_seconds(pids)
                start = time.perf_counter()
                ids: list[str] = []
                for i in range(0, tasks, 500):
                    ids += await d.submit_many(specs[i : i + 500])
                async for _ in d.as_completed(ids, timeout=600):
                    pass
                elapsed = time.perf_counter() - start
                used = [(b - a) / elapsed * 100 for a, b in zip(before, cpu_seconds(pids), strict=True)]
        finally:
            stop(procs)
    return {
        "tasks": tasks,
        "seconds": elapsed,
        "rate": tasks / elapsed,
        "server": used[0],
        "producer": used[1],
        "workers": sum(used[2:]),
    }


async def latency(url: str, samples: int) -> dict[str, float]:
    ns = new_id("b").replace("-", "")[:16]
    async with coord.connect(url, namespace=ns) as c:
        procs = spawn_workers(url, ns, 1, 1, "_handlers:noop")
        try:
            await wait_present(c, ["bw0"])
            async with Dispatcher(c) as d:
                for i in range(20):  # warm up
                    await d.wait(await d.submit(Spec(task_id=f"w{i}", queue="bench")), 10)
                lat = []
                for i in range(samples):
                    t0 = time.perf_counter()
                    await d.wait(await d.submit(Spec(task_id=f"l{i}", queue="bench")), 10)
                    lat.append((time.perf_counter() - t0) * 1000)
        finally:
            stop(procs)
    return {"p50": statistics.median(lat), "p99": pct(lat, 0.99), "max": max(lat)}


async def kill_detection(url: str, trials: int, ttl: float, interval: float) -> list[float]:
    out = []
    for trial in range(trials):
        ns = new_id("k").replace("-", "")[:16]
        async with coord.connect(url, namespace=ns) as c:
            procs = spawn_workers(url, ns, 1, 1, "_handlers:hold", ttl=ttl, interval=interval)
            try:
                await wait_present(c, ["bw0"])
                async with Dispatcher(c) as d:
                    assert d.reclaimer is not None
                    await d.submit(Spec(task_id="victim", queue="bench"))
                    while not d.reclaimer.claims_of("bw0"):
                        await asyncio.sleep(0.005)
                    # kill at a random phase of the heartbeat cycle
                    await asyncio.sleep((trial % 10) * interval / 10)
                    procs[0].kill()
                    t0 = time.perf_counter()
                    await asyncio.wait_for(d.reclaimer.events.get(), ttl + 10)
                    out.append(time.perf_counter() - t0)
            finally:
                stop(procs)
    return out


async def spawn_exit_detection(url: str, trials: int) -> list[float]:
    out = []
    ns = new_id("s").replace("-", "")[:16]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}
    async with coord.connect(url, namespace=ns) as c:
        for trial in range(trials):
            spec = Spec(task_id=f"s{trial}", queue="bench", worker_agent_id=f"child{trial}")
            await c.tasks.schedule(spec.task_id, queue="bench", spec=spec.model_dump(mode="json"))
            argv = build_worker_command(corral_argv(), spec, server=url, namespace=ns, handler="_handlers:hold")
            child = await SpawnedWorker(c, spec, argv, env=env).start()
            while (await c.tasks.get(spec.task_id)).status != "claimed":
                await asyncio.sleep(0.01)
            child.kill()
            t0 = time.perf_counter()
            outcome = await child.wait()
            assert outcome.reclaimed
            out.append(time.perf_counter() - t0)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--latency-samples", type=int, default=500)
    ap.add_argument("--kill-trials", type=int, default=20)
    ap.add_argument("--ttl", type=float, default=3.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--sync-interval", help="JetStream sync_interval of the embedded server (e.g. always)")
    args = ap.parse_args()
    table = Table(title=f"corral dispatch on {platform.machine()} / {os.cpu_count()} cores, server+clients on one host")
    table.add_column("measurement")
    table.add_column("result", justify="right")
    with NatsServer(sync_interval=args.sync_interval) as server:
        assert server.pid is not None
        for n in args.workers:
            for reclaimer in (True, False):
                r = await throughput(server.url, server.pid, n, args.tasks, args.concurrency, reclaimer)
                table.add_row(
                    f"throughput, {r['tasks']:.0f} no-op tasks, {n} worker procs x c{args.concurrency}, "
                    f"reclaimer in the producer {'on' if reclaimer else 'off'}",
                    f"{r['rate']:,.0f} tasks/s ({r['seconds']:.2f} s); CPU % of a core: server {r['server']:.0f}, "
                    f"producer {r['producer']:.0f}, workers {r['workers']:.0f}",
                )
        if args.latency_samples:
            lat = await latency(server.url, args.latency_samples)
            table.add_row(
                f"submit->result latency, 1 at a time ({args.latency_samples} samples)",
                f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms",
            )
        if args.kill_trials:
            det = await kill_detection(server.url, args.kill_trials, args.ttl, args.interval)
            table.add_row(
                f"SIGKILL -> reclaimed, TTL {args.ttl}s / beat {args.interval}s ({len(det)} trials)",
                f"p50 {statistics.median(det):.2f} s, p99 {pct(det, 0.99):.2f} s, max {max(det):.2f} s",
            )
            sp = await spawn_exit_detection(server.url, args.kill_trials)
            table.add_row(
                f"spawned worker exit -> reclaimed ({len(sp)} trials)",
                f"p50 {statistics.median(sp) * 1000:.0f} ms, p99 {pct(sp, 0.99) * 1000:.0f} ms",
            )
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
