"""Reading a subject of a stream in order, without a durable position: :class:`OrderedReader`.

What a reader that keeps no position on the server needs (an agent's inbox, where acknowledging
deletes the message): every message stored on the subject, oldest first, then each new one, through
nats-py's ordered consumer with an idle heartbeat (a consumer lost to a server restart is re-created
from the last sequence delivered), and a clear end when the connection is closed for good.
"""

from __future__ import annotations

import contextlib

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

__all__ = ["OrderedReader"]


class OrderedReader:
    """Every message on ``subject`` of ``stream`` in order; :meth:`open`, then :meth:`next` until None."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str, *, heartbeat: float = 2.0) -> None:
        self._js = js
        self._stream = stream
        self._subject = subject
        self._heartbeat = heartbeat
        self._sub: JetStreamContext.PushSubscription | None = None

    async def open(self) -> OrderedReader:
        """Start reading (from the first message stored on the subject). Idempotent."""
        if self._sub is None:
            self._sub = await self._js.subscribe(
                self._subject,
                stream=self._stream,
                ordered_consumer=True,
                deliver_policy=js_api.DeliverPolicy.ALL,
                idle_heartbeat=self._heartbeat,
            )
        return self

    async def next(self) -> Msg | None:
        """The next message (waiting for one as long as it takes); None once the connection is closed
        for good or the reader is closed."""
        if self._sub is None:
            return None
        try:
            return await self._sub.next_msg(timeout=None)
        except nats.errors.ConnectionClosedError:
            return None

    async def close(self) -> None:
        """Stop reading (nothing is kept on the server). Idempotent."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
