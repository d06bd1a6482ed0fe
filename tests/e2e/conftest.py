"""Fixtures for end-to-end tests: real worker processes against a real server."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from coord.server import NatsServer
from tests.conftest import PYTHON

WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn_worker(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    """Start `corral worker` processes; all are killed at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def spawn(
        worker_id: str,
        *,
        queue: str = "q",
        handler: str = "tests.e2e.helpers_handlers:sleepy",
        concurrency: int = 2,
        ttl: float = 1.5,
        interval: float = 0.5,
        extra: list[str] | None = None,
        url: str | None = None,
    ) -> subprocess.Popen[bytes]:
        argv = [
            PYTHON,
            "-m",
            "corral",
            "--server",
            url or nats_server.url,
            "--namespace",
            namespace,
            "worker",
            "-q",
            queue,
            "--handler",
            handler,
            "-c",
            str(concurrency),
            "--id",
            worker_id,
            "--ttl",
            str(ttl),
            "--interval",
            str(interval),
            "-v",
            *(extra or []),
        ]
        log = open(logs / f"{worker_id}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = logs / f"{worker_id}.log"  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


def log_of(proc: subprocess.Popen[bytes]) -> str:
    """What a spawned worker printed so far."""
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined,no-any-return]
