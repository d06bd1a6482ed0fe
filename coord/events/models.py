"""The lifecycle events a child sends its parent, as received, and what a parent knows of a descendant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

from coord.ids import Token, new_id

__all__ = [
    "MAX_TEXT",
    "Claim",
    "Descendant",
    "Errored",
    "Event",
    "EventKind",
    "Progress",
    "ReceivedEvent",
    "ScopeSubDelegated",
    "ShutDown",
    "TurnEnded",
    "parse_event",
]

EventKind = Literal["turn_ended", "errored", "shut_down", "scope_sub_delegated", "progress"]
"""The ``kind`` tag of each event (also the last token of its subject)."""

MAX_TEXT = 4096
"""Longest free text (summary, message, reason) an event may carry."""


def _now() -> datetime:
    return datetime.now(UTC)


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Token = Field(default_factory=lambda: new_id("ev"))
    """Unique event id: the idempotency key (and the stream's dedupe id)."""
    agent: Token
    """The agent the event is about: the child that had the turn, error or shutdown, or that delegated."""
    at: AwareDatetime = Field(default_factory=_now)
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

    @field_validator("sub_agent")
    @classmethod
    def _not_self(cls, sub_agent: str, info: ValidationInfo) -> str:
        # An agent is not its own descendant: a self-delegation would make it its own parent.
        if sub_agent == info.data.get("agent"):
            raise ValueError(f"must differ from agent (an agent cannot delegate to itself), got {sub_agent!r}")
        return sub_agent


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


class Claim(BaseModel):
    """One event's claim on who a descendant's parent is; the earliest claim (:attr:`key`) wins."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    at: AwareDatetime
    """The event's time."""
    id: str
    """The event's id (breaks ties)."""
    by: Token | None = None
    """The delegator, for a delegation claim (None for a direct one: the listener is the parent)."""

    @property
    def key(self) -> tuple[datetime, str]:
        """The order of claims: ``(at, id)``, a function of the event alone, never of its arrival."""
        return (self.at, self.id)


class Descendant(BaseModel):
    """What a listening agent knows about one descendant: a merge of every event about it.

    Every field is a join (union, maximum, minimum, a status that only moves to ``shut_down``), so
    the record depends only on the *set* of events applied, not on their order or repetition; the
    parent is the one named by the earliest claim (:class:`Claim`), never by who came first.
    """

    model_config = ConfigDict(extra="ignore")

    agent: Token
    """The descendant."""
    direct: bool = False
    """It sent events to the listening agent itself (a direct child)."""
    delegated_by: Token | None = None
    """Who spawned it: the delegator of the earliest ScopeSubDelegated about it, unless it reported to
    the listener itself before that (then None: the listener is its parent). See :attr:`Claim.key`."""
    direct_claim: Claim | None = None
    """The earliest event it sent to the listening agent itself."""
    delegation: Claim | None = None
    """The earliest ScopeSubDelegated about it."""
    scope: list[str] = Field(default_factory=list)
    """Union of the scopes delegated to it (sorted)."""
    status: Literal["active", "shut_down"] = "active"
    """``shut_down`` once any ShutDown about it was applied."""
    shut_down_at: AwareDatetime | None = None
    """Earliest ShutDown seen."""
    last_event_at: AwareDatetime | None = None
    """Latest event about it."""
    last_turn: int | None = None
    """Highest turn number reported."""
    last_error: str | None = None
    """Message of the latest Errored (ties broken by event id)."""
    last_error_at: AwareDatetime | None = None
    """When that error happened."""
    last_error_id: str | None = None
    """Its event id."""

    def parent(self, owner: str) -> str | None:
        """The descendant's parent as far as ``owner`` knows: its delegator, else ``owner`` if direct."""
        return self.delegated_by or (owner if self.direct else None)
