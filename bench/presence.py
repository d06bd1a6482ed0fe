"""Presence at scale: N agents heartbeating on one embedded server, and how fast departures are seen.

    python bench/presence.py --agents 1000 --seconds 20
    python bench/presence.py --agents 1000 --seconds 20 --procs 1     # all agents in one Python process

Starts its own nats-server (loopback) and ``--procs`` client processes that each run their share of
the agents as real :class:`coord.presence.Membership` objects (join staggered over one interval,
then renewing every ``--interval`` with TTL ``--ttl``). The parent runs one presence watcher.

Phases (offsets from the start): agents join during [0, 2 s); steady state is measured over the
middle of the run (server / client / watcher CPU with psutil, renewals/s from the bucket's stream
sequence); then ``--departures`` agents stop renewing at known instants (a crash: the key is left
to expire) and as many leave gracefully; the watcher's Left events are matched against those
instants (same host, wall clock) to give departure->Left and leave->Left delays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import coord
from coord.presence import AgentInfo, Left, Membership
from coord.server import NatsServer

console = Console()


# --- child: a share of the agents ------------------------------------------------------------


async def child(plan: dict[str, Any]) -> None:
    """Run the agents in ``plan``; print one JSON line with what happened."""
    losses = 0

    def on_lost(_: Exception) -> None:
        nonlocal losses
        losses += 1

    start, interval, ttl = plan["start"], plan["interval"], plan["ttl"]
    async with coord.connect(plan["url"], namespace=plan["ns"]) as conn:
        members: dict[str, Membership] = {}

        async def join(agent_id: str, offset: float) -> None:
            await asyncio.sleep(max(0.0, start + offset - time.time()))
            info = AgentInfo(id=agent_id, role="bench", queues=["bench"], capacity=4)
            members[agent_id] = await conn.presence.join(info, interval=interval, ttl=ttl, on_lost=on_lost)

        ids: list[str] = plan["ids"]
        await asyncio.gather(*(join(a, interval * i / len(ids)) for i, a in enumerate(ids)))
        stopped: dict[str, float] = {}
        left: dict[str, float] = {}

        async def crash(agent_id: str, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.time()))
            # Simulate a crash: stop renewing and leave the key to expire. _closing as well as cancel(),
            # because a cancel racing a reply can be swallowed by 3.11's wait_for inside nats-py.
            member = members[agent_id]
            member._closing = True
            assert member._task is not None
            member._task.cancel()
            await asyncio.gather(member._task, return_exceptions=True)
            stopped[agent_id] = time.time()

        async def leave(agent_id: str, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.time()))
            left[agent_id] = time.time()
            await members[agent_id].leave()

        await asyncio.gather(
            *(crash(a, at) for a, at in plan["crash"].items()), *(leave(a, at) for a, at in plan["leave"].items())
        )
        await asyncio.sleep(max(0.0, start + plan["end"] - time.time()))
        generations = sum(m.generation for m in members.values())
        gone = set(plan["crash"]) | set(plan["leave"])
        await asyncio.gather(*(m.leave() for a, m in members.items() if a not in gone))
    print(json.dumps({"stopped": stopped, "left": left, "losses": losses, "rejoins": generations}), flush=True)


# --- parent ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    ns = "benchpresence"
    server = NatsServer().start()
    try:
        async with coord.connect(server.url, namespace=ns) as conn:
            stream = conn.presence._store.stream
            arrivals: dict[str, list[tuple[float, Left]]] = {}
            joined = 0
            watcher = await conn.presence.watch().start()

            async def record() -> None:
                nonlocal joined
                async for event in watcher:
                    if isinstance(event, Left):
                        arrivals.setdefault(event.agent_id, []).append((time.time(), event))
                    else:
                        joined += 1

            recorder = asyncio.create_task(record())
            ids = [f"a{i:05d}" for i in range(args.agents)]
            d = args.departures
            # the departures happen in the last part of the run, spread over 4 s, after the CPU window
            dep_start = args.seconds - 4.0 - args.ttl - 1.5
            crash = {ids[i]: dep_start + 4.0 * k / d for k, i in enumerate(range(0, 2 * d, 2))}
            leave = {ids[i]: dep_start + 4.0 * k / d + 0.01 for k, i in enumerate(range(1, 2 * d, 2))}
            start = time.time() + 1.5  # children need a moment to import and connect
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            procs = []
            for p in range(args.procs):
                share = ids[p :: args.procs]
                plan = {
                    "url": server.url,
                    "ns": ns,
                    "ids": share,
                    "start": start,
                    "interval": args.interval,
                    "ttl": args.ttl,
                    "crash": {a: t for a, t in crash.items() if a in share},
                    "leave": {a: t for a, t in leave.items() if a in share},
                    "end": args.seconds,
                }
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--child", json.dumps(plan)],
                        env=env,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            server_ps = psutil.Process(server.pid)
            client_ps = [psutil.Process(p.pid) for p in procs]
            me = psutil.Process()

            # steady-state window: after every agent joined and renewed once, before departures
            w0, w1 = start + 2.0 + args.interval, start + dep_start - 0.5
            await asyncio.sleep(max(0.0, w0 - time.time()))
            seq0 = (await conn.js.stream_info(stream)).state.last_seq
            s0, c0, m0, t0 = cpu_seconds(server_ps), sum(map(cpu_seconds, client_ps)), cpu_seconds(me), time.time()
            present_at_w0 = len(watcher.present)
            await asyncio.sleep(max(0.0, w1 - time.time()))
            seq1 = (await conn.js.stream_info(stream)).state.last_seq
            s1, c1, m1, t1 = cpu_seconds(server_ps), sum(map(cpu_seconds, client_ps)), cpu_seconds(me), time.time()
            span = t1 - t0

            # communicate() blocks: run it off the loop so the watcher keeps recording arrivals
            results = await asyncio.gather(
                *(asyncio.to_thread(p.communicate, timeout=args.seconds + 60) for p in procs)
            )
            outputs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
            await asyncio.sleep(0.5)
            await watcher.stop()
            await recorder
    finally:
        server.stop()

    stopped = {a: t for o in outputs for a, t in o["stopped"].items()}
    left = {a: t for o in outputs for a, t in o["left"].items()}

    def delays(instants: dict[str, float], reason: str) -> tuple[list[float], int]:
        found, missing = [], 0
        for agent_id, at in instants.items():
            match = [t for t, e in arrivals.get(agent_id, []) if e.reason == reason and t >= at]
            if match:
                found.append(min(match) - at)
            else:
                missing += 1
        return found, missing

    crash_delays, crash_missing = delays(stopped, "expired")
    leave_delays, leave_missing = delays(left, "graceful")
    return {
        "agents": args.agents,
        "procs": args.procs,
        "interval": args.interval,
        "ttl": args.ttl,
        "present_at_window": present_at_w0,
        "window_s": span,
        "renewals_per_s": (seq1 - seq0) / span,
        "server_cpu": 100 * (s1 - s0) / span,
        "client_cpu": 100 * (c1 - c0) / span,
        "watcher_cpu": 100 * (m1 - m0) / span,
        "crash": crash_delays,
        "crash_missing": crash_missing,
        "leave": leave_delays,
        "leave_missing": leave_missing,
        "losses": sum(o["losses"] for o in outputs),
        "rejoins": sum(o["rejoins"] for o in outputs),
        "joined_events": joined,
    }


def report(r: dict[str, Any], command: str) -> None:
    table = Table(title=f"presence: {r['agents']} agents, interval {r['interval']:g}s, TTL {r['ttl']:g}s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("client processes (agents each)", f"{r['procs']} ({r['agents'] // r['procs']})"),
        ("agents present in the window", str(r["present_at_window"])),
        ("renewals/s (bucket writes)", f"{r['renewals_per_s']:.0f}"),
        ("server CPU (% of one core)", f"{r['server_cpu']:.1f}"),
        ("agent clients CPU (% of one core, all procs)", f"{r['client_cpu']:.1f}"),
        ("watcher process CPU (% of one core)", f"{r['watcher_cpu']:.1f}"),
        (f"crash -> Left(expired) p50 / p99 / max (n={len(r['crash'])})", _ms(r["crash"])),
        (f"leave -> Left(graceful) p50 / p99 / max (n={len(r['leave'])})", _ms(r["leave"])),
        ("departures never reported", str(r["crash_missing"] + r["leave_missing"])),
        ("spurious losses (on_lost) / re-joins", f"{r['losses']} / {r['rejoins']}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"[dim]{command}; {platform.machine()}, {os.cpu_count()} cores, server and clients sharing it[/]")
    console.print("\nMarkdown:\n")
    print("| metric | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{1000 * statistics.median(values):.0f} / {1000 * pct(values, 0.99):.0f} / {1000 * max(values):.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the run (>= 14)")
    ap.add_argument("--procs", type=int, default=1, help="client processes sharing the agents")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--ttl", type=float, default=3.0)
    ap.add_argument("--departures", type=int, default=50, help="agents that crash (and as many that leave)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        asyncio.run(child(json.loads(args.child)))
        return
    if args.seconds < 14 or 2 * args.departures > args.agents:
        ap.error("need --seconds >= 14 and --agents >= 2 * --departures")
    command = "python bench/presence.py " + " ".join(sys.argv[1:])
    report(asyncio.run(parent(args)), command)


if __name__ == "__main__":
    main()
