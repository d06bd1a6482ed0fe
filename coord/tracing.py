"""Tracing plumbing: W3C context in NATS headers and task records, span helpers, exporter setup.

Every publish corral makes carries the caller's trace context (``traceparent``/``tracestate``) and
baggage in its NATS headers (:func:`inject`); every consumer continues it (:func:`extract`). The
task record keeps the submit span's context in its ``meta`` dict (:func:`context_to_meta`), so a
worker on another host, or a re-run after a reclaim, joins the same trace.

Nothing is exported unless configured: until :func:`configure` (:mod:`coord.telemetry.setup`)
installs an SDK (or the application installs its own tracer provider), :data:`tracer` is
OpenTelemetry's no-op proxy and :func:`start_span` costs a function call. Span and attribute names
follow the OpenTelemetry messaging semantic conventions (``messaging.system="nats"``, ``messaging.destination.name``,
``messaging.operation.type`` ...); the names corral itself adds live under ``corral.*``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from coord.errors import InvalidInput
from coord.telemetry.setup import (
    Mode,
    configure_traces,
    configured_mode,
    enabled,
    force_flush,
    otlp_exporter,
    sdk_tracer,
    service_resource,
)

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
    "task_headers",
    "tracer",
]

configure = configure_traces
"""Where this process's spans go (see :func:`coord.telemetry.setup.configure_traces`)."""

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

TRACE_KEYS = ("traceparent", "tracestate", "baggage")
"""The W3C trace-context and baggage keys, in headers and in a record's meta."""


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
    ``{task_id}:{attempt}`` (the attempt the span is about); the notification's ``Nats-Msg-Id`` is
    ``{task}:{epoch}:{revision}`` (``coord.tasks.effects.notification_id``).
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


def task_headers(meta: Mapping[str, str], headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for a message about a task: the current span's context when tracing records, else the
    context the task's record carries in ``meta`` (so every message of a task joins its trace)."""
    carrier: dict[str, str] = {} if headers is None else headers
    if enabled():
        propagate.inject(carrier)
    for key in TRACE_KEYS:
        if key not in carrier and key in meta:
            carrier[key] = meta[key]
    return carrier


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
        meta = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix) and k[len(prefix) :] in TRACE_KEYS}
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
    return (sdk_tracer() or tracer).start_as_current_span(
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
            raise InvalidInput(f"interval must be >= 0 seconds, got {interval}")
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
