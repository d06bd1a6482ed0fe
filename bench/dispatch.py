"""End-to-end dispatch benchmark: throughput, submit->result latency, detect-and-reclaim after SIGKILL.

    python bench/dispatch.py                      # everything, defaults below
    python bench/dispatch.py --tasks 10000 --workers 2 4 --concurrency 256 --latency-samples 500 --kill-trials 20
    python bench/dispatch.py --cluster --tasks 10000 --workers 2 --latency-samples 300 --kill-trials 0  # R3

Starts its own nats-server (loopback; with ``--cluster`` 3 routed nodes and replicas 3), spawns real
`corral worker` processes with a no-op handler, and measures what the producer sees: a task counts
when its result reached the submitting dispatcher. Server CPU is the sum over the nodes (psutil),
also given per node and as µs of server CPU per task. Workers' presence TTL and interval default to
what corral's settings pick for the replicas (3 s on one server, 20 s replicated; 1 s beat). Prints
a table (``--json FILE`` also writes the measurements); copy it into bench/RESULTS.md with the
machine description.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import coord
from bench._servers import (
    OneLineParser,
    ServerCpu,
    Servers,
    add_cluster_option,
    corral_settings,
    cpu_seconds,
    number,
    per_op_text,
    server_cpu_text,
    start_servers,
    where,
    whole,
    write_json,
)
from coord.errors import InvalidInput
from coord.ids import new_id
from coord.presence.timing import check_timing
from coord.wire import Spec
from dispatch import Dispatcher, SpawnedWorker, build_worker_command
from dispatch.spawn import corral_argv

console = Console()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spawn_workers(
    url: str, ns: str, n: int, concurrency: int, handler: str, *, replicas: int, ttl: float, interval: float
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
                "--replicas",
                str(replicas),
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


async def throughput(
    servers: Servers, n_workers: int, tasks: int, concurrency: int, reclaimer: bool, ttl: float, interval: float
) -> dict[str, Any]:
    """Submit ``tasks`` no-op tasks at once and wait for every result: tasks/s and the CPU it took."""
    ns = new_id("b").replace("-", "")[:16]
    url, replicas = servers.url, servers.replicas
    async with coord.connect(url, namespace=ns, replicas=replicas) as c:
        procs = spawn_workers(
            url, ns, n_workers, concurrency, "_handlers:noop", replicas=replicas, ttl=ttl, interval=interval
        )
        try:
            await wait_present(c, [f"bw{i}" for i in range(n_workers)])
            async with Dispatcher(c, max_in_flight=20_000, reclaimer=reclaimer) as d:
                specs = [Spec(task_id=f"t{i}", queue="bench") for i in range(tasks)]
                pids = [os.getpid(), *(p.pid for p in procs)]
                server_cpu = ServerCpu(servers)
                server_cpu.start()
                before = [cpu_seconds(pid) for pid in pids]
                start = time.perf_counter()
                ids: list[str] = []
                for i in range(0, tasks, 500):
                    ids += await d.submit_many(specs[i : i + 500])
                async for _ in d.as_completed(ids, timeout=600):
                    pass
                elapsed = time.perf_counter() - start
                server_cpu.stop()
                used = [(cpu_seconds(pid) - b) / elapsed * 100 for pid, b in zip(pids, before, strict=True)]
        finally:
            stop(procs)
    return {
        "worker_procs": n_workers,
        "concurrency": concurrency,
        "reclaimer": reclaimer,
        "tasks": tasks,
        "seconds": elapsed,
        "rate": tasks / elapsed,
        "server": server_cpu.report(elapsed, tasks),
        "producer": used[0],
        "workers": sum(used[1:]),
    }


async def latency(url: str, replicas: int, samples: int, ttl: float, interval: float) -> dict[str, float]:
    ns = new_id("b").replace("-", "")[:16]
    async with coord.connect(url, namespace=ns, replicas=replicas) as c:
        procs = spawn_workers(url, ns, 1, 1, "_handlers:noop", replicas=replicas, ttl=ttl, interval=interval)
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


async def kill_detection(url: str, replicas: int, trials: int, ttl: float, interval: float) -> list[float]:
    out = []
    for trial in range(trials):
        ns = new_id("k").replace("-", "")[:16]
        async with coord.connect(url, namespace=ns, replicas=replicas) as c:
            procs = spawn_workers(url, ns, 1, 1, "_handlers:hold", replicas=replicas, ttl=ttl, interval=interval)
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


async def spawn_exit_detection(url: str, replicas: int, trials: int) -> list[float]:
    out = []
    ns = new_id("s").replace("-", "")[:16]
    # the spawned `corral worker run-one` takes its replicas (and the TTL they size) from the settings
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")]),
        "CORRAL_REPLICAS": str(replicas),
    }
    async with coord.connect(url, namespace=ns, replicas=replicas) as c:
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


SYNC_INTERVAL = re.compile(r"^(always|[0-9]{1,6}(ms|s|m|h))$")
"""What ``--sync-interval`` may say: ``always`` or a duration such as ``2m`` (it goes into the server's config)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's options; bad input exits 2 with one line naming the option and the rule."""
    ap = OneLineParser(prog="dispatch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=whole(1, 1_000_000), default=10_000)
    ap.add_argument("--workers", type=whole(1, 64), nargs="+", default=[2, 4], help="worker process counts")
    ap.add_argument("--concurrency", type=whole(1, 4096), default=256)
    ap.add_argument("--latency-samples", type=whole(0, 100_000), default=500)
    ap.add_argument("--kill-trials", type=whole(0, 1000), default=20)
    ap.add_argument(
        "--ttl", type=number(0, 3600, above=True), help="workers' presence TTL (default: corral's, 3 s or 20 s)"
    )
    ap.add_argument("--interval", type=number(0, 3600, above=True), help="workers' presence beat (default: 1 s)")
    ap.add_argument("--sync-interval", help="JetStream sync_interval of the server(s), e.g. always or 2m")
    add_cluster_option(ap)
    ap.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = ap.parse_args(argv)
    settings = corral_settings(args.cluster)
    args.interval = settings.presence_interval if args.interval is None else args.interval
    args.ttl = settings.presence_ttl if args.ttl is None else args.ttl
    try:
        check_timing(args.interval, args.ttl)
    except InvalidInput as e:
        ap.error(f"argument --interval/--ttl: {e}")
    if args.sync_interval is not None and not SYNC_INTERVAL.match(args.sync_interval):
        ap.error(f"argument --sync-interval: want always or a duration such as 2m or 500ms, got {args.sync_interval!r}")
    return args


async def measure(args: argparse.Namespace, servers: Servers) -> dict[str, Any]:
    """Every measurement the options ask for, against ``servers``."""
    url, replicas = servers.url, servers.replicas
    result: dict[str, Any] = {
        "replicas": replicas,
        "servers": len(servers.nodes),
        "ttl": args.ttl,
        "interval": args.interval,
    }
    result["throughput"] = [
        await throughput(servers, n, args.tasks, args.concurrency, reclaimer, args.ttl, args.interval)
        for n in args.workers
        for reclaimer in (True, False)
    ]
    if args.latency_samples:
        result["latency_ms"] = await latency(url, replicas, args.latency_samples, args.ttl, args.interval)
    if args.kill_trials:
        result["kill_s"] = await kill_detection(url, replicas, args.kill_trials, args.ttl, args.interval)
        result["spawn_exit_s"] = await spawn_exit_detection(url, replicas, args.kill_trials)
    return result


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    table = Table(
        title=f"corral dispatch ({where(r['replicas'], r['servers'])}) on {platform.machine()} / "
        f"{os.cpu_count()} cores, server+clients on one host"
    )
    table.add_column("measurement")
    table.add_column("result", justify="right")
    for t in r["throughput"]:
        table.add_row(
            f"throughput, {t['tasks']:.0f} no-op tasks, {t['worker_procs']} worker procs x c{t['concurrency']}, "
            f"reclaimer in the producer {'on' if t['reclaimer'] else 'off'}",
            f"{t['rate']:,.0f} tasks/s ({t['seconds']:.2f} s); CPU % of a core: server {server_cpu_text(t['server'])}, "
            f"producer {t['producer']:.0f}, workers {t['workers']:.0f}; server CPU {per_op_text(t['server'])} µs/task",
        )
    if "latency_ms" in r:
        lat = r["latency_ms"]
        table.add_row(
            f"submit->result latency, 1 at a time ({args.latency_samples} samples)",
            f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms",
        )
    if "kill_s" in r:
        det, sp = r["kill_s"], r["spawn_exit_s"]
        table.add_row(
            f"SIGKILL -> reclaimed, TTL {args.ttl:g}s / beat {args.interval:g}s ({len(det)} trials)",
            f"p50 {statistics.median(det):.2f} s, p99 {pct(det, 0.99):.2f} s, max {max(det):.2f} s",
        )
        table.add_row(
            f"spawned worker exit -> reclaimed ({len(sp)} trials)",
            f"p50 {statistics.median(sp) * 1000:.0f} ms, p99 {pct(sp, 0.99) * 1000:.0f} ms",
        )
    console.print(table)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server (or cluster), measure, stop it."""
    with start_servers(args.cluster, sync_interval=args.sync_interval) as servers:
        return await measure(args, servers)


def main() -> None:
    args = parse_args()
    result = asyncio.run(run(args))
    write_json(args.json, {"command": "python bench/dispatch.py " + " ".join(sys.argv[1:]), **result})
    report(result, args)


if __name__ == "__main__":
    main()
