"""Metrics: corral's OpenTelemetry instruments and how this process exports them.

:func:`instruments` gives the process-wide :class:`Instruments` (counters, histograms, gauges named
``corral.tasks.submitted`` ...). They are created from OpenTelemetry's proxy meter, so they cost
next to nothing until :func:`configure` (or :func:`serve_prometheus`, or the application) installs
a meter provider, and start recording from then on. Nothing is exported unless configured.

Attributes stay low-cardinality: ``messaging.system`` and the queue (``messaging.destination.name``),
never task ids. Durations are in seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
from opentelemetry.metrics import _Gauge as Gauge  # the synchronous gauge; public API, underscored name
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.util.types import AttributeValue

from coord.errors import CorralError
from coord.tracing import otlp_exporter, service_resource

__all__ = [
    "DURATION_BUCKETS",
    "Instruments",
    "MetricsMode",
    "configure",
    "configured_mode",
    "force_flush",
    "instruments",
    "serve_prometheus",
]

log = logging.getLogger("corral.metrics")

MetricsMode = Literal["none", "console", "otlp", "env"]
"""Where metrics go: nowhere, stderr, OTLP, or whatever ``OTEL_METRICS_EXPORTER`` says."""

DURATION_BUCKETS: Sequence[float] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
"""Histogram bucket bounds (seconds): sub-millisecond claims up to half-hour runs."""


class Instruments:
    """corral's metric instruments, created from ``meter`` (default: the global ``corral`` meter).

    Who records what: the dispatcher counts ``submitted``; a worker counts ``claimed``,
    ``succeeded``, ``failed``, ``dead`` (when its failure exhausts the attempts), keeps
    ``in_flight`` and records ``claim_wait`` and ``run_time``; a reclaimer counts ``reclaimed``
    (and ``dead`` when a reclaim exhausts the attempts), records ``detection_latency`` and sets the
    ``queue_depth`` and ``presence_size`` gauges from what it observes.
    """

    def __init__(self, meter: Meter | None = None) -> None:
        m = meter or metrics.get_meter("corral")
        task = "{task}"
        self.submitted: Counter = m.create_counter("corral.tasks.submitted", task, "Tasks submitted")
        """Tasks submitted (new records; an idempotent re-submit of the same task is not counted)."""
        self.claimed: Counter = m.create_counter("corral.tasks.claimed", task, "Claims won by workers")
        """Claims won (one per attempt that started)."""
        self.succeeded: Counter = m.create_counter("corral.tasks.succeeded", task, "Tasks completed successfully")
        """Tasks that completed successfully."""
        self.failed: Counter = m.create_counter("corral.tasks.failed", task, "Attempts that failed")
        """Attempts that failed (the task may still be retried)."""
        self.dead: Counter = m.create_counter("corral.tasks.dead", task, "Tasks that exhausted their attempts")
        """Tasks moved to ``dead`` (attempts exhausted)."""
        self.reclaimed: Counter = m.create_counter("corral.tasks.reclaimed", task, "Claims taken back from workers")
        """Claims taken back from a worker that left, hung or passed its deadline."""
        self.cas_retries: Counter = m.create_counter(
            "corral.cas.retries", "{retry}", "Compare-and-set attempts that lost a race and were retried"
        )
        """Compare-and-set attempts that lost a race and were retried."""
        self.in_flight: UpDownCounter = m.create_up_down_counter(
            "corral.tasks.in_flight", task, "Tasks claimed and not yet settled, by this process"
        )
        """Claimed, not yet settled: +1 on claim, -1 on complete/fail/abandon (summed over processes)."""
        self.queue_depth: Gauge = m.create_gauge("corral.queue.depth", task, "Notifications waiting in a queue")
        """Notifications waiting in a queue's dispatch consumer (as last observed)."""
        self.presence_size: Gauge = m.create_gauge("corral.presence.size", "{agent}", "Agents present")
        """Agents present in the namespace (as last observed)."""
        self.claim_wait: Histogram = m.create_histogram(
            "corral.task.claim_wait",
            "s",
            "Time from submit (or becoming visible again) to claim",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        """Seconds from submit (or from becoming visible again after a retry/reclaim) to the claim."""
        self.run_time: Histogram = m.create_histogram(
            "corral.task.run_time",
            "s",
            "Time a handler ran, claim to settle",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        """Seconds from claim to complete/fail."""
        self.detection_latency: Histogram = m.create_histogram(
            "corral.reclaim.detection_latency",
            "s",
            "Time from a worker's last heartbeat to the reclaim of its claim",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        """Seconds from the worker's last heartbeat to the reclaim of its claim."""
        self._attrs: dict[str | None, dict[str, AttributeValue]] = {}

    def attrs(self, queue: str | None = None) -> dict[str, AttributeValue]:
        """The attributes of a measurement about ``queue`` (cached: the hot path allocates nothing)."""
        cached = self._attrs.get(queue)
        if cached is None:
            cached = {"messaging.system": "nats"}
            if queue is not None:
                cached["messaging.destination.name"] = queue
            self._attrs[queue] = cached
        return cached


_instruments: Instruments | None = None


def instruments() -> Instruments:
    """The process-wide :class:`Instruments` on the global meter (created on first use)."""
    global _instruments
    if _instruments is None:
        _instruments = Instruments()
    return _instruments


# --- configuration -------------------------------------------------------------------------------


@dataclass
class _State:
    provider: MeterProvider | None = None
    key: tuple[object, ...] | None = None
    mode: str | None = None


_state = _State()
_lock = threading.Lock()


def _prometheus_reader() -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import (  # type: ignore[import-not-found,unused-ignore]
            PrometheusMetricReader,
        )
    except ImportError as err:
        raise CorralError(
            f"a Prometheus scrape endpoint needs the Prometheus exporter: pip install 'corral[prometheus]' ({err})"
        ) from None
    return cast(MetricReader, PrometheusMetricReader())


def _start_prometheus_server(port: int, addr: str) -> None:
    try:
        from prometheus_client import start_http_server  # type: ignore[import-not-found,unused-ignore]
    except ImportError as err:  # pragma: no cover - the extra installs both packages
        raise CorralError(f"pip install 'corral[prometheus]' ({err})") from None
    try:
        start_http_server(port, addr)
    except OSError as err:
        raise CorralError(f"cannot serve Prometheus metrics on {addr}:{port}: {err}") from None


def _env_exporter_names() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_METRICS_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [] if "none" in names else names
    # Nothing unless asked (OTel's own default would be "otlp"); an OTLP endpoint is asking.
    if os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def _readers(mode: MetricsMode) -> tuple[list[MetricReader], int | None, str]:
    """Readers for ``mode`` plus the Prometheus port/address ``OTEL_METRICS_EXPORTER`` asked for."""
    if mode == "none":
        return [], None, ""
    if mode == "console":
        return [PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr))], None, ""
    if mode == "otlp":
        return [PeriodicExportingMetricReader(cast(MetricExporter, otlp_exporter("metrics")))], None, ""
    if mode != "env":
        raise ValueError(f"metrics mode must be one of none, console, otlp, env; got {mode!r}")
    readers: list[MetricReader] = []
    prom_port: int | None = None
    prom_addr = ""
    for name in _env_exporter_names():
        if name == "otlp":
            readers.append(PeriodicExportingMetricReader(cast(MetricExporter, otlp_exporter("metrics"))))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        elif name == "prometheus":
            prom_addr = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
            raw = os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
            try:
                prom_port = int(raw)
            except ValueError:
                raise CorralError(f"OTEL_EXPORTER_PROMETHEUS_PORT must be a port number, got {raw!r}") from None
        else:
            raise CorralError(f"OTEL_METRICS_EXPORTER={name!r} is not supported; use otlp, console, prometheus or none")
    return readers, prom_port, prom_addr


def configure(
    mode: MetricsMode = "env",
    *,
    service_name: str = "corral",
    prometheus_port: int | None = None,
    prometheus_addr: str = "0.0.0.0",
) -> None:
    """Choose where this process's metrics go; once per process (OpenTelemetry fixes readers).

    Modes as in :func:`coord.tracing.configure`; ``"env"`` reads ``OTEL_METRICS_EXPORTER``
    (``otlp``, ``console``, ``prometheus``, ``none``) and otherwise exports over OTLP only when an
    ``OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`` is set. The export interval follows
    ``OTEL_METRIC_EXPORT_INTERVAL`` (default 60 s). ``prometheus_port`` also serves a scrape
    endpoint (needs ``corral[prometheus]``). Calling again with the same arguments does nothing;
    with different ones after metrics were installed raises :class:`~coord.errors.CorralError`.
    An application's own meter provider is left alone.
    """
    if prometheus_port is not None and not 0 <= prometheus_port <= 65535:
        raise ValueError(f"prometheus_port must be a TCP port (0-65535), got {prometheus_port}")
    with _lock:
        key = (mode, prometheus_port, prometheus_addr)
        if key == _state.key:
            return
        if _state.provider is not None:
            raise CorralError(
                f"metrics are already exported as {_state.mode!r}; OpenTelemetry allows one meter provider per "
                f"process, so configure metrics (and the Prometheus port) once, at start-up"
            )
        readers, env_port, env_addr = _readers(mode)
        if prometheus_port is None and env_port is not None:
            prometheus_port, prometheus_addr = env_port, env_addr
        if prometheus_port is not None:
            readers.append(_prometheus_reader())
        if not readers:
            _state.key, _state.mode = key, mode
            return
        provider = MeterProvider(metric_readers=readers, resource=service_resource(service_name))
        metrics.set_meter_provider(provider)  # refuses (with a warning) if the app installed its own
        if metrics.get_meter_provider() is not provider:
            log.info("a meter provider is already installed by the application; corral leaves it alone")
            provider.shutdown()
            _state.key, _state.mode = key, mode
            return
        if prometheus_port is not None:
            _start_prometheus_server(prometheus_port, prometheus_addr)
        _state.provider, _state.key, _state.mode = provider, key, mode


def serve_prometheus(port: int, *, addr: str = "0.0.0.0", service_name: str = "corral") -> None:
    """Serve this process's metrics for Prometheus to scrape at ``http://{addr}:{port}/metrics``.

    Also exports whatever ``OTEL_METRICS_EXPORTER``/OTLP endpoint variables ask for. Call it once,
    instead of :func:`configure`. Raises :class:`~coord.errors.CorralError` naming
    ``corral[prometheus]`` when that extra is not installed.
    """
    _prometheus_reader()  # fail on a missing extra before touching any global state
    configure("env", service_name=service_name, prometheus_port=port, prometheus_addr=addr)


def configured_mode() -> str | None:
    """The mode of the effective :func:`configure` call, or None if it was never called."""
    return _state.mode


def force_flush(timeout: float = 5.0) -> bool:
    """Export the metrics collected so far (before a process exits); True if done in time."""
    provider = _state.provider
    return provider.force_flush(int(timeout * 1000)) if provider is not None else True
