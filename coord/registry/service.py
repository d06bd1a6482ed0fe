"""The :class:`Registry` service: liveness, sessions, thread reservations, lookups and tag bindings."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import nats.errors

from coord.errors import Conflict, CorralError, InvalidInput, InvalidTransition, NotFound, Unavailable
from coord.ids import new_id, validate_id
from coord.kv import conflicts
from coord.presence import Presence
from coord.records import MAX_CAS_ATTEMPTS, RecordStore
from coord.registry.models import (
    DEFAULT_TERMINAL_TTL,
    LiveOwner,
    Reserved,
    Session,
    SessionStatus,
    TagBinding,
    TagState,
    ThreadReservation,
)

__all__ = ["MAX_CHAIN_DEPTH", "Registry"]

log = logging.getLogger("corral.registry")

MAX_CHAIN_DEPTH = 256
"""How many ancestors :meth:`Registry.actor_chain` follows before it cuts the chain."""


def _now() -> datetime:
    return datetime.now(UTC)


def _session_key(session_id: str) -> str:
    return f"session.{validate_id(session_id, 'session_id')}"


def _thread_key(thread: str) -> str:
    return f"thread.{validate_id(thread, 'thread')}"


def _tag_key(tag: str) -> str:
    return f"tag.{validate_id(tag, 'tag')}"


def _norm_path(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if not text:
        raise InvalidInput("path must not be empty")
    return os.path.normpath(text)


class Registry:
    """Sessions, thread reservations and tag bindings of one namespace (``coord.registry``).

    Built on the registry bucket's ``store``; ``presence`` answers whether an owner is alive.
    """

    def __init__(self, store: RecordStore, presence: Presence, *, terminal_ttl: float = DEFAULT_TERMINAL_TTL) -> None:
        self._presence = presence
        self.terminal_ttl = terminal_ttl
        """Seconds a complete/abandoned session is kept before the server removes it."""
        self.store = store
        """The compare-and-set layer over the registry bucket."""

    # --- liveness ------------------------------------------------------------------------
    async def agent_alive(self, agent_id: str) -> bool:
        """Whether ``agent_id``'s presence key is held (:meth:`~coord.presence.Presence.held`).

        A malformed value on the key still counts as held: one forged publish is not a departure.
        Raises :class:`~coord.errors.Unavailable` when presence cannot be read (within 5 s): an
        error is not a verdict, so no caller takes it for "alive" or for "absent".
        """
        validate_id(agent_id, "agent_id")
        try:
            return await asyncio.wait_for(self._presence.held(agent_id), timeout=5)
        except (OSError, nats.errors.Error, CorralError) as err:
            raise Unavailable(
                f"cannot tell whether agent {agent_id!r} is present ({err or type(err).__name__}); nothing was decided"
            ) from err

    async def is_alive(self, session: Session) -> bool:
        """An active session whose agent's presence key is held (:class:`Unavailable` if it cannot be read)."""
        return session.status == "active" and await self.agent_alive(session.agent_id)

    # --- sessions ------------------------------------------------------------------------
    async def create_session(
        self,
        agent_id: str,
        *,
        parent_session: str | None = None,
        thread: str | None = None,
        path: str | os.PathLike[str] | None = None,
        client_instance_id: str | None = None,
        native_actor_key: str | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Create an active session (without reserving a thread: use :meth:`reserve_thread` for that).

        Raises :class:`~coord.errors.Conflict` if ``session_id`` is already taken.
        """
        session = self._new_session(
            agent_id,
            parent_session=parent_session,
            thread=thread,
            path=path,
            client_instance_id=client_instance_id,
            native_actor_key=native_actor_key,
            session_id=session_id,
        )
        existing, revision = await self.store.get_raw(_session_key(session.id))
        if existing is not None:
            raise Conflict(f"session {session.id!r} already exists")
        try:
            new_revision = await self.store.write(_session_key(session.id), session, last=revision)
        except Conflict:
            raise Conflict(f"session {session.id!r} already exists") from None
        return session.model_copy(update={"revision": new_revision})

    def _new_session(
        self,
        agent_id: str,
        *,
        parent_session: str | None,
        thread: str | None,
        path: str | os.PathLike[str] | None,
        client_instance_id: str | None,
        native_actor_key: str | None,
        session_id: str | None,
    ) -> Session:
        return Session(
            id=session_id if session_id is not None else new_id("s"),
            agent_id=agent_id,
            parent_session=parent_session,
            thread=thread,
            path=_norm_path(path) if path is not None else None,
            client_instance_id=client_instance_id,
            native_actor_key=native_actor_key,
        )

    async def get_session(self, session_id: str) -> Session:
        """The session ``session_id``; raises :class:`~coord.errors.NotFound` if missing or expired."""
        session, _ = await self.store.get(_session_key(session_id), Session)
        if session is None:
            raise NotFound(f"session {session_id!r} not found (never created, or expired after ending)")
        return session

    async def find_session(self, session_id: str) -> Session | None:
        """The session ``session_id``, or None."""
        session, _ = await self.store.get(_session_key(session_id), Session)
        return session

    async def list_sessions(self, *, alive_only: bool = False, status: SessionStatus | None = None) -> list[Session]:
        """All sessions, most recently started first.

        ``alive_only`` keeps active sessions whose agent is present (one presence read for all);
        if presence cannot be read that raises :class:`~coord.errors.Unavailable` rather than
        guessing.
        """
        sessions = [s for _, s in await self.store.scan("session.", Session)]
        if status is not None:
            sessions = [s for s in sessions if s.status == status]
        if alive_only:
            sessions = [s for s in sessions if s.status == "active"]
            try:
                present = await asyncio.wait_for(self._presence.present_ids(), timeout=10)
            except (OSError, nats.errors.Error, CorralError) as err:
                raise Unavailable(f"cannot list who is present ({err or type(err).__name__})") from err
            sessions = [s for s in sessions if s.agent_id in present]
        sessions.sort(key=lambda s: s.started_at, reverse=True)
        return sessions

    async def complete(self, session_id: str) -> Session:
        """Mark the session complete (kept for the terminal TTL) and release its thread."""
        return await self._end(session_id, "complete")

    async def abandon(self, session_id: str) -> Session:
        """Mark the session abandoned (kept for the terminal TTL) and release its thread."""
        return await self._end(session_id, "abandoned")

    async def _end(self, session_id: str, status: Literal["complete", "abandoned"]) -> Session:
        def change(current: Session | None) -> Session | None:
            if current is None:
                raise NotFound(f"session {session_id!r} not found")
            if current.status == status:
                return None
            if current.terminal:
                raise InvalidTransition(f"session {session_id!r} is already {current.status}; cannot mark it {status}")
            return current.model_copy(update={"status": status, "ended_at": _now()})

        session = await self.store.update(_session_key(session_id), Session, change, ttl=lambda _: self.terminal_ttl)
        assert session is not None
        if session.thread:
            await self.release_thread(session.thread, session.id)
        return session

    # --- threads -------------------------------------------------------------------------
    async def thread_owner(self, thread: str) -> ThreadReservation | None:
        """The current reservation of ``thread`` (alive or not), or None."""
        reservation, _ = await self.store.get(_thread_key(thread), ThreadReservation)
        return reservation

    async def _owner_alive(self, reservation: ThreadReservation, session: Session | None) -> bool:
        if session is not None and session.terminal:
            return False
        return await self.agent_alive(reservation.agent_id)

    async def reserve_thread(
        self,
        thread: str,
        *,
        agent_id: str,
        parent_session: str | None = None,
        path: str | os.PathLike[str] | None = None,
        client_instance_id: str | None = None,
        native_actor_key: str | None = None,
        session_id: str | None = None,
    ) -> Reserved | LiveOwner:
        """Atomically reap a dead owner of ``thread`` and reserve it for a new session of ``agent_id``.

        One compare-and-set on ``thread.{name}`` decides: it creates the reservation, or replaces
        one whose owner is dead (its session ended, or its agent's presence key is not held — a
        malformed value on it still is). If the owner is alive, nothing changes and
        :class:`LiveOwner` is returned; if its liveness cannot be read, nothing changes and
        :class:`~coord.errors.Unavailable` is raised. Concurrent reservers of one thread: exactly
        one gets :class:`Reserved`.

        ``session_id`` may name an active session of ``agent_id`` (it then takes the thread, and
        re-reserving a thread it already holds is a no-op that never abandons it); a session id of
        another agent, or of a session that has ended, is a :class:`Conflict` and nothing is written.
        The session record is written with a compare-and-set too, so no one's session is overwritten.
        """
        key = _thread_key(thread)
        session = self._new_session(
            agent_id,
            parent_session=parent_session,
            thread=thread,
            path=path,
            client_instance_id=client_instance_id,
            native_actor_key=native_actor_key,
            session_id=session_id,
        )
        existing, session_revision = await self.store.get(_session_key(session.id), Session)
        if existing is not None:
            if existing.agent_id != agent_id:
                raise Conflict(f"session {session.id!r} already exists and belongs to agent {existing.agent_id!r}")
            if existing.terminal:
                raise Conflict(f"session {session.id!r} has already ended ({existing.status}); use a new session id")
            session = session.model_copy(update={"started_at": existing.started_at})
        async for _ in conflicts(f"thread {thread!r}", MAX_CAS_ATTEMPTS):
            current, revision = await self.store.get(key, ThreadReservation)
            owner: Session | None = None
            if current is not None:
                owner = await self.find_session(current.session_id)
                if current.session_id != session.id and await self._owner_alive(current, owner):
                    return LiveOwner(session=owner or _synthesized(current))
            reservation = ThreadReservation(thread=thread, session_id=session.id, agent_id=agent_id)
            try:
                await self.store.write(key, reservation, last=revision)
            except Conflict:
                continue
            # The thread key is the decision; the session record and the reaped owner's status follow.
            try:
                created = await self.store.write(_session_key(session.id), session, last=session_revision)
            except Conflict:
                await self.release_thread(thread, session.id)
                raise Conflict(f"session {session.id!r} was written by someone else meanwhile") from None
            reaped = None
            if current is not None and current.session_id != session.id:
                reaped = await self._abandon_quietly(current.session_id)
            return Reserved(session=session.model_copy(update={"revision": created}), reaped=reaped)
        raise AssertionError("unreachable: conflicts() raises when the attempts are spent")

    async def _abandon_quietly(self, session_id: str) -> Session | None:
        try:
            return await self.abandon(session_id)
        except (NotFound, InvalidTransition):
            return None

    async def release_thread(self, thread: str, session_id: str) -> bool:
        """Drop ``thread``'s reservation if ``session_id`` still holds it; True if it did."""
        key = _thread_key(thread)
        async for _ in conflicts(f"thread {thread!r}", MAX_CAS_ATTEMPTS):
            current, revision = await self.store.get(key, ThreadReservation)
            if current is None or current.session_id != session_id:
                return False
            try:
                await self.store.write(key, None, last=revision, delete=True)
                return True
            except Conflict:
                continue
        raise AssertionError("unreachable: conflicts() raises when the attempts are spent")

    async def reap_dead(self, thread: str) -> int:
        """Abandon every active session on ``thread`` whose owner is dead; return how many.

        The reservation itself is dropped (one CAS) when its owner is dead, so the next reserver
        creates it afresh. A malformed presence value counts as held (alive). If presence cannot be
        read, :class:`~coord.errors.Unavailable` is raised and the sessions not yet looked at are
        left alone.
        """
        key = _thread_key(thread)
        reaped = 0
        current, revision = await self.store.get(key, ThreadReservation)
        if current is not None:
            owner = await self.find_session(current.session_id)
            if not await self._owner_alive(current, owner):
                try:
                    await self.store.write(key, None, last=revision, delete=True)
                except Conflict:
                    pass  # someone reserved or reaped it meanwhile; the sweep below still applies
                else:
                    if await self._abandon_quietly(current.session_id) is not None:
                        reaped += 1
        holder, _ = await self.store.get(key, ThreadReservation)
        for session in await self.list_sessions(status="active"):
            if session.thread != thread or (holder is not None and holder.session_id == session.id):
                continue
            if not await self.agent_alive(session.agent_id) and await self._abandon_quietly(session.id) is not None:
                reaped += 1
        return reaped

    # --- lookups -------------------------------------------------------------------------
    async def actor_chain(self, session_id: str) -> list[Session]:
        """The session's ancestry ordered root → leaf (``session_id`` last).

        Follows ``parent_session``; stops at a missing (expired) ancestor, and at a cycle or after
        256 levels (logged) instead of looping. Raises :class:`NotFound` if ``session_id`` is missing.
        """
        chain = [await self.get_session(session_id)]
        seen = {session_id}
        while (parent := chain[-1].parent_session) is not None:
            if parent in seen or len(chain) >= MAX_CHAIN_DEPTH:
                log.warning("actor chain of %s has a cycle or is too deep at %s; cut there", session_id, parent)
                break
            seen.add(parent)
            ancestor = await self.find_session(parent)
            if ancestor is None:
                break
            chain.append(ancestor)
        chain.reverse()
        return chain

    async def _find_active(self, match: Callable[[Session], bool]) -> Session | None:
        candidates = [s for s in await self.list_sessions(status="active") if match(s)]
        return candidates[0] if candidates else None

    async def find_active_by_path(self, path: str | os.PathLike[str]) -> Session | None:
        """The most recent active session whose ``path`` is ``path`` (normalized), or None."""
        wanted = _norm_path(path)
        return await self._find_active(lambda s: s.path == wanted)

    async def find_active_by_client_instance_id(self, client_instance_id: str) -> Session | None:
        """The most recent active session with this client instance id, or None."""
        return await self._find_active(lambda s: s.client_instance_id == client_instance_id)

    async def find_active_by_native_actor_key(self, native_actor_key: str) -> Session | None:
        """The most recent active session with this native actor key, or None."""
        return await self._find_active(lambda s: s.native_actor_key == native_actor_key)

    # --- tags ----------------------------------------------------------------------------
    async def get_tag(self, tag: str) -> TagBinding | None:
        """The binding of ``tag`` (pending or bound), or None when the tag is ABSENT."""
        binding, _ = await self.store.get(_tag_key(tag), TagBinding)
        return binding

    async def tag_state(self, tag: str) -> tuple[TagState, str | None]:
        """``(BOUND, agent)``, ``(PENDING, None)`` or ``(ABSENT, None)``."""
        binding = await self.get_tag(tag)
        if binding is None:
            return "ABSENT", None
        return binding.state, binding.agent_id

    async def declare_tag(self, tag: str) -> TagBinding:
        """Make ``tag`` known (PENDING) if it is ABSENT; return its binding."""
        binding = await self.store.update(
            _tag_key(tag), TagBinding, lambda cur: TagBinding(tag=tag) if cur is None else None
        )
        assert binding is not None
        return binding

    async def bind_tag(
        self, tag: str, agent_id: str, *, alive: Callable[[str], Awaitable[bool]] | None = None
    ) -> tuple[TagBinding, str | None]:
        """Bind ``tag`` to ``agent_id``; return the binding and the dead agent it was taken from (if any).

        Rebinding to the same agent is a no-op. A tag bound to another agent is taken over only if
        that agent is dead (absent from presence); otherwise :class:`~coord.errors.Conflict`.
        """
        validate_id(agent_id, "agent_id")
        alive = alive or self.agent_alive
        key = _tag_key(tag)
        async for _ in conflicts(f"tag {tag!r}", MAX_CAS_ATTEMPTS):
            current, revision = await self.store.get(key, TagBinding)
            previous = current.agent_id if current is not None else None
            if previous == agent_id:
                assert current is not None
                return current, None
            if previous is not None and await alive(previous):
                raise Conflict(f"tag {tag!r} is bound to live agent {previous!r}")
            binding = TagBinding(tag=tag, agent_id=agent_id)
            try:
                new_revision = await self.store.write(key, binding, last=revision)
            except Conflict:
                continue
            return binding.model_copy(update={"revision": new_revision}), previous
        raise AssertionError("unreachable: conflicts() raises when the attempts are spent")

    async def unbind_tag(self, tag: str, agent_id: str) -> bool:
        """Set ``tag`` back to PENDING if ``agent_id`` holds it; True if it did."""
        validate_id(agent_id, "agent_id")
        released = False

        def change(current: TagBinding | None) -> TagBinding | None:
            nonlocal released
            released = current is not None and current.agent_id == agent_id
            return TagBinding(tag=tag) if released else None

        await self.store.update(_tag_key(tag), TagBinding, change)
        return released


def _synthesized(reservation: ThreadReservation) -> Session:
    """A stand-in session for a reservation whose session record is not written yet."""
    return Session(
        id=reservation.session_id,
        agent_id=reservation.agent_id,
        thread=reservation.thread,
        started_at=reservation.reserved_at,
    )
