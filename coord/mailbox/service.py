"""The :class:`Mailbox` service: sending (direct, by tag, streamed), reading pending mail, binding tags."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coord.deadletter import DeadLetters
from coord.errors import CorralError, InvalidInput, PayloadTooLarge
from coord.ids import new_id, validate_id
from coord.kv import EXPECTED_LAST, MSG_TTL, WRONG_LAST_SEQUENCE, conflicts, ttl_header
from coord.mailbox.inbox import Inbox, parse_or_dead_letter
from coord.mailbox.message import InboxMessage, parse, sent_time
from coord.mailbox.models import (
    H_ACK_TO,
    H_FROM,
    H_ID,
    H_SENT,
    H_STREAM_TO,
    H_TAG,
    Agent,
    Delivered,
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
from coord.mailbox.replies import read_stream, wait_ack
from coord.naming import DEFAULT_REPLY_PREFIX, Names
from coord.presence import Presence
from coord.records import MAX_CAS_ATTEMPTS
from coord.registry import Registry
from coord.streams import MSG_ID, Stream
from coord.tracing import inject
from coord.validation import COUNT, TIMEOUT, check_number

__all__ = ["Mailbox"]

log = logging.getLogger("corral.mailbox")


class Mailbox:
    """Send, receive and route messages between agents (see :mod:`coord.mailbox` for the guarantees).

    Built on the inbox ``stream``, the namespace's ``names``, the ``registry`` (tag bindings),
    ``presence`` (who is live) and ``dead_letters``. ``reply_prefix`` is the prefix of the reply
    subjects this connection hands out (its inbox prefix and a dot): a received message's
    ``Corral-Ack-To`` / ``Corral-Stream-To`` is honoured only under it.
    """

    def __init__(
        self,
        stream: Stream,
        names: Names,
        registry: Registry,
        presence: Presence,
        dead_letters: DeadLetters,
        *,
        reply_prefix: str = DEFAULT_REPLY_PREFIX,
    ) -> None:
        self.reply_prefix = reply_prefix
        """Reply subjects of received messages are honoured only under this prefix."""
        self._stream = stream
        self._names = names
        self._registry = registry
        self._presence = presence
        self._dead_letters = dead_letters

    # --- subjects ----------------------------------------------------------------------------
    def _subject(self, owner: Agent | Tag, message_id: str, key: str | None, sender: str | None) -> str:
        names = self._names
        if isinstance(owner, Agent):
            if key is not None:
                return names.inbox_keyed_subject(owner.id, sender, key)
            return names.inbox_message_subject(owner.id, sender, message_id)
        if key is not None:
            return names.tag_keyed_subject(owner.name, sender, key)
        return names.tag_message_subject(owner.name, sender, message_id)

    # --- low-level stream operations ------------------------------------------------------------
    async def _snapshot(self, subject: str, limit: int | None = None) -> list[Msg]:
        """Messages on ``subject`` stored right now, oldest first."""
        return await self._stream.snapshot(subject, limit=limit)

    async def _still_queued(self, subject: str, message_id: str) -> bool:
        msg = await self._stream.last(subject)
        return msg is not None and (msg.headers or {}).get(H_ID) == message_id

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
        subject = self._subject(owner, message_id, key, sender)
        headers = {H_ID: message_id, H_SENT: datetime.now(UTC).isoformat(), MSG_ID: message_id}
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
        except (OSError, nats.errors.Error, CorralError) as err:
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
        """Send ``body`` to ``target``; :class:`Delivered` or :class:`Enqueued` (see :mod:`coord.mailbox`).

        ``key`` enqueues "latest wins" (no waiting). ``timeout`` bounds the wait for a live agent's
        acknowledgement (and for a spawned agent to come up). ``ttl`` (seconds) drops the message
        if it is still unread after that long. If ``spawn`` raises, the message stays queued and
        the error propagates. Bad input raises ``ValueError`` naming the field before anything is
        sent.
        """
        data = self._check(target, body, key, mode, sender)
        check_number("timeout", timeout, TIMEOUT)
        if ttl is not None:
            ttl_header(ttl)  # validates: 1 s to 10 years
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
            stored_from = asyncio.get_running_loop().time()
            subject = await self._publish(
                owner, data, message_id, key=None, sender=sender, tag=tag, ack_to=ack_inbox, ttl=ttl
            )
            if not live:
                assert spawn is not None
                await _call(spawn, target)
                if isinstance(target, Tag):
                    # The tag's holder is dead: whoever the hook starts binds the tag (taking the
                    # mail that reached the dead holder through it), and its id need not be the dead
                    # one's. Wait for the ack of whoever that is.
                    return await self._await_tag_taker(
                        sub, target, subject, queue, message_id, sender, stored_from, ttl, timeout
                    )
                if await self._presence.wait_present(agent, timeout) is None:
                    return await self._unacknowledged([subject], message_id, queue, stored_from, ttl)
            if await wait_ack(sub, self._presence, agent, timeout):
                return Delivered(id=message_id)
            return await self._unacknowledged([subject], message_id, queue, stored_from, ttl)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _unacknowledged(
        self, subjects: list[str], message_id: str, queue: str, stored_from: float, ttl: float | None
    ) -> SendResult:
        """What became of a message whose acknowledgement the sender did not hear.

        Still stored on one of ``subjects`` → :class:`Enqueued`. Gone, sent with a ``ttl`` that may
        have run out (counted from ``stored_from``, the loop time before it was stored) →
        :class:`Expired`: the server drops expired mail unread, and an expiry is not a delivery.
        Gone while it could not have expired yet → acknowledged, only the notice was lost →
        :class:`Delivered`.
        """
        for subject in subjects:
            if await self._still_queued(subject, message_id):
                return Enqueued(id=message_id, queue=queue)
        if ttl is not None and asyncio.get_running_loop().time() - stored_from >= _earliest_expiry(ttl):
            return Expired(id=message_id)
        return Delivered(id=message_id)

    async def _await_tag_taker(
        self,
        sub: Subscription,
        target: Tag,
        subject: str,
        queue: str,
        message_id: str,
        sender: str | None,
        stored_from: float,
        ttl: float | None,
        timeout: float,
    ) -> SendResult:
        """After a spawn for ``target``: the ack of whichever agent binds the tag, within ``timeout``.

        Without it, the outcome is looked up where the message may be: on ``subject`` (where it was
        stored, in ``queue``), or moved into the inbox of the tag's holder now.
        """
        if await wait_ack(sub, self._presence, None, timeout):
            return Delivered(id=message_id)
        state, agent = await self._registry.tag_state(target.name)
        subjects = [subject]
        if state == "BOUND" and agent is not None:
            moved = self._subject(Agent(id=agent), message_id, None, sender)
            if moved != subject:
                subjects.insert(0, moved)
            queue = f"agent:{agent}"
        return await self._unacknowledged(subjects, message_id, queue, stored_from, ttl)

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
        wait_for_ack = spawn is not None and key is None and mode == "auto"
        nc = self._stream.nc
        ack_inbox = nc.new_inbox() if wait_for_ack else None
        sub = await nc.subscribe(ack_inbox, max_msgs=1) if ack_inbox else None
        try:
            stored_from = asyncio.get_running_loop().time()
            subject = await self._publish(
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
            return await self._await_tag_taker(
                sub, target, subject, queue, message_id, sender, stored_from, ttl, timeout
            )
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
        check_number("timeout", timeout, TIMEOUT)
        message_id = new_id("msg")
        _, agent = await self.resolve(target)
        nc = self._stream.nc
        reply_inbox = nc.new_inbox()
        sub = await nc.subscribe(reply_inbox)
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
                if isinstance(target, Tag):
                    agent = None  # whoever binds the tag streams the reply, not its dead holder
                elif await self._presence.wait_present(target.id, timeout) is None:
                    yield Error(message=f"agent {target.id!r} did not come up within {timeout}s; message {queue}")
                    return
            yield Id(id=message_id)
            # Closed here, not left to the garbage collector, so its presence watch ends with this stream.
            async with contextlib.aclosing(read_stream(sub, self._presence, agent, timeout)) as replies:
                async for item in replies:
                    yield item
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- receiving ---------------------------------------------------------------------------
    def inbox(self, agent: str) -> Inbox:
        """``agent``'s inbox: ``async for msg in mailbox.inbox(agent)`` (see :class:`Inbox`)."""
        return Inbox(self._stream, self._names, self._dead_letters, agent, reply_prefix=self.reply_prefix)

    async def read_pending(self, agent: str, *, consume: bool = False, limit: int | None = None) -> list[InboxMessage]:
        """The messages waiting in ``agent``'s inbox, oldest first; ``consume`` acknowledges them too.

        ``consume=True`` removes them *before* the caller has handled them (a crash then loses them):
        to remove each only after it was handled, use :meth:`handle_pending`. Malformed messages are
        dead-lettered and left out.
        """
        check_number("limit", limit, COUNT, optional=True)
        found: list[InboxMessage] = []
        for msg in await self._snapshot(self._names.inbox_filter(agent), limit):
            parsed = await parse_or_dead_letter(msg, self._stream, self._dead_letters, self.reply_prefix)
            if parsed is None:
                continue
            if consume:
                await parsed.ack()
            found.append(parsed)
        return found

    async def handle_pending(
        self,
        agent: str,
        handler: Callable[[InboxMessage], Awaitable[object] | object],
        *,
        limit: int | None = None,
    ) -> int:
        """Hand each message waiting in ``agent``'s inbox to ``handler``, oldest first, and acknowledge
        it only after ``handler`` returned; return how many were handled.

        Mail is removed only once it was handed over: if ``handler`` raises, that message and the
        ones after it stay queued and the error propagates. Malformed messages are dead-lettered
        and left out.
        """
        check_number("limit", limit, COUNT, optional=True)
        handled = 0
        for msg in await self.read_pending(agent, limit=limit):
            result = handler(msg)
            if inspect.isawaitable(result):
                await result
            await msg.ack()
            handled += 1
        return handled

    async def pending_tag(self, tag: str) -> list[InboxMessage]:
        """The messages waiting under ``tag`` for an agent to bind it, oldest first (not consumed)."""
        found: list[InboxMessage] = []
        for msg in await self._snapshot(self._names.tag_filter(tag)):
            parsed = parse(msg, self._stream, self.reply_prefix)
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
            for msg in await self._snapshot(self._names.inbox_filter(previous)):
                if (msg.headers or {}).get(H_TAG) == tag:
                    moved += await self._move(msg, agent)
        return moved

    async def unbind_tag(self, tag: str, agent: str) -> bool:
        """Release ``tag`` if ``agent`` holds it (it becomes PENDING: new messages wait under the tag)."""
        return await self._registry.unbind_tag(tag, agent)

    async def _drain_tag(self, tag: str, agent: str) -> int:
        moved = 0
        for msg in await self._snapshot(self._names.tag_filter(tag)):
            moved += await self._move(msg, agent)
        return moved

    async def _move(self, msg: Msg, agent: str) -> int:
        """Republish ``msg`` into ``agent``'s inbox (same id or key), then delete the original.

        A keyed message lands only if nothing newer (by send time) waits under the same sender and
        key in the inbox: latest wins, however the two got there. The republish is a
        compare-and-set on that subject, so a direct send landing meanwhile is compared, not lost.
        Returns 1 if it moved, 0 if it was malformed or superseded (then only the original is deleted).
        """
        parsed = await parse_or_dead_letter(msg, self._stream, self._dead_letters, self.reply_prefix)
        if parsed is None:
            return 0
        headers = dict(msg.headers or {})
        headers[MSG_ID] = f"mv-{parsed.seq}-{parsed.id}"
        subject = self._subject(Agent(id=agent), parsed.id, parsed.key, parsed.sender)
        moved = 1
        if parsed.key is None:
            await self._store(subject, msg.data, headers)
        else:
            moved = await self._store_if_newer(subject, msg.data, headers, parsed.sent_at)
        await self._stream.delete(parsed.seq)
        return moved

    async def _store_if_newer(
        self, subject: str, body: bytes, headers: dict[str, str], sent_at: datetime | None
    ) -> int:
        """Store a keyed message on ``subject`` unless the one there was sent at the same time or later."""
        async for _ in conflicts(f"keyed inbox subject {subject!r}", MAX_CAS_ATTEMPTS):
            current = await self._stream.last(subject)
            theirs = sent_time(current.headers) if current is not None else None
            if current is not None and (sent_at is None or (theirs is not None and theirs >= sent_at)):
                return 0  # what waits there was sent at the same time or later (unknown times sort first)
            try:
                await self._store(subject, body, {**headers, EXPECTED_LAST: str(current.seq if current else 0)})
            except nats.js.errors.APIError as err:
                if err.err_code in WRONG_LAST_SEQUENCE:
                    continue  # someone wrote the key meanwhile: compare again
                raise
            return 1
        raise AssertionError("unreachable: conflicts() raises when the attempts are spent")


async def _call(hook: SpawnHook, target: Agent | Tag) -> None:
    result = hook(target)
    if inspect.isawaitable(result):
        await result


def _earliest_expiry(ttl: float) -> float:
    """Seconds after it was stored before a message with ``ttl`` may be gone: the server applies
    whole seconds, and a margin keeps a message that is merely about to expire from counting."""
    return max(0.0, math.floor(ttl) - 0.5)
