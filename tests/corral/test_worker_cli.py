"""``corral worker`` as a user runs it: what it says at start, where it finds a handler, what it logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from coord.server import NatsServer
from tests.conftest import PYTHON, ROOT
from tests.corral.helpers_cli import corral

pytestmark = pytest.mark.timeout(90)

HANDLERS = """
import time

def slow(spec, ctx):
    time.sleep(float(spec.payload))
    return {"summary": "slept"}

def boom(spec, ctx):
    raise ValueError("kaboom from the handler")
"""

CORRAL_SCRIPT = str(Path(PYTHON).parent / "corral")
"""The installed console script: unlike ``python -m``, it does not put the current directory on sys.path."""


class WorkerProcess:
    """A ``corral worker`` child whose stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def expect(self, text: str, within: float = 20) -> str:
        """The first stderr line containing ``text`` (reading more as needed)."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(within):
            for line in self.lines:
                if text in line:
                    return line
            while True:
                raw = await self.proc.stderr.readline()
                assert raw, f"worker exited before printing {text!r}: {self.lines}"
                self.lines.append(raw.decode())
                if text in self.lines[-1]:
                    return self.lines[-1]

    async def stop(self) -> str:
        """SIGTERM it; everything it printed on stderr."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), 30)
        await self.proc.wait()
        return "".join(self.lines) + rest.decode()


async def start_worker(url: str, namespace: str, env: dict[str, str], cwd: Path, *args: str) -> WorkerProcess:
    proc = await asyncio.create_subprocess_exec(
        CORRAL_SCRIPT, "--server", url, "--namespace", namespace, "worker", *args,
        cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return WorkerProcess(proc)


@pytest.fixture
def handler_dir(tmp_path: Path) -> Path:
    (tmp_path / "myhandlers.py").write_text(HANDLERS)
    return tmp_path


@pytest.fixture
def bare_env() -> dict[str, str]:
    """This checkout importable, and nothing else on PYTHONPATH (no current directory)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


async def test_worker_prints_a_start_line_and_imports_a_handler_from_the_current_directory(
    nats_server: NatsServer, namespace: str, bare_env: dict[str, str], handler_dir: Path
) -> None:
    worker = await start_worker(
        nats_server.url, namespace, bare_env, handler_dir, "-q", "alpha", "-q", "beta", "-c", "3",
        "--id", "w-start", "--handler", "myhandlers:slow",
    )  # fmt: skip
    try:
        line = await worker.expect("w-start")
        for text in ("alpha, beta", "concurrency 3", nats_server.url, namespace):
            assert text in line
        done = await corral(
            nats_server.url, namespace, bare_env, "submit", "-q", "alpha", "--payload", "0.5", "--wait",
            "--wait-timeout", "20",
        )  # fmt: skip
        assert done.code == 0 and "slept" in done.out, done
    finally:
        err = await worker.stop()
    assert "cannot import" not in err and "Traceback" not in err


async def test_handler_exception_is_logged_at_warning_with_its_traceback(
    nats_server: NatsServer, namespace: str, bare_env: dict[str, str], handler_dir: Path
) -> None:
    worker = await start_worker(
        nats_server.url, namespace, bare_env, handler_dir, "-q", "q", "--handler", "myhandlers:boom"
    )
    try:
        await worker.expect("serving q")
        done = await corral(
            nats_server.url, namespace, bare_env, "submit", "-q", "q", "--max-attempts", "1", "--wait",
            "--wait-timeout", "20",
        )  # fmt: skip
        assert done.code == 1 and "kaboom" in done.out
        warning = await worker.expect("WARNING")
        await worker.expect('raise ValueError("kaboom from the handler")')
    finally:
        err = await worker.stop()
    assert "failed in its handler: ValueError: kaboom from the handler" in warning
    assert "Traceback (most recent call last)" in err and "myhandlers.py" in err


async def test_presence_ls_shows_inflight_while_the_worker_runs_a_task(
    nats_server: NatsServer, namespace: str, bare_env: dict[str, str], handler_dir: Path
) -> None:
    worker = await start_worker(
        nats_server.url, namespace, bare_env, handler_dir, "-q", "q", "-c", "4", "--id", "w-busy",
        "--handler", "myhandlers:slow",
    )  # fmt: skip
    try:
        await worker.expect("w-busy")
        done = await corral(nats_server.url, namespace, bare_env, "submit", "-q", "q", "--payload", "6")
        assert done.code == 0, done
        seen: list[tuple[int, int]] = []
        async with asyncio.timeout(5):
            while not seen or seen[-1] != (1, 4):
                listed = await corral(nats_server.url, namespace, bare_env, "presence", "ls", "--json")
                seen += [(a["inflight"], a["capacity"]) for a in json.loads(listed.out) if a["id"] == "w-busy"]
        table = await corral(nats_server.url, namespace, bare_env, "presence", "ls")
        assert "1/4" in table.out
    finally:
        await worker.stop()


async def test_verbose_flags_say_what_they_do(
    nats_server: NatsServer, namespace: str, bare_env: dict[str, str]
) -> None:
    for command in (("reclaimer",), ("worker", "run-one")):
        shown = await corral(nats_server.url, namespace, bare_env, *command, "--help")
        assert shown.code == 0
        [line] = [line for line in shown.out.splitlines() if "--verbose" in line]
        assert line.split("--verbose", 1)[1].replace("-v", "").strip(" │"), line
