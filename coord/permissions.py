"""What the server refused this connection: :class:`PermissionLog`.

A NATS server answers a publish or subscribe that the credentials do not allow with an
asynchronous ``-ERR 'Permissions Violation …'``; the connection stays up and the request behind it
simply never gets an answer. The log records each refusal (from the connection's error callback)
so a call that would otherwise time out can fail at once with :class:`coord.errors.PermissionDenied`
naming the subject.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from dataclasses import dataclass
from types import TracebackType

from nats.aio.client import Client as NATS

from coord.errors import PermissionDenied

__all__ = ["PermissionLog", "Refusal", "RefusalGuard", "permission_log"]

_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"\s]+)\"?", re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """One refusal: the operation (``publish`` or ``subscription``), the subject, and when (monotonic)."""

    operation: str
    subject: str
    """The refused subject, lowercased (as nats-py reports it)."""
    at: float
    awaited: bool = False
    """A call was waiting for it (a guard or :meth:`PermissionLog.next`), so it surfaces as an error there."""

    def error(self) -> PermissionDenied:
        """The corral error that reports this refusal."""
        verb = "publish to" if self.operation == "publish" else "subscribe to"
        return PermissionDenied(
            f"the NATS server refused to let this connection {verb} {self.subject!r}: its credentials "
            f"do not allow it (see docs/security.md for each role's permissions)"
        )


class PermissionLog:
    """The refusals of one connection, newest last (bounded), with a way to wait for the next one."""

    def __init__(self, keep: int = 64) -> None:
        self._keep = keep
        self.refusals: list[Refusal] = []
        """Recent refusals, oldest first."""
        self._changed = asyncio.Event()
        self._guards: dict[str, list[RefusalGuard]] = {}
        self._waiting = 0

    def guard(self, subject: str) -> RefusalGuard:
        """A ``with`` block in which a refusal of ``subject`` ends the wait with :class:`PermissionDenied`.

        The server never answers a refused publish: without this a request to ``subject`` would
        wait out its timeout (and be retried as if the server were away).
        """
        return RefusalGuard(self, subject.lower())

    def record(self, message: str) -> Refusal | None:
        """Record ``message`` if it is a permissions violation; return the refusal (None otherwise)."""
        found = _VIOLATION.search(message)
        if found is None:
            return None
        # nats-py lowercases the server's error text, subject included: compare subjects lowercased
        subject = found.group(2).lower()
        guards = self._guards.get(subject, ())
        refusal = Refusal(found.group(1).lower(), subject, time.monotonic(), awaited=bool(guards) or self._waiting > 0)
        self.refusals.append(refusal)
        del self.refusals[: -self._keep]
        self._changed.set()
        self._changed = asyncio.Event()
        for guard in list(guards):
            guard.refuse(refusal)
        return refusal

    def since(self, started: float, subject_prefix: str | None = None) -> Refusal | None:
        """The latest refusal recorded at or after ``started`` (for a subject starting with the prefix)."""
        for refusal in reversed(self.refusals):
            if refusal.at < started:
                return None
            if subject_prefix is None or refusal.subject.startswith(subject_prefix):
                return refusal
        return None

    async def next(self) -> Refusal:
        """Wait for the next refusal."""
        self._waiting += 1
        try:
            await self._changed.wait()
        finally:
            self._waiting -= 1
        return self.refusals[-1]


class RefusalGuard:
    """See :meth:`PermissionLog.guard`: cancels the task in the block when its subject is refused."""

    __slots__ = ("_log", "_subject", "_task", "refusal")

    def __init__(self, log: PermissionLog, subject: str) -> None:
        self._log = log
        self._subject = subject
        self._task: asyncio.Task[object] | None = None
        self.refusal: Refusal | None = None
        """The refusal that ended the block, if one did."""

    def __enter__(self) -> RefusalGuard:
        self._task = asyncio.current_task()
        self._log._guards.setdefault(self._subject, []).append(self)
        return self

    def refuse(self, refusal: Refusal) -> None:
        """End the block with ``refusal`` (once)."""
        if self.refusal is None and self._task is not None:
            self.refusal = refusal
            self._task.cancel()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        guards = self._log._guards.get(self._subject)
        if guards is not None:
            guards.remove(self)
            if not guards:
                del self._log._guards[self._subject]
        if self.refusal is not None and self._task is not None:
            self._task.uncancel()
            if exc_type is asyncio.CancelledError:
                raise self.refusal.error() from None


_LOGS: weakref.WeakKeyDictionary[NATS, PermissionLog] = weakref.WeakKeyDictionary()


def permission_log(nc: NATS) -> PermissionLog:
    """The log of ``nc`` (created on first use; lives as long as the connection object)."""
    log = _LOGS.get(nc)
    if log is None:
        log = _LOGS[nc] = PermissionLog()
    return log
