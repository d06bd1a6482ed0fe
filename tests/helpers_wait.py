"""The one way tests wait for something to become true: :func:`eventually`."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["Check", "eventually"]

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]
"""A condition to wait for: a plain predicate, or a coroutine function (for checks that talk to a server)."""


async def eventually(check: Check, timeout: float, what: str, *, interval: float = 0.02) -> float:
    """Wait until ``check()`` holds; return how many seconds that took.

    ``check`` may be synchronous or return an awaitable (it is awaited). It is evaluated at once and
    then every ``interval`` seconds; if it still does not hold after ``timeout`` seconds, raises
    ``AssertionError("timed out after {timeout}s waiting for {what}")``. An exception raised by the
    check itself propagates unchanged.
    """
    started = time.monotonic()
    while True:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
