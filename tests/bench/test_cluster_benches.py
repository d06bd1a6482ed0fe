"""The presence and dispatch benches run on one server (R1) and, with ``--cluster``, on 3 nodes (R3).

Tiny real runs (real nats-server processes, real agents and `corral worker` processes) check the
report's shape for both: renewals/s or tasks/s, the server CPU as the sum over every node (one, or
the cluster's three, each sampled), and the µs of server CPU per renewal or per task derived from
them. Bad options exit 2 with one line naming the option.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coord.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent


def bench(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m bench.NAME ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_json(tmp_path: Path, name: str, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / f"{name}.json"
    done = bench(name, *args, "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report, done.stdout


def assert_server_cpu(server: dict[str, Any], nodes: int, seconds: float, operations: float) -> None:
    """The server CPU is every node's, summed; the cost per operation is that sum over the operations."""
    assert server["nodes"] == nodes
    per_node = server["cpu_percent_per_node"]
    assert len(per_node) == nodes
    # every node did work in the window (a cluster replicates every write to all three)
    assert all(p > 0 for p in per_node), per_node
    assert server["cpu_percent"] == pytest.approx(sum(per_node))
    cpu_seconds = server["cpu_percent"] / 100 * seconds
    assert server["cpu_us_per_op"] == pytest.approx(1e6 * cpu_seconds / operations)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cluster", [False, True], ids=["R1", "R3"])
def test_presence_reports_renewals_and_server_cpu_summed_over_the_nodes(tmp_path: Path, cluster: bool) -> None:
    agents = 60
    flags = ["--cluster"] if cluster else []
    report, printed = run_json(
        tmp_path, "presence", "--agents", str(agents), "--seconds", "6", "--departures", "0", *flags
    )
    nodes = 3 if cluster else 1
    assert report["replicas"] == nodes and report["servers"] == nodes
    # the TTL corral's settings pick for these replicas (20 s replicated, 3 s on one server)
    assert report["ttl"] == Settings.load(replicas=nodes).presence_ttl
    assert report["present_at_window"] == agents
    assert report["losses"] == 0 and report["crash"] == [] and report["leave"] == []
    # each agent renews once per interval (1 s): about `agents` bucket writes a second
    assert 0.5 * agents <= report["renewals_per_s"] <= 1.5 * agents, report["renewals_per_s"]
    renewals = report["renewals_per_s"] * report["window_s"]
    assert_server_cpu(report["server"], nodes, report["window_s"], renewals)
    assert ("3-node cluster" if cluster else "R1, 1 server") in printed
    assert "server CPU per renewal (µs, all nodes)" in printed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cluster", [False, True], ids=["R1", "R3"])
def test_dispatch_reports_tasks_per_second_and_server_cpu_summed_over_the_nodes(tmp_path: Path, cluster: bool) -> None:
    tasks = 200
    flags = ["--cluster"] if cluster else []
    report, printed = run_json(
        tmp_path,
        "dispatch",
        *("--tasks", str(tasks), "--workers", "1", "--concurrency", "16"),
        *("--latency-samples", "0", "--kill-trials", "0", *flags),
    )
    nodes = 3 if cluster else 1
    assert report["replicas"] == nodes and report["servers"] == nodes
    assert report["ttl"] == Settings.load(replicas=nodes).presence_ttl
    rows = report["throughput"]
    assert [r["reclaimer"] for r in rows] == [True, False]
    for r in rows:
        assert r["tasks"] == tasks and r["worker_procs"] == 1
        assert r["rate"] == pytest.approx(tasks / r["seconds"])
        assert r["producer"] > 0 and r["workers"] > 0
        assert_server_cpu(r["server"], nodes, r["seconds"], tasks)
    assert "latency_ms" not in report and "kill_s" not in report
    assert printed.count("µs/task") == 2
    assert ("3-node cluster" if cluster else "R1, 1 server") in printed


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("presence", ["--agents", "0"], "argument --agents: must be from 1 to 50000, got 0"),
        ("presence", ["--seconds", "x"], "argument --seconds: want a number, got 'x'"),
        ("presence", ["--procs", "5", "--agents", "4", "--departures", "0"], "argument --procs: at most --agents (4)"),
        ("presence", ["--departures", "30", "--agents", "50"], "argument --departures: at most half of --agents"),
        ("presence", ["--cluster", "--seconds", "14"], "argument --seconds: must be at least 31 with --interval 1"),
        ("presence", ["--ttl", "2", "--interval", "3"], "argument --interval/--ttl: interval (3s) must be shorter"),
        ("dispatch", ["--tasks", "0"], "argument --tasks: must be from 1 to 1000000, got 0"),
        ("dispatch", ["--workers", "1", "x"], "argument --workers: want a whole number, got 'x'"),
        ("dispatch", ["--kill-trials", "-1"], "argument --kill-trials: must be from 0 to 1000, got -1"),
        ("dispatch", ["--ttl", "0"], "argument --ttl: must be above 0 and at most 3600, got 0"),
        ("dispatch", ["--sync-interval", "always\nx: 1"], "argument --sync-interval: want always or a duration"),
    ],
)
def test_bad_options_exit_2_with_one_line_naming_the_option(name: str, args: list[str], says: str) -> None:
    done = bench(name, *args, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{name}: error: ") and says in lines[0], lines[0]
