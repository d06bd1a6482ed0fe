"""Where this process's spans and metrics go: one setup, one state, one lock.

Nothing is exported unless configured. The OpenTelemetry SDK does its own share of the
environment: the sampler (``OTEL_TRACES_SAMPLER``), batching (``OTEL_BSP_*``), the metric export
interval (``OTEL_METRIC_EXPORT_INTERVAL``), the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``) and each exporter's endpoint, headers and timeouts
(``OTEL_EXPORTER_OTLP_*``). Exporters are found the SDK's way too, by name among the installed
``opentelemetry_{traces|metrics}_exporter`` entry points. corral itself decides only what the SDK
leaves to an auto-instrumentation agent: which exporters ``OTEL_{TRACES|METRICS}_EXPORTER`` names
(none unless asked: an OTLP endpoint in the environment is asking), the OTLP protocol
(``http/protobuf`` unless ``OTEL_EXPORTER_OTLP_(…_)PROTOCOL`` says ``grpc``), ``console`` (one
line per span on stderr, not the SDK's JSON on stdout), and the Prometheus scrape endpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal, TextIO, cast

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span
from opentelemetry.util.types import Attributes

from coord.errors import CorralError, InvalidInput

__all__ = [
    "Mode",
    "configure",
    "configure_metrics",
    "configure_traces",
    "configured_mode",
    "enabled",
    "force_flush",
    "metrics_mode",
    "otlp_exporter",
    "sdk_tracer",
    "serve_prometheus",
    "service_resource",
]

log = logging.getLogger("corral.telemetry")

Mode = Literal["none", "console", "otlp", "env"]
"""Where a signal goes: nowhere, stderr, OTLP, or whatever the ``OTEL_*`` variables say."""

_MODES = ("none", "console", "otlp", "env")
Signal = Literal["traces", "metrics"]


# --- resources and exporters ---------------------------------------------------------------------


def service_resource(service_name: str) -> Resource:
    """The resource of this process: ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` win over ``service_name``."""
    return Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())


def _sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def _entry_point(signal: Signal, name: str) -> Any:
    group = f"opentelemetry_{signal}_exporter"
    found = entry_points(group=group, name=name)
    return next(iter(found), None)


def otlp_exporter(signal: Signal) -> Any:
    """A new OTLP exporter for ``signal``, over the protocol the standard variables name.

    ``OTEL_EXPORTER_OTLP_{TRACES|METRICS}_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``:
    ``http/protobuf`` (the default) or ``grpc``; endpoint, headers and timeouts are read by the
    exporter itself. Raises :class:`CorralError` naming the ``corral[otlp]`` extra when the exporter
    is not installed, and naming the variable for an unsupported protocol.
    """
    noun = "trace" if signal == "traces" else "metric"
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    ).strip() or "http/protobuf"
    name = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol)
    if name is None:
        raise CorralError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported for {signal}; use 'http/protobuf' or 'grpc'"
        )
    missing = f"OTLP {noun} export over {protocol} needs the OTLP exporter packages: pip install 'corral[otlp]'"
    point = _entry_point(signal, name)
    if point is None:
        raise CorralError(f"{missing} (no {name!r} exporter is installed)")
    try:
        return point.load()()
    except ImportError as err:
        raise CorralError(f"{missing} ({err})") from None


def _named_exporter(signal: Signal, name: str, console: Any) -> Any:
    if name == "otlp":
        return otlp_exporter(signal)
    if name == "console":
        return console
    point = _entry_point(signal, name)
    if point is None:
        available = sorted(
            {"otlp", "console", *(p.name for p in entry_points(group=f"opentelemetry_{signal}_exporter"))}
        )
        raise CorralError(
            f"OTEL_{signal.upper()}_EXPORTER={name!r} is not supported (no exporter of that name is installed; "
            f"use one of: {', '.join(available)}, none)"
        )
    return point.load()()


def _env_exporter_names(signal: Signal) -> list[str]:
    if _sdk_disabled():
        return []
    raw = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if names:
        return [] if "none" in names else names
    # OTel's own default is "otlp", but corral exports nothing unless asked: an OTLP endpoint in the
    # environment is such a request.
    if os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def _check_mode(mode: str, signal: Signal) -> None:
    if mode not in _MODES:
        raise InvalidInput(f"{signal} mode must be one of {', '.join(_MODES)}; got {mode!r}")


# --- traces ----------------------------------------------------------------------------------------


def _console_line(span: ReadableSpan) -> str:
    ctx = span.context
    duration = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else "-"
    attrs = " ".join(k + "=" + str(v) for k, v in (span.attributes or {}).items() if not k.startswith("messaging."))
    status = "" if span.status.is_ok else f" status={span.status.status_code.name}"
    extras = "".join(f" event={e.name}" for e in span.events) + "".join(
        f" link={link.context.span_id:016x}" for link in span.links
    )
    trace_id = f"{ctx.trace_id:032x}" if ctx is not None else "-"
    span_id = f"{ctx.span_id:016x}" if ctx is not None else "-"
    return (
        f"[trace] {span.name} {duration:.2f}ms trace={trace_id} span={span_id} parent={parent}"
        f"{status} {attrs}{extras}\n"
    )


class _ConsoleExporter(SpanExporter):
    """One human line per span on stderr (stdout stays free for a command's own output)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    def export(self, spans: Iterable[ReadableSpan]) -> SpanExportResult:
        out = self._out or sys.stderr
        out.write("".join(_console_line(s) for s in spans))
        out.flush()
        return SpanExportResult.SUCCESS


def _span_exporters(mode: Mode) -> list[SpanExporter]:
    if mode == "none":
        return []
    if mode == "console":
        return [_ConsoleExporter()]
    if mode == "otlp":
        return [cast(SpanExporter, otlp_exporter("traces"))]
    return [cast(SpanExporter, _named_exporter("traces", n, _ConsoleExporter())) for n in _env_exporter_names("traces")]


class _Switch(SpanProcessor):
    """Forwards to the processors of the current configuration, so a reconfiguration can swap them."""

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        for p in self.processors:
            p.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self.processors:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self.processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.processors)


_NOOP_TRACER = trace.NoOpTracer()


class _SwitchingTracer(trace.Tracer):
    """The SDK's tracer while an exporter is configured, the API's no-op tracer otherwise.

    So a process switched back to ``"none"`` behaves exactly like one never configured: no spans
    are created, and a remote parent passes through unchanged instead of being replaced by an
    unexported span (which would leave a hole in the trace downstream).
    """

    def __init__(self, sdk: trace.Tracer, switch: _Switch) -> None:
        self._sdk = sdk
        self._switch = switch

    def _active(self) -> trace.Tracer:
        return self._sdk if self._switch.processors else _NOOP_TRACER

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        return self._active().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._active().start_as_current_span(*args, **kwargs)


class _SwitchingProvider(trace.TracerProvider):
    """Hands out :class:`_SwitchingTracer` over one SDK provider."""

    def __init__(self, sdk: TracerProvider, switch: _Switch) -> None:
        self.sdk = sdk
        self._switch = switch

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        sdk_tracer = self.sdk.get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        return _SwitchingTracer(sdk_tracer, self._switch)


# --- metrics ---------------------------------------------------------------------------------------


def _require_prometheus() -> None:
    """Fail with the extra's name when the Prometheus exporter is missing (without creating a reader)."""
    try:
        import opentelemetry.exporter.prometheus  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        import prometheus_client  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError as err:
        raise CorralError(
            f"a Prometheus scrape endpoint needs the Prometheus exporter: pip install 'corral[prometheus]' ({err})"
        ) from None


def _prometheus_reader() -> MetricReader:
    _require_prometheus()
    from opentelemetry.exporter.prometheus import (  # type: ignore[import-not-found,unused-ignore]
        PrometheusMetricReader,
    )

    return cast(MetricReader, PrometheusMetricReader())


def _start_prometheus_server(port: int, host: str) -> None:
    from prometheus_client import start_http_server  # type: ignore[import-not-found,unused-ignore]

    try:
        start_http_server(port, host)
    except OSError as err:
        raise CorralError(f"cannot serve Prometheus metrics on {host}:{port}: {err}") from None


def _metric_readers(mode: Mode) -> tuple[list[MetricReader], tuple[str, int] | None]:
    """Readers for ``mode``, and the Prometheus (host, port) that ``OTEL_METRICS_EXPORTER`` asked for."""
    if mode == "none":
        return [], None
    if mode == "console":
        return [PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr))], None
    if mode == "otlp":
        return [PeriodicExportingMetricReader(cast(MetricExporter, otlp_exporter("metrics")))], None
    readers: list[MetricReader] = []
    prometheus: tuple[str, int] | None = None
    for name in _env_exporter_names("metrics"):
        if name == "prometheus":
            raw = os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
            try:
                prometheus = (os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost"), int(raw))
            except ValueError:
                raise CorralError(f"OTEL_EXPORTER_PROMETHEUS_PORT must be a port number, got {raw!r}") from None
            continue
        exporter = _named_exporter("metrics", name, ConsoleMetricExporter(out=sys.stderr))
        readers.append(PeriodicExportingMetricReader(cast(MetricExporter, exporter)))
    return readers, prometheus


# --- the one state -------------------------------------------------------------------------------


@dataclass
class _State:
    switch: _Switch | None = None
    sdk_tracer: trace.Tracer | None = None
    trace_key: tuple[object, ...] | None = None
    trace_mode: str | None = None
    meter_provider: MeterProvider | None = None
    metrics_key: tuple[object, ...] | None = None
    metrics_mode: str | None = None
    app_provider_asked: float = float("-inf")
    app_provider: bool = False


_state = _State()
_lock = threading.Lock()


def configure_traces(mode: Mode = "env", *, service_name: str = "corral", exporter: SpanExporter | None = None) -> None:
    """Choose where this process's spans go. Idempotent; a later call with other arguments swaps.

    - ``"none"``: export nothing.
    - ``"console"``: one line per span on stderr, for a quick look.
    - ``"otlp"``: OTLP over HTTP (``http/protobuf``, the default) or gRPC, as
      ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` says; the rest from the standard
      ``OTEL_EXPORTER_OTLP_*`` variables. Needs ``corral[otlp]``.
    - ``"env"``: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, any installed exporter, ``none``;
      comma-separated); if unset, OTLP when an ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set.

    ``exporter`` adds one more exporter, fed synchronously (tests use an in-memory one). If the
    application installed its own tracer provider, corral leaves it alone. Raises
    :class:`~coord.errors.CorralError` naming the missing extra or the bad variable.
    """
    _check_mode(mode, "traces")
    with _lock:
        key = (mode, id(exporter) if exporter is not None else None)
        if key == _state.trace_key:
            return
        processors: list[SpanProcessor] = [BatchSpanProcessor(e) for e in _span_exporters(mode)]
        if exporter is not None:
            processors.append(SimpleSpanProcessor(exporter))
        old: tuple[SpanProcessor, ...] = ()
        if _state.switch is None:
            if not processors:
                _state.trace_key, _state.trace_mode = key, mode
                return
            if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                log.info("a tracer provider is already installed by the application; corral leaves it alone")
                for p in processors:
                    p.shutdown()
                _state.trace_key, _state.trace_mode = key, mode
                return
            switch = _Switch()
            provider = TracerProvider(resource=service_resource(service_name))
            provider.add_span_processor(switch)
            trace.set_tracer_provider(_SwitchingProvider(provider, switch))
            _state.switch, _state.sdk_tracer = switch, provider.get_tracer("corral")
        else:
            old = _state.switch.processors
        _state.switch.processors = tuple(processors)
        _state.trace_key, _state.trace_mode = key, mode
    for p in old:
        p.shutdown()


def configure_metrics(
    mode: Mode = "env",
    *,
    service_name: str = "corral",
    prometheus_port: int | None = None,
    prometheus_host: str = "127.0.0.1",
) -> None:
    """Choose where this process's metrics go; once per process (OpenTelemetry fixes readers).

    Modes as in :func:`configure_traces`; ``"env"`` reads ``OTEL_METRICS_EXPORTER`` (``otlp``,
    ``console``, ``prometheus``, any installed exporter, ``none``) and otherwise exports over OTLP
    only when an ``OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`` is set. ``prometheus_port`` also serves
    a scrape endpoint on ``prometheus_host`` (loopback by default; needs ``corral[prometheus]``).
    Calling again with the same arguments does nothing; with different ones after metrics were
    installed raises :class:`~coord.errors.CorralError`. An application's own meter provider is
    left alone.
    """
    _check_mode(mode, "metrics")
    if prometheus_port is not None and not 0 <= prometheus_port <= 65535:
        raise InvalidInput(f"prometheus_port must be a TCP port (0-65535), got {prometheus_port}")
    with _lock:
        key = (mode, prometheus_port, prometheus_host)
        if key == _state.metrics_key:
            return
        if _state.meter_provider is not None:
            raise CorralError(
                f"metrics are already exported as {_state.metrics_mode!r}; OpenTelemetry allows one meter provider "
                f"per process, so configure metrics (and the Prometheus port) once, at start-up"
            )
        readers, from_env = _metric_readers(mode)
        prometheus = (prometheus_host, prometheus_port) if prometheus_port is not None else from_env
        if prometheus is not None:
            readers.append(_prometheus_reader())
        if not readers:
            _state.metrics_key, _state.metrics_mode = key, mode
            return
        provider = MeterProvider(metric_readers=readers, resource=service_resource(service_name))
        otel_metrics.set_meter_provider(provider)  # refuses (with a warning) if the app installed its own
        if otel_metrics.get_meter_provider() is not provider:
            log.info("a meter provider is already installed by the application; corral leaves it alone")
            provider.shutdown()
            _state.metrics_key, _state.metrics_mode = key, mode
            return
        if prometheus is not None:
            _start_prometheus_server(prometheus[1], prometheus[0])
        _state.meter_provider, _state.metrics_key, _state.metrics_mode = provider, key, mode


def configure(
    traces: Mode = "env",
    metrics: Mode = "env",
    *,
    service_name: str = "corral",
    prometheus_port: int | None = None,
    prometheus_host: str = "127.0.0.1",
) -> None:
    """Set up both signals at once (see :func:`configure_traces` and :func:`configure_metrics`)."""
    configure_traces(traces, service_name=service_name)
    configure_metrics(
        metrics, service_name=service_name, prometheus_port=prometheus_port, prometheus_host=prometheus_host
    )


def serve_prometheus(port: int, *, host: str = "127.0.0.1", service_name: str = "corral") -> None:
    """Serve this process's metrics for Prometheus at ``http://{host}:{port}/metrics`` (loopback by default).

    Also exports whatever ``OTEL_METRICS_EXPORTER``/OTLP endpoint variables ask for. Call it once,
    instead of :func:`configure_metrics`. Raises :class:`~coord.errors.CorralError` naming
    ``corral[prometheus]`` when that extra is not installed.
    """
    _require_prometheus()
    configure_metrics("env", service_name=service_name, prometheus_port=port, prometheus_host=host)


def configured_mode() -> str | None:
    """The mode of the last :func:`configure_traces` call, or None if it was never called."""
    return _state.trace_mode


def metrics_mode() -> str | None:
    """The mode of the effective :func:`configure_metrics` call, or None if it was never called."""
    return _state.metrics_mode


APP_PROVIDER_RECHECK = 1.0
"""Seconds :func:`enabled` reuses its answer about an application's own provider (asking reads the
environment, several times per task on the hot path)."""


def enabled() -> bool:
    """Whether spans are recorded in this process (an exporter is configured, or the app's provider).

    An application's own provider is seen within :data:`APP_PROVIDER_RECHECK` s."""
    switch = _state.switch
    if switch is not None:
        return bool(switch.processors)
    now = time.monotonic()
    if now - _state.app_provider_asked >= APP_PROVIDER_RECHECK:
        provider = trace.get_tracer_provider()
        _state.app_provider = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
        _state.app_provider_asked = now
    return _state.app_provider


def sdk_tracer() -> trace.Tracer | None:
    """corral's own SDK tracer when corral installed the provider (skips two proxy layers), else None."""
    return _state.sdk_tracer


def force_flush(timeout: float = 5.0) -> bool:
    """Export every span and metric recorded so far (before a process exits); True if all went in time."""
    millis = int(timeout * 1000)
    spans = _state.switch.force_flush(millis) if _state.switch is not None else True
    provider = _state.meter_provider
    return (provider.force_flush(millis) if provider is not None else True) and spans
