"""The one error hierarchy of corral.

Every error corral raises on purpose derives from :class:`CorralError`, so callers can catch the
whole family in one place. Bad identifiers raise :class:`InvalidId`, which is also a ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "ClaimLost",
    "ConfigConflict",
    "Conflict",
    "ConnectionFailed",
    "CorralError",
    "InvalidId",
    "InvalidInput",
    "InvalidTransition",
    "NotFound",
    "PayloadTooLarge",
    "PresenceConflict",
    "PresenceLost",
    "ServerUnsupported",
    "StaleClaim",
    "TaskExists",
]


class CorralError(Exception):
    """Base class of every error corral raises on purpose."""


class InvalidId(CorralError, ValueError):
    """An id, namespace or key is not a valid token; raised before anything touches NATS."""


class ConnectionFailed(CorralError):
    """The initial connection to NATS could not be made; the message names the URL."""


class ServerUnsupported(CorralError):
    """The server lacks something corral needs (JetStream, or version >= 2.11)."""


class ConfigConflict(CorralError):
    """A bucket or stream already exists with a configuration that conflicts with ours."""


class NotFound(CorralError):
    """The named record (task, agent, session, …) does not exist."""


class Conflict(CorralError):
    """A compare-and-set lost a race: someone else changed the record first."""


class TaskExists(Conflict):
    """A task with this id already exists with a different definition."""


class InvalidTransition(CorralError):
    """The record's current status does not allow the requested transition."""


class StaleClaim(CorralError):
    """The claim presented is no longer the current claim of the task (reclaimed, expired or replaced)."""


class ClaimLost(StaleClaim):
    """The worker gave up its claim itself (its presence was lost, or it is shutting down)."""


class PresenceConflict(CorralError):
    """Another live process already holds this agent id."""


class PresenceLost(CorralError):
    """This process's own presence key was lost or taken over; it must stop taking work."""


class InvalidInput(CorralError, ValueError):
    """An argument is malformed (wrong type, not JSON, out of range); raised before anything is written."""


class PayloadTooLarge(InvalidInput):
    """A record or message would exceed the server's max payload; nothing was written."""
