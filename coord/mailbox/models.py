"""What the mailbox API takes and returns, and the NATS header names its messages carry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from coord.ids import Token

__all__ = [
    "H_ACK_TO",
    "H_FROM",
    "H_ID",
    "H_KEY",
    "H_SENT",
    "H_SEQ",
    "H_STREAM",
    "H_STREAM_TO",
    "H_TAG",
    "QUICK_ACK",
    "Agent",
    "Chunk",
    "Delivered",
    "End",
    "Enqueued",
    "Error",
    "Expired",
    "Id",
    "SendResult",
    "SpawnHook",
    "StreamItem",
    "Tag",
    "Target",
]

H_ID = "Corral-Id"
"""Header with the message id; every stored message has one (it names the subject of an unkeyed one)."""
H_FROM = "Corral-From"
"""Header with the sender's id, present only if the sender gave one."""
H_TAG = "Corral-Tag"
"""Header with the tag the message was sent to, present only for messages sent by tag."""
H_KEY = "Corral-Key"
"""Header name for a message key; the mailbox does not set it (a key travels in the subject, ``...k.{key}``)."""
H_SENT = "Corral-Sent-At"
"""Header with the send time, ISO 8601 in UTC."""
H_ACK_TO = "Corral-Ack-To"
"""Header with the core NATS subject the recipient acknowledges to, present when a sender waits."""
H_STREAM_TO = "Corral-Stream-To"
"""Header with the core NATS subject a streamed reply goes to, present when the sender asked for one."""
H_STREAM = "Corral-Stream"
"""Header of a streamed-reply piece: ``chunk``, ``end`` or ``error``."""
H_SEQ = "Corral-Seq"
"""Header of a streamed-reply piece: its position, from 1 with no gaps (``end``/``error`` come last)."""

QUICK_ACK = 0.5
"""Seconds a sender waits for an ack before it also starts watching the agent's presence."""


class Agent(BaseModel):
    """Address one agent directly by id."""

    model_config = ConfigDict(frozen=True)

    id: Token
    """The agent id."""


class Tag(BaseModel):
    """Address whichever agent binds ``name`` (messages wait under the tag until one does)."""

    model_config = ConfigDict(frozen=True)

    name: Token
    """The tag."""


Target = Agent | Tag
"""Where a message goes."""


class Delivered(BaseModel):
    """A live agent received the message and its handler acknowledged it."""

    type: Literal["delivered"] = "delivered"
    id: str
    """The message id."""


class Enqueued(BaseModel):
    """The message is stored, unacknowledged, in ``queue`` (``agent:{id}`` or ``tag:{name}``)."""

    type: Literal["enqueued"] = "enqueued"
    id: str
    """The message id."""
    queue: str
    """Which queue holds it."""


class Expired(BaseModel):
    """The message was sent with a ``ttl`` and left the queue without an acknowledgement the sender heard,
    after the TTL had run out: the server dropped it unread (or, rarely, a handler acknowledged it
    and that notice was lost). Never reported while the message could not have expired yet."""

    type: Literal["expired"] = "expired"
    id: str
    """The message id."""


SendResult = Delivered | Enqueued | Expired
"""What :meth:`~coord.mailbox.Mailbox.send` returns."""


class Id(BaseModel):
    """First streamed item: a live agent has the message; chunks follow."""

    type: Literal["id"] = "id"
    id: str
    """The message id."""


class Chunk(BaseModel):
    """One piece of a streamed reply, numbered from 1."""

    type: Literal["chunk"] = "chunk"
    seq: int
    """Position in the stream (1, 2, ...)."""
    data: str
    """The piece (UTF-8 text)."""


class End(BaseModel):
    """The streamed reply is complete."""

    type: Literal["end"] = "end"


class Error(BaseModel):
    """The streamed reply failed (agent gone, handler failure, lost chunk, timeout)."""

    type: Literal["error"] = "error"
    message: str
    """Why."""


StreamItem = Id | Chunk | End | Error | Enqueued
"""What :meth:`~coord.mailbox.Mailbox.send_streaming` yields (``Enqueued`` alone when nobody can stream now)."""

SpawnHook = Callable[[Agent | Tag], Awaitable[None] | None]
"""Called with the target when no live agent holds it, so the caller can start one."""
