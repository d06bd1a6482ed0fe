"""The parent-spawns-worker flow: build a worker's command line, run it, reclaim the moment it dies.

``build_worker_command`` gives argv for ``corral worker run-one`` with everything passed as flags
(no hidden environment contract). :class:`SpawnedWorker` starts that process and watches it: when it
exits without having finished its task, the parent reclaims the claim at once, without waiting for
the presence TTL. ``wait_worker_absent`` waits on presence for a worker to be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from coord.connection import Coord
from coord.errors import Conflict, InvalidInput, InvalidTransition, NotFound, StaleClaim
from coord.tasks import TaskRecord, TaskStatus
from coord.validation import WAIT, check_number
from coord.wire import Spec

__all__ = ["SpawnOutcome", "SpawnedWorker", "build_worker_command", "wait_worker_absent"]

log = logging.getLogger("corral.spawn")


def build_worker_command(
    bin: str | Sequence[str],
    spec: Spec,
    *,
    server: str | None = None,
    namespace: str | None = None,
    handler: str | None = None,
    command: Sequence[str] = (),
) -> list[str]:
    """argv for ``corral worker run-one`` running ``spec`` as ``spec.worker_agent_id``.

    ``bin`` is the corral executable (or an argv prefix such as ``[sys.executable, "-m", "corral"]``).
    Exactly one of ``handler`` (``module:function``) or ``command`` (argv) says what to run.
    """
    if not spec.worker_agent_id:
        raise InvalidInput("spec.worker_agent_id must be set to spawn a worker for it")
    if (handler is None) == (not command):
        raise InvalidInput("give exactly one of handler= (module:function) or command= (argv)")
    argv = [bin] if isinstance(bin, str) else list(bin)
    if server:
        argv += ["--server", server]
    if namespace:
        argv += ["--namespace", namespace]
    argv += ["worker", "run-one", "--task-id", spec.task_id, "--worker-agent-id", spec.worker_agent_id]
    if handler is not None:
        argv += ["--handler", handler]
    else:
        argv += ["--", *command]
    return argv


def corral_argv() -> list[str]:
    """argv prefix that runs this installation's corral CLI."""
    return [sys.executable, "-m", "corral"]


@dataclass(frozen=True)
class SpawnOutcome:
    """How a spawned worker ended."""

    returncode: int
    """The process's exit code."""
    record: TaskRecord | None
    """The task record after the exit (and after a reclaim, if one was made)."""
    reclaimed: bool
    """True if the parent reclaimed the task because the process died holding it."""


class SpawnedWorker:
    """A ``corral worker run-one`` child process, watched by its parent."""

    def __init__(self, coord: Coord, spec: Spec, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.coord = coord
        self.spec = spec
        self.argv = list(argv)
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[SpawnOutcome] | None = None

    async def start(self) -> SpawnedWorker:
        """Start the process and its watcher."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **(self.env or {})}
        )
        self._watch = asyncio.create_task(self._watch_exit(self.process))
        return self

    async def wait(self) -> SpawnOutcome:
        """Wait for the process to exit (and for any reclaim that follows)."""
        assert self._watch is not None, "start() first"
        return await self._watch

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def _watch_exit(self, process: asyncio.subprocess.Process) -> SpawnOutcome:
        code = await process.wait()
        try:
            record = await self.coord.tasks.get(self.spec.task_id)
        except NotFound:
            return SpawnOutcome(code, None, False)
        claim = record.claim
        if record.status is TaskStatus.CLAIMED and claim is not None and claim.worker_id == self.spec.worker_agent_id:
            with contextlib.suppress(StaleClaim, Conflict, InvalidTransition, NotFound):
                record = await self.coord.tasks.reclaim(
                    self.spec.task_id, claim.claim_id, reason=f"process-exit:{code}"
                )
                log.info("worker process for %s exited (%s) holding its claim; reclaimed", self.spec.task_id, code)
                return SpawnOutcome(code, record, True)
        return SpawnOutcome(code, record, False)


async def wait_worker_absent(coord: Coord, worker_agent_id: str, deadline: float) -> bool:
    """True once ``worker_agent_id`` is absent from presence, False if still present after ``deadline`` s."""
    check_number("deadline", deadline, WAIT)
    return await coord.presence.wait_absent(worker_agent_id, deadline)
