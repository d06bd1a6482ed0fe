"""What every peer module shares: the scenario, the typed result, brokers, processes and CPU accounting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from coord.server import NatsServer, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
"""The repository root (put on worker processes' PYTHONPATH)."""

LOOPBACK = "127.0.0.1"

REDIS_MISSING = "redis-server not installed: apt-get install redis-server"


@dataclass(frozen=True)
class Scenario:
    """The sizes every system runs with."""

    tasks: int = 10_000
    """No-op tasks per round."""
    rounds: int = 3
    """Rounds through the same producer."""
    latency: int = 200
    """Tasks submitted one at a time (submit → result measured for each)."""
    workers: int = 2
    """Worker processes."""
    batch: int = 500
    """Submissions in flight at once while a round is being submitted."""

    @property
    def warmup(self) -> int:
        """Tasks run before the first round (connections, imports, consumers warmed up)."""
        return max(20, min(500, self.tasks // 10))

    def timeout(self) -> float:
        """Seconds a round may take before the system is reported as failed."""
        return max(60.0, self.tasks / 50)


@dataclass
class CpuSplit:
    """CPU used during the throughput rounds by each kind of process: in % of one core (100 = one core
    busy all the time) as :attr:`SystemResult.cpu`, or in ms per task as :attr:`SystemResult.cpu_ms_per_task`."""

    producer: float = 0.0
    workers: float = 0.0
    broker: float = 0.0

    @property
    def total(self) -> float:
        """All three together."""
        return self.producer + self.workers + self.broker


@dataclass
class SystemResult:
    """One row of the peer table."""

    system: str
    """Short key (``corral``, ``celery-prefork``, ...)."""
    label: str
    """What ran, for humans."""
    status: str = "ok"
    """``ok``, ``unavailable`` (not installed / cannot start) or ``failed`` (broke while running)."""
    reason: str = ""
    """Why it is not ``ok``."""
    rates: list[float] = field(default_factory=list)
    """Results per second, one per round."""
    executions: list[float] = field(default_factory=list)
    """Tasks run per second as the workers see them, one per round (only where results come back
    much later than the tasks ran: streaq)."""
    latencies_ms: list[float] = field(default_factory=list)
    """Submit → result, one task at a time."""
    cpu: CpuSplit = field(default_factory=CpuSplit)
    producer_rss_mb: list[float] = field(default_factory=list)
    """The producer's resident memory after each round (JSON only: is anything kept per finished task?)."""
    round_cpu_ms: list[float] = field(default_factory=list)
    """CPU milliseconds per task of all the processes together, one per round (JSON only: does a
    later round cost more work, or did the machine only run slower?)."""
    note: str = ""
    """A caveat shown in the table (e.g. ``no reply``)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions that ran."""

    @property
    def ok(self) -> bool:
        """True if it ran to the end."""
        return self.status == "ok"

    @property
    def median_rate(self) -> float | None:
        """Median of the rounds' results/s."""
        return statistics.median(self.rates) if self.rates else None

    @property
    def median_executions(self) -> float | None:
        """Median of the rounds' executions/s, if measured."""
        return statistics.median(self.executions) if self.executions else None

    @property
    def last_vs_first(self) -> float | None:
        """The last round's results/s over the first's (1.0: no slower after many rounds through one producer)."""
        return self.rates[-1] / self.rates[0] if len(self.rates) > 1 and self.rates[0] > 0 else None

    @property
    def cpu_last_vs_first(self) -> float | None:
        """The last round's CPU per task over the first's (1.0: a later round costs no more work)."""
        cpu = self.round_cpu_ms
        return cpu[-1] / cpu[0] if len(cpu) > 1 and cpu[0] > 0 else None

    @property
    def cpu_ms_per_task(self) -> CpuSplit | None:
        """CPU milliseconds per task over the rounds, by process kind (the % split times the mean time per task)."""
        if not self.rates or any(r <= 0 for r in self.rates):
            return None
        ms_per_task = statistics.fmean(1000 / r for r in self.rates)
        c = self.cpu
        return CpuSplit(
            producer=c.producer / 100 * ms_per_task,
            workers=c.workers / 100 * ms_per_task,
            broker=c.broker / 100 * ms_per_task,
        )

    @property
    def p50_ms(self) -> float | None:
        """Median one-at-a-time latency."""
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    @property
    def p99_ms(self) -> float | None:
        """99th percentile one-at-a-time latency."""
        return pct(self.latencies_ms, 0.99) if self.latencies_ms else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (latency samples reduced to percentiles)."""
        out = asdict(self)
        del out["latencies_ms"]
        per_task = self.cpu_ms_per_task
        out.update(
            median_rate=self.median_rate,
            median_executions=self.median_executions,
            last_vs_first=self.last_vs_first,
            cpu_last_vs_first=self.cpu_last_vs_first,
            cpu_ms_per_task=asdict(per_task) | {"total": per_task.total} if per_task else None,
            min_rate=min(self.rates) if self.rates else None,
            max_rate=max(self.rates) if self.rates else None,
            p50_ms=self.p50_ms,
            p99_ms=self.p99_ms,
            latency_samples=len(self.latencies_ms),
        )
        return out


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the given distributions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in dists:
        with contextlib.suppress(PackageNotFoundError):
            out[d] = version(d)
    return out


# ---------------------------------------------------------------------------------------------
# Brokers


class RedisServer:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="peers-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``."""
        return f"redis://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(REDIS_MISSING)
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}: {err.strip()}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def stop(self) -> None:
        """Stop it and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Brokers:
    """The servers a run started; a ``None`` URL comes with the reason in ``*_error``."""

    nats_url: str | None = None
    nats_pid: int | None = None
    nats_error: str = ""
    redis_url: str | None = None
    redis_pid: int | None = None
    redis_error: str = ""


@contextlib.contextmanager
def start_brokers(nats: bool, redis: bool) -> Iterator[Brokers]:
    """Start the servers asked for (loopback, free ports, temp stores); a failure is recorded, not raised."""
    b = Brokers()
    with contextlib.ExitStack() as stack:
        if nats:
            try:
                server = stack.enter_context(NatsServer())
                b.nats_url, b.nats_pid = server.url, server.pid
            except Exception as exc:
                b.nats_error = f"nats-server did not start: {exc}"
        if redis:
            try:
                rs = RedisServer().start()
                stack.callback(rs.stop)
                b.redis_url, b.redis_pid = rs.url, rs.proc.pid if rs.proc else None
            except Exception as exc:
                b.redis_error = str(exc)
        yield b


# ---------------------------------------------------------------------------------------------
# Worker processes and CPU


def child_env(*extra_path: Path, **env: str) -> dict[str, str]:
    """Environment for worker processes: the repository (and ``extra_path``) importable, plus ``env``."""
    path = [str(ROOT), *(str(p) for p in extra_path)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **env}


def spawn(argv: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start one worker process (``argv`` after the Python interpreter), output to ``log`` or nowhere."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    try:
        return subprocess.Popen(
            [sys.executable, *argv], env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop(procs: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every process (then SIGKILL the tree of any that lingers)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.kill()
            p.kill()
            p.wait()


def alive_or_raise(procs: Sequence[subprocess.Popen[bytes]], log: Path | None = None) -> None:
    """Raise if a worker process has exited (with the tail of its log if there is one)."""
    for p in procs:
        if p.poll() is not None:
            tail = ""
            if log and log.exists():
                tail = ": " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            raise RuntimeError(f"worker process exited with code {p.returncode}{tail}")


class CpuMeter:
    """CPU seconds of the producer (this process), the worker process trees and the broker, between marks.

    Worker trees are re-read at every mark: a child that appeared during an interval counts from 0,
    one that exited keeps the last CPU time seen (a process born and gone between two marks is missed).
    """

    def __init__(self, workers: Sequence[int], broker: int | None) -> None:
        self._roots: list[psutil.Process] = []
        for pid in workers:
            with contextlib.suppress(psutil.Error):
                self._roots.append(psutil.Process(pid))
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[int, float] = {}
        self._me = psutil.Process()
        self._broker = psutil.Process(broker) if broker else None
        self._start: tuple[float, dict[int, float], float] = (0.0, {}, 0.0)
        self._t0 = 0.0
        self._used = [0.0, 0.0, 0.0]
        self._elapsed = 0.0
        self.rss_mb: list[float] = []
        """The producer's resident memory at the end of each interval."""
        self.cpu_ms_per_task: list[float] = []
        """CPU milliseconds per task of all the processes in each interval given its task count."""

    @staticmethod
    def _cpu(p: psutil.Process | None) -> float:
        if p is None:
            return 0.0
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            return float(t.user + t.system)
        return 0.0

    def _workers(self) -> dict[int, float]:
        for root in self._roots:
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    self._procs.setdefault(p.pid, p)
        for pid, p in self._procs.items():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self._last[pid] = t.user + t.system
        return dict(self._last)

    def _now(self) -> tuple[float, dict[int, float], float]:
        return (self._cpu(self._me), self._workers(), self._cpu(self._broker))

    def start(self) -> None:
        """Begin a measured interval."""
        self._start, self._t0 = self._now(), time.perf_counter()

    def stop(self, tasks: int | None = None) -> None:
        """End the interval (``tasks``: how many it ran, for its CPU per task); intervals add up."""
        end = self._now()
        self._elapsed += time.perf_counter() - self._t0
        used = (
            end[0] - self._start[0],
            sum(cpu - self._start[1].get(pid, 0.0) for pid, cpu in end[1].items()),
            end[2] - self._start[2],
        )
        for i, seconds in enumerate(used):
            self._used[i] += seconds
        if tasks:
            self.cpu_ms_per_task.append(sum(used) * 1000 / tasks)
        with contextlib.suppress(psutil.Error):
            self.rss_mb.append(self._me.memory_info().rss / 2**20)

    def report(self, res: SystemResult) -> None:
        """Put what was measured into ``res``: the CPU split, CPU per task per round, the producer's memory."""
        res.cpu = self.split()
        res.round_cpu_ms = self.cpu_ms_per_task
        res.producer_rss_mb = self.rss_mb

    def split(self) -> CpuSplit:
        """% of one core over the measured intervals."""
        if self._elapsed <= 0:
            return CpuSplit()
        p, w, b = (u / self._elapsed * 100 for u in self._used)
        return CpuSplit(producer=p, workers=w, broker=b)


def timed_rounds(scenario: Scenario, meter: CpuMeter, one_round: Callable[[int], None]) -> list[float]:
    """Run ``one_round(r)`` for each round under the CPU meter; results/s per round."""
    rates = []
    for r in range(scenario.rounds):
        meter.start()
        t0 = time.perf_counter()
        one_round(r)
        elapsed = time.perf_counter() - t0
        meter.stop(scenario.tasks)
        rates.append(scenario.tasks / elapsed)
    return rates


async def atimed_rounds(
    scenario: Scenario, meter: CpuMeter, one_round: Callable[[int], Awaitable[None]]
) -> list[float]:
    """:func:`timed_rounds` for a coroutine function."""
    rates = []
    for r in range(scenario.rounds):
        meter.start()
        t0 = time.perf_counter()
        await one_round(r)
        elapsed = time.perf_counter() - t0
        meter.stop(scenario.tasks)
        rates.append(scenario.tasks / elapsed)
    return rates


async def alatencies(n: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    """Milliseconds each of ``n`` calls of ``one(i)`` took, awaited one after the other."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await one(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def await_until(
    cond: Callable[[], Awaitable[bool]],
    procs: Sequence[subprocess.Popen[bytes]],
    what: str,
    log: Path | None = None,
    timeout: float = 60.0,
) -> None:
    """Poll ``cond()`` until it is true (the workers are ready); raise if a worker dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not await cond():
        alive_or_raise(procs, log)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f}s")
        await asyncio.sleep(0.05)
