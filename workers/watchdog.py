"""Noticing a blocked event loop: :class:`LoopWatchdog`.

A coroutine handler that blocks (``time.sleep``, CPU-bound work, a synchronous client library)
stops the whole worker: presence renewals, lease extensions and every other task wait for it. The
watchdog is a thread that sees the loop's heartbeat stop and logs, while it lasts and when it ends,
how long the loop was blocked and which tasks were running. The cure is to make the handler a
plain (sync) function, which the worker runs in a thread, or to move the work into a subprocess.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["LoopWatchdog"]

log = logging.getLogger("corral.worker")


class LoopWatchdog:
    """Reports an event loop blocked for more than ``threshold`` seconds (see the module docstring).

    ``describe`` names what is running (called on the loop, between ticks); ``on_block`` is called
    in the loop with the length of each block once it ends (e.g. to count it).
    """

    def __init__(
        self,
        describe: Callable[[], str],
        *,
        threshold: float = 1.0,
        tick: float = 0.1,
        on_block: Callable[[float], None] | None = None,
    ) -> None:
        self.threshold = threshold
        """Seconds without a tick that count as blocked."""
        self.blocks: list[float] = []
        """Lengths of the blocks seen so far (seconds), most recent last (at most 100 kept)."""
        self._describe = describe
        self._tick = tick
        self._on_block = on_block
        self._last = time.monotonic()
        self._running = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._reported_at = 0.0

    def refresh(self) -> None:
        """Re-read what is running now (call when a task starts, so a block in its first step is named)."""
        self._running = self._describe()

    def start(self) -> None:
        """Start ticking on the running loop and watching from a daemon thread."""
        if self._thread is not None:
            return
        self._last = time.monotonic()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="loop-watchdog")
        self._thread = threading.Thread(target=self._watch, name="corral-loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()
        self._thread = None

    async def _tick_forever(self) -> None:
        while True:
            now = time.monotonic()
            gap = now - self._last
            if gap > self.threshold:
                self.blocks = [*self.blocks[-99:], gap]
                log.warning(
                    "event loop was blocked (or the process paused) for %.1fs (running: %s); a handler "
                    "that blocks must be a plain function (run in a thread) or run its work in a subprocess",
                    gap,
                    self._running or "nothing",
                )
                if self._on_block is not None:
                    self._on_block(gap)
            self._last = now
            self._running = self._describe()
            await asyncio.sleep(self._tick)

    def _watch(self) -> None:
        while not self._stop.wait(self.threshold / 2):
            stalled = time.monotonic() - self._last
            if stalled > self.threshold and time.monotonic() - self._reported_at > self.threshold:
                self._reported_at = time.monotonic()
                log.warning(
                    "event loop blocked for %.1fs so far (running: %s): presence renewals and lease "
                    "extensions cannot be sent",
                    stalled,
                    self._running or "nothing",
                )
