"""Telemetry options of the CLI: ``--trace env|none|console|otlp``, ``--metrics-port`` and ``--metrics-host``.

A command (or the global callback) declares the options with :data:`TraceOption`,
:data:`MetricsPortOption` and :data:`MetricsHostOption` and calls :func:`setup_telemetry` before it
connects (the Prometheus endpoint listens on loopback unless ``--metrics-host`` says otherwise)::

    def worker(..., trace: TraceOption = TraceChoice.env, metrics_port: MetricsPortOption = None):
        setup_telemetry(trace, service_name="corral-worker", metrics_port=metrics_port)

The default, ``env``, exports only what the standard ``OTEL_*`` variables ask for (nothing when
none are set); ``console`` prints one line per span on stderr for a quick look.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, cast

import typer

from coord import metrics, tracing
from coord.errors import CorralError
from corral.cli._bounds import PORT, bounded
from corral.cli._common import fail

__all__ = [
    "DEFAULT_METRICS_HOST",
    "MetricsHostOption",
    "MetricsPortOption",
    "TraceChoice",
    "TraceOption",
    "setup_telemetry",
]

DEFAULT_METRICS_HOST = "127.0.0.1"
"""Where ``--metrics-port`` listens by default: loopback only."""


class TraceChoice(StrEnum):
    """Values of ``--trace``."""

    env = "env"
    none = "none"
    console = "console"
    otlp = "otlp"


TraceOption = Annotated[
    TraceChoice,
    typer.Option(
        "--trace",
        envvar="CORRAL_TRACE",
        case_sensitive=False,
        help="Where spans go: env (standard OTEL_* variables; nothing if unset), none, console (stderr), "
        "otlp (OTLP over HTTP or gRPC; needs corral\\[otlp]).",
    ),
]
"""Typer annotation of the ``--trace`` option."""

MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        envvar="CORRAL_METRICS_PORT",
        callback=bounded(PORT),
        help="Serve Prometheus metrics on this port at /metrics (needs corral\\[prometheus]).",
    ),
]
"""Typer annotation of the ``--metrics-port`` option."""

MetricsHostOption = Annotated[
    str,
    typer.Option(
        "--metrics-host",
        envvar="CORRAL_METRICS_HOST",
        help="Address the --metrics-port endpoint listens on (0.0.0.0 for every interface).",
    ),
]
"""Typer annotation of the ``--metrics-host`` option (default :data:`DEFAULT_METRICS_HOST`)."""


def setup_telemetry(
    trace: TraceChoice | str = TraceChoice.env,
    *,
    service_name: str = "corral",
    metrics_port: int | None = None,
    metrics_host: str = DEFAULT_METRICS_HOST,
) -> None:
    """Configure tracing as ``trace`` says and metrics from ``OTEL_*`` (plus Prometheus on ``metrics_port``).

    The Prometheus endpoint listens on ``metrics_host`` only (loopback by default).

    A missing extra or a bad ``OTEL_*`` value ends the command with a one-line error naming it.
    """
    mode = TraceChoice(trace).value
    try:
        tracing.configure(cast(tracing.Mode, mode), service_name=service_name)
        if metrics_port is not None:
            metrics.serve_prometheus(metrics_port, host=metrics_host, service_name=service_name)
        else:
            metrics.configure("env", service_name=service_name)
    except CorralError as err:
        fail(str(err))
    except ValueError as err:
        # Not ours: the OpenTelemetry SDK raises a bare ValueError for some malformed OTEL_* values
        # (OTEL_BSP_SCHEDULE_DELAY=-5: "schedule_delay_millis must be positive.").
        fail(f"OpenTelemetry configuration (OTEL_* environment variables): {err}")
