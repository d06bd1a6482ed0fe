"""Worker side of corral: the runtime that claims, runs, keeps leases and reports, plus handlers."""

from workers.context import Context
from workers.handlers import CommandHandler, Handler, HandlerError, as_handler, load_handler
from workers.runtime import Worker, WorkerStats, queue_consumer

__all__ = [
    "CommandHandler",
    "Context",
    "Handler",
    "HandlerError",
    "Worker",
    "WorkerStats",
    "as_handler",
    "load_handler",
    "queue_consumer",
]
