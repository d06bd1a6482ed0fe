"""The :class:`Events` service: emit lifecycle events durably, and read or listen to them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import nats.errors
from nats.js import api as js_api

from coord.deadletter import DeadLetters
from coord.events.codec import decode_event
from coord.events.listener import EventListener
from coord.events.models import Descendant, Errored, Progress, ReceivedEvent, ScopeSubDelegated, ShutDown, TurnEnded
from coord.ids import validate_id
from coord.naming import Names
from coord.records import RecordStore
from coord.streams import Stream
from coord.tracing import inject
from coord.validation import SINCE, TIMEOUT, WAIT, check_number

__all__ = ["Events"]

log = logging.getLogger("corral.events")


def _now() -> datetime:
    return datetime.now(UTC)


class Events:
    """Emit lifecycle events and listen to them (``coord.events``).

    Built on the events ``stream``, the namespace's ``names``, the ``tree`` store (descendant
    records and seen-markers, in the registry bucket) and ``dead_letters``; ``retention`` is how
    long the stream keeps events (idle listener positions and seen-markers live as long).
    """

    def __init__(
        self, stream: Stream, names: Names, tree: RecordStore, dead_letters: DeadLetters, *, retention: float
    ) -> None:
        self.stream = stream
        """The events stream."""
        self.names = names
        """Names of the namespace."""
        self.tree = tree
        """Where descendant records and seen-markers are kept."""
        self.dead_letters = dead_letters
        """Where malformed events are recorded."""
        self.retention = retention
        """Seconds events are kept."""
        self._background: set[asyncio.Task[bool]] = set()

    async def emit(
        self,
        parent: str | None,
        event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress,
        *,
        sender: str | None = None,
        timeout: float = 2.0,
    ) -> bool:
        """Durably send ``event`` to ``parent``; True once the server stored it.

        Never blocks the child for more than about ``timeout`` seconds and never raises for
        transport trouble (server down, timeouts): the failure is logged and False returned. A
        top-level agent has no parent: ``parent=None`` sends nothing and returns False. Bad ids raise
        ``ValueError`` before anything is sent. Retries inside ``timeout`` carry the same
        ``Nats-Msg-Id``, so the stream stores the event once.
        """
        check_number("timeout", timeout, TIMEOUT)
        if parent is None:
            return False
        subject = self.names.event_subject(parent, sender or event.agent, event.kind)
        data = event.model_dump_json().encode()
        try:
            await self.stream.publish(
                subject,
                data,
                headers=inject(),
                msg_id=f"{parent}:{event.id}",
                patience=timeout,
                timeout=min(timeout, 2.0),
            )
        except Exception as err:  # transport trouble is logged, never raised into the child's work
            log.warning("could not emit %s %s to %s: %s", event.kind, event.id, parent, err or type(err).__name__)
            return False
        return True

    def emit_nowait(
        self,
        parent: str | None,
        event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress,
        *,
        sender: str | None = None,
        timeout: float = 30.0,
    ) -> asyncio.Task[bool]:
        """Emit in the background (fire and forget, retried for up to ``timeout``); see :meth:`flush`."""
        check_number("timeout", timeout, TIMEOUT)
        if parent is not None:
            self.names.event_subject(parent, sender or event.agent, event.kind)  # validate now
        task = asyncio.create_task(self.emit(parent, event, sender=sender, timeout=timeout))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait for background emits to finish; True if all did within ``timeout``."""
        check_number("timeout", timeout, WAIT)
        if not self._background:
            return True
        _, pending = await asyncio.wait(set(self._background), timeout=timeout)
        return not pending

    def listener(
        self,
        agent: str,
        *,
        parent: str | None = None,
        on_event: Callable[[ReceivedEvent], Awaitable[None] | None] | None = None,
    ) -> EventListener:
        """An :class:`EventListener` for ``agent`` (re-emitting delegations to ``parent``)."""
        return EventListener(self, agent, parent=parent, on_event=on_event)

    async def descendants(self, agent: str) -> dict[str, Descendant]:
        """``agent``'s descendant registry (what its listener has applied so far)."""
        prefix = f"tree.{validate_id(agent, 'agent')}."
        found = await self.tree.scan(prefix, Descendant)
        return {d.agent: d for _, d in found}

    async def tail(
        self, agent: str | None = None, *, since: float | None = 3600.0, follow: bool = True
    ) -> AsyncIterator[ReceivedEvent]:
        """Read events (to ``agent``, or to anyone) from ``since`` seconds ago; with ``follow``, keep going.

        Read-only: no durable position, no side effects. Malformed messages are skipped (logged).
        ``since`` is 0 to :data:`~coord.validation.MAX_SINCE` (10 years), else
        :class:`~coord.errors.InvalidInput` before anything is read.
        """
        if since is not None:
            check_number("since", since, SINCE)
        subject = self.names.events_filter(agent)
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_TIME if since is not None else js_api.DeliverPolicy.ALL,
        )
        if since is not None:
            config.opt_start_time = _now() - timedelta(seconds=since)
        sub = await self.stream.js.subscribe(subject, stream=self.stream.name, ordered_consumer=True, config=config)
        try:
            info = await sub.consumer_info()
            # Messages may already be on their way to us when we ask: count what was delivered too.
            pending = (info.num_pending or 0) + (info.delivered.consumer_seq or 0 if info.delivered else 0)
            seen = 0
            while follow or seen < pending:
                try:
                    msg = await sub.next_msg(timeout=None if follow else 5)
                except nats.errors.TimeoutError:
                    if follow:
                        continue
                    break
                seen += 1
                received = decode_event(msg)
                if isinstance(received, str):
                    log.warning("skipping malformed event on %s: %s", msg.subject, received)
                    continue
                yield received
                if not follow and msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
