"""Agent-to-agent messaging (``coord.mailbox``): direct or by tag, delivered-or-queued, keyed, streamed.

**Storage.** Every message is first stored in the ``{ns}_inbox`` stream — one subject per message
(``{ns}.inbox.{agent}.m.{id}``), or per key for keyed messages (``{ns}.inbox.{agent}.k.{key}``; the
stream keeps one message per subject, so a newer keyed message replaces the older unread one).
Messages for a tag nobody holds wait under ``{ns}.inbox.tag.{tag}.m.{id}`` (one token more than an
agent's subjects, so no agent id can collide with a tag queue). A message is *acknowledged* by
deleting it from the stream after its handler returned: what is in the stream is exactly what is
pending, so a message is never lost and never handled twice by a handler that acknowledged it.

**Sending** (:meth:`Mailbox.send`). A :class:`Tag` is resolved first: BOUND acts like its agent;
PENDING/ABSENT enqueues under the tag, to be drained by the agent that binds it. To a live agent
(present in presence) the sender stores the message and waits for the acknowledgement, racing it
against the agent's departure: acked → :class:`Delivered`; the agent left (killed between receive
and ack) or the wait timed out → :class:`Enqueued` — unless the message is gone from the stream by
then: acknowledged (``Delivered``, only the notice was lost) if it could not have expired yet,
else :class:`Expired` (sent with a ``ttl`` that has run out: an expiry is not a delivery). Never
both, never lost. To an absent agent, with ``key=`` or with ``mode="enqueue"``: stored and
:class:`Enqueued` at once. An optional ``spawn`` hook is called when no live agent holds the
target, so a parent can start one; the send then waits for it like for a live agent.

**Receiving.** ``async for msg in mailbox.inbox(agent)`` yields live and queued messages alike,
oldest first, and acknowledges each one when the loop asks for the next (so: after the handler
returned). Used as ``async with mailbox.inbox(agent) as box``, the current message is also
acknowledged when the block exits normally and left queued when it raises. Malformed messages are
dead-lettered (``{ns}.deadletter.inbox``) and removed, never fatal. The inbox does not make the
agent present: join presence too, or senders will queue instead of waiting for the ack.

**Streaming** (:meth:`Mailbox.send_streaming`) yields :class:`Id`, then :class:`Chunk` items in
order, then :class:`End` — or :class:`Error` if the streaming agent dies or a chunk is lost. The
handler streams with ``await msg.chunk(...)``; ``End`` follows automatically on acknowledgement.
Replies travel on core NATS to an inbox of the sender; they are not stored.

**Layout.** ``models`` (what the API takes and returns, header names), ``message`` (a received
message and its parser), ``inbox`` (the reader), ``replies`` (waiting for acks and streamed
replies), ``service`` (:class:`Mailbox`). Import from ``coord.mailbox``; the modules are internal.
"""

from coord.mailbox.inbox import Inbox
from coord.mailbox.message import InboxMessage
from coord.mailbox.models import (
    Agent,
    Chunk,
    Delivered,
    End,
    Enqueued,
    Error,
    Expired,
    Id,
    SendResult,
    SpawnHook,
    StreamItem,
    Tag,
    Target,
)
from coord.mailbox.service import Mailbox

__all__ = [
    "Agent",
    "Chunk",
    "Delivered",
    "End",
    "Enqueued",
    "Error",
    "Expired",
    "Id",
    "Inbox",
    "InboxMessage",
    "Mailbox",
    "SendResult",
    "SpawnHook",
    "StreamItem",
    "Tag",
    "Target",
]
