"""The one error hierarchy of corral.

Every error corral raises on purpose derives from :class:`CorralError`, so callers can catch the
whole family in one place. Errors about bad input (:class:`InvalidInput`, :class:`InvalidId`) are
also ``ValueError``; :class:`Unavailable` is also a ``TimeoutError``, so code written against the
builtin families keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationFailed",
    "ConfigConflict",
    "Conflict",
    "ConnectionFailed",
    "CorralError",
    "HandlerError",
    "InvalidId",
    "InvalidInput",
    "InvalidRecord",
    "InvalidTransition",
    "KeyExists",
    "NotFound",
    "NotProvisioned",
    "NotYetVisible",
    "PayloadTooLarge",
    "PermissionDenied",
    "PresenceConflict",
    "PresenceLost",
    "ReplicasUnavailable",
    "ServerUnsupported",
    "StaleClaim",
    "TLSFailed",
    "TaskExists",
    "Unavailable",
]


class CorralError(Exception):
    """Base class of every error corral raises on purpose."""


class InvalidInput(CorralError, ValueError):
    """An argument is malformed (wrong type, not JSON, out of range); raised before anything is written."""


class InvalidId(InvalidInput):
    """An id, namespace or key is not a valid token; raised before anything touches NATS."""


class PayloadTooLarge(InvalidInput):
    """A record or message would exceed the server's max payload; nothing was written."""


class ConnectionFailed(CorralError):
    """The initial connection to NATS could not be made; the message names the URL."""


class AuthenticationFailed(ConnectionFailed):
    """The server refused the credentials (password, token, nkey, creds); the message names the URL and the kind."""


class TLSFailed(ConnectionFailed):
    """TLS was asked for and could not be established (server without TLS, bad CA, name mismatch, missing file)."""


class PermissionDenied(CorralError):
    """The server refused an operation for this connection's credentials; the message names the subject."""


class NotProvisioned(CorralError):
    """A stream or bucket of the namespace is missing or differs and this role may not fix it (``corral provision``)."""


class ServerUnsupported(CorralError):
    """The server lacks something corral needs (JetStream, or version >= 2.11)."""


class ConfigConflict(CorralError):
    """A bucket or stream already exists with a configuration that conflicts with ours."""


class Unavailable(CorralError, TimeoutError):
    """The server did not answer within the patience of the call (restart, election, partition)."""


class ReplicasUnavailable(Unavailable):
    """Too few JetStream servers are up (or match the placement) to hold a stream's replicas right now."""


class NotFound(CorralError):
    """The named record (task, agent, session, …) does not exist."""


class InvalidRecord(CorralError):
    """A stored value (or a message) is not what corral wrote there: malformed, or from a foreign writer."""


class Conflict(CorralError):
    """A compare-and-set lost a race: someone else changed the record first."""


class KeyExists(Conflict):
    """A create found a live value under the key; ``entry`` is what is there (a :class:`coord.kv.Entry`)."""

    def __init__(self, message: str, entry: Any = None) -> None:
        super().__init__(message)
        self.entry = entry
        """The entry found under the key."""


class TaskExists(Conflict):
    """A task with this id already exists with a different definition."""


class InvalidTransition(CorralError):
    """The record's current status does not allow the requested transition."""


class NotYetVisible(InvalidTransition):
    """The task is pending but may not be claimed before ``visible_at`` (a retry backoff or a delay)."""

    def __init__(self, message: str, visible_at: Any = None) -> None:
        super().__init__(message)
        self.visible_at = visible_at
        """When the task becomes claimable (a timezone-aware datetime)."""


class StaleClaim(CorralError):
    """The claim presented is no longer the current claim of the task (reclaimed, expired or replaced)."""


class PresenceConflict(CorralError):
    """Another live process already holds this agent id."""


class PresenceLost(CorralError):
    """This process's own presence key was lost or taken over; it must stop taking work."""


class HandlerError(CorralError):
    """A task handler failed without producing a Result (the message says how)."""
