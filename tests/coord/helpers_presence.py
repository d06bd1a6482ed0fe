"""Helpers for the presence tests: an agent process (``corral presence hold``), an event recorder, and
a roster keeper under a lease (what the active reclaimer does)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import coord
from coord.aio import stop_tasks
from coord.lease import LEADER, Lease
from coord.presence import Joined, Left, PresenceEvent, PresenceWatcher
from coord.presence.roster import RosterKeeper


class HoldProcess:
    """``python -m corral presence hold`` as a real child process, with its stdout as lines."""

    def __init__(self, url: str, namespace: str, env: dict[str, str], agent_id: str, *extra: str) -> None:
        self.agent_id = agent_id
        args = [sys.executable, "-m", "corral", "--server", url, "--namespace", namespace, "presence", "hold"]
        self.proc = subprocess.Popen(
            [*args, "--id", agent_id, *extra],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        """Lines written to stderr so far."""
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, args=(loop, self.proc.stdout, self._lines.put_nowait), daemon=True).start()
        threading.Thread(target=self._pump, args=(loop, self.proc.stderr, self._err), daemon=True).start()

    def _err(self, line: str | None) -> None:
        if line is not None:
            self.stderr.append(line)

    @property
    def stderr_text(self) -> str:
        """stderr so far as one line (rich wraps long messages)."""
        return " ".join(" ".join(self.stderr).split())

    @staticmethod
    def _pump(loop: asyncio.AbstractEventLoop, stream: Any, sink: Callable[[Any], None]) -> None:
        for line in stream:
            loop.call_soon_threadsafe(sink, line.rstrip("\n"))
        with contextlib.suppress(RuntimeError):  # the loop may be gone at teardown
            loop.call_soon_threadsafe(sink, None)

    async def expect(self, word: str, within: float = 10.0) -> str:
        """Wait for a stdout line starting with ``word`` (e.g. ``joined``); fail with stderr on EOF."""
        async with asyncio.timeout(within):
            while True:
                line = await self._lines.get()
                if line is None:
                    raise AssertionError(f"hold exited ({self.proc.poll()}) before {word!r}: {self.stderr}")
                if line.startswith(word):
                    return line

    def signal(self, sig: int) -> float:
        """Send ``sig``; return the monotonic time it was sent."""
        self.proc.send_signal(sig)
        return time.monotonic()

    async def wait_exit(self, within: float = 10.0) -> int:
        """Wait for the process to exit; its return code."""
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), within)

    def kill(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


class Recorder:
    """Collects a watcher's events in the background, with their arrival (monotonic) times."""

    def __init__(self, watcher: PresenceWatcher) -> None:
        self.watcher = watcher
        self.events: list[tuple[float, PresenceEvent]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.watcher:
            async with self._changed:
                self.events.append((time.monotonic(), event))
                self._changed.notify_all()

    def of(self, agent_id: str) -> list[PresenceEvent]:
        """Events about ``agent_id`` so far."""
        return [e for _, e in self.events if (e.agent_id if isinstance(e, Left) else e.agent.id) == agent_id]

    async def wait_for(self, match: Callable[[PresenceEvent], bool], within: float = 10.0) -> tuple[float, Any]:
        """The first (arrival time, event) that matches, waiting up to ``within`` s."""
        async with asyncio.timeout(within), self._changed:
            while True:
                for arrived, event in self.events:
                    if match(event):
                        return arrived, event
                await self._changed.wait()

    async def left(self, agent_id: str, within: float = 10.0, after: float = 0.0) -> tuple[float, Left]:
        """Arrival time and event of ``agent_id``'s first Left that arrived after ``after``."""
        return await self.wait_for(
            lambda e: isinstance(e, Left) and e.agent_id == agent_id and self._arrival(e) >= after, within
        )

    async def joined(self, agent_id: str, within: float = 10.0, after: float = 0.0) -> tuple[float, Joined]:
        """Arrival time and event of ``agent_id``'s first Joined that arrived after ``after``."""
        return await self.wait_for(
            lambda e: isinstance(e, Joined) and e.agent.id == agent_id and self._arrival(e) >= after, within
        )

    def _arrival(self, event: PresenceEvent) -> float:
        return next(t for t, e in self.events if e is event)

    async def close(self) -> None:
        """Stop the watcher and the background task."""
        await self.watcher.stop()
        await asyncio.gather(self._task, return_exceptions=True)


class Keeper:
    """Exactly what the active reclaimer does for the roster, as a test harness.

    Campaigns for the lease ``leader`` of the roster bucket; holding it, follows the presence bucket
    directly (``watch(updates=True, direct=True)``), reconciles the roster from that watch's
    snapshot, marks the term ready, then applies every change, until the term ends. :meth:`stop`
    releases the lease (a hand-over); :meth:`die` stops renewing it without a word (a SIGKILL).
    """

    def __init__(self, conn: coord.Coord, holder: str = "keeper", *, ttl: float = 2.0, interval: float = 0.5) -> None:
        self.conn = conn
        self.lease = Lease(conn.roster, LEADER, holder, ttl=ttl, interval=interval)
        self.roster = RosterKeeper(conn.roster)
        self.ready = asyncio.Event()
        """Set while the term is ready (the roster reconciled)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Keeper:
        """Campaign; returns at once (wait for :attr:`ready`)."""
        await self.lease.start()
        self._task = asyncio.create_task(self._run(), name="test-roster-keeper")
        return self

    async def _run(self) -> None:
        while True:
            await self.lease.until(held=True)
            async with self.conn.presence.watch(include_existing=False, updates=True, direct=True) as watcher:
                await self.roster.reconcile(watcher.present)
                if not await self.lease.mark_ready():
                    continue
                self.ready.set()
                follow = asyncio.create_task(self._follow(watcher))
                try:
                    await self.lease.until(held=False)
                finally:
                    self.ready.clear()
                    await stop_tasks([follow], within=5, what="keeper follow")

    async def _follow(self, watcher: PresenceWatcher) -> None:
        async for change in watcher:
            if self.lease.valid():
                await self.roster.apply(change)

    async def stop(self) -> None:
        """Stop keeping the roster and release the lease (a standby would take it at once)."""
        if self._task is not None:
            await stop_tasks([self._task], within=5, what="keeper")
            self._task = None
        self.ready.clear()
        await self.lease.stop()

    async def die(self) -> None:
        """Stop renewing and writing without releasing: the lease expires on the server after its TTL."""
        if self._task is not None:
            await stop_tasks([self._task], within=5, what="keeper")
            self._task = None
        self.ready.clear()
        runner = self.lease._runner
        if runner is not None:
            await stop_tasks([runner], within=5, what="lease")
            self.lease._runner = None
        self.lease._held.clear()  # a dead holder releases nothing
        await self.lease.stop()
