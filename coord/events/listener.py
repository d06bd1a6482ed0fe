"""The :class:`EventListener`: a parent's durable, idempotent consumer of the events sent to it."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from coord.aio import first_of, stop_tasks
from coord.consumer import EVENTS, SERVER_MAX_DELIVER, Backoff, ConsumerCheck, Puller, Settler, deliveries
from coord.deadletter import DeadLetters
from coord.errors import Unavailable
from coord.events.codec import decode_event
from coord.events.models import Descendant, Errored, Progress, ReceivedEvent, ScopeSubDelegated, ShutDown, TurnEnded
from coord.events.senders import ACCEPT, DEFER, sender_verdict
from coord.events.tree import Change, event_changes, upward_id
from coord.ids import validate_id
from coord.naming import Names
from coord.records import RecordStore
from coord.retry import Pauses
from coord.streams import Stream

__all__ = ["ACK_WAIT", "DEFERRED", "DEFER_DELIVERIES", "FETCH_WAIT", "EventListener", "ListenerHost"]

log = logging.getLogger("corral.events")

DEFER_DELIVERIES = 6
"""Deliveries of an event whose sender's ancestry is not known yet before it is dead-lettered (the
waits between them grow from 0.25 s to 4 s: about 8 s for a delegation still on its way to land)."""
DEFERRED = Backoff(limit=DEFER_DELIVERIES, base=0.25, cap=4.0)
"""The policy of events whose sender's ancestry is not known yet."""
FETCH_WAIT = 2.0
"""Longest one pull waits for events (also the longest a graceful stop waits for the loop to end)."""
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
        self._stopping = asyncio.Event()
        self._settler = Settler(events.dead_letters, "events", log)

    @property
    def _filter(self) -> str:
        return self._events.names.events_filter(self.agent)

    def _config(self) -> js_api.ConsumerConfig:
        return js_api.ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self._filter,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=ACK_WAIT,
            max_ack_pending=1024,
            max_deliver=SERVER_MAX_DELIVER,
            inactive_threshold=self._events.retention,
        )

    async def _consumer(self) -> None:
        js = self._stream.js
        stream = self._stream.name
        try:
            await js.consumer_info(stream, self.durable)
            return
        except nats.js.errors.NotFoundError:
            pass
        await js.add_consumer(stream, self._config())

    async def start(self) -> None:
        """Create (or find) the durable consumer and start processing in the background."""
        if self._task is not None:
            return
        await self._consumer()
        puller = Puller(self._stream.nc, self._stream.name, self.durable)
        await puller.open()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(puller), name=f"events-listener-{self.agent}")

    async def stop(self) -> None:
        """Stop processing (the position is kept on the server); returns within a few seconds.

        The event being handled is finished first (its callback, seen-marker and acknowledgement), so
        a graceful stop never replays a callback; the pull subscription is closed, so a listener
        started again gets what arrives at once (nothing waits out an ack timeout on the old one).
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        _, late = await asyncio.wait({task}, timeout=FETCH_WAIT + ACK_WAIT)
        await stop_tasks(late, within=5.0, what=f"events listener {self.agent}")
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("events listener %s ended with %r", self.agent, task.exception())

    async def wait(self) -> None:
        """Wait until the listener ends; raises what ended it (e.g. :class:`Unavailable` when its
        connection was closed for good). Returns at once when it is not running."""
        task = self._task
        if task is not None:
            await task

    async def __aenter__(self) -> EventListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until every event stored so far for this agent is processed; ``TimeoutError`` if not.

        "Stored so far" is the last sequence on the agent's subjects when called: the consumer must have
        delivered up to it with nothing unacknowledged (its pending counts alone can lag a store that
        was just acknowledged on a loaded server)."""
        js = self._stream.js
        stream = self._stream.name
        async with asyncio.timeout(timeout):
            try:
                last = (await js.get_last_msg(stream, self._filter)).seq or 0
            except nats.js.errors.NotFoundError:
                last = 0
            while True:
                info = await js.consumer_info(stream, self.durable)
                delivered = (info.delivered.stream_seq or 0) if info.delivered else 0
                if info.num_pending == 0 and info.num_ack_pending == 0 and delivered >= last:
                    return
                if self._task is not None and self._task.done():
                    self._task.result()  # surface a crash of the loop
                await asyncio.sleep(0.05)

    async def _run(self, puller: Puller) -> None:
        nc = self._stream.nc
        check = ConsumerCheck(
            nc,
            self._stream.js,
            self._stream.name,
            [self._config()],
            who=f"events listener {self.agent}",
            fix=f"delete consumer {self.durable}: the listener makes it again",
        )
        pauses = Pauses(0.1, 2.0)
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await puller.fetch(self._batch, wait=FETCH_WAIT)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    if nc.is_closed:
                        log.error("events listener %s: its connection is closed for good; ending", self.agent)
                        raise Unavailable(
                            f"events listener {self.agent}: the connection is closed for good ({err})"
                        ) from err
                    log.warning("events listener %s: fetch failed (%s); retrying", self.agent, err or type(err))
                    await check.check(now=True)  # deleted under us: made again (seen-markers dedupe)
                    await first_of(asyncio.sleep(pauses.next()), self._stopping.wait())
                    continue
                pauses.reset()
                for msg in msgs:
                    if self._stopping.is_set():  # put back at once: a restart gets it without a wait
                        await self._settler.nak(msg)
                        continue
                    try:
                        await self._handle(msg)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # one message must never end the listener
                        log.exception("events listener %s: could not handle a message on %s", self.agent, msg.subject)
                if not msgs and nc.is_closed:
                    log.error("events listener %s: its connection is closed for good; ending", self.agent)
                    raise Unavailable(f"events listener {self.agent}: the connection is closed for good")
        finally:
            await puller.close()

    async def _handle(self, msg: Msg) -> None:
        received = decode_event(msg)
        if isinstance(received, str):
            await self._settler.dead_letter(msg, received)
            return
        ticker = asyncio.create_task(self._keep_in_progress(msg))
        try:
            if await self._seen(received.event.id):
                await self._settler.ack(msg)
                return
            verdict = await sender_verdict(self.agent, received, self._descendant)
            if verdict != ACCEPT:
                await self._refuse(msg, received, verdict)
                return
            await self.apply(received)
            # Once the callback has run, its seen-marker and ack are written even if a stop cancels
            # this task meanwhile: a graceful stop never replays a callback (a crash may: at least once).
            await asyncio.shield(self._notify_and_mark(msg, received))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Put back after a growing pause (side effects are idempotent), dead-lettered at the limit.
            what = f"{received.event.kind} {received.event.id} not applied: {err}"
            delay = await self._settler.failed(msg, what, policy=EVENTS)
            if delay is not None:
                log.warning("events listener %s: %s; retrying in %.1fs", self.agent, what, delay)
        finally:
            ticker.cancel()

    async def _notify_and_mark(self, msg: Msg, received: ReceivedEvent) -> None:
        await self._notify(received)
        await self._mark_seen(received.event.id)
        await msg.ack_sync()
        self.processed += 1

    async def _keep_in_progress(self, msg: Msg) -> None:
        """Tell the server a slow handler is still working, so the event is not redelivered meanwhile."""
        while True:
            await asyncio.sleep(ACK_WAIT / 2)
            await self._settler.in_progress(msg)

    async def _descendant(self, agent: str) -> Descendant | None:
        record, _ = await self._store.get(f"tree.{self.agent}.{agent}", Descendant)
        return record

    async def _refuse(self, msg: Msg, received: ReceivedEvent, verdict: str) -> None:
        """An event its sender may not send (or may not yet be known to send): retried or dead-lettered."""
        event = received.event
        n = deliveries(msg)
        if verdict == DEFER and not DEFERRED.exhausted(n):
            assert n is not None
            delay = DEFERRED.delay(n)
            log.info(
                "events listener %s: %s %s from %s about %s: ancestry not known yet; retrying in %.1fs",
                self.agent,
                event.kind,
                event.id,
                received.sender,
                event.agent,
                delay,
            )
            await self._settler.nak(msg, delay)
            return
        if verdict == DEFER:
            verdict = f"{received.sender!r} is not known as an ancestor of {event.agent!r}"
        log.warning("events listener %s: rejecting %s %s: %s", self.agent, event.kind, event.id, verdict)
        await self._settler.dead_letter(msg, f"{event.kind} {event.id} rejected: {verdict}")

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
