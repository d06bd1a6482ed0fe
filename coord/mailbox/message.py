"""A received message (:class:`InboxMessage`) and :func:`parse`, which reads one from the inbox stream."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from coord.errors import InvalidInput
from coord.ids import validate_id
from coord.mailbox.models import H_ACK_TO, H_FROM, H_ID, H_SENT, H_SEQ, H_STREAM, H_STREAM_TO, H_TAG
from coord.naming import ANONYMOUS_SENDER, DEFAULT_REPLY_PREFIX, TAG_TOKEN, is_reply_subject
from coord.streams import Stream

__all__ = ["InboxMessage", "parse", "sent_time"]

log = logging.getLogger("corral.mailbox")


@dataclass(eq=False)
class InboxMessage:
    """A message as its recipient sees it; acknowledge with :meth:`ack` (the inbox does it for you)."""

    id: str
    """Message id."""
    agent: str
    """Whose inbox it came from."""
    body: bytes
    """The payload."""
    sender: str | None
    """Who sent it, if they said."""
    tag: str | None
    """The tag it was sent to, if any."""
    key: str | None
    """Its key (latest wins), if any."""
    sent_at: datetime | None
    """When it was sent."""
    seq: int
    """Stream sequence (the acknowledgement deletes it)."""
    subject: str
    """Stream subject."""
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    """All NATS headers (trace context included: ``coord.tracing.extract(msg.headers)``)."""
    ack_to: str | None = field(default=None, repr=False)
    """Core NATS subject :meth:`ack` announces the acknowledgement on, if the sender waits for it."""
    stream_to: str | None = field(default=None, repr=False)
    """Core NATS subject the streamed reply goes to, if the sender asked for one."""
    _inbox: Stream | None = field(default=None, repr=False)
    _chunks: int = field(default=0, repr=False)
    _closed: bool = field(default=False, repr=False)
    acked: bool = False
    """True once acknowledged."""

    @property
    def text(self) -> str:
        """The body as UTF-8 text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    @property
    def streaming(self) -> bool:
        """The sender waits for a streamed reply (:meth:`chunk`)."""
        return self.stream_to is not None

    def _stream(self) -> Stream:
        assert self._inbox is not None, "message is not attached to an inbox stream"
        return self._inbox

    def _nc(self) -> NATS:
        return self._stream().nc

    async def _reply(self, kind: str, data: bytes, seq: int) -> None:
        if self.stream_to is None or self._closed:
            return
        await self._nc().publish(self.stream_to, data, headers={H_STREAM: kind, H_SEQ: str(seq)})

    async def chunk(self, data: str | bytes) -> None:
        """Send one piece of a streamed reply (no-op if the sender did not ask for a stream)."""
        if self._closed:
            raise InvalidInput(f"stream of message {self.id} is already closed")
        self._chunks += 1
        await self._reply("chunk", data.encode() if isinstance(data, str) else data, self._chunks)

    async def fail(self, message: str) -> None:
        """End a streamed reply with an :class:`Error` (the message itself stays unacknowledged)."""
        await self._reply("error", message.encode(), self._chunks + 1)
        self._closed = True

    async def ack(self) -> None:
        """Acknowledge: remove the message from the queue, tell a waiting sender, end a stream. Idempotent."""
        if self.acked:
            return
        await self._stream().delete(self.seq)
        self.acked = True
        nc = self._nc()
        if self.ack_to:
            with contextlib.suppress(Exception):
                await nc.publish(self.ack_to, b"", headers={H_ID: self.id})
        if self.stream_to and not self._closed:
            with contextlib.suppress(Exception):
                await self._reply("end", b"", self._chunks + 1)
            self._closed = True
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)


def parse(msg: Msg, inbox: Stream, reply_prefix: str = DEFAULT_REPLY_PREFIX) -> InboxMessage | str:
    """The :class:`InboxMessage` stored as ``msg`` in the ``inbox`` stream, or why ``msg`` is malformed.

    A malformed subject or header gives the reason, never an exception. The message acknowledges
    by deleting itself from ``inbox``. ``Corral-Ack-To`` and ``Corral-Stream-To`` are honoured only
    when they are reply subjects under ``reply_prefix`` (:func:`coord.naming.is_reply_subject`): the
    recipient publishes there with its own credentials, so any other subject (a JetStream API
    subject, a wildcard) is ignored with one warning, and the message is still delivered.
    """
    headers = msg.headers or {}
    tokens = msg.subject.split(".")
    # {ns}.inbox.{agent}.{m|k}.{from}.{id|key}  or  {ns}.inbox.tag.{tag}.{m|k}.{from}.{id|key}
    if len(tokens) == 6:
        owner, kind, from_token, last = tokens[2], tokens[3], tokens[4], tokens[5]
    elif len(tokens) == 7 and tokens[2] == TAG_TOKEN:
        owner, kind, from_token, last = f"{TAG_TOKEN}:{tokens[3]}", tokens[4], tokens[5], tokens[6]
    else:
        return f"unexpected inbox subject {msg.subject!r}"
    # The subject's sender is what permissions bind to a credential; a header claiming another
    # sender is a forgery.
    sender = None if from_token == ANONYMOUS_SENDER else from_token
    if headers.get(H_FROM) != sender:
        return f"{H_FROM} {headers.get(H_FROM)!r} does not match the subject's sender {sender!r}"
    message_id = headers.get(H_ID)
    if not message_id:
        return f"missing {H_ID} header"
    try:
        validate_id(message_id, H_ID)
    except ValueError as err:
        return str(err)
    if kind == "m" and last != message_id:
        return f"{H_ID} {message_id!r} does not match subject id {last!r}"
    if kind not in ("m", "k"):
        return f"unexpected inbox subject {msg.subject!r}"
    ignored: list[tuple[str, str]] = []
    received = InboxMessage(
        id=message_id,
        agent=owner,
        body=msg.data,
        sender=sender,
        tag=headers.get(H_TAG),
        key=last if kind == "k" else None,
        sent_at=sent_time(headers),
        seq=msg.metadata.sequence.stream,
        subject=msg.subject,
        headers=dict(headers),
        ack_to=_reply_to(msg, H_ACK_TO, reply_prefix, ignored),
        stream_to=_reply_to(msg, H_STREAM_TO, reply_prefix, ignored),
        _inbox=inbox,
    )
    if ignored:
        log.warning(
            "mailbox: message %s on %s: ignoring %s (not a reply subject under %r)",
            message_id,
            msg.subject,
            ", ".join(f"{name}: {value!r}" for name, value in ignored),
            reply_prefix,
        )
    return received


def _reply_to(msg: Msg, header: str, prefix: str, ignored: list[tuple[str, str]]) -> str | None:
    """The header's reply subject if corral could have handed it out; else None (noted in ``ignored``)."""
    value = (msg.headers or {}).get(header)
    if value is None:
        return None
    if is_reply_subject(value, prefix):
        return value
    ignored.append((header, value[:200]))
    return None


def sent_time(headers: Mapping[str, str] | None) -> datetime | None:
    """When the message with ``headers`` was sent (``Corral-Sent-At``); None if missing, unreadable or
    without a timezone (so any two send times compare)."""
    raw = (headers or {}).get(H_SENT)
    if raw:
        with contextlib.suppress(ValueError):
            at = datetime.fromisoformat(raw)
            return at if at.tzinfo is not None else None
    return None
