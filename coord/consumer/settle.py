"""Settling JetStream deliveries: :class:`Settler` acks, puts back, terminates and dead-letters.

Every consuming loop settles through one :class:`Settler`, so each outcome of the policy of
:mod:`coord.consumer.policy` is written once: a failed settle is logged (the server redelivers what
was not settled), a dead letter is recorded before the message is terminated, and a message put
back always has its delivery count looked at first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from nats.aio.msg import Msg

from coord.consumer.policy import FAILING, Backoff, deliveries, waiting_delay
from coord.deadletter import DeadLetters

__all__ = ["Settler"]


class Settler:
    """Settles the deliveries of one consumer kind (``source`` names it in dead letters and logs)."""

    def __init__(self, dead_letters: DeadLetters, source: str, log: logging.Logger) -> None:
        self.source = source
        """Which consumer gives up on the messages dead-lettered (``dispatch``, ``events``, ...)."""
        self._dead_letters = dead_letters
        self._log = log
        self.dead_lettered = 0
        """Messages dead-lettered through this settler."""

    async def _do(self, ack: Awaitable[object], msg: Msg, what: str) -> bool:
        try:
            await ack
        except Exception as err:
            self._log.info("%s: could not %s the message on %s: %s", self.source, what, msg.subject, err)
            return False
        return True

    async def ack(self, msg: Msg) -> bool:
        """Acknowledge ``msg`` (done with); False (logged) when the server did not take it."""
        return await self._do(msg.ack(), msg, "ack")

    async def ack_sync(self, msg: Msg) -> bool:
        """Acknowledge ``msg`` and wait for the server to confirm it; False (logged) if it did not."""
        return await self._do(msg.ack_sync(), msg, "ack")

    async def nak(self, msg: Msg, delay: float = 0.0) -> bool:
        """Put ``msg`` back for ``delay`` seconds. Callers choose ``delay`` from the policy."""
        return await self._do(msg.nak(delay=delay) if delay > 0 else msg.nak(), msg, "NAK")

    async def in_progress(self, msg: Msg) -> bool:
        """Tell the server ``msg`` is still being handled (its ack wait starts again)."""
        return await self._do(msg.in_progress(), msg, "extend")

    async def dead_letter(self, msg: Msg, reason: str, *, task_id: str | None = None) -> None:
        """Record ``msg`` as a dead letter with ``reason``, then end its deliveries (terminate)."""
        self.dead_lettered += 1
        await self._dead_letters.record(
            self.source, reason, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {}), task_id=task_id
        )
        await self._do(msg.term(), msg, "terminate")

    async def failed(
        self, msg: Msg, failure: str, *, policy: Backoff = FAILING, task_id: str | None = None
    ) -> float | None:
        """Handling ``msg`` failed (``failure`` says how): put it back after the policy's delay, or
        dead-letter it once its deliveries reach the limit (or cannot be read).

        Returns the delay it was put back for, None when it was dead-lettered.
        """
        n = deliveries(msg)
        if policy.exhausted(n):
            count = "an unknown number of" if n is None else str(n)
            await self.dead_letter(msg, f"{failure} (after {count} deliveries)", task_id=task_id)
            return None
        assert n is not None
        delay = policy.delay(n)
        await self.nak(msg, delay)
        return delay

    async def wait(self, msg: Msg, at_least: float = 0.0) -> float:
        """Put back ``msg``, which only waits (for a limit, a start time): never dead-lettered, its delay
        grows with its deliveries (:func:`coord.consumer.policy.waiting_delay`). Callers renew it
        first once :func:`coord.consumer.policy.must_renew` says so. Returns the delay."""
        delay = waiting_delay(deliveries(msg), at_least)
        await self.nak(msg, delay)
        return delay
