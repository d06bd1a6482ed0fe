"""corral's substrate: connection, embedded server, presence, tasks, mailbox, events, registry.

``coord`` knows nothing of ``dispatch`` or ``workers``; both build on it. :func:`connect` is the
composition root: it builds every service of a namespace from one :class:`Settings`.
"""

from coord.backoff import Backoff
from coord.connection import DEFAULT_NAMESPACE, DEFAULT_URL, Auth, Coord, Provision, connect
from coord.errors import (
    AuthenticationFailed,
    ConfigConflict,
    Conflict,
    ConnectionFailed,
    CorralError,
    HandlerError,
    InvalidId,
    InvalidInput,
    InvalidRecord,
    InvalidTransition,
    KeyExists,
    NotFound,
    NotProvisioned,
    NotYetVisible,
    PayloadTooLarge,
    PermissionDenied,
    PresenceConflict,
    PresenceLost,
    ReplicasUnavailable,
    ServerUnsupported,
    StaleClaim,
    TaskExists,
    TLSFailed,
    Unavailable,
)
from coord.server import NatsCluster, NatsServer
from coord.settings import Settings
from coord.tasks.observer import Observer, Scope, Submission
from coord.telemetry.observer import OtelObserver

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_URL",
    "Auth",
    "AuthenticationFailed",
    "Backoff",
    "ConfigConflict",
    "Conflict",
    "ConnectionFailed",
    "Coord",
    "CorralError",
    "HandlerError",
    "InvalidId",
    "InvalidInput",
    "InvalidRecord",
    "InvalidTransition",
    "KeyExists",
    "NatsCluster",
    "NatsServer",
    "NotFound",
    "NotProvisioned",
    "NotYetVisible",
    "Observer",
    "OtelObserver",
    "PayloadTooLarge",
    "PermissionDenied",
    "PresenceConflict",
    "PresenceLost",
    "Provision",
    "ReplicasUnavailable",
    "Scope",
    "ServerUnsupported",
    "Settings",
    "StaleClaim",
    "Submission",
    "TLSFailed",
    "TaskExists",
    "Unavailable",
    "connect",
]
