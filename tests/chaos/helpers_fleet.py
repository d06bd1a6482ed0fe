"""A fleet for fault tests: real ``corral worker`` processes, a parent in the test, and the checks.

Every chaos test asserts the same promises: every worker process is still running afterwards,
every task succeeded exactly once (one ``completed`` transition in its journal), and the parent's
``Dispatcher.stop()`` returns within 5 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import coord
from coord.tasks import TaskStatus, Transition
from coord.wire import Spec
from dispatch import Dispatcher
from tests.conftest import PYTHON

HANDLER = "tests.e2e.helpers_handlers:sleepy"


@dataclass
class Fleet:
    """Worker processes of one namespace; :meth:`close` kills whatever is left."""

    url: str
    namespace: str
    env: dict[str, str]
    logs: Path
    replicas: int = 1
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(
        self,
        worker_id: str,
        *,
        concurrency: int = 4,
        queue: str = "q",
        extra: Sequence[str] = (),
        prefix: Sequence[str] = (),
        url: str | None = None,
        handler: str = HANDLER,
    ) -> subprocess.Popen[bytes]:
        """Start ``corral worker`` as ``worker_id`` (``prefix``: e.g. ``ip netns exec NS``) running ``handler``."""
        argv = [
            *prefix,
            PYTHON,
            "-m",
            "corral",
            "--server",
            url or self.url,
            "--namespace",
            self.namespace,
            "--replicas",
            str(self.replicas),
            "worker",
            "-q",
            queue,
            "--handler",
            handler,
            "-c",
            str(concurrency),
            "--id",
            worker_id,
            "-v",
            *extra,
        ]
        log = open(self.logs / f"{worker_id}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[worker_id] = proc
        return proc

    def log(self, worker_id: str) -> str:
        """What the worker printed so far."""
        return (self.logs / f"{worker_id}.log").read_text(errors="replace")

    def dead(self) -> dict[str, int | None]:
        """Workers that exited, with their exit codes."""
        return {w: p.poll() for w, p in self.procs.items() if p.poll() is not None}

    def close(self) -> None:
        """Kill every worker still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


def specs(prefix: str, n: int, seconds: float = 0.02) -> list[Spec]:
    """``n`` tasks on queue ``q`` whose handler sleeps ``seconds``."""
    return [Spec(task_id=f"{prefix}{i}", queue="q", payload={"seconds": seconds}) for i in range(n)]


async def wait_all(dispatcher: Dispatcher, task_ids: Sequence[str], within: float) -> None:
    """Every task finished (and succeeded) within ``within`` seconds."""
    async with asyncio.timeout(within):
        async for record in dispatcher.as_completed(task_ids):
            assert record.status is TaskStatus.SUCCEEDED, (record.task_id, record.status, record.error)


async def completions(conn: coord.Coord, task_ids: Sequence[str]) -> dict[str, int]:
    """How many ``completed`` transitions each task's journal holds (exactly-once means 1 each)."""
    counts: dict[str, int] = {}
    for start in range(0, len(task_ids), 64):
        batch = task_ids[start : start + 64]
        journals = await asyncio.gather(*(conn.tasks.journal(t) for t in batch))
        for task_id, entries in zip(batch, journals, strict=True):
            counts[task_id] = sum(e.transition is Transition.COMPLETED for e in entries)
    return counts


async def stop_within(dispatcher: Dispatcher, seconds: float = 5.0) -> float:
    """Stop the parent and return how long it took (the promise: under ``seconds``)."""
    started = time.monotonic()
    await asyncio.wait_for(dispatcher.stop(), seconds + 1)
    took = time.monotonic() - started
    assert took < seconds, f"Dispatcher.stop() took {took:.2f}s"
    return took


def worker_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    """The child environment plus ``extra`` (e.g. ``CORRAL_PRESENCE_TTL``)."""
    return {**env, **extra, "PYTHONUNBUFFERED": "1", "PATH": os.environ.get("PATH", "")}
