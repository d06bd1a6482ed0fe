"""The roster: the present agents' info, kept by the active reclaimer, so followers get changes, not renewals.

Keys ``agent.{id}`` of the ``{ns}_roster`` bucket hold the :class:`AgentInfo` of each present agent
(JSON, without the writer's instance nonce or process facts). A key is written when its agent joins
or changes its info, and deleted (a DEL whose ``Corral-Left-Reason`` header says ``graceful`` or
``expired``) when it leaves. Renewals write nothing. :class:`RosterKeeper` is what writes it; the
reclaimer holding the lease ``leader`` of the same bucket (:mod:`coord.lease`) runs it, fed by a
direct presence watch. :func:`decode_entry` is how followers read a key: a value that is not
AgentInfo, or whose id disagrees with its key, is skipped (logged), never trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from pydantic import ValidationError

from coord.ids import validate_id
from coord.kv import Bucket, Entry
from coord.presence._store import LEFT_REASON, tombstone_reason
from coord.presence.models import AgentInfo, Joined, Left, LeftReason, PresenceEvent, Updated

__all__ = ["PREFIX", "PresenceFollower", "RosterKeeper", "agent_key", "decode_entry", "encode_info"]

log = logging.getLogger("corral.presence")

PREFIX = "agent."
"""Prefix of the roster's agent keys (``agent.{id}``)."""


def agent_key(agent_id: str) -> str:
    """The roster key of ``agent_id``."""
    return PREFIX + agent_id


def encode_info(info: AgentInfo) -> bytes:
    """The bytes the roster holds for ``info`` (deterministic: equal info, equal bytes)."""
    return info.model_dump_json().encode()


def decode_entry(entry: Entry) -> tuple[str | None, AgentInfo | LeftReason | None, str]:
    """Read one roster entry: ``(agent_id, info, "")`` for a value, ``(agent_id, reason, "")`` for a
    departure, or ``(agent_id or None, None, why it is skipped)``.

    A key outside ``agent.{id}`` with a valid id, a value that is not AgentInfo JSON, or one whose id
    disagrees with its key, is skipped with the reason.
    """
    agent_id = entry.key.removeprefix(PREFIX)
    if agent_id == entry.key:
        return None, None, "not an agent key"
    try:
        validate_id(agent_id, "agent_id")
    except ValueError:
        return None, None, f"{agent_id!r} is not a valid agent id"
    reason = tombstone_reason(entry)
    if reason is not None:
        return agent_id, reason, ""
    try:
        info = AgentInfo.model_validate_json(entry.value or b"")
    except ValidationError as err:
        first = err.errors()[0]
        return agent_id, None, f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"
    if info.id != agent_id:
        return agent_id, None, f"id {info.id!r} does not match its key {entry.key!r}"
    return agent_id, info, ""


class PresenceFollower(Protocol):
    """What the active reclaimer keeps in step with presence (the roster keeper satisfies it).

    :meth:`reconcile` is awaited once per term, after the rebuild and before the lease is marked
    ready, with every agent present; :meth:`apply` is awaited with each change the term's presence
    watch yields (joined, left, updated), in order. An exception is logged and never ends the term.
    """

    async def reconcile(self, present: Mapping[str, AgentInfo]) -> bool:
        """Make what is kept match ``present`` (agent id → info); True if it now does."""

    async def apply(self, change: PresenceEvent) -> None:
        """Apply one presence change."""


class RosterKeeper:
    """Keeps the roster equal to what is present; run by the holder of the reclaimer's lease.

    The reclaimer calls :meth:`reconcile` when it becomes the holder (with what its direct presence
    watch shows present) and :meth:`apply` for each change that watch yields (``updates=True``).
    Neither raises on a failed write: it is logged and the next :meth:`reconcile` repairs it. A
    renewal writes nothing (an ``Updated`` whose bytes equal what was last written is dropped).
    """

    def __init__(self, roster: Bucket) -> None:
        self.roster = roster
        """The roster bucket."""
        self.writes = 0
        """Writes (puts and deletes) made so far."""
        self._written: dict[str, bytes] = {}

    async def reconcile(self, present: Mapping[str, AgentInfo]) -> bool:
        """Make the roster equal to ``present``: write missing and changed keys, delete the rest as ``expired``.

        Also overwrites (or deletes) values followers skip: malformed ones, ids that disagree with
        their key, keys that are no agent's. True if the roster now matches (no write failed).
        """
        try:
            entries = await self.roster.scan(PREFIX)
        except Exception as err:
            log.warning("roster: could not read it to reconcile (%s); trying at the next reconcile", err)
            return False
        self._written = {}
        stored: dict[str, bytes] = {}
        ok = True
        for entry in entries:
            agent_id, info, problem = decode_entry(entry)
            if agent_id is not None and isinstance(info, AgentInfo) and agent_id in present:
                stored[agent_id] = entry.value or b""
                continue
            if problem:
                log.warning("roster: replacing hostile or malformed key %r (%s)", entry.key, problem)
            if agent_id is None or agent_id not in present:
                ok &= await self._delete(entry.key, "expired")
        for agent_id, info in present.items():
            data = encode_info(info)
            if stored.get(agent_id) == data:
                self._written[agent_id] = data
            else:
                ok &= await self._put(agent_id, data)
        return ok

    async def apply(self, change: PresenceEvent) -> None:
        """Write one change: Joined/Updated put the info (if it differs from what was written), Left deletes."""
        if isinstance(change, (Joined, Updated)):
            data = encode_info(change.agent)
            if self._written.get(change.agent.id) != data:
                await self._put(change.agent.id, data)
        elif isinstance(change, Left):
            self._written.pop(change.agent_id, None)
            await self._delete(agent_key(change.agent_id), change.reason)

    async def _put(self, agent_id: str, data: bytes) -> bool:
        self._written.pop(agent_id, None)
        try:
            await self.roster.put(agent_key(agent_id), data)
        except Exception as err:
            log.warning("roster: could not write %s (%s); the next reconcile repairs it", agent_id, err)
            return False
        self.writes += 1
        self._written[agent_id] = data
        return True

    async def _delete(self, key: str, reason: LeftReason) -> bool:
        try:
            await self.roster.delete(key, headers={LEFT_REASON: reason})
        except Exception as err:
            log.warning("roster: could not delete %s (%s); the next reconcile repairs it", key, err)
            return False
        self.writes += 1
        return True
