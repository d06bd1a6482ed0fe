"""corral's substrate: connection, embedded server, presence, tasks, mailbox, events, registry.

``coord`` knows nothing of ``dispatch`` or ``workers``; both build on it.
"""

from coord.connection import DEFAULT_NAMESPACE, DEFAULT_URL, Auth, Coord, connect
from coord.errors import (
    Conflict,
    CorralError,
    InvalidId,
    InvalidTransition,
    NotFound,
    StaleClaim,
    TaskExists,
)
from coord.server import NatsCluster, NatsServer

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_URL",
    "Auth",
    "Conflict",
    "Coord",
    "CorralError",
    "InvalidId",
    "InvalidTransition",
    "NatsCluster",
    "NatsServer",
    "NotFound",
    "StaleClaim",
    "TaskExists",
    "connect",
]
