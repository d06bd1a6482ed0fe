"""Reading an agent's inbox: the :class:`Inbox` iterator, and dead-lettering what cannot be read."""

from __future__ import annotations

import contextlib

from nats.aio.msg import Msg

from coord.consumer import OrderedReader
from coord.deadletter import DeadLetters
from coord.ids import validate_id
from coord.mailbox.message import InboxMessage, parse
from coord.naming import DEFAULT_REPLY_PREFIX, Names
from coord.streams import Stream

__all__ = ["Inbox", "parse_or_dead_letter"]


async def parse_or_dead_letter(
    msg: Msg, inbox: Stream, dead_letters: DeadLetters, reply_prefix: str = DEFAULT_REPLY_PREFIX
) -> InboxMessage | None:
    """``msg`` as an :class:`InboxMessage` (reply headers checked against ``reply_prefix``, see
    :func:`~coord.mailbox.message.parse`); ``None`` if it is malformed.

    A malformed message is recorded as an ``inbox`` dead letter with the reason, then deleted from
    ``inbox`` (a failed delete is ignored: the message is already on record).
    """
    parsed = parse(msg, inbox, reply_prefix)
    if isinstance(parsed, InboxMessage):
        return parsed
    await dead_letters.record("inbox", parsed, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {}))
    with contextlib.suppress(Exception):
        await inbox.delete(msg.metadata.sequence.stream)
    return None


class Inbox:
    """An agent's inbox as an async iterator (optionally an async context manager); see :mod:`coord.mailbox`.

    Yields live and queued messages alike, oldest first, and acknowledges each one when asked for
    the next. As a context manager it also acknowledges the current message when the block exits
    normally, and leaves it queued (failing a streamed reply) when the block raises. Built by
    :meth:`~coord.mailbox.Mailbox.inbox` from the inbox ``stream``, the namespace's ``names``,
    the ``dead_letters`` for malformed messages, and the ``agent`` whose inbox it reads;
    ``reply_prefix`` is the only prefix its messages' ack and stream subjects may have.
    """

    def __init__(
        self,
        stream: Stream,
        names: Names,
        dead_letters: DeadLetters,
        agent: str,
        *,
        reply_prefix: str = DEFAULT_REPLY_PREFIX,
    ) -> None:
        self._stream = stream
        self._reply_prefix = reply_prefix
        self._names = names
        self._dead_letters = dead_letters
        self.agent = validate_id(agent, "agent")
        """Whose inbox this is."""
        self._reader: OrderedReader | None = None
        self._current: InboxMessage | None = None

    async def _start(self) -> None:
        if self._reader is None:
            reader = OrderedReader(self._stream.js, self._stream.name, self._names.inbox_filter(self.agent))
            self._reader = await reader.open()

    async def __aenter__(self) -> Inbox:
        await self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        current, self._current = self._current, None
        try:
            if current is not None and not current.acked:
                if exc is None:
                    await current.ack()
                elif current.streaming:
                    await current.fail(f"handler failed: {exc!r}"[:500])
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop reading (unacknowledged messages stay queued). Idempotent."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> InboxMessage:
        if self._current is not None and not self._current.acked:
            await self._current.ack()
        self._current = None
        await self._start()
        assert self._reader is not None
        while True:
            msg = await self._reader.next()
            if msg is None:
                raise StopAsyncIteration
            parsed = await parse_or_dead_letter(msg, self._stream, self._dead_letters, self._reply_prefix)
            if parsed is not None:
                self._current = parsed
                return parsed
