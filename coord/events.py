"""Durable child → parent lifecycle events (``coord.events``).

A child reports to its parent with :meth:`Events.emit`: :class:`TurnEnded`, :class:`Errored`,
:class:`ShutDown`, :class:`ScopeSubDelegated` and :class:`Progress` (one pydantic discriminated union,
:data:`Event`, tagged by ``kind``). Events are published to ``{ns}.events.{parent}.{child}.{kind}`` in
the events stream, so unlike a fire-and-forget socket they survive the parent being down. Emitting
is cheap for the child: it waits at most ``timeout`` for the server's ack and never raises for
transport trouble (it logs and returns False); :meth:`Events.emit_nowait` does it in the background.

The parent runs an :class:`EventListener`. Its position is a durable JetStream consumer
(``events-{agent}``), so a restarted parent replays exactly what it missed. Every event is applied
idempotently and in any order — side effects are merges (set unions, maxima, a status that only
moves to ``shut_down``) into the parent's descendant registry (``tree.{parent}.{descendant}`` in the
registry bucket), so shuffled and duplicated deliveries give the same final registry. The event id
is the idempotency key: the listener's callback sees each id once (a ``seen.{parent}.{id}`` marker
is written before the ack; a crash between the callback and that marker replays the event once).
:class:`ScopeSubDelegated` is re-emitted upward to the listener's own parent, keeping the original
delegator, so the root knows every descendant. A malformed message is dead-lettered
(``{ns}.deadletter.events``) and acknowledged, never fatal.

:func:`render_event` gives one short human line per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from coord.deadletter import DeadLetters
from coord.ids import Token, new_id, validate_id
from coord.naming import Names
from coord.records import RecordStore
from coord.streams import Stream
from coord.tracing import inject

__all__ = [
    "Descendant",
    "Errored",
    "Event",
    "EventKind",
    "EventListener",
    "Events",
    "Progress",
    "ReceivedEvent",
    "ScopeSubDelegated",
    "ShutDown",
    "TurnEnded",
    "parse_event",
    "render_event",
]

log = logging.getLogger("corral.events")

EventKind = Literal["turn_ended", "errored", "shut_down", "scope_sub_delegated", "progress"]
"""The ``kind`` tag of each event (also the last token of its subject)."""

MAX_TEXT = 4096
ACK_WAIT = 5.0
"""Seconds before an unacknowledged event is redelivered (handling in progress keeps extending it)."""


def _now() -> datetime:
    return datetime.now(UTC)


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Token = Field(default_factory=lambda: new_id("ev"))
    """Unique event id: the idempotency key (and the stream's dedupe id)."""
    agent: Token
    """The agent the event is about: the child that had the turn, error or shutdown, or that delegated."""
    at: datetime = Field(default_factory=_now)
    """When it happened (UTC)."""


class TurnEnded(_EventBase):
    """The child finished a turn of work."""

    kind: Literal["turn_ended"] = "turn_ended"
    turn: int | None = Field(default=None, ge=0)
    """Turn number, if the child counts them."""
    summary: str = Field(default="", max_length=MAX_TEXT)
    """Short summary of the turn."""


class Errored(_EventBase):
    """The child hit an error (it may still be running)."""

    kind: Literal["errored"] = "errored"
    message: str = Field(min_length=1, max_length=MAX_TEXT)
    """What went wrong."""


class ShutDown(_EventBase):
    """The child stopped; the parent drops it from its active descendants."""

    kind: Literal["shut_down"] = "shut_down"
    reason: str = Field(default="", max_length=MAX_TEXT)
    """Why, if known."""


class ScopeSubDelegated(_EventBase):
    """``agent`` spawned ``sub_agent`` and delegated part of its scope to it."""

    kind: Literal["scope_sub_delegated"] = "scope_sub_delegated"
    sub_agent: Token
    """The new descendant."""
    scope: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(default_factory=list, max_length=256)
    """What was delegated (paths, globs, names: free-form)."""


class Progress(_EventBase):
    """The child reports progress; no side effect beyond the descendant's last activity."""

    kind: Literal["progress"] = "progress"
    message: str = Field(default="", max_length=MAX_TEXT)
    """What it is doing."""
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    """How far along, 0..1, if known."""


Event = Annotated[TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress, Field(discriminator="kind")]
"""Any lifecycle event (discriminated by ``kind``)."""

_EVENT: TypeAdapter[TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress] = TypeAdapter(Event)


def parse_event(data: bytes | str) -> TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress:
    """Parse an event from JSON; raises ``pydantic.ValidationError`` naming the bad field."""
    return _EVENT.validate_json(data)


@dataclass(frozen=True)
class ReceivedEvent:
    """An event as a listener (or ``tail``) received it."""

    event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress
    """The event."""
    to: str
    """The agent it was sent to."""
    sender: str
    """The agent that published it (differs from ``event.agent`` for re-emitted delegations)."""
    seq: int = 0
    """Stream sequence (0 when applied by hand)."""


# --- rendering ---------------------------------------------------------------------------
_SPACES = re.compile(r"\s+")


def _short(text: str, limit: int = 160) -> str:
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_event(event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress) -> str:
    """One short human line for ``event`` (whitespace collapsed, long text cut)."""
    who = f"`{event.agent}`"
    match event:
        case TurnEnded():
            turn = f" {event.turn}" if event.turn is not None else ""
            summary = f": {_short(event.summary)}" if event.summary.strip() else ""
            return f"{who} finished turn{turn}{summary}." if turn else f"{who} finished a turn{summary}."
        case Errored():
            return f"{who} reported an error: {_short(event.message)}"
        case ShutDown():
            reason = f" ({_short(event.reason)})" if event.reason.strip() else ""
            return f"{who} has stopped{reason}."
        case ScopeSubDelegated():
            scope = f" [{_short(', '.join(event.scope), 80)}]" if event.scope else ""
            return f"{who} spawned `{event.sub_agent}` and delegated scope to it{scope}."
        case Progress():
            pct = f" {round(event.fraction * 100)}%" if event.fraction is not None else ""
            message = f": {_short(event.message)}" if event.message.strip() else ""
            return f"{who} progress{pct}{message}"


# --- the descendant registry ---------------------------------------------------------------
class Descendant(BaseModel):
    """What a listening agent knows about one descendant: a merge of every event about it.

    Every field is a join (union, maximum, a status that only moves to ``shut_down``), so the
    record depends only on the *set* of events applied, not on their order or repetition.
    """

    model_config = ConfigDict(extra="ignore")

    agent: Token
    """The descendant."""
    direct: bool = False
    """It sent events to the listening agent itself (a direct child)."""
    delegated_by: Token | None = None
    """Who spawned it, per ScopeSubDelegated (the smallest id if several claimed it)."""
    scope: list[str] = Field(default_factory=list)
    """Union of the scopes delegated to it (sorted)."""
    status: Literal["active", "shut_down"] = "active"
    """``shut_down`` once any ShutDown about it was applied."""
    shut_down_at: datetime | None = None
    """Earliest ShutDown seen."""
    last_event_at: datetime | None = None
    """Latest event about it."""
    last_turn: int | None = None
    """Highest turn number reported."""
    last_error: str | None = None
    """Message of the latest Errored (ties broken by event id)."""
    last_error_at: datetime | None = None
    """When that error happened."""
    last_error_id: str | None = None
    """Its event id."""

    def parent(self, owner: str) -> str | None:
        """The descendant's parent as far as ``owner`` knows: its delegator, else ``owner`` if direct."""
        return self.delegated_by or (owner if self.direct else None)


def _max_dt(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _min_dt(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


Change = Callable[[Descendant], Descendant]


def _changes(owner: str, received: ReceivedEvent) -> dict[str, list[Change]]:
    """The merges one event makes, per descendant id (pure; no I/O)."""
    event = received.event
    out: dict[str, list[Change]] = {}

    def add(agent: str, change: Change) -> None:
        if agent != owner:
            out.setdefault(agent, []).append(change)

    add(received.sender, lambda d: d.model_copy(update={"direct": True}))
    add(event.agent, lambda d: d.model_copy(update={"last_event_at": _max_dt(d.last_event_at, event.at)}))
    match event:
        case TurnEnded(turn=turn) if turn is not None:
            add(event.agent, lambda d: d.model_copy(update={"last_turn": max(d.last_turn or 0, turn)}))
        case Errored():
            mine = (event.at, event.id)

            def error(d: Descendant) -> Descendant:
                if d.last_error_at is not None and (d.last_error_at, d.last_error_id or "") >= mine:
                    return d
                return d.model_copy(
                    update={"last_error": event.message, "last_error_at": event.at, "last_error_id": event.id}
                )

            add(event.agent, error)
        case ShutDown():
            add(
                event.agent,
                lambda d: d.model_copy(
                    update={"status": "shut_down", "shut_down_at": _min_dt(d.shut_down_at, event.at)}
                ),
            )
        case ScopeSubDelegated():
            delegator = event.agent

            def delegated(d: Descendant) -> Descendant:
                by = delegator if d.delegated_by is None else min(d.delegated_by, delegator)
                return d.model_copy(update={"delegated_by": by, "scope": sorted({*d.scope, *event.scope})})

            add(event.sub_agent, delegated)
        case _:
            pass
    return out


def upward_id(event_id: str, relay: str) -> str:
    """Deterministic id of a delegation re-emitted by ``relay``: duplicates upstream dedupe by it."""
    return "up-" + hashlib.sha256(f"{event_id}:{relay}".encode()).hexdigest()[:32]


# --- emitting --------------------------------------------------------------------------------
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
        if parent is not None:
            self.names.event_subject(parent, sender or event.agent, event.kind)  # validate now
        task = asyncio.create_task(self.emit(parent, event, sender=sender, timeout=timeout))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait for background emits to finish; True if all did within ``timeout``."""
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
        """
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
                received = _decode(msg)
                if isinstance(received, str):
                    log.warning("skipping malformed event on %s: %s", msg.subject, received)
                    continue
                yield received
                if not follow and msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()


def _decode(msg: Msg) -> ReceivedEvent | str:
    """The received event, or why the message is malformed."""
    tokens = msg.subject.split(".")
    if len(tokens) != 5 or tokens[1] != "events":
        return f"unexpected subject {msg.subject!r}"
    _, _, to, sender, kind = tokens
    try:
        event = parse_event(msg.data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"{where}: {first['msg']}"
    if event.kind != kind:
        return f"kind {event.kind!r} does not match subject kind {kind!r}"
    seq = msg.metadata.sequence.stream if msg.reply else 0
    return ReceivedEvent(event=event, to=to, sender=sender, seq=seq)


# --- listening ---------------------------------------------------------------------------------
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
        events: Events,
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
            inactive_threshold=self._events.retention,
        )
        await js.add_consumer(stream, config)

    async def start(self) -> None:
        """Create (or find) the durable consumer and start processing in the background."""
        if self._task is not None:
            return
        await self._consumer()
        sub = await self._stream.js.pull_subscribe_bind(durable=self.durable, stream=self._stream.name)
        self._task = asyncio.create_task(self._run(sub), name=f"events-listener-{self.agent}")

    async def stop(self) -> None:
        """Stop processing (the position is kept on the server)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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

    async def _run(self, sub: object) -> None:
        fetch = sub.fetch  # type: ignore[attr-defined]
        delay = 0.1
        while True:
            try:
                msgs = await fetch(batch=self._batch, timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("events listener %s: fetch failed (%s); retrying", self.agent, err or type(err).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            for msg in msgs:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        received = _decode(msg)
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
            await self.apply(received)
            await self._notify(received)
            await self._mark_seen(received.event.id)
            await msg.ack_sync()
            self.processed += 1
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Left unacknowledged: redelivered after a pause; side effects are idempotent.
            log.warning(
                "events listener %s: %s %s not applied yet: %s", self.agent, received.event.kind, received.event.id, err
            )
            await _settle(msg.nak(delay=1.0))
        finally:
            ticker.cancel()

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
        for agent, changes in _changes(self.agent, received).items():

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
                raise ConnectionError(f"could not re-emit delegation {event.id} to {self.parent}")

    async def descendants(self) -> dict[str, Descendant]:
        """This agent's descendant registry."""
        return await self._events.descendants(self.agent)


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
