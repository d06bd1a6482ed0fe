"""Tracing plumbing: W3C context in NATS headers and task records, span helpers, exporter setup.

Every publish corral makes carries the caller's trace context (``traceparent``/``tracestate``) and
baggage in its NATS headers (:func:`inject`); every consumer continues it (:func:`extract`). The
task record keeps the submit span's context in its ``meta`` dict (:func:`context_to_meta`), so a
worker on another host, or a re-run after a reclaim, joins the same trace.

Nothing is exported unless configured: until :func:`configure` installs an SDK (or the
application installs its own tracer provider), :data:`tracer` is OpenTelemetry's no-op proxy and
:func:`start_span` costs a function call. Span and attribute names follow the OpenTelemetry
messaging semantic conventions (``messaging.system="nats"``, ``messaging.destination.name``,
``messaging.operation.type`` ...); the names corral itself adds live under ``corral.*``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, TextIO, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind
from opentelemetry.util.types import Attributes, AttributeValue

from coord.errors import CorralError

__all__ = [
    "CLAIM",
    "COMPLETE",
    "EVENT_CAS_RETRY",
    "EVENT_PRESENCE_LEFT",
    "EVENT_RECLAIMED",
    "FAIL",
    "HEARTBEAT",
    "RECLAIM",
    "RECLAIM_META_PREFIX",
    "RUN",
    "SUBMIT",
    "Mode",
    "Operation",
    "Throttle",
    "configure",
    "configured_mode",
    "context_from_meta",
    "context_to_meta",
    "enabled",
    "extract",
    "force_flush",
    "inject",
    "links_to",
    "otlp_exporter",
    "service_resource",
    "start_span",
    "task_attributes",
    "tracer",
]

log = logging.getLogger("corral.tracing")

Mode = Literal["none", "console", "otlp", "env"]
"""Where spans go: nowhere, stderr (one line per span), OTLP, or whatever ``OTEL_*`` says."""

tracer: trace.Tracer = trace.get_tracer("corral")
"""corral's tracer. A proxy: no-op until a tracer provider is installed, then that provider's."""


# --- operations and names ------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One kind of span corral emits: its name, span kind and messaging operation type."""

    name: str
    """Span name and ``messaging.operation.name``."""
    kind: SpanKind
    """OpenTelemetry span kind."""
    type: str | None
    """``messaging.operation.type`` (create/send/receive/process/settle), or None if not messaging."""


SUBMIT = Operation("submit", SpanKind.PRODUCER, "send")
"""Parent creates a task record and publishes its dispatch notification."""
CLAIM = Operation("claim", SpanKind.CONSUMER, "receive")
"""Worker takes a notification and claims the task with a CAS."""
RUN = Operation("run", SpanKind.CONSUMER, "process")
"""Worker runs the handler. A child of the submit span (from the record's meta)."""
COMPLETE = Operation("complete", SpanKind.CLIENT, "settle")
"""Worker records success with a CAS and pushes the result."""
FAIL = Operation("fail", SpanKind.CLIENT, "settle")
"""Worker records a failure (retry or dead) with a CAS."""
RECLAIM = Operation("reclaim", SpanKind.PRODUCER, "send")
"""Reclaimer moves a claim back to pending and republishes the notification."""
HEARTBEAT = Operation("heartbeat", SpanKind.INTERNAL, None)
"""Lease renewal. Sampled with a :class:`Throttle`, never one span per beat."""

EVENT_CAS_RETRY = "corral.cas_retry"
"""Span event: a compare-and-set lost a race and is retried (attributes: key, revision, attempt)."""
EVENT_PRESENCE_LEFT = "presence.left"
"""Span event on a reclaim span: the worker's presence key went away (attribute: reason)."""
EVENT_RECLAIMED = "corral.reclaimed"
"""Span event on a re-run span naming the reclaim that put the task back (previous worker, epoch)."""
RECLAIM_META_PREFIX = "corral.reclaim."
"""``prefix`` under which a reclaimer may store its own span context in the record's meta."""

_TRACE_KEYS = ("traceparent", "tracestate", "baggage")


def task_attributes(
    task_id: str,
    queue: str | None = None,
    attempt: int | None = None,
    epoch: int | None = None,
    worker_id: str | None = None,
    *,
    operation: Operation | None = None,
) -> dict[str, AttributeValue]:
    """Span attributes describing one task: messaging semantic conventions plus ``corral.task.*``.

    Only ids and counters: never payloads or secrets. ``messaging.message.id`` is
    ``{task_id}:{attempt}``, the same string as the notification's ``Nats-Msg-Id``.
    """
    attrs: dict[str, AttributeValue] = {"messaging.system": "nats", "corral.task.id": task_id}
    if operation is not None:
        attrs["messaging.operation.name"] = operation.name
        if operation.type is not None:
            attrs["messaging.operation.type"] = operation.type
    if queue is not None:
        attrs["messaging.destination.name"] = queue
        attrs["corral.task.queue"] = queue
    if attempt is not None:
        attrs["corral.task.attempt"] = attempt
        attrs["messaging.message.id"] = f"{task_id}:{attempt}"
    if epoch is not None:
        attrs["corral.task.epoch"] = epoch
    if worker_id is not None:
        attrs["corral.worker.id"] = worker_id
        attrs["messaging.client.id"] = worker_id
    return attrs


# --- propagation ---------------------------------------------------------------------------------


class _HeaderGetter(Getter[Mapping[str, str]]):
    """Reads NATS headers, which keep the sender's case (``Traceparent`` from other clients too)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            for k, v in carrier.items():
                if k.lower() == key:
                    value = v
                    break
            else:
                return None
        return [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier.keys())


_GETTER = _HeaderGetter()


def inject(headers: dict[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """Write the trace context and baggage of ``context`` (default: current) into ``headers``.

    Returns ``headers`` (a new dict if None was given). When there is no valid span and no
    baggage nothing is added, so an empty dict comes back: pass ``inject(...) or None`` to nats-py
    to keep a plain PUB on the wire.
    """
    carrier: dict[str, str] = {} if headers is None else headers
    propagate.inject(carrier, context)
    return carrier


def extract(headers: Mapping[str, str] | None, context: Context | None = None) -> Context:
    """The context carried by NATS ``headers``, on top of ``context`` (default: current).

    Missing, partial or malformed trace headers yield ``context`` unchanged: a consumer never
    fails because of them.
    """
    if not headers:
        return context if context is not None else otel_context.get_current()
    return propagate.extract(headers, context, getter=_GETTER)


def context_to_meta(context: Context | None = None, *, prefix: str = "") -> dict[str, str]:
    """The trace context of ``context`` (default: current) as string entries for a record's meta.

    Keys are ``traceparent``/``tracestate``/``baggage`` behind ``prefix`` (e.g.
    :data:`RECLAIM_META_PREFIX` for a second context in the same meta). Empty when untraced.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context)
    if prefix:
        return {prefix + k: v for k, v in carrier.items()}
    return carrier


def context_from_meta(meta: Mapping[str, str] | None, *, prefix: str = "") -> Context:
    """The context stored by :func:`context_to_meta` under ``prefix``, on top of the current one."""
    if not meta:
        return otel_context.get_current()
    if prefix:
        meta = {
            k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix) and k[len(prefix) :] in _TRACE_KEYS
        }
    return extract(meta)


def links_to(*contexts: Context | None, attributes: Mapping[str, AttributeValue] | None = None) -> list[Link]:
    """Links to the span of each context that holds a valid one (others are skipped).

    For a re-run after a reclaim: ``links=links_to(extract(msg.headers))`` links the run span to
    the reclaim span that republished the notification.
    """
    links: list[Link] = []
    for ctx in contexts:
        if ctx is None:
            continue
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context, dict(attributes) if attributes else None))
    return links


# --- spans ---------------------------------------------------------------------------------------

_NOOP_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)
_NOOP_TRACER = trace.NoOpTracer()


def start_span(
    operation: Operation,
    task_id: str,
    queue: str | None = None,
    attempt: int | None = None,
    epoch: int | None = None,
    worker_id: str | None = None,
    *,
    context: Context | None = None,
    links: Iterable[Link] | None = None,
) -> AbstractContextManager[Span]:
    """Start ``operation``'s span for one task as the current span (use in a ``with``).

    ``context`` is the parent (e.g. :func:`context_from_meta` of the record); default: current.
    An exception leaving the block is recorded and sets the span status to ERROR. When nothing
    records and no remote parent is given this is a shared no-op context manager, so the hot path
    pays nothing for tracing being off; with a remote parent the no-op span keeps propagating it.
    """
    if not enabled():
        if context is None:
            return _NOOP_SPAN
        return _NOOP_TRACER.start_as_current_span(operation.name, context=context)
    # Our own SDK tracer when we installed it (skips two proxy layers); else the app's, via the proxy.
    return (_state.sdk_tracer or tracer).start_as_current_span(
        operation.name,
        context=context,
        kind=operation.kind,
        attributes=task_attributes(task_id, queue, attempt, epoch, worker_id, operation=operation),
        links=list(links) if links is not None else None,
    )


class Throttle:
    """True at most once per ``interval`` seconds (the first call is True): samples heartbeats.

    Not thread-safe on purpose (one per worker loop); a lost race only costs one extra span.
    """

    def __init__(self, interval: float = 30.0) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.interval = interval
        """Minimum seconds between two True answers."""
        self._next = float("-inf")

    def ready(self, now: float | None = None) -> bool:
        """Whether a sampled span is due now (and, if so, start the next interval)."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.interval
        return True


# --- configuration -------------------------------------------------------------------------------


class _Switch(SpanProcessor):
    """Forwards to the processors of the current configuration, so configure() can swap them."""

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

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> AbstractContextManager[Span]:  # type: ignore[override]
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


def otlp_exporter(signal: Literal["traces", "metrics"]) -> Any:
    """A new OTLP exporter for ``signal``, over the protocol the standard variables name.

    ``OTEL_EXPORTER_OTLP_{TRACES|METRICS}_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``:
    ``http/protobuf`` (the default) or ``grpc``; endpoint, headers and timeouts are read by the
    exporter itself. Raises :class:`CorralError` naming the ``corral[otlp]`` extra when the exporter
    packages are missing, and naming the variable for an unsupported protocol.
    """
    noun = "trace" if signal == "traces" else "metric"
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    ).strip() or "http/protobuf"
    transport = {"grpc": "grpc", "http/protobuf": "http"}.get(protocol)
    if transport is None:
        raise CorralError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported for {signal}; use 'http/protobuf' or 'grpc'"
        )
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.{noun}_exporter")
    except ImportError as err:
        raise CorralError(
            f"OTLP {noun} export over {protocol} needs the OTLP exporter packages: pip install 'corral[otlp]' ({err})"
        ) from None
    return getattr(module, "OTLPSpanExporter" if signal == "traces" else "OTLPMetricExporter")()


def _env_exporter_names() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [n for n in names if n != "none"] if "none" not in names else []
    # OTel's own default is "otlp", but corral exports nothing unless asked: an OTLP endpoint in the
    # environment is such a request.
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def _exporters(mode: Mode) -> list[SpanExporter]:
    if mode == "none":
        return []
    if mode == "console":
        return [_ConsoleExporter()]
    if mode == "otlp":
        return [cast(SpanExporter, otlp_exporter("traces"))]
    if mode == "env":
        exporters: list[SpanExporter] = []
        for name in _env_exporter_names():
            if name == "otlp":
                exporters.append(cast(SpanExporter, otlp_exporter("traces")))
            elif name == "console":
                exporters.append(_ConsoleExporter())
            else:
                raise CorralError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none")
        return exporters
    raise ValueError(f"trace mode must be one of none, console, otlp, env; got {mode!r}")


def service_resource(service_name: str) -> Resource:
    """The OpenTelemetry resource of this process: ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` win."""
    attrs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    named_by_env = bool(os.environ.get("OTEL_SERVICE_NAME")) or any(
        part.split("=", 1)[0].strip() == "service.name" for part in attrs.split(",")
    )
    return Resource.create({} if named_by_env else {"service.name": service_name})


@dataclass
class _State:
    provider: TracerProvider | None = None
    switch: _Switch | None = None
    sdk_tracer: trace.Tracer | None = None
    key: tuple[object, ...] | None = None
    mode: str | None = None


_state = _State()
_lock = threading.Lock()


def configure(
    mode: Mode = "env",
    *,
    service_name: str = "corral",
    exporter: SpanExporter | None = None,
) -> None:
    """Choose where this process's spans go. Idempotent; a later call with other arguments swaps.

    - ``"none"``: export nothing.
    - ``"console"``: one line per span on stderr, for a quick look.
    - ``"otlp"``: OTLP over HTTP (``http/protobuf``, the default) or gRPC, as
      ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` says; endpoint, headers, TLS and timeouts from the
      standard ``OTEL_EXPORTER_OTLP_*`` variables. Needs ``corral[otlp]``.
    - ``"env"``: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``, comma-separated); if
      unset, OTLP when an ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set, else nothing.

    ``exporter`` adds one more exporter, fed synchronously (tests use an in-memory one).
    ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` win over ``service_name``, which applies when
    the SDK is first installed. Sampling follows ``OTEL_TRACES_SAMPLER`` (default: parent-based,
    always on). If the application installed its own tracer provider, corral leaves it alone.
    Raises :class:`~coord.errors.CorralError` naming the missing extra or the bad variable.
    """
    with _lock:
        key = (mode, id(exporter) if exporter is not None else None)
        if key == _state.key:
            return
        exporters = _exporters(mode)
        processors: list[SpanProcessor] = [BatchSpanProcessor(e) for e in exporters]
        if exporter is not None:
            processors.append(SimpleSpanProcessor(exporter))
        if _state.switch is None:
            if not processors:
                _state.key, _state.mode = key, mode
                return
            current = trace.get_tracer_provider()
            if not isinstance(current, trace.ProxyTracerProvider):
                log.info("a tracer provider is already installed by the application; corral leaves it alone")
                for p in processors:
                    p.shutdown()
                _state.key, _state.mode = key, mode
                return
            switch = _Switch()
            provider = TracerProvider(resource=service_resource(service_name))
            provider.add_span_processor(switch)
            trace.set_tracer_provider(_SwitchingProvider(provider, switch))
            _state.provider, _state.switch = provider, switch
            _state.sdk_tracer = provider.get_tracer("corral")
        old = _state.switch.processors
        _state.switch.processors = tuple(processors)
        _state.key, _state.mode = key, mode
    for p in old:
        p.shutdown()


def configured_mode() -> str | None:
    """The mode of the last :func:`configure` call, or None if it was never called."""
    return _state.mode


def enabled() -> bool:
    """Whether spans are recorded in this process (an exporter is configured, or the app's provider)."""
    switch = _state.switch
    if switch is not None:
        return bool(switch.processors)
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def force_flush(timeout: float = 5.0) -> bool:
    """Export every span ended so far (before a process exits); True if all were exported in time."""
    switch = _state.switch
    return switch.force_flush(int(timeout * 1000)) if switch is not None else True
