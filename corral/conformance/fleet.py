"""The kit as an operator: keeps one worker process running, restarting it (with a fresh id) when it
exits, as a supervisor (systemd's ``Restart=always``) would: at any time, not only between scenarios."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from coord.connection import Coord
from coord.presence.models import decode_record
from corral.conformance.probes import headers_of, last_entry
from corral.conformance.process import WorkerEnv, WorkerProcess
from corral.conformance.rows import ScenarioFailed

__all__ = ["Fleet"]

START_WITHIN = 30.0
"""Seconds a freshly started worker has to write its presence value (a Node start-up on a loaded host)."""
RESTART_AFTER = 0.5
"""Seconds between a worker's exit and its restart (``RestartSec``)."""


class Fleet:
    """The worker under test: one process at a time, each start with the id ``{base}-{n}``."""

    def __init__(self, coord: Coord, command: list[str], env: WorkerEnv, log: Path) -> None:
        self.coord = coord
        self.command = command
        self.base = env
        self.log = log
        self.starts = 0
        """How many processes the kit has started."""
        self.proc: WorkerProcess | None = None
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> str:
        """The id of the current process."""
        assert self.proc is not None
        return self.proc.env.worker_id

    async def start(self) -> WorkerProcess:
        """Start a new process (the old one must have exited) and wait for its presence value."""
        if self.proc is not None:
            await self.proc.stop()
        self.starts += 1
        env = WorkerEnv(**{**self.base.__dict__, "worker_id": f"{self.base.worker_id}-{self.starts}"})
        self.proc = WorkerProcess(self.command, env, self.log)
        await self.proc.start()
        await self.present(env.worker_id, within=START_WITHIN)
        return self.proc

    async def ensure(self) -> WorkerProcess:
        """The running process, or a new one when it exited; from the first success on, a supervisor
        restarts it whenever it exits."""
        async with self._lock:
            if self.proc is None or not self.proc.alive:
                await self.start()
            if self._supervisor is None:
                self._supervisor = asyncio.create_task(self._supervise(), name="conformance-supervisor")
            assert self.proc is not None
            return self.proc

    async def _supervise(self) -> None:
        while True:
            proc = self.proc
            assert proc is not None
            await proc.exited()
            await asyncio.sleep(RESTART_AFTER)
            async with self._lock:
                if self.proc is proc and not proc.alive:
                    with contextlib.suppress(ScenarioFailed):  # a crash loop: the scenarios say so
                        await self.start()

    async def present(self, worker_id: str, *, within: float) -> None:
        """Wait until ``worker_id``'s presence key holds a live value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if self.proc is not None and not self.proc.alive:
                raise ScenarioFailed(f"worker {worker_id} exited with {self.proc.returncode} (log: {self.log})")
            msg = await last_entry(self.coord, self.coord.names.presence_bucket, worker_id)
            if msg is not None and msg.data and "KV-Operation" not in headers_of(msg):
                record, _ = decode_record(msg.data, worker_id)
                if record is not None:
                    return
            await asyncio.sleep(0.1)
        raise ScenarioFailed(f"worker {worker_id} wrote no presence value within {within:g} s (log: {self.log})")

    async def stop(self) -> None:
        """Stop supervising and stop the current process."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self.proc is not None:
            await self.proc.stop()
