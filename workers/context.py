"""What a handler sees of its claim: :class:`Context`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Context"]


@dataclass
class Context:
    """The running claim, as handed to a handler.

    ``epoch`` is the claim's fencing number: it strictly increases with every claim of the task, so
    external systems can refuse writes carrying an older epoch.
    """

    task_id: str
    """The task being run."""
    worker_id: str
    """The worker (agent id) running it."""
    epoch: int
    """Fencing number of this claim."""
    attempt: int
    """Which attempt this is (1-based)."""
    queue: str
    """Queue the task came from."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the worker gives the claim up (shutdown past grace, presence lost)."""
    _beat: Callable[[Any], Awaitable[None]] | None = field(default=None, repr=False)

    async def heartbeat(self, progress: Any = None) -> None:
        """Extend the claim's deadline and record ``progress`` (JSON); raises StaleClaim if reclaimed.

        The runtime extends deadlines of long tasks itself; call this to report progress.
        """
        if self._beat is not None:
            await self._beat(progress)
