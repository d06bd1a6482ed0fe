"""What the benches run against, and how they read its CPU and their options: one module, no copies.

:func:`start_servers` starts either one embedded nats-server (R1) or a 3-node cluster routed on
loopback (R3, ``--cluster``); :class:`Servers` says which URL, how many replicas and every node's
pid, :func:`corral_settings` what corral's settings pick for those replicas (the presence TTL).
:class:`ServerCpu` samples the CPU of every node (psutil, user + system) and reports the cluster's
CPU as the SUM over its nodes, with the per-node split and the µs of server CPU per operation.
:class:`OneLineParser` makes bad options exit 2 with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psutil

from coord.server import NatsCluster, NatsServer
from coord.settings import Settings

CLUSTER_NODES = 3
"""Nodes (and replicas) of ``--cluster``."""


@dataclass(frozen=True)
class Servers:
    """A running server or cluster: where to connect and what to measure."""

    nodes: list[NatsServer]
    """Every node (one for R1), each a :class:`NatsServer` that can be stopped, killed and started."""
    replicas: int
    """Replicas of the namespace's buckets and streams: 1, or the cluster's size."""

    @property
    def url(self) -> str:
        """Comma-separated client URLs of every node (accepted by :func:`coord.connect`)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def pids(self) -> list[int]:
        """The nodes' process ids, in node order."""
        pids = [node.pid for node in self.nodes]
        assert all(pid is not None for pid in pids), "a node is not running"
        return [pid for pid in pids if pid is not None]


def where(replicas: int, nodes: int) -> str:
    """``"R1, 1 server"`` or ``"R3, 3-node cluster"``, for a report's title."""
    return f"R{replicas}, " + ("1 server" if nodes == 1 else f"{nodes}-node cluster")


def replicas_for(cluster: bool) -> int:
    """Replicas of the namespace: the cluster's size with ``--cluster``, else 1."""
    return CLUSTER_NODES if cluster else 1


def corral_settings(cluster: bool) -> Settings:
    """The settings corral picks for that many replicas (presence TTL 20 s replicated, 3 s on one
    server, unless ``CORRAL_*`` variables say otherwise)."""
    return Settings.load(replicas=replicas_for(cluster))


@contextlib.contextmanager
def start_servers(
    cluster: bool, *, store_dir: str | os.PathLike[str] | None = None, sync_interval: str | None = None
) -> Iterator[Servers]:
    """Start one embedded server (R1) or, with ``cluster``, 3 routed nodes on loopback (R3); stop them after.

    ``store_dir`` is the JetStream store (one node) or the root of the nodes' stores (a cluster);
    without it a temporary directory is made and removed.
    """
    if cluster:
        with NatsCluster(CLUSTER_NODES, store_root=store_dir, sync_interval=sync_interval) as nodes:
            yield Servers(nodes=list(nodes.nodes), replicas=replicas_for(cluster))
    else:
        with NatsServer(store_dir=store_dir, sync_interval=sync_interval) as server:
            yield Servers(nodes=[server], replicas=replicas_for(cluster))


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class ServerCpu:
    """The CPU every node of a :class:`Servers` spends between :meth:`start` and :meth:`stop`."""

    def __init__(self, servers: Servers) -> None:
        self._pids = servers.pids
        self._before: list[float] = []
        self._after: list[float] = []

    def start(self) -> None:
        """Take the first sample."""
        self._before = [cpu_seconds(pid) for pid in self._pids]

    def stop(self) -> None:
        """Take the second sample."""
        self._after = [cpu_seconds(pid) for pid in self._pids]

    def report(self, seconds: float, operations: float) -> dict[str, Any]:
        """The window's server CPU: ``cpu_percent`` (of one core, summed over the nodes), per node, and
        ``cpu_us_per_op`` (µs of server CPU, all nodes, per operation; None without operations)."""
        used = [b - a for a, b in zip(self._before, self._after, strict=True)]
        return {
            "nodes": len(used),
            "cpu_percent_per_node": [100 * u / seconds for u in used],
            "cpu_percent": 100 * sum(used) / seconds,
            "cpu_us_per_op": 1e6 * sum(used) / operations if operations > 0 else None,
        }


def server_cpu_text(cpu: dict[str, Any]) -> str:
    """``"42.0 (14.1 + 13.9 + 14.0)"``: % of one core summed over the nodes, then each node's (a cluster)."""
    split = " + ".join(f"{p:.1f}" for p in cpu["cpu_percent_per_node"])
    return f"{cpu['cpu_percent']:.1f}" + (f" ({split})" if cpu["nodes"] > 1 else "")


def per_op_text(cpu: dict[str, Any]) -> str:
    """µs of server CPU (all nodes) per operation, or "-" without operations."""
    return "-" if cpu["cpu_us_per_op"] is None else f"{cpu['cpu_us_per_op']:.0f}"


# --- options --------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``PROG: error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:  # argparse would print the usage as well
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def whole(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` to ``hi``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {value}")
        return value

    return parse


def number(lo: float, hi: float, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a number from ``lo`` (excluded with ``above``) to ``hi``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a number, got {text!r}") from None
        if not (lo < value if above else lo <= value) or not value <= hi:
            rule = f"above {lo:g} and at most {hi:g}" if above else f"from {lo:g} to {hi:g}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


def add_cluster_option(ap: argparse.ArgumentParser) -> None:
    """``--cluster``: run against 3 nodes on loopback with replicas 3 instead of one server."""
    ap.add_argument(
        "--cluster",
        action="store_true",
        help=f"{CLUSTER_NODES} nats-server nodes on loopback, replicas {CLUSTER_NODES} (default: one server, R1)",
    )


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` (if given) as indented JSON."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")
