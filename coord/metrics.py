"""Metrics: corral's OpenTelemetry instruments and how this process exports them.

:func:`instruments` gives the process-wide :class:`Instruments` (counters, histograms, gauges named
``corral.tasks.submitted`` ...). They are created from OpenTelemetry's proxy meter, so they cost
next to nothing until :func:`configure` (or :func:`serve_prometheus`, or the application) installs
a meter provider, and start recording from then on. Nothing is exported unless configured; the
setup lives in :mod:`coord.telemetry.setup`.

Attributes stay low-cardinality: ``messaging.system`` and the queue (``messaging.destination.name``),
never task ids. Durations are in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
from opentelemetry.metrics import _Gauge as Gauge  # the synchronous gauge; public API, underscored name
from opentelemetry.util.types import AttributeValue

from coord.telemetry.setup import Mode, configure_metrics, force_flush, metrics_mode, serve_prometheus

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

MetricsMode = Mode
"""Where metrics go: nowhere, stderr, OTLP, or whatever ``OTEL_METRICS_EXPORTER`` says."""

configure = configure_metrics
"""Where this process's metrics go (see :func:`coord.telemetry.setup.configure_metrics`)."""

configured_mode = metrics_mode
"""The mode of the effective :func:`configure` call, or None."""

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
