"""Presence at scale: N agents heartbeating on one embedded server or a 3-node cluster, and how fast
departures are seen.

    python bench/presence.py --agents 1000 --seconds 20
    python bench/presence.py --agents 1000 --seconds 20 --procs 1     # all agents in one Python process
    python bench/presence.py --agents 1000 --seconds 40 --cluster     # 3 nodes, R3, TTL 20 s

Starts its own nats-server (loopback; with ``--cluster`` 3 routed nodes and replicas 3) and
``--procs`` client processes that each run their share of the agents as real
:class:`coord.presence.Membership` objects (join staggered over one interval, then renewing every
``--interval`` with TTL ``--ttl``; both default to what corral's settings pick for the replicas:
1 s, and 3 s on one server or 20 s replicated). The parent runs one presence watcher.

Phases (offsets from the start): agents join during [0, 2 s); steady state is measured over the
middle of the run (server / client / watcher CPU with psutil, the server's summed over its nodes;
renewals/s from the bucket's stream sequence; µs of server CPU per renewal); then ``--departures``
agents stop renewing at known instants (a crash: the key is left to expire) and as many leave
gracefully; the watcher's Left events are matched against those instants (same host, wall clock)
to give departure->Left and leave->Left delays. ``--departures 0`` skips that phase, so a run can be
as short as the steady-state window needs (``--seconds`` >= interval + 5 s; with departures
>= interval + TTL + 10 s).
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

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
from coord.presence import AgentInfo, Left, Membership
from coord.presence.timing import check_timing

console = Console()


# --- child: a share of the agents ------------------------------------------------------------


async def child(plan: dict[str, Any]) -> None:
    """Run the agents in ``plan``; print one JSON line with what happened."""
    losses = 0

    def on_lost(_: Exception) -> None:
        nonlocal losses
        losses += 1

    start, interval, ttl = plan["start"], plan["interval"], plan["ttl"]
    async with coord.connect(plan["url"], namespace=plan["ns"], replicas=plan["replicas"]) as conn:
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


def departures_tail(departures: int, ttl: float) -> float:
    """Seconds at the end of the run after the steady-state window's end (+0.5 s): the departures
    (spread over 4 s), the last crash's expiry (TTL) and a margin; 0.5 s without departures."""
    return 4.0 + ttl + 1.5 if departures else 0.5


def min_seconds(departures: int, interval: float, ttl: float) -> float:
    """The shortest run: joins (2 s), one renewal, a steady-state window of 2 s, then the tail."""
    return 2.0 + interval + 2.0 + 0.5 + departures_tail(departures, ttl)


async def parent(args: argparse.Namespace, servers: Servers) -> dict[str, Any]:
    ns = "benchpresence"
    url, replicas = servers.url, servers.replicas
    async with coord.connect(url, namespace=ns, replicas=replicas) as conn:
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
        dep_start = args.seconds - departures_tail(d, args.ttl)
        crash = {ids[i]: dep_start + 4.0 * k / d for k, i in enumerate(range(0, 2 * d, 2))}
        leave = {ids[i]: dep_start + 4.0 * k / d + 0.01 for k, i in enumerate(range(1, 2 * d, 2))}
        start = time.time() + 1.5  # children need a moment to import and connect
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs = []
        for p in range(args.procs):
            share = ids[p :: args.procs]
            plan = {
                "url": url,
                "ns": ns,
                "replicas": replicas,
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
        server_cpu = ServerCpu(servers)
        client_pids = [p.pid for p in procs]
        me = os.getpid()

        # steady-state window: after every agent joined and renewed once, before departures
        w0, w1 = start + 2.0 + args.interval, start + dep_start - 0.5
        await asyncio.sleep(max(0.0, w0 - time.time()))
        seq0 = (await conn.js.stream_info(stream)).state.last_seq
        server_cpu.start()
        c0, m0, t0 = sum(map(cpu_seconds, client_pids)), cpu_seconds(me), time.time()
        present_at_w0 = len(watcher.present)
        await asyncio.sleep(max(0.0, w1 - time.time()))
        seq1 = (await conn.js.stream_info(stream)).state.last_seq
        server_cpu.stop()
        c1, m1, t1 = sum(map(cpu_seconds, client_pids)), cpu_seconds(me), time.time()
        span = t1 - t0

        # communicate() blocks: run it off the loop so the watcher keeps recording arrivals
        results = await asyncio.gather(*(asyncio.to_thread(p.communicate, timeout=args.seconds + 60) for p in procs))
        outputs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
        await asyncio.sleep(0.5)
        await watcher.stop()
        await recorder

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
    server = server_cpu.report(span, seq1 - seq0)
    return {
        "replicas": replicas,
        "servers": len(servers.nodes),
        "agents": args.agents,
        "procs": args.procs,
        "interval": args.interval,
        "ttl": args.ttl,
        "present_at_window": present_at_w0,
        "window_s": span,
        "renewals_per_s": (seq1 - seq0) / span,
        "server": server,
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
    table = Table(
        title=f"presence ({where(r['replicas'], r['servers'])}): {r['agents']} agents, "
        f"interval {r['interval']:g}s, TTL {r['ttl']:g}s"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("client processes (agents each)", f"{r['procs']} ({r['agents'] // r['procs']})"),
        ("agents present in the window", str(r["present_at_window"])),
        ("renewals/s (bucket writes)", f"{r['renewals_per_s']:.0f}"),
        ("server CPU (% of one core; a cluster: sum (per node))", server_cpu_text(r["server"])),
        ("server CPU per renewal (µs, all nodes)", per_op_text(r["server"])),
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's options; bad input exits 2 with one line naming the option and the rule."""
    ap = OneLineParser(prog="presence", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=whole(1, 50_000), default=1000)
    ap.add_argument(
        "--seconds",
        type=number(0, 3600, above=True),
        help="length of the run (default: 20, or the least it may be)",
    )
    ap.add_argument("--procs", type=whole(1, 64), default=1, help="client processes sharing the agents")
    ap.add_argument("--interval", type=number(0, 3600, above=True), help="renewal interval (default: corral's, 1 s)")
    ap.add_argument(
        "--ttl", type=number(0, 3600, above=True), help="presence TTL (default: corral's for the replicas, 3 s or 20 s)"
    )
    ap.add_argument(
        "--departures", type=whole(0, 25_000), default=50, help="agents that crash (and as many that leave; 0: none)"
    )
    add_cluster_option(ap)
    ap.add_argument("--json", type=Path, help="also write the measurements to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    settings = corral_settings(args.cluster)
    args.interval = settings.presence_interval if args.interval is None else args.interval
    args.ttl = settings.presence_ttl if args.ttl is None else args.ttl
    try:
        check_timing(args.interval, args.ttl)
    except InvalidInput as e:
        ap.error(f"argument --interval/--ttl: {e}")
    least = min_seconds(args.departures, args.interval, args.ttl)
    args.seconds = max(20.0, least) if args.seconds is None else args.seconds
    if args.seconds < least:
        ap.error(
            f"argument --seconds: must be at least {least:g} with --interval {args.interval:g}, --ttl {args.ttl:g} "
            f"and --departures {args.departures} (got {args.seconds:g})"
        )
    if 2 * args.departures > args.agents:
        ap.error(f"argument --departures: at most half of --agents ({args.agents}), got {args.departures}")
    if args.procs > args.agents:
        ap.error(f"argument --procs: at most --agents ({args.agents}), got {args.procs}")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server (or cluster), run the bench against it, stop it."""
    with start_servers(args.cluster) as servers:
        return await parent(args, servers)


def main() -> None:
    args = parse_args()
    if args.child:
        asyncio.run(child(json.loads(args.child)))
        return
    command = "python bench/presence.py " + " ".join(sys.argv[1:])
    result = asyncio.run(run(args))
    write_json(args.json, {"command": command, **result})
    report(result, command)


if __name__ == "__main__":
    main()
