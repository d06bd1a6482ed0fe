"""OpenTelemetry behind the observer seam: :class:`OtelObserver` turns task steps into spans and metrics.

Spans (only while tracing records, see :mod:`coord.telemetry.setup`): ``submit`` per task (its
context is stored in the record's ``meta``, so every later span on any host joins the task's
trace); ``claim`` and ``run`` as children of ``submit``; ``complete``/``fail`` and sampled
``heartbeat`` spans as children of ``run``; ``reclaim`` as a child of ``submit``, whose context is
written into the record so the re-run's ``run`` span links to it. A task whose trace was not
sampled at submit gets no spans (its context is still continued). Lost races are not errors on a
span (``corral.*.outcome=stale``). Metrics are recorded whether or not tracing is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from coord import metrics, tracing
from coord.errors import Conflict, InvalidTransition, NotFound, StaleClaim
from coord.tasks.models import Claim, ScheduleRequest, TaskRecord, TaskStatus
from coord.tasks.observer import NOOP, Observer, Scope, Submission
from coord.telemetry.setup import enabled, sdk_tracer

__all__ = [
    "HEARTBEAT_SAMPLE",
    "RECLAIM_EPOCH_META",
    "RECLAIM_TRACEPARENT_META",
    "RECLAIM_WORKER_META",
    "OtelObserver",
    "sampled",
]

HEARTBEAT_SAMPLE = 30.0
"""Seconds between two sampled ``heartbeat`` spans (lease renewals are frequent)."""
RECLAIM_EPOCH_META = tracing.RECLAIM_META_PREFIX + "epoch"
"""Meta key naming the epoch of the claim a traced reclaim took back (the re-run is the claim after it)."""
RECLAIM_WORKER_META = tracing.RECLAIM_META_PREFIX + "worker_id"
"""Meta key naming the worker whose claim a traced reclaim took back."""
RECLAIM_TRACEPARENT_META = tracing.RECLAIM_META_PREFIX + "traceparent"
"""Meta key of the reclaim span's own context."""

_LOST_CLAIM = (Conflict, InvalidTransition, NotFound)
_LOST_RECLAIM = (StaleClaim, Conflict, InvalidTransition, NotFound)


def sampled(meta: Mapping[str, str]) -> bool:
    """False only when ``meta`` holds a W3C ``traceparent`` whose sampled flag is off (its trace is
    not recorded: spans under it would be non-recording, so none are created)."""
    traceparent = meta.get("traceparent")
    if traceparent is None:
        return True
    parts = traceparent.split("-")
    try:
        return len(parts) < 4 or bool(int(parts[3][:2], 16) & 1)
    except ValueError:
        return True


def _tracer() -> trace.Tracer:
    return sdk_tracer() or tracing.tracer


class _Span:
    """A span made current for a block, ended by :meth:`close` with the block's outcome."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, *, current: bool = True) -> None:
        self.span = span
        self.token = otel_context.attach(trace.set_span_in_context(span)) if current else None

    def close(self, exc: BaseException | None, lost: tuple[type[BaseException], ...], outcome_key: str) -> None:
        if exc is not None:
            if isinstance(exc, lost):
                self.span.set_attribute(outcome_key, "stale")
            else:
                self.span.record_exception(exc)
                self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()
        if self.token is not None:
            otel_context.detach(self.token)


def _start(
    operation: tracing.Operation,
    task_id: str,
    queue: str | None,
    attempt: int | None,
    epoch: int | None,
    worker_id: str | None,
    parent: Context | None,
    links: list[Link] | None = None,
) -> Span:
    return _tracer().start_span(
        operation.name,
        context=parent,
        kind=operation.kind,
        attributes=tracing.task_attributes(task_id, queue, attempt, epoch, worker_id, operation=operation),
        links=links,
    )


class _Submission(Submission):
    __slots__ = ("_spans", "_token")

    def __init__(self, requests: Sequence[ScheduleRequest]) -> None:
        self._spans: list[Span | None] = []
        self._token: object | None = None
        if not enabled():
            super().__init__(requests)
            return
        parent = otel_context.get_current()
        traced: list[ScheduleRequest] = []
        for request in requests:
            if "traceparent" in request.meta:  # the submitter chose the task's trace context itself
                traced.append(request)
                self._spans.append(None)
                continue
            span = _start(tracing.SUBMIT, request.task_id, request.queue, None, None, None, parent)
            meta = {**request.meta, **tracing.context_to_meta(trace.set_span_in_context(span, parent))}
            traced.append(request.model_copy(update={"meta": meta}))
            self._spans.append(span)
        super().__init__(traced)

    def __enter__(self) -> _Submission:
        if any(self._spans):
            # Each task's messages carry its own submit context (from its meta), not the caller's span.
            self._token = otel_context.attach(Context())
        return self

    def created(self, records: Sequence[TaskRecord], new: Sequence[bool]) -> None:
        inst = metrics.instruments()
        for record, fresh in zip(records, new, strict=True):
            if fresh:
                inst.submitted.add(1, inst.attrs(record.queue))
        for span, fresh in zip(self._spans, new, strict=False):  # no spans while tracing is off
            if span is not None:
                span.set_attribute("corral.task.existing", not fresh)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        for span in self._spans:
            if span is None:
                continue
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()


class _Claiming(Scope):
    __slots__ = ("_planned", "_span")

    def __init__(
        self, task_id: str, worker_id: str, pending: TaskRecord | None, headers: Mapping[str, str] | None
    ) -> None:
        self._span: _Span | None = None
        self._planned: tuple[int, int] | None = None
        if not enabled() or (pending is not None and not sampled(pending.meta)):
            return
        if pending is not None:
            parent = tracing.context_from_meta(pending.meta)
            self._planned = (pending.attempt + 1, pending.epoch + 1)  # what the CAS will write
            queue, attempt, epoch = pending.queue, pending.attempt + 1, pending.epoch + 1
        else:
            parent = tracing.extract(headers)
            queue, attempt, epoch = None, None, None
        self._span = _Span(_start(tracing.CLAIM, task_id, queue, attempt, epoch, worker_id, parent))

    def done(self, result: object = None) -> None:
        assert isinstance(result, Claim)
        if self._span is not None and self._planned != (result.record.attempt, result.epoch):  # from a fresher read
            self._span.span.set_attributes(_claim_attributes(result, tracing.CLAIM))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None:
            self._span.close(exc, _LOST_CLAIM, "corral.claim.outcome")


class _Running(Scope):
    __slots__ = ("_claim", "_pending", "_queue", "_span", "_token")

    def __init__(self, claim: Claim, pending: TaskRecord | None) -> None:
        record = claim.record
        self._claim = claim
        self._pending = pending
        self._queue = record.queue
        self._span: _Span | None = None
        self._token: object | None = None
        if not enabled():
            return
        if not sampled(record.meta):  # continue the unsampled trace without creating spans
            self._token = otel_context.attach(tracing.context_from_meta(record.meta))
            return
        links, reclaimed = _reclaim_link(record)
        parent = tracing.context_from_meta(record.meta)
        span = _start(
            tracing.RUN, record.task_id, record.queue, record.attempt, claim.epoch, claim.worker_id, parent, links
        )
        if reclaimed is not None:
            span.add_event(tracing.EVENT_RECLAIMED, reclaimed)
        self._span = _Span(span)

    def __enter__(self) -> _Running:
        inst = metrics.instruments()
        attrs = inst.attrs(self._queue)
        inst.claimed.add(1, attrs)
        inst.in_flight.add(1, attrs)
        record = self._claim.record
        since = _pending_since(self._pending, record)
        if since is not None and record.claim is not None:
            inst.claim_wait.record(max(0.0, (record.claim.claimed_at - since).total_seconds()), attrs)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        inst = metrics.instruments()
        inst.in_flight.add(-1, inst.attrs(self._queue))
        if self._span is not None:
            self._span.close(exc, (), "corral.run.outcome")
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]


class _Settling(Scope):
    __slots__ = ("_claim", "_ok", "_span")

    def __init__(self, claim: Claim, ok: bool, error: str | None) -> None:
        self._claim = claim
        self._ok = ok
        self._span: _Span | None = None
        current = trace.get_current_span()
        if not current.is_recording():  # a child of run, never a root of its own
            return
        if not ok:
            current.set_status(Status(StatusCode.ERROR, (error or "failed")[:256]))
        record = claim.record
        operation = tracing.COMPLETE if ok else tracing.FAIL
        self._span = _Span(
            _start(operation, claim.task_id, record.queue, record.attempt, claim.epoch, claim.worker_id, None)
        )

    def done(self, result: object = None) -> None:
        assert isinstance(result, TaskRecord)
        inst = metrics.instruments()
        attrs = inst.attrs(result.queue)
        claimed = self._claim.record.claim
        if claimed is not None:
            inst.run_time.record(max(0.0, (datetime.now(UTC) - claimed.claimed_at).total_seconds()), attrs)
        if self._ok:
            inst.succeeded.add(1, attrs)
            return
        inst.failed.add(1, attrs)
        if result.status is TaskStatus.DEAD:
            inst.dead.add(1, attrs)
        if self._span is not None:
            self._span.span.set_attribute("corral.task.status", result.status.value)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None:
            self._span.close(exc, (StaleClaim,), "corral.settle.outcome")


class _Heartbeat(Scope):
    __slots__ = ("_span",)

    def __init__(self, claim: Claim) -> None:
        record = claim.record
        self._span = _Span(
            _start(tracing.HEARTBEAT, claim.task_id, record.queue, record.attempt, claim.epoch, claim.worker_id, None)
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._span.close(exc, (StaleClaim,), "corral.heartbeat.outcome")


class _Reclaiming(Scope):
    __slots__ = ("_before", "_span", "meta")

    def __init__(self, record: TaskRecord, reason: str, departure: str | None) -> None:
        self._before = record
        self._span: _Span | None = None
        self.meta: Mapping[str, str] = {}
        held = record.claim
        if not enabled() or record.status is not TaskStatus.CLAIMED or held is None:
            return  # no span for a reclaim that cannot happen (the store says why)
        span = _start(
            tracing.RECLAIM,
            record.task_id,
            record.queue,
            record.attempt,
            record.epoch,
            None,
            tracing.context_from_meta(record.meta),
        )
        span.set_attribute("corral.worker.id", held.worker_id)
        span.set_attribute("corral.reclaim.reason", reason)
        if departure is not None:
            span.add_event(tracing.EVENT_PRESENCE_LEFT, {"reason": departure, "corral.worker.id": held.worker_id})
        self._span = _Span(span)
        meta = tracing.context_to_meta(prefix=tracing.RECLAIM_META_PREFIX)
        meta[RECLAIM_EPOCH_META] = str(record.epoch)
        meta[RECLAIM_WORKER_META] = held.worker_id
        self.meta = meta

    def done(self, result: object = None) -> None:
        assert isinstance(result, TaskRecord)
        inst = metrics.instruments()
        attrs = inst.attrs(result.queue)
        inst.reclaimed.add(1, attrs)
        if result.status is TaskStatus.DEAD:
            inst.dead.add(1, attrs)
        last_beat = self._before.updated_at  # the claim's last write: claimed or extended
        inst.detection_latency.record(max(0.0, (datetime.now(UTC) - last_beat).total_seconds()), attrs)
        if self._span is not None:
            self._span.span.set_attribute("corral.reclaim.outcome", result.status.value)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None:
            self._span.close(exc, _LOST_RECLAIM, "corral.reclaim.outcome")


class OtelObserver(Observer):
    """Spans and metrics for every hook (see the module docstring); cheap when nothing is configured."""

    def __init__(self, *, heartbeat_sample: float = HEARTBEAT_SAMPLE) -> None:
        self._beats = tracing.Throttle(heartbeat_sample)
        self._depth_queues: set[str] = set()

    def submitting(self, requests: Sequence[ScheduleRequest]) -> Submission:
        return _Submission(requests)

    def claiming(
        self, task_id: str, worker_id: str, pending: TaskRecord | None, headers: Mapping[str, str] | None
    ) -> Scope:
        return _Claiming(task_id, worker_id, pending, headers)

    def running(self, claim: Claim, pending: TaskRecord | None = None) -> Scope:
        return _Running(claim, pending)

    def settling(self, claim: Claim, *, ok: bool, error: str | None = None) -> Scope:
        return _Settling(claim, ok, error)

    def heartbeating(self, claim: Claim) -> Scope:
        if enabled() and trace.get_current_span().is_recording() and self._beats.ready():
            return _Heartbeat(claim)
        return NOOP

    def reclaiming(self, record: TaskRecord, *, reason: str, departure: str | None) -> Scope:
        return _Reclaiming(record, reason, departure)

    def cas_retried(self, task_id: str, queue: str, revision: int, attempt: int) -> None:
        trace.get_current_span().add_event(
            tracing.EVENT_CAS_RETRY, {"key": task_id, "revision": revision, "attempt": attempt}
        )
        inst = metrics.instruments()
        inst.cas_retries.add(1, inst.attrs(queue))

    def presence_changed(self, present: int) -> None:
        inst = metrics.instruments()
        inst.presence_size.set(present, inst.attrs())

    def queue_depths(self, depths: Mapping[str, int]) -> None:
        inst = metrics.instruments()
        observed = dict(depths)
        for queue in self._depth_queues - observed.keys():
            observed[queue] = 0  # once, for a queue that emptied
        for queue, n in observed.items():
            inst.queue_depth.set(n, inst.attrs(queue))
        self._depth_queues = {queue for queue, n in observed.items() if n}


def _claim_attributes(claim: Claim, operation: tracing.Operation) -> dict[str, AttributeValue]:
    record = claim.record
    return tracing.task_attributes(
        claim.task_id, record.queue, record.attempt, claim.epoch, claim.worker_id, operation=operation
    )


def _pending_since(before: TaskRecord | None, claimed: TaskRecord) -> datetime | None:
    """When the task became claimable: the pending record's write time or the end of its backoff."""
    if before is not None and before.status is TaskStatus.PENDING:
        since = before.updated_at
        return max(since, before.visible_at) if before.visible_at is not None else since
    if claimed.attempt == 1:
        return claimed.created_at  # claimed by id (run_one) or from a non-inlined notification
    return None


def _reclaim_link(record: TaskRecord) -> tuple[list[Link] | None, dict[str, AttributeValue] | None]:
    """For the first claim after a traced reclaim: a link to the reclaim span and the event naming it."""
    meta = record.meta
    if RECLAIM_TRACEPARENT_META not in meta or meta.get(RECLAIM_EPOCH_META) != str(record.epoch - 1):
        return None, None
    ctx = tracing.context_from_meta(meta, prefix=tracing.RECLAIM_META_PREFIX)
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        return None, None
    links = tracing.links_to(ctx, attributes={"corral.link": "reclaim"})
    event: dict[str, AttributeValue] = {
        "corral.reclaim.span_id": f"{span_context.span_id:016x}",
        "corral.reclaim.trace_id": f"{span_context.trace_id:032x}",
        "corral.reclaim.epoch": record.epoch - 1,
        "corral.reclaim.worker.id": meta.get(RECLAIM_WORKER_META, ""),
        "corral.reclaim.reason": record.error or "",
    }
    return links, event
