"""How one event changes a listener's descendant registry: pure merges, no I/O.

Every change is a join (union, maximum, minimum, a status that only moves to ``shut_down``), so
applying a set of events gives the same records whatever the order or repetition. Who a
descendant's parent is follows the same rule: every event it sent to the listener itself claims the
listener, every delegation about it claims its delegator, and the earliest claim by ``(time,
id)`` wins (:class:`~coord.events.models.Claim`) — a later delegation never
re-parents it, whenever it arrives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

from coord.events.models import Claim, Descendant, Errored, ReceivedEvent, ScopeSubDelegated, ShutDown, TurnEnded

__all__ = ["Change", "event_changes", "upward_id"]


def _max_dt(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _min_dt(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


Change = Callable[[Descendant], Descendant]
"""One merge into a descendant record: old record in, new record out."""


def event_changes(owner: str, received: ReceivedEvent) -> dict[str, list[Change]]:
    """The merges one event makes, per descendant id (pure; no I/O)."""
    event = received.event
    out: dict[str, list[Change]] = {}

    def add(agent: str, change: Change) -> None:
        if agent != owner:
            out.setdefault(agent, []).append(change)

    direct = Claim(at=event.at, id=event.id)
    add(
        received.sender,
        lambda d: _settle(d.model_copy(update={"direct": True, "direct_claim": _first(d.direct_claim, direct)})),
    )
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
            claim = Claim(at=event.at, id=event.id, by=event.agent)

            def delegated(d: Descendant) -> Descendant:
                return _settle(
                    d.model_copy(
                        update={"delegation": _first(d.delegation, claim), "scope": sorted({*d.scope, *event.scope})}
                    )
                )

            add(event.sub_agent, delegated)
        case _:
            pass
    return out


def _first(a: Claim | None, b: Claim) -> Claim:
    return b if a is None or b.key < a.key else a


def _settle(d: Descendant) -> Descendant:
    """Name the parent the earliest claim gives: the delegator, or None when it reported to the
    listener itself first. A record written before claims were kept (no delegation claim) is left as is."""
    if d.delegation is None:
        return d
    first_direct = d.direct_claim is not None and d.direct_claim.key < d.delegation.key
    by = None if first_direct else d.delegation.by
    return d if d.delegated_by == by else d.model_copy(update={"delegated_by": by})


def upward_id(event_id: str, relay: str) -> str:
    """Deterministic id of a delegation re-emitted by ``relay``: duplicates upstream dedupe by it."""
    return "up-" + hashlib.sha256(f"{event_id}:{relay}".encode()).hexdigest()[:32]
