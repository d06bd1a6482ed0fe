"""What a join does when another value holds its agent id: take it back, wait, or refuse.

A predecessor that is provably gone (:func:`coord.presence.identity.judge`: this host and boot, its
pid no longer running) is replaced at once, by a compare-and-set at its revision (with a TTL, like
every presence write). One that cannot be proved gone (another host, another container, an older
version) is waited for until its key expires — said once, with the expected wait — and turns out
alive if it renews the key meanwhile. A live holder is refused by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from coord.errors import Conflict
from coord.presence._store import IdHeld, Latest, PresenceStore
from coord.presence.identity import Judgement, Verdict, judge, local_process, process_start
from coord.presence.models import AgentInfo, HolderWait
from coord.presence.timing import enforced_ttl
from coord.presence.watcher import next_change

__all__ = ["EXPIRY_SLACK", "HeldId", "WaitCallback"]

log = logging.getLogger("corral.presence")

WaitCallback = Callable[[HolderWait], None]
"""Called once when a join starts waiting for a holder it cannot prove gone."""

EXPIRY_SLACK = 2.0
"""Seconds past a holder's expected expiry before its key is read again (expiry timer steps, clock skew)."""


class HeldId:
    """One join's dealings with the holders of its id; :meth:`close` when the join is over."""

    def __init__(
        self, store: PresenceStore, info: AgentInfo, instance: str, *, ttl: float, on_wait: WaitCallback | None
    ) -> None:
        self._store = store
        self._info = info
        self._instance = instance
        self._ttl = ttl
        self._on_wait = on_wait
        self._told: HolderWait | None = None

    async def resolve(self, held: IdHeld) -> int | Judgement | None:
        """Our new revision if the holder was gone and we replaced it; None to look again (it
        expired or changed); a judgement that it is alive (the caller refuses or waits for it)."""
        verdict = judge(held.record.process_facts(), local_process(), process_start)
        if verdict.verdict is Verdict.GONE:
            return await self._replace(held, verdict.why)
        if verdict.verdict is Verdict.UNPROVEN:
            self._tell(held, verdict.why)
            if not await self._renewed_meanwhile(held):
                return None
            return Judgement(Verdict.ALIVE, "it renewed its key while we waited")
        return verdict

    def close(self) -> None:
        """The join is over: end the wait it announced, if any."""
        if self._told is not None:
            self._told.ended.set()

    async def _replace(self, held: IdHeld, why: str) -> int | None:
        holder = held.record
        try:
            revision = await self._store.write(self._info, self._instance, last=held.holder.seq, ttl=self._ttl)
        except Conflict:
            return None  # someone wrote the key meanwhile: look again
        log.warning(
            "presence: %s: took the id over from its previous holder (host %s, pid %d, instance %s): %s",
            self._info.id,
            holder.host,
            holder.pid,
            holder.instance,
            why,
        )
        return revision

    def _tell(self, held: IdHeld, why: str) -> None:
        """Say once that we wait for a holder we cannot prove gone, and for how long."""
        if self._told is not None:
            return
        wait = HolderWait(self._info.id, held.record.info(), why, self._expected_expiry(held.holder))
        self._told = wait
        log.warning(
            "presence: agent id %r is held by host %s, pid %d, which cannot be proved gone: %s; "
            "waiting up to %.0fs for its key to expire",
            self._info.id,
            wait.holder.host,
            wait.holder.pid,
            why,
            wait.seconds,
        )
        if self._on_wait is not None:
            try:
                self._on_wait(wait)
            except Exception:
                log.exception("presence: on_wait callback of %s failed", self._info.id)

    def _expected_expiry(self, holder: Latest) -> float:
        """Seconds until ``holder`` expires unless renewed (its TTL from when the server stored it)."""
        ttl = enforced_ttl(self._ttl) if holder.ttl is None else holder.ttl
        age = (datetime.now(UTC) - holder.at).total_seconds()
        return min(max(ttl - age, 0.0), ttl)

    async def _renewed_meanwhile(self, held: IdHeld) -> bool:
        """Wait for the holder's key to change; True if the change is the same holder renewing it."""
        patience = self._expected_expiry(held.holder) + EXPIRY_SLACK
        change = await next_change(self._store, self._info.id, held.holder.seq, patience)
        return change is not None and change.record is not None and change.record.instance == held.record.instance
