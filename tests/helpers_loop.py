"""A fixture that shows whether the event loop kept ticking while a test ran (a frozen loop shows here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def ticker() -> AsyncIterator[list[float]]:
    """The gaps (seconds) between ticks of a 10 ms sleeper on the test's event loop."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(tick())
    yield gaps
    task.cancel()
