"""Fan-out (issue 22): does a parent's cost follow its own work as parents and agents are added?

    python3 dev.py bench fanout [--parents 1,4,16,32] [--agents 1000,10000] [--rate R] [--seconds S]
                                [--warmup S] [--reclaimer standalone|embedded] [--parent-reclaimer on|off]
                                [--reclaimer-start before|after] [--kill-tasks K] [--json FILE]

For each fleet size N and parent count P, on a fresh nats-server of its own (loopback, HTTP
monitoring on), with real processes only:

- N simulated agents renewing presence every interval (1 s), from one process per 5,000 agents,
  each renewal a pipelined put of the bytes and ``Nats-TTL`` a real Membership writes, so every
  presence follower sees them as real agents;
- two ``corral worker`` processes with a no-op handler (queue ``bench``);
- ``--reclaimer standalone`` (the default): one ``corral reclaimer`` process, started before the
  parents, or with ``--reclaimer-start after`` once they run (a parent holds the lease first and hands
  it over when the standalone one asks: the row's ``lease`` says who holds it in the window);
- P parent processes, each a default ``Dispatcher`` (embedded reclaimer as shipped; without it with
  ``--parent-reclaimer off``, the floor of what a parent's own work costs), submitting its share of
  a fixed total of ``--rate`` tasks/s, one task at a time evenly spaced, and awaiting every result
  (``--rate 0``: idle parents, what following the fleet alone costs them).

After ``--warmup`` seconds it measures a window of ``--seconds``: the server's messages out per
second and per task and its CPU; for each parent the messages it received per second and per task
of its own and its CPU (median and max over parents; a parent receiving over twice the median of
the others is marked as the one holding the active reclaimer role); the same for the reclaimer,
the workers and the agent simulators. Message counts come from the server's ``/connz`` per named
connection, CPU from psutil. Then, with ``--kill-tasks K`` > 0, a ``corral worker`` holding K long
tasks is SIGKILLed and the time until each record is ``pending`` again is the reclaim time.

A configuration that cannot run here (not enough memory) or falls behind (the machine saturated)
says so in one line in its row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import psutil
from rich.console import Console
from rich.table import Table

import coord
from bench._fanout_measure import Window, outlier, spread, take
from bench._fanout_roles import QUEUE, TICK
from bench._servers import OneLineParser, number, whole
from coord.lease import LEADER, read_term
from coord.server import NatsServer
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher

AGENTS_PER_SIMULATOR = 5_000
"""Agents one simulator process renews (about 10-15% of a core per 1,000 renewals/s)."""
CHILD_MB = 110
"""Memory one Python child process needs here (RSS of a parent with its Dispatcher, rounded up)."""
WORKERS = 2
WORKER_CONCURRENCY = 64
READY_TIMEOUT = 180.0
"""Seconds a child has to connect and say ready (32 parents importing at once on 2 cores are slow)."""
HOLD_QUEUE = "hold"


class Failed(Exception):
    """A configuration could not be measured; the message says why in one line."""


def progress(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[fanout] {msg}", file=sys.stderr, flush=True)


# --- arguments -------------------------------------------------------------------------------------


def _int_list(lo: int, hi: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"want comma-separated whole numbers, got {text!r}") from None
        bad = [v for v in values if not lo <= v <= hi]
        if bad:
            raise argparse.ArgumentTypeError(f"each must be from {lo} to {hi}, got {bad[0]}")
        return values

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The bench's options; bad input exits 2 with one line naming the option and the rule."""
    ap = OneLineParser(prog="fanout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parents", type=_int_list(1, 64), default=[1, 4, 16, 32], help="parent counts (1-64)")
    ap.add_argument("--agents", type=_int_list(1, 50_000), default=[1000, 10_000], help="fleet sizes")
    ap.add_argument(
        "--rate", type=number(0, 5000), default=150.0, help="total tasks/s over all parents (0: idle parents)"
    )
    ap.add_argument("--seconds", type=number(2, 3600), default=10.0, help="length of the measured window")
    ap.add_argument("--warmup", type=number(0, 600), default=3.0, help="seconds of load before the window")
    ap.add_argument("--reclaimer", choices=["standalone", "embedded"], default="standalone")
    ap.add_argument(
        "--parent-reclaimer",
        choices=["on", "off"],
        default="on",
        help="off: parents without their embedded reclaimer, the floor of what their own work costs",
    )
    ap.add_argument(
        "--reclaimer-start",
        choices=["before", "after"],
        default="before",
        help="start the standalone reclaimer before the parents, or after them (it must take the lease over)",
    )
    ap.add_argument(
        "--kill-tasks", type=whole(0, 64), default=4, help="long tasks under the SIGKILLed worker (0: skip)"
    )
    ap.add_argument("--json", type=Path, help="write every measurement to this file")
    args = ap.parse_args(argv)
    if args.reclaimer == "embedded" and args.parent_reclaimer == "off":
        ap.error("argument --parent-reclaimer: off needs --reclaimer standalone (nothing would reclaim)")
    return args


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Child:
    """One process the bench started, its stderr kept in a file for the one-line error."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()[:200]}" if lines else ""

    async def line(self, timeout: float) -> str:
        """The next line the child prints; :class:`Failed` if it exits or stays silent."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise Failed(f"{self.name} said nothing within {timeout:g} s{self.tail()}") from None
        if not raw:
            raise Failed(f"{self.name} exited with code {await self.proc.wait()}{self.tail()}")
        return raw.decode().strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (after closing stdin), then SIGKILL after ``grace``."""
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), grace)
        except ProcessLookupError:
            pass
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Fleet:
    """Starts children with the project on their path and stops every one of them."""

    def __init__(self, url: str, ns: str, logs: Path) -> None:
        self.url = url
        self.ns = ns
        self.logs = logs
        self.children: list[Child] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
        }

    async def spawn(self, name: str, argv: list[str], *, talk: bool) -> Child:
        log = self.logs / f"{name.replace(' ', '-')}.log"
        pipe = asyncio.subprocess.PIPE if talk else asyncio.subprocess.DEVNULL
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=self.env, stdin=pipe, stdout=pipe, stderr=err
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    async def role(self, role: str, name: str, plan: dict[str, Any]) -> Child:
        """A child of bench/_fanout_roles.py (``parent`` or ``agents``)."""
        plan = {"url": self.url, "ns": self.ns, "name": name, **plan}
        argv = [sys.executable, "-m", "bench._fanout_roles", role, json.dumps(plan)]
        return await self.spawn(name, argv, talk=True)

    async def corral(self, name: str, *args: str) -> Child:
        """A ``corral`` CLI process on this namespace."""
        argv = [sys.executable, "-m", "corral", "--server", self.url, "--namespace", self.ns, *args]
        return await self.spawn(name, argv, talk=False)

    async def worker(self, worker_id: str, queue: str, handler: str, concurrency: int) -> Child:
        return await self.corral(
            f"corral-worker {worker_id}",
            *("worker", "-q", queue, "--handler", handler, "-c", str(concurrency), "--id", worker_id),
            *("--ttl", "3", "--interval", "1"),
        )

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.children))


# --- one configuration ---------------------------------------------------------------------------


async def configuration(args: argparse.Namespace, agents: int, parents: int) -> dict[str, Any]:
    """Measure one (agents, parents) point; the row says why when it could not be measured."""
    row: dict[str, Any] = {
        "agents": agents,
        "parents": parents,
        "rate": args.rate,
        "reclaimer": args.reclaimer,
        "parent_reclaimer": args.parent_reclaimer,
    }
    label = f"agents={agents} parents={parents}"
    simulators = math.ceil(agents / AGENTS_PER_SIMULATOR)
    processes = parents + simulators + WORKERS + (args.reclaimer == "standalone")
    need = processes * CHILD_MB + 300
    have = psutil.virtual_memory().available // 2**20
    if need > have:
        reason = f"not run: needs ~{need} MB for {processes} processes, {have} MB available"
        progress(f"{label}: {reason}")
        return {**row, "status": "skipped", "reason": reason}
    progress(f"{label}: starting nats-server")
    server = await asyncio.to_thread(NatsServer().start)
    monitor = f"http://{server.host}:{server.monitor_port}"
    assert server.pid is not None
    with tempfile.TemporaryDirectory(prefix="corral-fanout-") as logs:
        fleet = Fleet(server.url, "fanout", Path(logs))
        try:
            async with coord.connect(server.url, namespace="fanout", name="fanout-bench") as conn:
                row |= await _measure(args, conn, fleet, monitor, server.pid, agents, parents, label)
                row["status"] = "ok"
        except Exception as err:  # any trouble is this configuration's row, in one line; the next one runs
            why = str(err) if isinstance(err, Failed) else f"{type(err).__name__}: {err}".splitlines()[0]
            progress(f"{label}: failed: {why}")
            row |= {"status": "failed", "reason": why}
        finally:
            await fleet.stop()
            await asyncio.to_thread(server.stop)
    return row


async def _measure(
    args: argparse.Namespace,
    conn: coord.Coord,
    fleet: Fleet,
    monitor: str,
    server_pid: int,
    agents: int,
    parents: int,
    label: str,
) -> dict[str, Any]:
    ids = [f"ag{i:05d}" for i in range(agents)]
    n_sims = math.ceil(agents / AGENTS_PER_SIMULATOR)
    progress(f"{label}: {agents} agents joining from {n_sims} simulator process(es)")
    sims = [await fleet.role("agents", f"fanout-agents-{i}", {"ids": ids[i::n_sims]}) for i in range(n_sims)]
    for sim in sims:
        if await sim.line(READY_TIMEOUT) != "ready":
            raise Failed(f"{sim.name} did not get its agents present")
    reclaimer = None
    if args.reclaimer == "standalone" and args.reclaimer_start == "before":
        reclaimer = await fleet.corral("corral-reclaimer", "reclaimer")
    workers = [await fleet.worker(f"bw{i}", QUEUE, "_handlers:noop", WORKER_CONCURRENCY) for i in range(WORKERS)]
    for i in range(WORKERS):
        if await conn.presence.wait_present(f"bw{i}", READY_TIMEOUT) is None:
            raise Failed(f"corral worker bw{i} did not become present{workers[i].tail()}")
    progress(f"{label}: starting {parents} parent process(es)")
    share = args.rate / parents
    plan = {"reclaimer": args.parent_reclaimer == "on"}
    kids = [await fleet.role("parent", f"fanout-parent-{i}", plan) for i in range(parents)]
    for kid in kids:
        if await kid.line(READY_TIMEOUT) != "ready":
            raise Failed(f"{kid.name} did not start")
    if args.reclaimer == "standalone" and args.reclaimer_start == "after":
        progress(f"{label}: starting the standalone reclaimer after the parents")
        reclaimer = await fleet.corral("corral-reclaimer", "reclaimer")
    w0 = time.time() + args.warmup
    w1 = w0 + args.seconds
    for kid in kids:
        kid.send(json.dumps({"rate": share, "w0": w0, "w1": w1}))
    progress(f"{label}: {args.rate:g} tasks/s; warming up {args.warmup:g} s, then measuring {args.seconds:g} s")
    pids = [server_pid, *(c.pid for c in fleet.children)]
    await asyncio.sleep(max(0.0, w0 - time.time()))
    first = await take(monitor, pids)
    while (left := w1 - time.time()) > 0:
        await asyncio.sleep(min(left, 5.0))
        if w1 - time.time() > 0.5:
            progress(f"{label}: measuring, {w1 - time.time():.0f} s to go")
    window = Window(first, await take(monitor, pids))
    lease = await _lease(conn)
    in_window = [json.loads(await kid.line(60)) for kid in kids]

    reclaim: dict[str, Any] = {}
    if args.kill_tasks:
        progress(f"{label}: SIGKILL a worker holding {args.kill_tasks} long tasks; timing the reclaim")
        reclaim = await _reclaim_time(conn, fleet, args.kill_tasks)
    progress(f"{label}: stopping")
    reports = [{**await _finish(kid, PARENT_UNREPORTED), **seen} for kid, seen in zip(kids, in_window, strict=True)]
    sim_reports = [await _finish(sim, SIMULATOR_UNREPORTED) for sim in sims]
    return {
        **_rows(args, window, kids, reports, sims, sim_reports, reclaimer, workers, server_pid, reclaim),
        "lease": lease,
    }


async def _lease(conn: coord.Coord) -> dict[str, Any] | None:
    """Who held the reclaimer's lease at the end of the window (None: nobody)."""
    term, _ = read_term(await conn.roster.get(LEADER))
    if term is None:
        return None
    r = term.record
    return {"holder": r.holder, "standalone": r.preferred, "ready": r.ready}


PARENT_UNREPORTED = {"submitted": 0, "done": 0, "failed": 0, "timed_out": 0, "unreported": True}
SIMULATOR_UNREPORTED = {"sent": 0, "acked": 0, "errors": 0, "late_ticks": 0, "unreported": True}


async def _finish(child: Child, unreported: dict[str, Any]) -> dict[str, Any]:
    """Stop ``child`` and return its last report (``unreported`` if it cannot say within a minute)."""
    child.send("stop")
    try:
        report: dict[str, Any] = json.loads(await child.line(60))
    except Failed as why:
        progress(f"{why}; its totals are left out")
        return unreported
    return report


async def _reclaim_time(conn: coord.Coord, fleet: Fleet, k: int) -> dict[str, Any]:
    victim = await fleet.worker("victim", HOLD_QUEUE, "_handlers:hold", k)
    if await conn.presence.wait_present("victim", READY_TIMEOUT) is None:
        raise Failed(f"the victim worker did not become present{victim.tail()}")
    async with Dispatcher(conn, reclaimer=False) as d:
        ids = await d.submit_many([Spec(task_id=f"hold-{i}", queue=HOLD_QUEUE) for i in range(k)])
    deadline = time.monotonic() + 60
    while True:
        records = await conn.tasks.read_many(ids)
        if all(r.status is TaskStatus.CLAIMED for r in records.values()) and len(records) == k:
            break
        if time.monotonic() > deadline:
            raise Failed(f"the victim worker did not claim its {k} long tasks within 60 s")
        await asyncio.sleep(0.05)
    victim.proc.kill()
    killed = time.monotonic()
    pending: dict[str, float] = {}
    limit = killed + conn.presence.ttl + 30
    while len(pending) < k and time.monotonic() < limit:
        now = time.monotonic()
        for task_id, record in (await conn.tasks.read_many(ids)).items():
            if record.status is TaskStatus.PENDING and task_id not in pending:
                pending[task_id] = now - killed
        await asyncio.sleep(0.02)
    times = sorted(pending.values())
    return {
        "tasks": k,
        "reclaimed": len(times),
        "median_s": statistics.median(times) if times else None,
        "max_s": max(times) if times else None,
        "worker_ttl_s": 3.0,
    }


def _rows(
    args: argparse.Namespace,
    window: Window,
    kids: list[Child],
    reports: list[dict[str, Any]],
    sims: list[Child],
    sim_reports: list[dict[str, Any]],
    reclaimer: Child | None,
    workers: list[Child],
    server_pid: int,
    reclaim: dict[str, Any],
) -> dict[str, Any]:
    span = window.seconds
    done = sum(r["in_window"] for r in reports)

    def per_task(per_s: float) -> float | None:
        return per_s * span / done if done else None

    parent_rows = []
    for kid, report in zip(kids, reports, strict=True):
        recv = window.received_per_s(kid.name)
        own = report["in_window"]
        parent_rows.append(
            {
                "name": kid.name,
                "received_per_s": recv,
                "received_per_own_task": recv * span / own if recv is not None and own else None,
                "sent_per_s": window.sent_per_s(kid.name),
                "cpu_percent": window.cpu_percent(kid.pid),
                "rss_mb": window.rss_mb(kid.pid),
                "tasks_per_s": own / span,
                **report,
            }
        )
    received = {p["name"]: p["received_per_s"] for p in parent_rows if p["received_per_s"] is not None}

    def values(key: str) -> list[float]:
        return [p[key] for p in parent_rows if p[key] is not None]

    def kind(children: list[Child], tasks: float | None = None) -> dict[str, Any]:
        recv = [r for c in children if (r := window.received_per_s(c.name)) is not None]
        cpu = [c for ch in children if (c := window.cpu_percent(ch.pid)) is not None]
        total = sum(recv) if recv else None
        return {
            "processes": len(children),
            "received_per_s": total,
            "received_per_task": total * span / tasks if total is not None and tasks else None,
            "cpu_percent": sum(cpu) if cpu else None,
            "rss_mb": sum(r for c in children if (r := window.rss_mb(c.pid)) is not None),
        }

    notes = []
    tasks_per_s = done / span
    if tasks_per_s < 0.8 * args.rate:
        notes.append(
            f"fell behind: {tasks_per_s:.0f} of {args.rate:g} tasks/s done in the window "
            f"(this {os.cpu_count()}-core machine is saturated; read the rest as a lower bound)"
        )
    late = sum(s["late_ticks"] for s in sim_reports)
    if late > 0.1 * span / TICK * len(sims):
        notes.append(f"agent simulators fell behind their renewal schedule ({late} late ticks)")
    errors = sum(s["errors"] for s in sim_reports) + sum(r["failed"] + r["timed_out"] for r in reports)
    if errors:
        notes.append(f"{errors} renewal errors or failed/unfinished tasks")
    silent = sum(1 for r in [*reports, *sim_reports] if r.get("unreported"))
    if silent:
        notes.append(f"{silent} process(es) did not report their totals when stopped")
    slow = window.last.slow_consumers - window.first.slow_consumers
    if slow:
        notes.append(f"the server cut off {slow} slow consumer(s) in the window")
    active = outlier(received)
    return {
        "window_s": span,
        "tasks_per_s": tasks_per_s,
        "server": {
            "out_per_s": window.server_out_per_s,
            "out_per_task": per_task(window.server_out_per_s),
            "in_per_s": window.server_in_per_s,
            "cpu_percent": window.cpu_percent(server_pid),
            "rss_mb": window.rss_mb(server_pid),
        },
        "parent": {
            "received_per_s": spread(values("received_per_s")),
            "received_per_own_task": spread(values("received_per_own_task")),
            "cpu_percent": spread(values("cpu_percent")),
            "rss_mb": spread(values("rss_mb")),
            "p50_ms": spread(values("p50_ms")),
            "active_reclaimer": active,
        },
        "parents_detail": parent_rows,
        "reclaimer_proc": kind([reclaimer], done) if reclaimer else None,
        "workers": kind(workers, done),
        "agent_simulators": {**kind(sims), "renewals_acked": sum(s["acked"] for s in sim_reports)},
        "reclaim": reclaim,
        "notes": notes,
    }


# --- report --------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _pair(s: dict[str, float | None], digits: int = 0) -> str:
    return f"{_f(s['median'], digits)} / {_f(s['max'], digits)}"


SERVER_AND_PARENTS = (
    "agents",
    "parents",
    "tasks/s",
    "server out/s",
    "server out/task",
    "server CPU %",
    "parent recv/s (med / max)",
    "parent recv/own task (med / max)",
    "parent CPU % (med / max)",
)
OTHERS = (
    "agents",
    "parents",
    "reclaimer recv/s",
    "reclaimer CPU %",
    "workers recv/task",
    "workers CPU %",
    "agent sims CPU %",
    "reclaim s (med / max)",
    "notes",
)


def cells(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """One configuration as the cells of both tables (SERVER_AND_PARENTS, OTHERS)."""
    head = [_f(r["agents"]), _f(r["parents"])]
    if r.get("status") != "ok":
        return [*head, *["-"] * 7], [*head, *["-"] * 6, r.get("reason", "")]
    p, s, w, a, rc = r["parent"], r["server"], r["workers"], r["agent_simulators"], r["reclaim"]
    rec = r["reclaimer_proc"]
    notes = list(r["notes"])
    if p["active_reclaimer"]:
        notes.insert(0, f"active reclaimer: {p['active_reclaimer']}")
    lease = r.get("lease")
    held = f"{lease['holder']}{' (standalone)' if lease['standalone'] else ''}" if lease else "none"
    notes.insert(0, f"lease: {held}")
    first = [
        *head,
        _f(r["tasks_per_s"]),
        _f(s["out_per_s"]),
        _f(s["out_per_task"], 1),
        _f(s["cpu_percent"], 1),
        _pair(p["received_per_s"]),
        _pair(p["received_per_own_task"], 1),
        _pair(p["cpu_percent"], 1),
    ]
    second = [
        *head,
        _f(rec["received_per_s"]) if rec else "(in parents)",
        _f(rec["cpu_percent"], 1) if rec else "-",
        _f(w["received_per_task"], 1),
        _f(w["cpu_percent"], 1),
        _f(a["cpu_percent"], 1),
        f"{_f(rc.get('median_s'), 2)} / {_f(rc.get('max_s'), 2)}" if rc else "-",
        "; ".join(notes),
    ]
    return first, second


def tables(rows: list[dict[str, Any]]) -> list[Table]:
    """The two rich tables (server and parents; the other participants), one row per configuration."""
    made = []
    for i, (title, columns) in enumerate(
        (
            ("fan-out: the server and the parents (fixed total task rate)", SERVER_AND_PARENTS),
            ("fan-out: the other participants, and reclaim time after a SIGKILL", OTHERS),
        )
    ):
        t = Table(title=title)
        for name in columns:
            t.add_column(name, justify="left" if name == "notes" else "right", overflow="fold")
        for r in rows:
            t.add_row(*cells(r)[i])
        made.append(t)
    return made


def markdown(rows: list[dict[str, Any]]) -> str:
    """Both tables as Markdown (for bench/RESULTS.md)."""
    out = []
    for i, columns in enumerate((SERVER_AND_PARENTS, OTHERS)):
        out += [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
        out += [f"| {' | '.join(cells(r)[i])} |" for r in rows]
        out.append("")
    return "\n".join(out)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration, fleet size by fleet size."""
    return [await configuration(args, n, p) for n in args.agents for p in args.parents]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 0 when every configuration was measured or said why not."""
    args = parse_args(argv)
    command = "python3 dev.py bench fanout " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = asyncio.run(run(args))
    console = Console(width=max(Console().width, 160))
    for t in tables(rows):
        console.print(t)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, server and every process on one host"
    print(f"{command}\n{machine}\n\n{markdown(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=2) + "\n")
    return 1 if any(r.get("status") == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
