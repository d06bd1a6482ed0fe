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

from nats.aio.client import Client as NATS

from coord.errors import PermissionDenied

__all__ = ["PermissionLog", "Refusal", "permission_log"]

_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"\s]+)\"?", re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """One refusal: the operation (``publish`` or ``subscription``), the subject, and when (monotonic)."""

    operation: str
    subject: str
    at: float

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

    def record(self, message: str) -> Refusal | None:
        """Record ``message`` if it is a permissions violation; return the refusal (None otherwise)."""
        found = _VIOLATION.search(message)
        if found is None:
            return None
        refusal = Refusal(found.group(1).lower(), found.group(2), time.monotonic())
        self.refusals.append(refusal)
        del self.refusals[: -self._keep]
        self._changed.set()
        self._changed = asyncio.Event()
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
        await self._changed.wait()
        return self.refusals[-1]


_LOGS: weakref.WeakKeyDictionary[NATS, PermissionLog] = weakref.WeakKeyDictionary()


def permission_log(nc: NATS) -> PermissionLog:
    """The log of ``nc`` (created on first use; lives as long as the connection object)."""
    log = _LOGS.get(nc)
    if log is None:
        log = _LOGS[nc] = PermissionLog()
    return log
