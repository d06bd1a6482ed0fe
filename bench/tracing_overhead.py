"""What tracing costs end to end: throughput and latency with tracing off vs on (spans to a no-op exporter).

    python bench/tracing_overhead.py                          # 5,000 tasks, 2 workers x c256, 2 rounds
    python bench/tracing_overhead.py --modes off noop ratio --rounds 3

Each trial runs in fresh processes (a parent with a Dispatcher and its embedded reclaimer, and
``--workers`` Worker processes with a no-op handler) against one embedded nats-server, so each
process installs its tracing mode once and the modes are interleaved round by round:

- ``off``: nothing configured (OpenTelemetry's no-op; corral checks ``tracing.enabled()`` and skips);
- ``noop``: an SDK tracer provider with a BatchSpanProcessor feeding an exporter that drops every
  span: all spans are created, attributed, propagated and queued, only the export is free;
- ``ratio``: the same with ``ParentBased(TraceIdRatioBased(0.01))``, the 1% sampling suggested for
  production (the decision is made at submit and followed by every process).

A task counts when its result reached the submitting dispatcher. Prints a table (rich).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import coord
from coord.ids import new_id
from coord.server import NatsServer
from coord.wire import Result, Spec
from dispatch import Dispatcher
from workers import Context, Worker

MODES = ("off", "noop", "ratio")
_OK = Result.success()
_exported = 0


def install(mode: str) -> None:
    """Install this process's tracing for ``mode`` (once per process, before any span)."""
    if mode == "off":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            global _exported
            _exported += len(spans)
            return SpanExportResult.SUCCESS

    sampler = ParentBased(TraceIdRatioBased(0.01)) if mode == "ratio" else ParentBased(ALWAYS_ON)
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


def flushed_span_count() -> int:
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush()
    return _exported


async def noop(spec: Spec, ctx: Context) -> Result:
    """Do nothing, successfully."""
    return _OK


# --- child processes -------------------------------------------------------------------------------


async def run_worker(url: str, ns: str, worker_id: str, concurrency: int) -> None:
    async with coord.connect(url, namespace=ns) as c:
        worker = Worker(c, ["bench"], noop, concurrency=concurrency, worker_id=worker_id)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
        await worker.run()
    print(json.dumps({"spans": flushed_span_count()}), flush=True)


async def run_parent(url: str, ns: str, workers: list[str], tasks: int, samples: int) -> None:
    async with coord.connect(url, namespace=ns) as c:
        for wid in workers:
            if await c.presence.wait_present(wid, 30) is None:
                raise RuntimeError(f"worker {wid} did not start")
        async with Dispatcher(c, max_in_flight=20_000) as d:
            warm = await d.submit_many([Spec(task_id=f"w{i}", queue="bench") for i in range(200)])
            async for _ in d.as_completed(warm, timeout=60):
                pass
            specs = [Spec(task_id=f"t{i}", queue="bench") for i in range(tasks)]
            start = time.perf_counter()
            ids: list[str] = []
            for i in range(0, tasks, 500):
                ids += await d.submit_many(specs[i : i + 500])
            async for _ in d.as_completed(ids, timeout=600):
                pass
            elapsed = time.perf_counter() - start
            lat: list[float] = []
            for i in range(samples):
                t0 = time.perf_counter()
                await d.wait(await d.submit(Spec(task_id=f"l{i}", queue="bench")), 10)
                lat.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"rate": tasks / elapsed, "latency_ms": lat, "spans": flushed_span_count()}), flush=True)


# --- the driver ------------------------------------------------------------------------------------


def child(mode: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    argv = [sys.executable, __file__, "--child", mode, *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trial(url: str, mode: str, n_workers: int, concurrency: int, tasks: int, samples: int) -> dict[str, float]:
    ns = new_id("o").replace("-", "")[:16]
    ids = [f"{mode}w{i}" for i in range(n_workers)]
    workers = [child(mode, "worker", url, ns, wid, str(concurrency)) for wid in ids]
    try:
        parent = child(mode, "parent", url, ns, ",".join(ids), str(tasks), str(samples))
        out, err = parent.communicate(timeout=300)
        if parent.returncode != 0:
            raise RuntimeError(f"parent failed: {err[-2000:]}")
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
    worker_spans = 0
    for w in workers:
        out, err = w.communicate(timeout=30)
        if w.returncode != 0:
            raise RuntimeError(f"worker failed: {err[-2000:]}")
        worker_spans += json.loads(out.strip().splitlines()[-1])["spans"]
    lat = sorted(result["latency_ms"])
    total = tasks + 200 + samples
    return {
        "rate": result["rate"],
        "p50": statistics.median(lat) if lat else 0.0,
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0,
        "spans_per_task": (result["spans"] + worker_spans) / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=["off", "noop"])
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in args.modes}
    with NatsServer() as server:
        for _ in range(args.rounds):
            for mode in args.modes:
                runs[mode].append(
                    trial(server.url, mode, args.workers, args.concurrency, args.tasks, args.latency_samples)
                )
    title = (
        f"tracing overhead: {args.tasks:,} no-op tasks, {args.workers} worker procs x c{args.concurrency}, "
        f"{platform.machine()} / {os.cpu_count()} cores, server+clients on one host"
    )
    table = Table(title=title)
    for col in (
        "tracing",
        "tasks/s (each round)",
        "median tasks/s",
        "vs off",
        "p50 / p99 ms (1 at a time)",
        "spans/task",
    ):
        table.add_column(col, justify="right" if col != "tracing" else "left")
    base = statistics.median(r["rate"] for r in runs["off"]) if "off" in runs else None
    for mode, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        table.add_row(
            mode,
            ", ".join(f"{r['rate']:,.0f}" for r in rs),
            f"{rate:,.0f}",
            f"{(rate / base - 1) * 100:+.0f}%" if base else "-",
            f"{statistics.median(r['p50'] for r in rs):.2f} / {statistics.median(r['p99'] for r in rs):.2f}",
            f"{statistics.median(r['spans_per_task'] for r in rs):.2f}",
        )
    Console().print(table)


def child_main(mode: str, role: str, rest: list[str]) -> None:
    install(mode)
    if role == "worker":
        url, ns, wid, concurrency = rest
        asyncio.run(run_worker(url, ns, wid, int(concurrency)))
    else:
        url, ns, ids, tasks, samples = rest
        asyncio.run(run_parent(url, ns, ids.split(","), int(tasks), int(samples)))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
