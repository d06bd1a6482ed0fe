"""Who may report what: the rule binding an event to the agent that sent it.

The sender of an event is the ``{from}`` token of its subject (``{ns}.events.{to}.{from}.{kind}``),
which NATS permissions can bind to the sender's credentials. An event is *about* ``event.agent``.

* An agent may report anything about itself (``event.agent == sender``).
* ``turn_ended``, ``errored`` and ``progress`` are only ever reported by the agent itself.
* ``shut_down`` and ``scope_sub_delegated`` may also be reported about a *descendant* of the sender
  (a parent shutting its child down, a relay of a delegation deeper in the tree), as far as the
  listener's own descendant registry knows: the sender must be on the chain of parents from
  ``event.agent`` up to the listener.
* A delegation never re-parents a sub-agent: it is accepted, and the descendant tree names the
  parent of the earliest claim (:mod:`coord.events.tree`), so the outcome depends on the set of
  events, not on which arrived first (a rejection here would depend on arrival).

When the chain is not known yet (a delegation still on its way) the verdict is :data:`DEFER`: the
listener retries the event a bounded number of times, then dead-letters it. Everything else that
breaks the rule is rejected at once with a reason (and dead-lettered).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from coord.events.models import Descendant, ReceivedEvent

__all__ = ["ACCEPT", "DEFER", "MAX_DEPTH", "Lookup", "Verdict", "sender_verdict"]

ACCEPT: Literal["accept"] = "accept"
"""The sender may report this event."""
DEFER: Literal["defer"] = "defer"
"""Not decidable yet: the registry does not know the chain from the event's agent up to the listener."""
MAX_DEPTH = 64
"""Longest chain of parents followed (a longer or cyclic chain is not a descent)."""

DELEGABLE = frozenset({"shut_down", "scope_sub_delegated"})
"""Kinds an ancestor may report about a descendant."""

Verdict = str
""":data:`ACCEPT`, :data:`DEFER`, or the reason the event is rejected."""
Lookup = Callable[[str], Awaitable[Descendant | None]]
"""The listener's record of one descendant (None if it knows nothing of it)."""


async def sender_verdict(owner: str, received: ReceivedEvent, lookup: Lookup) -> Verdict:
    """Whether ``received`` (sent to listener ``owner``) respects the rule of the module docstring."""
    event, sender = received.event, received.sender
    if event.agent == sender:
        return ACCEPT
    if event.kind not in DELEGABLE:
        return f"{sender!r} may not report {event.kind} about {event.agent!r} (only the agent itself may)"
    return await _ancestry(owner, event.agent, sender, lookup, event.kind)


async def _ancestry(owner: str, agent: str, sender: str, lookup: Lookup, kind: str) -> Verdict:
    current, seen = agent, {agent}
    for _ in range(MAX_DEPTH):
        record = await lookup(current)
        parent = record.parent(owner) if record is not None else None
        if parent is None:
            return DEFER  # the chain is not known (yet)
        if parent == sender:
            return ACCEPT
        if parent == owner or parent in seen:
            return f"{sender!r} may not report {kind} about {agent!r}: it is not one of its ancestors"
        seen.add(parent)
        current = parent
    return f"{sender!r} may not report {kind} about {agent!r}: no ancestry within {MAX_DEPTH} levels"
