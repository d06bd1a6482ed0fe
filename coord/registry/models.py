"""What the registry stores: sessions, thread reservations, tag bindings, and the results of a reservation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from coord.ids import Token

__all__ = [
    "DEFAULT_TERMINAL_TTL",
    "LiveOwner",
    "LookupValue",
    "Reserved",
    "Session",
    "SessionStatus",
    "TagBinding",
    "TagState",
    "ThreadReservation",
]

DEFAULT_TERMINAL_TTL = 7 * 86_400.0
"""How long complete/abandoned sessions are kept (seconds)."""

SessionStatus = Literal["active", "complete", "abandoned"]
"""``active`` until the session ends (``complete``) or is reaped or given up (``abandoned``)."""

TagState = Literal["BOUND", "PENDING", "ABSENT"]
"""A tag is BOUND to an agent, PENDING (known, nobody bound), or ABSENT (never heard of)."""

LookupValue = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
"""A free-form lookup value (path, client instance id, native actor key): 1..4096 chars."""


def _now() -> datetime:
    return datetime.now(UTC)


class Session(BaseModel):
    """One agent session: who runs it, where it sits in the tree, and how to find it again."""

    model_config = ConfigDict(extra="ignore")

    id: Token
    """Session id (the ``session.{id}`` key)."""
    agent_id: Token
    """Agent whose presence says whether this session is alive."""
    parent_session: Token | None = None
    """Session that spawned this one (``actor_chain`` follows it)."""
    status: SessionStatus = "active"
    """active, complete or abandoned."""
    thread: Token | None = None
    """Thread this session reserved, if any."""
    path: LookupValue | None = None
    """Working directory / worktree root (lookup key)."""
    client_instance_id: LookupValue | None = None
    """Stable client-side instance id (lookup key)."""
    native_actor_key: LookupValue | None = None
    """Harness-native actor key (lookup key)."""
    started_at: AwareDatetime = Field(default_factory=_now)
    """When the session was created (UTC)."""
    ended_at: AwareDatetime | None = None
    """When it became complete or abandoned."""
    revision: int = Field(default=0, exclude=True)
    """KV revision this copy was read at (not stored)."""

    @property
    def terminal(self) -> bool:
        """True once complete or abandoned."""
        return self.status != "active"


class ThreadReservation(BaseModel):
    """The value of ``thread.{name}``: which session and agent own the thread."""

    model_config = ConfigDict(extra="ignore")

    thread: Token
    """The thread name."""
    session_id: Token
    """The owning session."""
    agent_id: Token
    """The owning agent (its presence is the owner's liveness)."""
    reserved_at: AwareDatetime = Field(default_factory=_now)
    """When the reservation was made."""


class TagBinding(BaseModel):
    """The value of ``tag.{name}``: bound to an agent, or pending (known but unbound)."""

    model_config = ConfigDict(extra="ignore")

    tag: Token
    """The tag name."""
    agent_id: Token | None = None
    """The bound agent, or None while pending."""
    updated_at: AwareDatetime = Field(default_factory=_now)
    """Last change."""
    revision: int = Field(default=0, exclude=True)
    """KV revision this copy was read at (not stored)."""

    @property
    def state(self) -> TagState:
        """BOUND when an agent holds it, else PENDING."""
        return "BOUND" if self.agent_id else "PENDING"


class Reserved(BaseModel):
    """``reserve_thread`` won: ``session`` is the new active session owning the thread."""

    session: Session
    """The new session."""
    reaped: Session | None = None
    """The dead owner's session that was abandoned to make room, if any."""


class LiveOwner(BaseModel):
    """``reserve_thread`` lost: a live session already owns the thread."""

    session: Session
    """The owner's session (synthesized from the reservation if its record is not written yet)."""
