"""What presence says about agents: :class:`AgentInfo`, the change events and the loss error.

``AgentInfo`` is the value of an agent's key (JSON, pydantic v2; unknown fields are ignored on
read so newer agents can add fields). On the wire it is wrapped in a record that also carries the
writer's ``instance`` nonce, which is how a process tells its own key from someone else's.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from coord.errors import PresenceLost
from coord.ids import Token
from coord.presence.identity import ProcessFacts, local_process

__all__ = [
    "AgentInfo",
    "HolderWait",
    "Joined",
    "Left",
    "LeftReason",
    "LossReason",
    "MembershipLost",
    "PresenceEvent",
    "Updated",
]

LeftReason = Literal["graceful", "expired"]
"""Why an agent left: it deleted its key (``graceful``) or its key's TTL ran out (``expired``)."""

LossReason = Literal["expired", "deleted", "taken"]
"""Why a process lost its own presence (see :class:`MembershipLost`)."""


@cache
def _corral_version() -> str:
    try:
        return metadata.version("corral")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _now() -> datetime:
    return datetime.now(UTC)


class AgentInfo(BaseModel):
    """Who an agent is and what it can take: the value of its presence key.

    Immutable: change a live agent's info with :meth:`Membership.update`. Ids, tags, queues and the
    parent are validated tokens (``[A-Za-z0-9_-]``), so a bad one fails here, before any NATS call.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Token
    """The agent id: its key in the presence bucket."""
    role: str = Field(default="agent", min_length=1, max_length=64)
    """What kind of agent this is (``agent``, ``worker``, ``parent``, ...)."""
    host: str = Field(default_factory=socket.gethostname, max_length=255)
    """Host the process runs on."""
    pid: int = Field(default_factory=os.getpid, ge=0)
    """Process id on ``host``."""
    started_at: AwareDatetime = Field(default_factory=_now)
    """When the agent started (UTC)."""
    parent: Token | None = None
    """Id of the agent that spawned this one, if any."""
    tags: list[Token] = Field(default_factory=list)
    """Tags the agent answers to."""
    queues: list[Token] = Field(default_factory=list)
    """Queues the agent takes work from."""
    capacity: int = Field(default=1, ge=0)
    """How many tasks it runs at once (0: draining, takes nothing new)."""
    inflight: int = Field(default=0, ge=0)
    """How many tasks it is running now."""
    version: str = Field(default_factory=_corral_version, max_length=64)
    """corral version of the agent."""
    harness: str | None = Field(default=None, max_length=64)
    """What the agent runs in (an MCP client such as ``claude-code``), for agents joined by ``corral mcp``."""


class _Record(AgentInfo):
    """The wire form: AgentInfo plus the nonce of the process instance that wrote it, and facts about that process.

    The facts (all optional: values written by older versions lack them) let a restarted process
    prove its predecessor gone (:mod:`coord.presence.identity`).
    """

    instance: str = Field(min_length=1, max_length=64)
    boot_id: str | None = Field(default=None, max_length=64)
    """Kernel boot id of ``host`` (``/proc/sys/kernel/random/boot_id``); None if unknown."""
    pid_ns: int | None = Field(default=None, ge=0)
    """Inode of the pid namespace ``pid`` belongs to (``/proc/self/ns/pid``); None if unknown."""
    pid_started: int | None = Field(default=None, ge=0)
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat``, field 22); None if unknown."""

    def process_facts(self) -> ProcessFacts:
        """What identifies the process that wrote this value."""
        return ProcessFacts(self.host, self.boot_id, self.pid_ns, self.pid, self.pid_started)

    def info(self) -> AgentInfo:
        return AgentInfo.model_validate(self.model_dump(exclude={"instance", *_FACTS}))


_FACTS = ("boot_id", "pid_ns", "pid_started")


def encode_record(info: AgentInfo, instance: str) -> bytes:
    """The bytes stored under the agent's key: with this process's facts when ``info.pid`` is this process."""
    me = local_process()
    facts = {"boot_id": me.boot_id, "pid_ns": me.pid_ns, "pid_started": me.pid_started} if info.pid == me.pid else {}
    return _Record.model_validate({**info.model_dump(), "instance": instance, **facts}).model_dump_json().encode()


def decode_record(data: bytes | None, key: str) -> tuple[_Record | None, str]:
    """Parse a stored value; ``(record, "")`` or ``(None, why it is malformed)``."""
    if not data:
        return None, "empty value"
    try:
        record = _Record.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        return None, f"{where}: {first['msg']}"
    if record.id != key:
        return None, f"id {record.id!r} does not match its key {key!r}"
    return record, ""


@dataclass(frozen=True)
class Joined:
    """An agent became present (or was present when the watch started)."""

    agent: AgentInfo
    """Its info as written."""
    revision: int
    """Stream sequence of the value that announced it."""


@dataclass(frozen=True)
class Left:
    """An agent is no longer present."""

    agent_id: str
    """Who left."""
    reason: LeftReason
    """``graceful`` (it deleted its key) or ``expired`` (its TTL ran out; it may be dead, hung or cut off)."""
    revision: int
    """Stream sequence of the tombstone (DEL, or the server's MaxAge marker)."""
    at: datetime
    """When the server recorded the departure (UTC)."""


@dataclass(frozen=True)
class Updated:
    """A present agent rewrote its info (only yielded by ``watch(updates=True)``)."""

    agent: AgentInfo
    """The new info."""
    revision: int
    """Stream sequence of the new value."""


PresenceEvent = Joined | Left | Updated
"""What a presence watcher yields."""


@dataclass(frozen=True)
class HolderWait:
    """A join waiting for the key of a previous holder it cannot prove gone (see docs/presence.md).

    Passed once per join to the ``on_wait`` callback of :meth:`Presence.join`, when the wait starts.
    """

    agent_id: str
    """The id being joined."""
    holder: AgentInfo
    """The process whose key holds the id."""
    why: str
    """Why it cannot be proved gone (e.g. it runs on another host)."""
    seconds: float
    """Expected wait: until its key expires, if it is not renewed meanwhile (then the join is refused)."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the wait is over: the join went on (or was refused)."""


class MembershipLost(PresenceLost):
    """This process's own presence was lost: it must stop taking work and drop its claims.

    Passed to the ``on_lost`` callback of :meth:`Presence.join`. ``reason`` is ``expired`` (no
    renewal reached the server within the TTL: paused, cut off, or the key expired), ``deleted``
    (someone else deleted the key) or ``taken`` (another process now holds the id).
    """

    def __init__(self, agent_id: str, reason: LossReason, detail: str, *, rejoining: bool) -> None:
        self.agent_id = agent_id
        """Whose presence was lost."""
        self.reason: LossReason = reason
        """``expired``, ``deleted`` or ``taken``."""
        self.detail = detail
        """What was observed, in one line."""
        self.rejoining = rejoining
        """True when the membership will re-join with a fresh instance (not after ``taken``)."""
        super().__init__(f"presence of {agent_id!r} lost ({reason}): {detail}")
