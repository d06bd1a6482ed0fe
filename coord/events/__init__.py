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

from coord.events.listener import EventListener
from coord.events.models import (
    Descendant,
    Errored,
    Event,
    EventKind,
    Progress,
    ReceivedEvent,
    ScopeSubDelegated,
    ShutDown,
    TurnEnded,
    parse_event,
)
from coord.events.render import render_event
from coord.events.service import Events

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
