"""Terms of a lease: run a role's work only while this process holds the lease.

:class:`TermRunner` campaigns for a :class:`~coord.lease.Lease` and, each time the lease is held,
serves one *term*: it awaits ``begin()`` (which starts the role's work and returns once it is ready),
then waits until the lease is lost (a failed renewal, fail-closed timing, another writer) or the
runner is stopped, and then awaits ``end()``, which must stop everything ``begin`` started. ``begin`` is
raced against losing the lease, so a term lost while it starts ends at once. A ``begin`` that raises
releases the lease (a standby takes it) and the runner campaigns again after :data:`RETRY_AFTER`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from coord.aio import first_of, stop_tasks
from coord.lease import Lease

__all__ = ["RETRY_AFTER", "STOP_WITHIN", "TermRunner"]

log = logging.getLogger("corral.terms")

STOP_WITHIN = 5.0
"""Seconds :meth:`TermRunner.stop` waits for a term to end by itself before cancelling it."""
RETRY_AFTER = 1.0
"""Seconds a holder whose ``begin`` failed waits (the lease released) before campaigning again."""


class TermRunner:
    """Serves terms of ``lease`` with ``begin`` / ``end`` (see the module docstring)."""

    def __init__(
        self, lease: Lease, *, begin: Callable[[], Awaitable[None]], end: Callable[[], Awaitable[None]]
    ) -> None:
        self.lease = lease
        self._begin = begin
        self._end = end
        self._serving = asyncio.Event()
        self._halt = asyncio.Event()
        self._campaign: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        """True while a term has begun (``begin`` returned) and not ended."""
        return self._serving.is_set()

    async def start(self) -> None:
        """Campaign; returns once the role is known: a term begun, or not holding the lease (after one attempt)."""
        self._halt.clear()
        await self.lease.start()
        self._campaign = asyncio.create_task(self._run(), name=f"terms-{self.lease.key}")
        if self.lease.held:
            await first_of(self._serving.wait(), self.lease.until(held=False), asyncio.shield(self._campaign))

    async def stop(self) -> None:
        """End a term being served (``end`` awaited, not cut short by a cancel), then release the lease."""
        self._halt.set()
        campaign, self._campaign = self._campaign, None
        if campaign is not None:
            _, running = await asyncio.wait([campaign], timeout=STOP_WITHIN)
            await stop_tasks(running, within=STOP_WITHIN, what=f"terms of {self.lease.key}")
        await self.lease.stop()

    async def _run(self) -> None:
        lease = self.lease
        while not self._halt.is_set():
            await first_of(lease.until(held=True), self._halt.wait())
            if self._halt.is_set():
                return
            try:
                await self._serve(lease)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the term could not begin: let another candidate try
                log.warning("lease %s: taking over failed (%s); releasing the lease", lease.key, err)
                await lease.stop()
                await self._campaign_again()

    async def _campaign_again(self) -> None:
        """Start the lease again after :data:`RETRY_AFTER`, as often as it takes, unless stopped."""
        while True:
            await first_of(asyncio.sleep(RETRY_AFTER), self._halt.wait())
            if self._halt.is_set():
                return
            try:
                await self.lease.start()
                return
            except Exception as err:
                log.warning("lease %s: campaigning again failed (%s); retrying", self.lease.key, err)

    async def _serve(self, lease: Lease) -> None:
        lost = asyncio.ensure_future(lease.until(held=False))
        halt = asyncio.ensure_future(self._halt.wait())
        beginning = asyncio.ensure_future(self._begin())
        try:
            await asyncio.wait([lost, halt, beginning], return_when=asyncio.FIRST_COMPLETED)
            if beginning.done() and not lost.done() and not halt.done():
                beginning.result()  # a begin that failed raises here
                self._serving.set()
                await asyncio.wait([lost, halt], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            halt.cancel()
            if not beginning.done():
                await stop_tasks([beginning], within=STOP_WITHIN, what=f"beginning a term of {lease.key}")
            self._serving.clear()
            await self._end()
