"""Acknowledged JetStream publishes over one reply subscription: :class:`AckedPublisher`.

nats-py's ``JetStreamContext.publish`` is a request: per call it validates the subject twice, draws a
random token from the OS, wraps the wait in ``asyncio.wait_for`` (an extra future and callbacks) and
builds a ``PubAck`` object. Every corral write is one of these (two per task on each side of the
main path), so the publisher here does only what a write needs: a counter for the reply token, a
deadline in one heap (a single timer per connection sweeps the overdue ones, at most
:data:`SWEEP_GRAIN` late, instead of a timer armed and cancelled per write), the stream sequence out
of the answer. The errors are nats-py's own, so
callers classify them as before: ``nats.errors.TimeoutError``, ``NoStreamResponseError`` (no
stream listens on the subject) and ``APIError`` (the stream refused the message).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["SWEEP_GRAIN", "AckedPublisher"]

SWEEP_GRAIN = 0.05
"""Longest a publish waits past its timeout before it is failed (the sweep runs at most this often)."""
_COMPACT_AT = 4096

_STATUS = "Status"
_NO_RESPONDERS = "503"


class AckedPublisher:
    """Publishes into JetStream and returns the stored message's stream sequence (see the module doc).

    One per connection: replies arrive on one wildcard subscription under the connection's inbox
    prefix (so a credential whose replies are confined to its own prefix works unchanged).
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._starting = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._batches: dict[str, tuple[list[Msg], Callable[[Msg], bool]]] = {}
        self._tokens = itertools.count()
        self._deadlines: list[tuple[float, str]] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0

    async def publish(
        self, subject: str, payload: bytes, *, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> int:
        """Publish ``payload`` on ``subject`` and wait up to ``timeout`` seconds for the stream's ack.

        Returns the stream sequence. Raises ``nats.errors.TimeoutError`` when no answer came in time,
        ``nats.js.errors.NoStreamResponseError`` when no stream takes the subject and
        ``nats.js.errors.APIError`` when the stream refused it (e.g. a wrong expected last sequence).
        """
        msg = await self._exchange(subject, payload, headers, timeout, str(next(self._tokens)))
        if not msg.data and msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats.js.errors.NoStreamResponseError
        reply = json.loads(msg.data)
        error = reply.get("error")
        if error is not None:
            raise nats.js.errors.APIError.from_error(error)
        return int(reply["seq"])

    async def request(self, subject: str, payload: bytes, *, timeout: float = 5.0) -> Msg:
        """Send a request answered by one message (a direct get) and return that answer (a status
        message included: the caller reads it), within ``timeout`` seconds (else
        ``nats.errors.TimeoutError``), over the same reply subscription as the acks."""
        return await self._exchange(subject, payload, None, timeout, str(next(self._tokens)))

    async def request_batch(
        self, subject: str, payload: bytes, *, last: Callable[[Msg], bool], timeout: float = 5.0
    ) -> list[Msg]:
        """Send a request answered by several messages (a batched direct get) and return them, up to
        and with the first for which ``last`` is true, all within ``timeout`` seconds (else
        ``nats.errors.TimeoutError``). The answers come over the same reply subscription as the
        acks: no subscription of its own per request."""
        token = str(next(self._tokens))
        msgs: list[Msg] = []
        self._batches[token] = (msgs, last)
        try:
            await self._exchange(subject, payload, None, timeout, token)
        finally:
            self._batches.pop(token, None)
        return msgs

    async def _exchange(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, timeout: float, token: str
    ) -> Msg:
        """Publish with reply token ``token``; the answer that ends the exchange (or a timeout)."""
        if self._sub is None:
            await self._start()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = answer
        deadline = loop.time() + timeout
        if len(self._deadlines) >= _COMPACT_AT and len(self._deadlines) > 4 * len(self._pending):
            self._compact()
        heapq.heappush(self._deadlines, (deadline, token))
        if self._sweep is None or deadline < self._sweep_at:
            self._arm(loop, deadline)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            return await answer
        finally:
            self._pending.pop(token, None)

    async def _start(self) -> None:
        # One subscription for every publish; a failed (or cancelled) start leaves none, so the next
        # publish tries again. Nothing is caught here: errors and cancellations reach the caller.
        async with self._starting:
            if self._sub is None:
                inbox = self._nc.new_inbox()
                self._prefix = inbox + "."
                self._sub = await self._nc.subscribe(inbox + ".*", cb=self._on_reply)

    def _compact(self) -> None:
        # Answered publishes stay in the heap until their deadline passes; drop them in one pass
        # once they are most of it (amortised: at most every _COMPACT_AT / 2 publishes).
        self._deadlines = [d for d in self._deadlines if d[1] in self._pending]
        heapq.heapify(self._deadlines)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at = at
        self._sweep = loop.call_at(at, self._expire_overdue, loop)

    def _expire_overdue(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every publish past its deadline that has no answer yet; re-arm for the next deadline."""
        self._sweep = None
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, token = heapq.heappop(deadlines)
            answer = self._pending.get(token)
            if answer is not None and not answer.done():
                answer.set_exception(nats.errors.TimeoutError())
        if deadlines:
            self._arm(loop, max(deadlines[0][0], now + SWEEP_GRAIN))

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        answer = self._pending.get(token)
        if answer is None or answer.done():
            return
        batch = self._batches.get(token)
        if batch is not None:
            batch[0].append(msg)
            if not batch[1](msg):
                return
        answer.set_result(msg)
