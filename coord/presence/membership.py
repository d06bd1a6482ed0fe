"""Being present: :class:`Membership` creates an agent's key, renews it, and fails closed.

A membership writes its key with a per-key TTL and rewrites it every ``interval`` with a publish
that carries both ``Nats-TTL`` and ``Nats-Expected-Last-Subject-Sequence`` (compare-and-set on the
revision it last wrote), so a second writer of the same id is detected, never merged with.

A value under the key that corral did not write (no ``Nats-TTL``, or not a presence record) is not
another holder: the membership writes its own value over it (compare-and-set at that revision) and
stays present, so a forged write cannot evict a live agent.

Fail closed: the membership is *lost* when a renewal finds the key gone or held by another instance,
or when no renewal has reached the server for the enforced TTL (counted from when the last
successful renewal was *sent*: the earliest moment the server can expire it). Then ``lost`` is set
and ``on_lost`` runs (awaited if it is a coroutine function) before anything else happens. After an
expiry or a deletion it re-joins with a fresh instance nonce, once the server can be reached, so the
rest of the fleet (which saw it leave) and the process agree; ``lost`` is cleared when that succeeds.
When another process holds the id (``taken``) it does not re-join: the membership ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

import nats.errors
from pydantic import ValidationError

from coord.errors import Conflict, ConnectionFailed, InvalidInput, PresenceConflict, PresenceLost, Unavailable
from coord.presence._store import IdHeld, PresenceStore
from coord.presence.models import AgentInfo, LossReason, MembershipLost
from coord.presence.takeover import HeldId, WaitCallback
from coord.presence.timing import check_timing, enforced_ttl
from coord.presence.watcher import wait_absent
from coord.retry import retry_until_stopped
from coord.validation import WAIT, check_number, invalid_input

__all__ = ["LostCallback", "Membership", "WaitCallback", "silence_cause"]

log = logging.getLogger("corral.presence")

LostCallback = Callable[[PresenceLost], Awaitable[None] | None]
"""Called (and awaited if it returns an awaitable) when the membership is lost."""

OP_TIMEOUT = 5.0
REJOIN_MAX_DELAY = 2.0


def _new_instance() -> str:
    return secrets.token_hex(8)


def silence_cause(now: float, *, sent: float, ok_sent: float, acked: float, interval: float) -> str:
    """Why renewals stopped reaching the server, from loop times: ``sent`` (the latest renewal sent),
    ``ok_sent`` (when the latest acknowledged one was sent), ``acked`` (when its acknowledgement came).

    A renewal sent after the latest acknowledged one was not answered; an acknowledgement that came
    more than ``interval`` after its renewal was sent was late (the server was slow); otherwise none
    was sent (this process's event loop did not run the renewal in time: blocked or starved of CPU)."""
    if sent > ok_sent:
        return f"the renewal sent {now - sent:.1f}s ago was not acknowledged"
    if acked - ok_sent > interval:
        return f"the last renewal was acknowledged only {acked - ok_sent:.1f}s after it was sent"
    return "none was sent since: this process's event loop did not run the renewal in time (blocked or starved)"


class Membership:
    """One process's presence under one agent id (see the module docstring for the guarantees).

    Returned by :meth:`Presence.join`; use ``async with presence.join(info) as m:`` (leaves on exit)
    or ``m = await presence.join(info)`` then ``await m.leave()``. Joining raises
    :class:`PresenceConflict` while another live process holds the id.
    """

    def __init__(
        self,
        store: PresenceStore,
        info: AgentInfo,
        *,
        interval: float,
        ttl: float,
        on_lost: LostCallback | None,
        rejoin: bool,
        wait: float,
        on_wait: WaitCallback | None = None,
    ) -> None:
        check_timing(interval, ttl)
        if not wait >= 0:
            raise InvalidInput(f"wait must be >= 0 seconds, got {wait}")
        check_number("wait", wait, WAIT)
        self.info = info
        """The info being published (replaced by :meth:`update`)."""
        self.interval = interval
        """Seconds between renewals."""
        self.ttl = ttl
        """The TTL sent with every write (``Nats-TTL``)."""
        self.enforced_ttl = enforced_ttl(ttl)
        """The TTL the server applies (whole seconds); the fail-closed deadline uses this one."""
        self.lost = asyncio.Event()
        """Set from the moment the membership is lost until it has re-joined (if it does)."""
        self.present = asyncio.Event()
        """Set while this membership holds its key (after joining and re-joining; cleared on loss)."""
        self.ended = asyncio.Event()
        """Set when the membership is over: it left, or it was lost for good (``taken``)."""
        self.last_loss: MembershipLost | None = None
        """The most recent loss, if any."""
        self._store = store
        self._on_lost = on_lost
        self._rejoin = rejoin
        self._wait = wait
        self._on_wait = on_wait
        self._instance = ""
        self._revision = 0
        self._generation = 0
        self._last_ok_send = 0.0
        self._last_attempt = 0.0
        self._last_ack = 0.0
        self._min_gap = min(0.25, interval / 4)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._left = False

    # --- state ---------------------------------------------------------------------------
    @property
    def is_lost(self) -> bool:
        """True while the membership is lost (fail closed: take no work)."""
        return self.lost.is_set()

    @property
    def revision(self) -> int:
        """Revision (stream sequence) of the last value this membership wrote."""
        return self._revision

    @property
    def instance(self) -> str:
        """Nonce of the current incarnation (changes on every re-join)."""
        return self._instance

    @property
    def generation(self) -> int:
        """0 for the first join, +1 per re-join after a loss."""
        return self._generation

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> Membership:
        """Create the key (taking it from a predecessor that is gone) and start renewing.

        A live holder makes this raise :class:`PresenceConflict` (after waiting up to ``wait`` s for
        it to go); a holder that cannot be proved gone is waited for until its key expires.
        """
        if self._task is not None:
            return self
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._wait
        self._instance = _new_instance()
        held_id = HeldId(self._store, self.info, self._instance, ttl=self.ttl, on_wait=self._on_wait)
        try:
            while True:
                sent = loop.time()
                try:
                    self._revision = await self._store.create(self.info, self._instance, ttl=self.ttl)
                    break
                except IdHeld as held:
                    outcome = await held_id.resolve(held)
                    if isinstance(outcome, int):
                        self._revision = outcome
                        break
                    if outcome is None:
                        continue  # it expired or changed: look again
                    remaining = give_up - loop.time()
                    if remaining <= 0:
                        raise PresenceConflict(f"{held}; {outcome.why}") from None
                    await wait_absent(self._store, self.info.id, remaining)
                except (Unavailable, nats.errors.ConnectionClosedError) as err:
                    raise ConnectionFailed(f"could not join presence as {self.info.id!r}: {err}") from err
        finally:
            held_id.close()
        self._last_ok_send = sent
        self.present.set()
        self._task = asyncio.create_task(self._run(), name=f"corral-presence-{self.info.id}")
        log.info("presence: %s joined (instance %s, revision %d)", self.info.id, self._instance, self._revision)
        return self

    def __await__(self) -> Generator[Any, None, Membership]:
        return self.start().__await__()

    async def __aenter__(self) -> Membership:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.leave()

    async def update(self, **fields: Any) -> None:
        """Change the published info (e.g. ``inflight=3``); written at once, bursts coalesced.

        Raises :class:`InvalidInput` naming the field for an unknown field, an invalid value, or an
        id change.
        """
        self.change(**fields)

    def change(self, **fields: Any) -> None:
        """:meth:`update` for callers that cannot await: the write follows from the renewal task."""
        unknown = sorted(set(fields) - set(AgentInfo.model_fields))
        if unknown:
            raise InvalidInput(f"unknown AgentInfo field(s): {', '.join(unknown)}")
        if "id" in fields and fields["id"] != self.info.id:
            raise InvalidInput(f"id cannot change ({self.info.id!r} -> {fields['id']!r}); join with the new id instead")
        try:
            self.info = AgentInfo.model_validate({**self.info.model_dump(), **fields})
        except ValidationError as err:
            raise invalid_input(err) from None
        self._wake.set()

    async def leave(self) -> None:
        """Stop renewing and delete the key (a graceful DEL, only if it is still ours); idempotent."""
        if self._left:
            return
        self._left = True
        self._closing = True
        self.present.clear()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._revision and not (self.last_loss is not None and self.last_loss.reason == "taken"):
            await self._delete_own_key()
        self.ended.set()

    async def _delete_own_key(self) -> None:
        last = self._revision
        for _ in range(3):
            try:
                await self._store.delete(self.info.id, last=last, within=OP_TIMEOUT)
                log.info("presence: %s left", self.info.id)
                return
            except Exception as err:
                if not isinstance(err, Conflict):
                    log.warning(
                        "presence: %s could not delete its key (%s); it expires within the TTL", self.info.id, err
                    )
                    return
            # A renewal cancelled in flight may still have landed: delete that one if it is ours.
            try:
                current = await self._store.latest(self.info.id, within=OP_TIMEOUT, leader=True)
            except Exception as err:
                log.warning("presence: %s could not read its key (%s); it expires within the TTL", self.info.id, err)
                return
            if current is None or current.record is None or current.record.instance != self._instance:
                return  # gone already, or someone else's
            last = current.seq

    # --- renewing ------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._renew_forever()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug must not leave a process believing it is present
            log.exception("presence: renewal of %s failed unexpectedly", self.info.id)
            await self._lose("expired", f"renewal loop failed: {err}", rejoin=False)

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        retry = min(0.25, self.interval / 4)
        next_beat = self._last_ok_send + self.interval
        while not self._closing:
            delay = next_beat - loop.time()
            if delay > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel racing the wake
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                if self._closing:
                    return
                if self._wake.is_set():
                    self._wake.clear()
                    # An update: write now, but at most one write per _min_gap.
                    earliest = self._last_attempt + self._min_gap
                    if loop.time() < earliest:
                        await asyncio.sleep(earliest - loop.time())
            if self._closing:
                return
            now = loop.time()
            deadline = self._last_ok_send + self.enforced_ttl
            if now >= deadline:
                silent = now - self._last_ok_send
                await self._lose(
                    "expired", f"no renewal reached the server for {silent:.1f}s (TTL {self.ttl:g}s): {self._why(now)}"
                )
                if self.ended.is_set():
                    return
                next_beat = self._last_ok_send + self.interval
                continue
            self._last_attempt = now
            try:
                rev = await self._store.write(
                    self.info, self._instance, last=self._revision, ttl=self.ttl, within=deadline - now
                )
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if isinstance(err, Conflict) and await self._key_is_not_ours():
                    if self.ended.is_set():
                        return
                    next_beat = self._last_ok_send + self.interval
                else:
                    log.debug("presence: renewal of %s failed (%s); retrying", self.info.id, err)
                    next_beat = loop.time() + retry
                continue
            self._revision = rev
            self._last_ok_send = now
            self._last_ack = loop.time()
            next_beat = now + self.interval

    def _why(self, now: float) -> str:
        return silence_cause(
            now, sent=self._last_attempt, ok_sent=self._last_ok_send, acked=self._last_ack, interval=self.interval
        )

    async def _key_is_not_ours(self) -> bool:
        """After a failed compare-and-set: find out why, and handle a loss. False means retry."""
        try:
            current = await self._store.latest(self.info.id, within=OP_TIMEOUT, leader=True)
        except Exception as err:
            log.debug("presence: reading %s failed (%s); retrying", self.info.id, err)
            return False
        reason: LossReason
        if current is not None and current.record is not None:
            if current.record.instance == self._instance:
                self._revision = current.seq  # a renewal landed but its ack was lost
                return False
            reason, detail = (
                "taken",
                (f"another process (host {current.record.host}, pid {current.record.pid}) wrote the key"),
            )
        elif current is None or current.tombstone == "expired":
            reason, detail = "expired", "the key expired on the server"
        elif current.tombstone is not None:
            reason, detail = "deleted", "the key was deleted by someone else"
        else:
            return await self._replace_malformed(current.seq, current.problem)
        await self._lose(reason, detail)
        return True

    async def _replace_malformed(self, seq: int, problem: str) -> bool:
        """Our key holds a value corral did not write: write ours over it (CAS at ``seq``) and stay.

        Such a value is nobody's presence (watchers skip it), so it is no reason to give up the
        key: a forged write cannot evict a live agent. False: the renewal loop goes on (a lost race
        here is looked at again on the next renewal).
        """
        loop = asyncio.get_running_loop()
        log.warning(
            "presence: %s: replacing a value corral did not write at revision %d (%s)", self.info.id, seq, problem
        )
        sent = loop.time()
        try:
            self._revision = await self._store.write(
                self.info, self._instance, last=seq, ttl=self.ttl, within=OP_TIMEOUT
            )
        except Exception as err:
            log.debug("presence: replacing the value of %s failed (%s); retrying", self.info.id, err)
            return False
        self._last_ok_send = sent
        return False

    async def _lose(self, reason: LossReason, detail: str, *, rejoin: bool = True) -> None:
        rejoining = rejoin and self._rejoin and reason != "taken" and not self._closing
        err = MembershipLost(self.info.id, reason, detail, rejoining=rejoining)
        self.last_loss = err
        self.present.clear()
        self.lost.set()
        log.warning("presence: %s", err)
        await self._call_on_lost(err)
        if rejoining and not self._closing:
            await self._rejoin_fresh()
        else:
            self.ended.set()

    async def _call_on_lost(self, err: MembershipLost) -> None:
        if self._on_lost is None:
            return
        try:
            result = self._on_lost(err)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("presence: on_lost callback of %s failed", self.info.id)

    async def _rejoin_fresh(self) -> None:
        """Re-join with a new instance nonce; our old value, if still there, is deleted first."""
        loop = asyncio.get_running_loop()
        old_instance, instance = self._instance, _new_instance()
        nc = self._store.bucket.nc
        sent = 0.0

        async def attempt() -> int:
            nonlocal sent
            current = await self._store.latest(self.info.id, within=OP_TIMEOUT, leader=True)
            if current is not None and current.record is not None and current.record.instance == old_instance:
                # The server has not expired it yet, but we already gave it up: make the
                # departure visible (as an expiry) before coming back.
                await self._store.delete(self.info.id, last=current.seq, reason="expired", within=OP_TIMEOUT)
            sent = loop.time()
            return await self._store.create(self.info, instance, ttl=self.ttl, within=OP_TIMEOUT)

        try:
            rev = await retry_until_stopped(
                attempt,
                retry=lambda err: not isinstance(err, PresenceConflict) and not nc.is_closed,
                stopped=lambda: self._closing,
                what=f"presence: re-join of {self.info.id}",
                first=0.1,
                longest=REJOIN_MAX_DELAY,
            )
        except PresenceConflict as err:
            await self._lose("taken", str(err))
            return
        except Exception:
            if nc.is_closed:
                log.warning("presence: %s cannot re-join: its NATS connection was closed", self.info.id)
                self.ended.set()
            return  # or leaving
        self._instance, self._revision, self._last_ok_send = instance, rev, sent
        self._generation += 1
        self.lost.clear()
        self.present.set()
        log.info("presence: %s re-joined (instance %s, revision %d)", self.info.id, instance, rev)
