"""The :class:`EventListener`: a parent's durable, idempotent consumer of the events sent to it."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from coord.aio import stop_tasks
from coord.deadletter import DeadLetters
from coord.errors import Unavailable
from coord.events.codec import decode_event
from coord.events.models import Descendant, Errored, Progress, ReceivedEvent, ScopeSubDelegated, ShutDown, TurnEnded
from coord.events.senders import ACCEPT, DEFER, sender_verdict
from coord.events.tree import Change, event_changes, upward_id
from coord.ids import validate_id
from coord.naming import Names
from coord.records import RecordStore
from coord.streams import Stream

__all__ = ["ACK_WAIT", "DEFER_DELIVERIES", "EventListener", "ListenerHost"]

log = logging.getLogger("corral.events")

MAX_DELIVERIES = 10
"""Deliveries of an event whose side effects keep failing before it is dead-lettered."""
DEFER_DELIVERIES = 6
"""Deliveries of an event whose sender's ancestry is not known yet before it is dead-lettered (the
waits between them grow from 0.25 s to 4 s: about 8 s for a delegation still on its way to land)."""
ACK_WAIT = 5.0
"""Seconds before an unacknowledged event is redelivered (handling in progress keeps extending it)."""


class ListenerHost(Protocol):
    """What an :class:`EventListener` uses of its ``events`` service; :class:`~coord.events.Events` satisfies it.

    A protocol rather than an import, so the listener does not depend on the service that builds it.
    """

    stream: Stream
    """The events stream."""
    names: Names
    """Names of the namespace."""
    tree: RecordStore
    """Where descendant records and seen-markers are kept."""
    dead_letters: DeadLetters
    """Where malformed events are recorded."""
    retention: float
    """Seconds events are kept (also the idle lifetime of positions and seen-markers)."""

    async def emit(
        self,
        parent: str | None,
        event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress,
        *,
        sender: str | None = None,
        timeout: float = 2.0,
    ) -> bool:
        """Durably send ``event`` to ``parent``; True once the server stored it, never raises for transport."""
        ...

    async def descendants(self, agent: str) -> dict[str, Descendant]:
        """``agent``'s descendant registry."""
        ...


class EventListener:
    """A parent's durable, idempotent consumer of the events sent to it.

    Use as ``async with coord.events.listener(agent, parent=..., on_event=cb) as listener:``; it
    replays everything sent to ``agent`` that it has not acknowledged before (from the start of the
    stream the first time), applies side effects, calls ``on_event`` once per event id (sync or
    async; an exception there is logged, not fatal), then acknowledges. :meth:`catch_up` waits until
    everything stored so far is processed.
    """

    def __init__(
        self,
        events: ListenerHost,
        agent: str,
        *,
        parent: str | None = None,
        on_event: Callable[[ReceivedEvent], Awaitable[None] | None] | None = None,
        batch: int = 64,
    ) -> None:
        self._events = events
        self._stream = events.stream
        self.agent = validate_id(agent, "agent")
        """The listening agent."""
        self.parent = validate_id(parent, "parent") if parent is not None else None
        """Where delegations are re-emitted (None at the root)."""
        self._on_event = on_event
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._store = events.tree
        self.durable = events.names.events_consumer(self.agent)
        """Name of the durable consumer holding this listener's position."""
        self.processed = 0
        """Events handled by this instance (duplicates excluded)."""

    @property
    def _filter(self) -> str:
        return self._events.names.events_filter(self.agent)

    async def _consumer(self) -> None:
        js = self._stream.js
        stream = self._stream.name
        try:
            await js.consumer_info(stream, self.durable)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = js_api.ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self._filter,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=ACK_WAIT,
            max_ack_pending=1024,
            max_deliver=2 * MAX_DELIVERIES,
            inactive_threshold=self._events.retention,
        )
        await js.add_consumer(stream, config)

    async def _bind(self) -> JetStreamContext.PullSubscription:
        await self._consumer()
        return await self._stream.js.pull_subscribe_bind(durable=self.durable, stream=self._stream.name)

    async def start(self) -> None:
        """Create (or find) the durable consumer and start processing in the background."""
        if self._task is not None:
            return
        sub = await self._bind()
        self._task = asyncio.create_task(self._run(sub), name=f"events-listener-{self.agent}")

    async def stop(self) -> None:
        """Stop processing (the position is kept on the server); returns within a few seconds."""
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks([task], within=5.0, what=f"events listener {self.agent}")

    async def __aenter__(self) -> EventListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until every event stored so far for this agent is processed; ``TimeoutError`` if not."""
        js = self._stream.js
        stream = self._stream.name
        async with asyncio.timeout(timeout):
            while True:
                info = await js.consumer_info(stream, self.durable)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                if self._task is not None and self._task.done():
                    self._task.result()  # surface a crash of the loop
                await asyncio.sleep(0.05)

    async def _run(self, sub: JetStreamContext.PullSubscription | None) -> None:
        delay = 0.1
        while True:
            try:
                if sub is None:
                    sub = await self._bind()
                msgs = await sub.fetch(batch=self._batch, timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("events listener %s: fetch failed (%s); retrying", self.agent, err or type(err).__name__)
                if await self._consumer_gone():
                    sub = None  # deleted under us: make it again (its position is lost, seen-markers dedupe)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            for msg in msgs:
                try:
                    await self._handle(msg)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one message must never end the listener
                    log.exception("events listener %s: could not handle a message on %s", self.agent, msg.subject)

    async def _consumer_gone(self) -> bool:
        try:
            await self._stream.js.consumer_info(self._stream.name, self.durable)
        except nats.js.errors.NotFoundError:
            log.warning("events listener %s: its consumer is gone; re-creating it", self.agent)
            return True
        except Exception:
            return False
        return False

    async def _handle(self, msg: Msg) -> None:
        received = decode_event(msg)
        if isinstance(received, str):
            await self._events.dead_letters.record(
                "events", received, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {})
            )
            await _settle(msg.term())
            return
        ticker = asyncio.create_task(_keep_in_progress(msg))
        try:
            if await self._seen(received.event.id):
                await _settle(msg.ack())
                return
            verdict = await sender_verdict(self.agent, received, self._descendant)
            if verdict != ACCEPT:
                await self._refuse(msg, received, verdict)
                return
            await self.apply(received)
            await self._notify(received)
            await self._mark_seen(received.event.id)
            await msg.ack_sync()
            self.processed += 1
        except asyncio.CancelledError:
            raise
        except Exception as err:
            deliveries = _deliveries(msg)
            if deliveries >= MAX_DELIVERIES:
                reason = f"{received.event.kind} {received.event.id} not applied after {deliveries} deliveries: {err}"
                await self._dead_letter(msg, reason)
                return
            # Left unacknowledged: redelivered after a growing pause; side effects are idempotent.
            delay = min(30.0, 0.5 * 2 ** (deliveries - 1))
            log.warning(
                "events listener %s: %s %s not applied yet (%s); retrying in %.1fs",
                self.agent,
                received.event.kind,
                received.event.id,
                err,
                delay,
            )
            await _settle(msg.nak(delay=delay))
        finally:
            ticker.cancel()

    async def _descendant(self, agent: str) -> Descendant | None:
        record, _ = await self._store.get(f"tree.{self.agent}.{agent}", Descendant)
        return record

    async def _refuse(self, msg: Msg, received: ReceivedEvent, verdict: str) -> None:
        """An event its sender may not send (or may not yet be known to send): retried or dead-lettered."""
        event = received.event
        deliveries = _deliveries(msg)
        if verdict == DEFER and deliveries < DEFER_DELIVERIES:
            delay = 0.25 * 2 ** (deliveries - 1)
            log.info(
                "events listener %s: %s %s from %s about %s: ancestry not known yet; retrying in %.1fs",
                self.agent,
                event.kind,
                event.id,
                received.sender,
                event.agent,
                delay,
            )
            await _settle(msg.nak(delay=delay))
            return
        if verdict == DEFER:
            verdict = f"{received.sender!r} is not known as an ancestor of {event.agent!r}"
        log.warning("events listener %s: rejecting %s %s: %s", self.agent, event.kind, event.id, verdict)
        await self._dead_letter(msg, f"{event.kind} {event.id} rejected: {verdict}")

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Record ``msg`` as a dead letter of the events listener with ``reason``, then end its deliveries."""
        body, headers = msg.data, dict(msg.headers or {})
        await self._events.dead_letters.record("events", reason, subject=msg.subject, body=body, headers=headers)
        await _settle(msg.term())

    async def _notify(self, received: ReceivedEvent) -> None:
        if self._on_event is None:
            return
        try:
            result = self._on_event(received)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("events listener %s: on_event failed for %s", self.agent, received.event.id)

    def _seen_key(self, event_id: str) -> str:
        return f"seen.{self.agent}.{event_id}"

    async def _seen(self, event_id: str) -> bool:
        data, _ = await self._store.get_raw(self._seen_key(event_id))
        return data is not None

    async def _mark_seen(self, event_id: str) -> None:
        key = self._seen_key(event_id)
        await self._store.write(key, b"1", last=None, ttl=self._events.retention)

    async def apply(self, received: ReceivedEvent) -> None:
        """Apply ``received``'s side effects: merge it into the descendant registry, re-emit delegations.

        Idempotent and order-independent; safe to call by hand (tests, reconciliation).
        """
        for agent, changes in event_changes(self.agent, received).items():

            def merged(
                current: Descendant | None, agent: str = agent, changes: list[Change] = changes
            ) -> Descendant | None:
                record = current or Descendant(agent=agent)
                for change in changes:
                    record = change(record)
                return None if record == current else record

            await self._store.update(f"tree.{self.agent}.{agent}", Descendant, merged)
        event = received.event
        if isinstance(event, ScopeSubDelegated) and self.parent is not None:
            upward = event.model_copy(update={"id": upward_id(event.id, self.agent)})
            if not await self._events.emit(self.parent, upward, sender=self.agent, timeout=5.0):
                raise Unavailable(f"could not re-emit delegation {event.id} to {self.parent}")

    async def descendants(self) -> dict[str, Descendant]:
        """This agent's descendant registry."""
        return await self._events.descendants(self.agent)


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


async def _keep_in_progress(msg: Msg) -> None:
    """Tell the server a slow handler is still working, so the event is not redelivered meanwhile."""
    while True:
        await asyncio.sleep(ACK_WAIT / 2)
        await _settle(msg.in_progress())


async def _settle(ack: Awaitable[None]) -> None:
    try:
        await ack
    except Exception as err:  # the server redelivers what we could not settle
        log.debug("could not settle event message: %s", err)
