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
then, which means it *was* acknowledged (``Delivered``). Never both, never lost. To an absent agent,
with ``key=`` or with ``mode="enqueue"``: stored and :class:`Enqueued` at once. An optional
``spawn`` hook is called when no live agent holds the target, so a parent can start one; the send
then waits for it like for a live agent.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api
from nats.js.client import JetStreamContext
from pydantic import BaseModel, ConfigDict

from coord.deadletter import DeadLetters
from coord.errors import InvalidInput, PayloadTooLarge
from coord.ids import Token, new_id, validate_id
from coord.kv import MSG_TTL, ttl_header
from coord.naming import TAG_TOKEN, Names
from coord.presence import Presence
from coord.registry import Registry
from coord.streams import MSG_ID, Stream
from coord.tracing import inject

__all__ = [
    "Agent",
    "Chunk",
    "Delivered",
    "End",
    "Enqueued",
    "Error",
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

log = logging.getLogger("corral.mailbox")

PushSubscription = JetStreamContext.PushSubscription

H_ID = "Corral-Id"
H_FROM = "Corral-From"
H_TAG = "Corral-Tag"
H_KEY = "Corral-Key"
H_SENT = "Corral-Sent-At"
H_ACK_TO = "Corral-Ack-To"
H_STREAM_TO = "Corral-Stream-To"
H_STREAM = "Corral-Stream"
H_SEQ = "Corral-Seq"

QUICK_ACK = 0.5
"""Seconds a sender waits for an ack before it also starts watching the agent's presence."""


# --- public models -----------------------------------------------------------------------------
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


SendResult = Delivered | Enqueued
"""What :meth:`Mailbox.send` returns."""


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
"""What :meth:`Mailbox.send_streaming` yields (``Enqueued`` alone when nobody can stream now)."""

SpawnHook = Callable[[Agent | Tag], Awaitable[None] | None]
"""Called with the target when no live agent holds it, so the caller can start one."""


def _now() -> datetime:
    return datetime.now(UTC)


# --- received messages ---------------------------------------------------------------------------
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
    stream_to: str | None = field(default=None, repr=False)
    _mailbox: Mailbox | None = field(default=None, repr=False)
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

    def _nc(self) -> NATS:
        assert self._mailbox is not None, "message is not attached to a mailbox"
        return self._mailbox._stream.nc

    async def _stream(self, kind: str, data: bytes, seq: int) -> None:
        if self.stream_to is None or self._closed:
            return
        await self._nc().publish(self.stream_to, data, headers={H_STREAM: kind, H_SEQ: str(seq)})

    async def chunk(self, data: str | bytes) -> None:
        """Send one piece of a streamed reply (no-op if the sender did not ask for a stream)."""
        if self._closed:
            raise InvalidInput(f"stream of message {self.id} is already closed")
        self._chunks += 1
        await self._stream("chunk", data.encode() if isinstance(data, str) else data, self._chunks)

    async def fail(self, message: str) -> None:
        """End a streamed reply with an :class:`Error` (the message itself stays unacknowledged)."""
        await self._stream("error", message.encode(), self._chunks + 1)
        self._closed = True

    async def ack(self) -> None:
        """Acknowledge: remove the message from the queue, tell a waiting sender, end a stream. Idempotent."""
        if self.acked:
            return
        assert self._mailbox is not None, "message is not attached to a mailbox"
        await self._mailbox._stream.delete(self.seq)
        self.acked = True
        nc = self._nc()
        if self.ack_to:
            with contextlib.suppress(Exception):
                await nc.publish(self.ack_to, b"", headers={H_ID: self.id})
        if self.stream_to and not self._closed:
            with contextlib.suppress(Exception):
                await self._stream("end", b"", self._chunks + 1)
            self._closed = True
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)


def _parse(msg: Msg, mailbox: Mailbox) -> InboxMessage | str:
    """The inbox message, or why the stream message is malformed."""
    headers = msg.headers or {}
    tokens = msg.subject.split(".")
    # {ns}.inbox.{agent}.{m|k}.{id|key}  or  {ns}.inbox.tag.{tag}.{m|k}.{id|key}
    if len(tokens) == 5:
        owner, kind, last = tokens[2], tokens[3], tokens[4]
    elif len(tokens) == 6 and tokens[2] == TAG_TOKEN:
        owner, kind, last = f"{TAG_TOKEN}:{tokens[3]}", tokens[4], tokens[5]
    else:
        return f"unexpected inbox subject {msg.subject!r}"
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
    sent_at = None
    if raw := headers.get(H_SENT):
        with contextlib.suppress(ValueError):
            sent_at = datetime.fromisoformat(raw)
    return InboxMessage(
        id=message_id,
        agent=owner,
        body=msg.data,
        sender=headers.get(H_FROM),
        tag=headers.get(H_TAG),
        key=last if kind == "k" else None,
        sent_at=sent_at,
        seq=msg.metadata.sequence.stream,
        subject=msg.subject,
        headers=dict(headers),
        ack_to=headers.get(H_ACK_TO),
        stream_to=headers.get(H_STREAM_TO),
        _mailbox=mailbox,
    )


# --- the inbox reader ----------------------------------------------------------------------------
class Inbox:
    """An agent's inbox as an async iterator (optionally an async context manager); see the module doc."""

    def __init__(self, mailbox: Mailbox, agent: str) -> None:
        self._mailbox = mailbox
        self.agent = validate_id(agent, "agent")
        """Whose inbox this is."""
        self._sub: PushSubscription | None = None
        self._current: InboxMessage | None = None

    async def _start(self) -> None:
        if self._sub is None:
            self._sub = await self._mailbox._ordered(self._mailbox._agent_filter(self.agent))

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
        """Stop reading (unacknowledged messages stay queued)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> InboxMessage:
        if self._current is not None and not self._current.acked:
            await self._current.ack()
        self._current = None
        await self._start()
        assert self._sub is not None
        while True:
            try:
                msg = await self._sub.next_msg(timeout=None)
            except nats.errors.ConnectionClosedError:
                raise StopAsyncIteration from None
            parsed = _parse(msg, self._mailbox)
            if isinstance(parsed, str):
                await self._mailbox._dead_letter(msg, parsed)
                continue
            self._current = parsed
            return parsed


# --- the mailbox -------------------------------------------------------------------------------
class Mailbox:
    """Send, receive and route messages between agents (``coord.mailbox``).

    Built on the inbox ``stream``, the namespace's ``names``, the ``registry`` (tag bindings),
    ``presence`` (who is live) and ``dead_letters``.
    """

    def __init__(
        self, stream: Stream, names: Names, registry: Registry, presence: Presence, dead_letters: DeadLetters
    ) -> None:
        self._stream = stream
        self._names = names
        self._registry = registry
        self._presence = presence
        self._dead_letters = dead_letters

    # --- subjects ----------------------------------------------------------------------------
    def _agent_filter(self, agent: str) -> str:
        return self._names.inbox_filter(agent)

    def _tag_filter(self, tag: str) -> str:
        return self._names.tag_filter(tag)

    def _subject(self, owner: Agent | Tag, message_id: str, key: str | None) -> str:
        names = self._names
        if isinstance(owner, Agent):
            if key is not None:
                return names.inbox_keyed_subject(owner.id, key)
            return names.inbox_message_subject(owner.id, message_id)
        if key is not None:
            return names.tag_keyed_subject(owner.name, key)
        return names.tag_message_subject(owner.name, message_id)

    # --- low-level stream operations ------------------------------------------------------------
    async def _ordered(self, subject: str) -> PushSubscription:
        return await self._stream.js.subscribe(
            subject,
            stream=self._stream.name,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
            idle_heartbeat=2.0,
        )

    async def _snapshot(self, subject: str, limit: int | None = None) -> list[Msg]:
        """Messages on ``subject`` stored right now, oldest first."""
        return await self._stream.snapshot(subject, limit=limit)

    async def _still_queued(self, subject: str, message_id: str) -> bool:
        msg = await self._stream.last(subject)
        return msg is not None and (msg.headers or {}).get(H_ID) == message_id

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        await self._dead_letters.record(
            "inbox", reason, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {})
        )
        with contextlib.suppress(Exception):
            await self._stream.delete(msg.metadata.sequence.stream)

    async def _publish(
        self,
        owner: Agent | Tag,
        body: bytes,
        message_id: str,
        *,
        key: str | None,
        sender: str | None,
        tag: str | None,
        ack_to: str | None = None,
        stream_to: str | None = None,
        ttl: float | None = None,
    ) -> str:
        subject = self._subject(owner, message_id, key)
        headers = {H_ID: message_id, H_SENT: _now().isoformat(), MSG_ID: message_id}
        if ttl is not None:
            headers[MSG_TTL] = ttl_header(ttl)
        for name, value in ((H_FROM, sender), (H_TAG, tag), (H_ACK_TO, ack_to), (H_STREAM_TO, stream_to)):
            if value is not None:
                headers[name] = value
        await self._store(subject, body, inject(headers))
        return subject

    async def _store(self, subject: str, body: bytes, headers: dict[str, str], within: float = 10.0) -> None:
        """Publish to the inbox stream and await the ack, retrying a request lost in a reconnect.

        Every message carries a ``Nats-Msg-Id``, so a retry of one that did land is dropped by the
        stream's duplicate window instead of stored twice.
        """
        await self._stream.publish(subject, body, headers=headers, patience=within)

    async def _alive(self, agent: str) -> bool:
        """Present in presence; unknown counts as absent here (the message is then queued, never lost)."""
        try:
            return await asyncio.wait_for(self._presence.get(agent), timeout=5) is not None
        except Exception as err:
            log.warning("presence of %s unknown (%s); queueing instead of waiting", agent, err)
            return False

    # --- resolution ----------------------------------------------------------------------------
    async def resolve(self, target: Target) -> tuple[Literal["DIRECT", "BOUND", "PENDING", "ABSENT"], str | None]:
        """How ``target`` resolves now: ``("DIRECT", agent)``, ``("BOUND", agent)``, ``("PENDING"|"ABSENT", None)``."""
        if isinstance(target, Agent):
            return "DIRECT", target.id
        state, agent = await self._registry.tag_state(target.name)
        return state, agent

    # --- sending -----------------------------------------------------------------------------
    def _check(self, target: Target, body: str | bytes, key: str | None, mode: str, sender: str | None) -> bytes:
        if not isinstance(target, Agent | Tag):
            raise InvalidInput(f"target must be Agent(id) or Tag(name), got {type(target).__name__}")
        if mode not in ("auto", "enqueue"):
            raise InvalidInput(f"mode must be 'auto' or 'enqueue', got {mode!r}")
        if key is not None:
            validate_id(key, "key")
        if sender is not None:
            validate_id(sender, "sender")
        data = body.encode() if isinstance(body, str) else bytes(body)
        limit = self._stream.nc.max_payload - 4096
        if len(data) > limit:
            raise PayloadTooLarge(f"body is {len(data)} bytes; the server accepts at most {limit} per message")
        return data

    async def send(
        self,
        target: Target,
        body: str | bytes,
        *,
        key: str | None = None,
        mode: Literal["auto", "enqueue"] = "auto",
        sender: str | None = None,
        spawn: SpawnHook | None = None,
        timeout: float = 10.0,
        ttl: float | None = None,
    ) -> SendResult:
        """Send ``body`` to ``target``; :class:`Delivered` or :class:`Enqueued` (see the module doc).

        ``key`` enqueues "latest wins" (no waiting). ``timeout`` bounds the wait for a live agent's
        acknowledgement (and for a spawned agent to come up). ``ttl`` (seconds) drops the message
        if it is still unread after that long. If ``spawn`` raises, the message stays queued and
        the error propagates. Bad input raises ``ValueError`` naming the field before anything is
        sent.
        """
        data = self._check(target, body, key, mode, sender)
        if ttl is not None:
            ttl_header(ttl)  # validates: >= 1 s
        message_id = new_id("msg")
        _, agent = await self.resolve(target)
        tag = target.name if isinstance(target, Tag) else None
        if agent is None:
            assert isinstance(target, Tag)
            return await self._send_to_tag_queue(target, data, message_id, key, mode, sender, spawn, timeout, ttl)
        owner = Agent(id=agent)
        queue = f"agent:{agent}"
        if key is not None or mode == "enqueue":
            await self._publish(owner, data, message_id, key=key, sender=sender, tag=tag, ttl=ttl)
            return Enqueued(id=message_id, queue=queue)
        live = await self._alive(agent)
        if not live and spawn is None:
            await self._publish(owner, data, message_id, key=None, sender=sender, tag=tag, ttl=ttl)
            return Enqueued(id=message_id, queue=queue)
        nc = self._stream.nc
        ack_inbox = nc.new_inbox()
        sub = await nc.subscribe(ack_inbox, max_msgs=1)
        try:
            subject = await self._publish(
                owner, data, message_id, key=None, sender=sender, tag=tag, ack_to=ack_inbox, ttl=ttl
            )
            if not live:
                assert spawn is not None
                await _call(spawn, target)
                if await self._presence.wait_present(agent, timeout) is None:
                    return Enqueued(id=message_id, queue=queue)
            if await self._race_ack(sub, agent, timeout):
                return Delivered(id=message_id)
            if await self._still_queued(subject, message_id):
                return Enqueued(id=message_id, queue=queue)
            return Delivered(id=message_id)  # acknowledged; only the notice was lost
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _race_ack(self, sub: Subscription, agent: str | None, timeout: float) -> bool:
        """True if the ack came before the agent left / the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Most acks come within milliseconds: only a slow one is worth watching presence for.
        try:
            await sub.next_msg(timeout=min(QUICK_ACK, timeout))
            return True
        except nats.errors.TimeoutError:
            pass
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        ack = asyncio.ensure_future(sub.next_msg(timeout=remaining))
        waits: set[asyncio.Future[object]] = {ack}  # type: ignore[arg-type]
        gone: asyncio.Future[bool] | None = None
        if agent is not None:
            gone = asyncio.ensure_future(self._presence.wait_absent(agent, remaining))
            waits.add(gone)  # type: ignore[arg-type]
        try:
            while waits:
                done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if ack in done:
                    return ack.exception() is None
                if gone is not None and gone in done and gone.exception() is None and gone.result():
                    # The agent left; give an ack already in flight a moment to land.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(ack), 0.2)
                    return ack.done() and not ack.cancelled() and ack.exception() is None
            return False
        finally:
            _abandon(ack, gone)

    async def _send_to_tag_queue(
        self,
        target: Tag,
        data: bytes,
        message_id: str,
        key: str | None,
        mode: str,
        sender: str | None,
        spawn: SpawnHook | None,
        timeout: float,
        ttl: float | None,
    ) -> SendResult:
        wait_ack = spawn is not None and key is None and mode == "auto"
        nc = self._stream.nc
        ack_inbox = nc.new_inbox() if wait_ack else None
        sub = await nc.subscribe(ack_inbox, max_msgs=1) if ack_inbox else None
        try:
            await self._publish(
                target, data, message_id, key=key, sender=sender, tag=target.name, ack_to=ack_inbox, ttl=ttl
            )
            # A binder may have drained the tag queue between our lookup and our publish: hand it over.
            state, agent = await self._registry.tag_state(target.name)
            queue = f"tag:{target.name}"
            if state == "BOUND" and agent is not None:
                await self._drain_tag(target.name, agent)
                queue = f"agent:{agent}"
            if sub is None:
                return Enqueued(id=message_id, queue=queue)
            assert spawn is not None
            await _call(spawn, target)
            if await self._race_ack(sub, None, timeout):
                return Delivered(id=message_id)
            return Enqueued(id=message_id, queue=queue)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def send_streaming(
        self,
        target: Target,
        body: str | bytes,
        *,
        sender: str | None = None,
        spawn: SpawnHook | None = None,
        timeout: float = 30.0,
    ) -> AsyncIterator[StreamItem]:
        """Send ``body`` and stream the reply: ``Id``, ``Chunk``..., then ``End`` or ``Error``.

        Yields a lone :class:`Enqueued` when no live agent holds the target and there is no
        ``spawn`` hook (the message waits in the queue). ``timeout`` is the longest wait between
        two items. If the streaming agent leaves presence before ``End``, yields ``Error``.
        """
        data = self._check(target, body, None, "auto", sender)
        message_id = new_id("msg")
        _, agent = await self.resolve(target)
        nc = self._stream.nc
        reply_inbox = nc.new_inbox()
        sub = await nc.subscribe(reply_inbox)
        gone: asyncio.Task[bool] | None = None
        try:
            owner: Agent | Tag = Agent(id=agent) if agent is not None else target
            tag = target.name if isinstance(target, Tag) else None
            live = agent is not None and await self._alive(agent)
            await self._publish(owner, data, message_id, key=None, sender=sender, tag=tag, stream_to=reply_inbox)
            queue = f"agent:{agent}" if agent is not None else f"tag:{tag}"
            if not live:
                if spawn is None:
                    yield Enqueued(id=message_id, queue=queue)
                    return
                await _call(spawn, target)
                if agent is not None and await self._presence.wait_present(agent, timeout) is None:
                    yield Error(message=f"agent {agent!r} did not come up within {timeout}s; message {queue}")
                    return
            yield Id(id=message_id)
            if agent is not None:
                gone = asyncio.create_task(self._presence.wait_absent(agent, 86_400 * 365))
            expected = 1
            while True:
                item = await self._next_reply(sub, gone, timeout, agent)
                if isinstance(item, Msg):
                    headers = item.headers or {}
                    kind, seq = headers.get(H_STREAM), int(headers.get(H_SEQ, "0") or 0)
                    if kind == "error":
                        yield Error(message=item.data.decode("utf-8", errors="replace") or "agent reported an error")
                        return
                    if seq != expected:
                        yield Error(message=f"stream broken: expected piece {expected}, got {seq}")
                        return
                    expected += 1
                    if kind == "end":
                        yield End()
                        return
                    yield Chunk(seq=seq, data=item.data.decode("utf-8", errors="replace"))
                else:
                    yield item
                    return
        finally:
            _abandon(gone)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _next_reply(
        self,
        sub: Subscription,
        gone: asyncio.Task[bool] | None,
        timeout: float,
        agent: str | None,
    ) -> Msg | Error:
        nxt = asyncio.ensure_future(sub.next_msg(timeout=timeout))
        waits: set[asyncio.Future[object]] = {nxt}  # type: ignore[arg-type]
        if gone is not None:
            waits.add(gone)  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if nxt not in done:
            # The agent left; a reply already on the wire still counts.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(nxt), 0.2)
            if not nxt.done():
                _abandon(nxt)
                return Error(message=f"agent {agent!r} left before finishing the stream")
        if nxt.exception() is not None:
            return Error(message=f"no reply within {timeout}s")
        return nxt.result()

    # --- receiving ---------------------------------------------------------------------------
    def inbox(self, agent: str) -> Inbox:
        """``agent``'s inbox: ``async for msg in mailbox.inbox(agent)`` (see :class:`Inbox`)."""
        return Inbox(self, agent)

    async def read_pending(self, agent: str, *, consume: bool = False, limit: int | None = None) -> list[InboxMessage]:
        """The messages waiting in ``agent``'s inbox, oldest first; ``consume`` acknowledges them too.

        Malformed messages are dead-lettered and left out.
        """
        found: list[InboxMessage] = []
        for msg in await self._snapshot(self._agent_filter(agent), limit):
            parsed = _parse(msg, self)
            if isinstance(parsed, str):
                await self._dead_letter(msg, parsed)
                continue
            if consume:
                await parsed.ack()
            found.append(parsed)
        return found

    async def pending_tag(self, tag: str) -> list[InboxMessage]:
        """The messages waiting under ``tag`` for an agent to bind it, oldest first (not consumed)."""
        found: list[InboxMessage] = []
        for msg in await self._snapshot(self._tag_filter(tag)):
            parsed = _parse(msg, self)
            if isinstance(parsed, InboxMessage):
                found.append(parsed)
        return found

    # --- tags --------------------------------------------------------------------------------
    async def bind_tag(self, tag: str, agent: str) -> int:
        """Bind ``tag`` to ``agent`` and move the messages waiting for the tag into its inbox, in order.

        Messages that went to a dead previous holder through the tag follow as well. Returns how many
        messages moved. Raises :class:`~coord.errors.Conflict` if a live agent holds the tag.
        """
        _, previous = await self._registry.bind_tag(tag, agent)
        moved = await self._drain_tag(tag, agent)
        if previous is not None:
            for msg in await self._snapshot(self._agent_filter(previous)):
                if (msg.headers or {}).get(H_TAG) == tag:
                    moved += await self._move(msg, agent)
        return moved

    async def unbind_tag(self, tag: str, agent: str) -> bool:
        """Release ``tag`` if ``agent`` holds it (it becomes PENDING: new messages wait under the tag)."""
        return await self._registry.unbind_tag(tag, agent)

    async def _drain_tag(self, tag: str, agent: str) -> int:
        moved = 0
        for msg in await self._snapshot(self._tag_filter(tag)):
            moved += await self._move(msg, agent)
        return moved

    async def _move(self, msg: Msg, agent: str) -> int:
        """Republish ``msg`` into ``agent``'s inbox (same id or key), then delete the original."""
        parsed = _parse(msg, self)
        if isinstance(parsed, str):
            await self._dead_letter(msg, parsed)
            return 0
        headers = dict(msg.headers or {})
        headers[MSG_ID] = f"mv-{parsed.seq}-{parsed.id}"
        subject = self._subject(Agent(id=agent), parsed.id, parsed.key)
        await self._store(subject, msg.data, headers)
        await self._stream.delete(parsed.seq)
        return 1


_abandoned: set[asyncio.Future[Any]] = set()


def _abandon(*futures: asyncio.Future[Any] | None) -> None:
    """Cancel helper futures without waiting for them (a cancelled watch may take a while to unwind)."""
    for future in futures:
        if future is None or future.done():
            continue
        future.cancel()
        _abandoned.add(future)
        future.add_done_callback(_forget)


def _forget(future: asyncio.Future[Any]) -> None:
    _abandoned.discard(future)
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _call(hook: SpawnHook, target: Agent | Tag) -> None:
    result = hook(target)
    if inspect.isawaitable(result):
        await result
