"""What bench/fanout.py reads at the edges of its window: the server's counters per connection, and CPU per process.

The server's monitoring port gives ``/varz`` (messages in and out of the whole server) and
``/connz`` (per client connection, keyed by the name each client gave: ``out_msgs`` is what the
server sent that client, i.e. what it received). psutil gives each process's CPU seconds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Snapshot:
    """The counters at one instant."""

    at: float
    """``time.monotonic()`` when taken."""
    server_in: int
    """Messages the server received from all clients (``/varz`` ``in_msgs``)."""
    server_out: int
    """Messages the server sent to all clients (``/varz`` ``out_msgs``)."""
    slow_consumers: int
    """Clients the server has cut off for not reading fast enough (``/varz`` ``slow_consumers``)."""
    conns: dict[str, tuple[int, int]]
    """Connection name → (messages it sent, messages it received), summed over connections of that name."""
    cpu: dict[int, float]
    """Process id → CPU seconds (user + system) so far; absent if the process is gone."""
    rss: dict[int, float]
    """Process id → resident memory in MiB; absent if the process is gone."""


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def _usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, resident MiB) of ``pid``, or None if it is gone."""
    try:
        proc = psutil.Process(pid)
        times, rss = proc.cpu_times(), proc.memory_info().rss
    except psutil.Error:
        return None
    return float(times.user + times.system), rss / 2**20


async def take(monitor: str, pids: list[int]) -> Snapshot:
    """Read ``/varz``, ``/connz`` at ``monitor`` (``http://127.0.0.1:PORT``) and the CPU of ``pids``."""
    at = time.monotonic()
    usage = {pid: u for pid in pids if (u := _usage(pid)) is not None}
    varz, connz = await asyncio.gather(
        asyncio.to_thread(_get, f"{monitor}/varz"), asyncio.to_thread(_get, f"{monitor}/connz?subs=0&limit=100000")
    )
    conns: dict[str, tuple[int, int]] = {}
    for conn in connz.get("connections") or []:
        name = str(conn.get("name") or f"cid{conn.get('cid')}")
        sent, got = conns.get(name, (0, 0))
        conns[name] = (sent + int(conn.get("in_msgs", 0)), got + int(conn.get("out_msgs", 0)))
    return Snapshot(
        at,
        int(varz["in_msgs"]),
        int(varz["out_msgs"]),
        int(varz.get("slow_consumers", 0)),
        conns,
        {pid: u[0] for pid, u in usage.items()},
        {pid: u[1] for pid, u in usage.items()},
    )


@dataclass(frozen=True)
class Window:
    """The difference between two snapshots, as rates."""

    first: Snapshot
    last: Snapshot

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return self.last.at - self.first.at

    def received_per_s(self, name: str) -> float | None:
        """Messages/s the connection ``name`` received; None if it was not there at both ends."""
        if name not in self.first.conns or name not in self.last.conns:
            return None
        return (self.last.conns[name][1] - self.first.conns[name][1]) / self.seconds

    def sent_per_s(self, name: str) -> float | None:
        """Messages/s the connection ``name`` published; None if it was not there at both ends."""
        if name not in self.first.conns or name not in self.last.conns:
            return None
        return (self.last.conns[name][0] - self.first.conns[name][0]) / self.seconds

    def cpu_percent(self, pid: int) -> float | None:
        """CPU of ``pid`` in % of one core; None if it was not running at both ends."""
        if pid not in self.first.cpu or pid not in self.last.cpu:
            return None
        return 100 * (self.last.cpu[pid] - self.first.cpu[pid]) / self.seconds

    def rss_mb(self, pid: int) -> float | None:
        """Resident memory of ``pid`` in MiB as the window closed; None if it was gone."""
        return self.last.rss.get(pid)

    @property
    def server_out_per_s(self) -> float:
        """Messages/s the server sent."""
        return (self.last.server_out - self.first.server_out) / self.seconds

    @property
    def server_in_per_s(self) -> float:
        """Messages/s the server received."""
        return (self.last.server_in - self.first.server_in) / self.seconds


def outlier(values: dict[str, float], factor: float = 2.0) -> str | None:
    """The one key whose value exceeds ``factor`` times the median of the others (the active reclaimer), or None."""
    if len(values) < 2:
        return None
    found = [
        key
        for key, value in values.items()
        if value > factor * max(1.0, statistics.median(v for k, v in values.items() if k != key))
    ]
    return found[0] if len(found) == 1 else None


def spread(values: list[float]) -> dict[str, float | None]:
    """Median and max of ``values`` (None when empty)."""
    return {
        "median": statistics.median(values) if values else None,
        "max": max(values) if values else None,
    }
