"""The worker under test, run the way an operator runs one: a command, its environment, signals.

The command's arguments may name ``{url}``, ``{namespace}``, ``{queue}`` and ``{worker_id}``; they
are replaced, and the same values are in the environment (``CORRAL_URL``, ``CORRAL_NAMESPACE``,
``CORRAL_QUEUE``, ``CORRAL_WORKER_ID``, plus ``CORRAL_PRESENCE_TTL``, ``CORRAL_PRESENCE_INTERVAL`` and
``CORRAL_CONCURRENCY``). It runs in its own process group, so a signal reaches a wrapper script's
children too. Its output goes to a log file the kit names when a scenario fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["WorkerEnv", "WorkerProcess"]


@dataclass(frozen=True)
class WorkerEnv:
    """What the kit hands the worker: where the server is, which namespace and queue, its id and timing."""

    url: str
    namespace: str
    queue: str
    worker_id: str
    presence_ttl: float
    presence_interval: float
    concurrency: int = 1

    def variables(self) -> dict[str, str]:
        """The ``CORRAL_*`` variables of the contract."""
        return {
            "CORRAL_URL": self.url,
            "CORRAL_NAMESPACE": self.namespace,
            "CORRAL_QUEUE": self.queue,
            "CORRAL_WORKER_ID": self.worker_id,
            "CORRAL_PRESENCE_TTL": f"{self.presence_ttl:g}",
            "CORRAL_PRESENCE_INTERVAL": f"{self.presence_interval:g}",
            "CORRAL_CONCURRENCY": str(self.concurrency),
        }

    def argv(self, command: list[str]) -> list[str]:
        """``command`` with its ``{url}``, ``{namespace}``, ``{queue}`` and ``{worker_id}`` replaced."""
        values = {"url": self.url, "namespace": self.namespace, "queue": self.queue, "worker_id": self.worker_id}
        out = []
        for arg in command:
            for name, value in values.items():
                arg = arg.replace("{" + name + "}", value)
            out.append(arg)
        return out


class WorkerProcess:
    """One run of the worker command (start, signal, stop); output appended to ``log``."""

    def __init__(self, command: list[str], env: WorkerEnv, log: Path) -> None:
        self.command = command
        self.env = env
        self.log = log
        self._proc: asyncio.subprocess.Process | None = None
        self._out: IO[bytes] | None = None

    async def start(self) -> None:
        """Start the command in a new process group with the contract's environment."""
        self._out = self.log.open("ab")
        self._out.write(f"--- start {self.env.worker_id}: {' '.join(self.env.argv(self.command))}\n".encode())
        self._out.flush()
        self._proc = await asyncio.create_subprocess_exec(
            *self.env.argv(self.command),
            env={**os.environ, **self.env.variables()},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._out,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        """True while the process has not exited."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited."""
        return None if self._proc is None else self._proc.returncode

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's whole process group."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to exit; True if it did."""
        if self._proc is None:
            return True
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def exited(self) -> None:
        """Return once the process has exited (whenever that is)."""
        if self._proc is not None:
            await self._proc.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (after a SIGCONT, in case it is stopped), then SIGKILL after ``grace`` seconds."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if not await self.wait(grace):
            self.signal(signal.SIGKILL)
            await self.wait(5.0)
        if self._out is not None:
            self._out.close()
            self._out = None
