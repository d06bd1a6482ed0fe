"""Helpers for the mailbox tests: a real agent process (``helpers_mailbox_agent.py``) read line by line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import nats.errors

import coord
from coord.deadletter import DeadLetter
from tests.conftest import PYTHON

AGENT_SCRIPT = Path(__file__).resolve().parent / "helpers_mailbox_agent.py"


class AgentProcess:
    """One ``helpers_mailbox_agent.py`` child process; its stdout is JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.before_ready: list[dict[str, Any]] = []
        """Lines printed before ``ready`` (e.g. how many messages binding a tag moved)."""

    @classmethod
    async def start(
        cls, url: str, namespace: str, agent: str, mode: str, env: dict[str, str], tag: str | None = None
    ) -> AgentProcess:
        """Start the agent and wait until it is present and reading its inbox."""
        args = [str(AGENT_SCRIPT), url, namespace, agent, mode, *([tag] if tag else [])]
        proc = await asyncio.create_subprocess_exec(PYTHON, *args, stdout=asyncio.subprocess.PIPE, env=env)
        agent_proc = cls(proc)
        while "ready" not in (line := await agent_proc.line()):
            agent_proc.before_ready.append(line)
        return agent_proc

    async def line(self, within: float = 15.0) -> dict[str, Any]:
        """The next JSON line; fails if the process ends first."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        assert raw, f"agent process exited ({self.proc.returncode}) early"
        data: dict[str, Any] = json.loads(raw)
        return data

    async def no_line(self, within: float) -> None:
        """Assert that nothing is printed for ``within`` seconds."""
        assert self.proc.stdout is not None
        with contextlib.suppress(TimeoutError):
            raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
            raise AssertionError(f"unexpected output: {raw!r}")

    async def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def dead_letters(conn: coord.Coord, source: str) -> list[DeadLetter]:
    """Every dead letter recorded for ``source`` so far (a pull consumer: no delivery races)."""
    sub = await conn.js.pull_subscribe(conn.names.deadletter_subject(source), stream=conn.names.events_stream)
    letters: list[DeadLetter] = []
    try:
        while True:
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except nats.errors.TimeoutError:
                return letters
            letters.extend(DeadLetter.model_validate_json(m.data) for m in batch)
            for m in batch:
                await m.ack()
    finally:
        await sub.unsubscribe()
