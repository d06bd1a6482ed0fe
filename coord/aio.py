"""Small asyncio helpers every long-running corral component shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

__all__ = ["first_of", "stop_tasks"]

log = logging.getLogger("corral.aio")


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], *, within: float, what: str) -> None:
    """Cancel ``tasks`` and wait at most ``within`` seconds for them to end; never raises.

    A task that swallows its cancellation (or is stuck in code that cannot be interrupted) is cancelled
    again until the time is up, then left behind with a warning naming ``what``: a stop always returns.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = ", ".join(sorted(t.get_name() if isinstance(t, asyncio.Task) else repr(t) for t in pending))
            log.warning("%s: %d task(s) did not stop within %.1fs (%s)", what, len(pending), within, names)
            return
        _, pending = await asyncio.wait(pending, timeout=min(remaining, 0.5))


async def first_of(*waits: Awaitable[object]) -> None:
    """Return when the first of ``waits`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
