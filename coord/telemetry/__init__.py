"""Telemetry: OpenTelemetry spans and metrics behind the observer seam, and their one setup.

:class:`coord.telemetry.observer.OtelObserver` is the :class:`coord.tasks.Observer` every
connection uses by default; :func:`configure` (and :func:`configure_traces` /
:func:`configure_metrics`) decide where this process's spans and metrics go. See
``docs/observability.md``.
"""

from coord.telemetry.setup import (
    Mode,
    configure,
    configure_metrics,
    configure_traces,
    enabled,
    force_flush,
    serve_prometheus,
)

__all__ = [
    "Mode",
    "configure",
    "configure_metrics",
    "configure_traces",
    "enabled",
    "force_flush",
    "serve_prometheus",
]
