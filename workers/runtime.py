"""The worker runtime: claim, run, keep the lease, report.

A :class:`Worker` joins presence (with its queues and capacity), pulls "task ready" notifications
from one durable consumer per queue in batches sized to its free slots, claims them with one
compare-and-set each (pipelined per batch), acks the notifications, runs the handler and completes
with one more compare-and-set. It extends the deadline of long tasks itself.

Failure behaviour:
- a stale or duplicate notification (task already claimed, finished or gone) is acked and dropped;
- a malformed notification is terminated and dead-lettered; a spec that fails validation fails the
  task (no retry, ``substrate_fault``) and is dead-lettered; the worker keeps running;
- if its own presence is lost or taken, the worker fails closed: it stops fetching, stops extending
  its claims, gives running handlers ``lost_grace`` seconds, and :meth:`Worker.run` raises
  :class:`~coord.errors.PresenceLost`. Any late completion is fenced by the claim and rejected with
  ``StaleClaim`` if the task was reclaimed meanwhile;
- :meth:`Worker.stop` (SIGTERM/SIGINT in the CLI) stops fetching, lets in-flight work finish within
  ``grace`` seconds, releases what remains back to pending, and leaves presence.

Telemetry (only when tracing records; otherwise one cheap check per batch and per task): ``claim``
and ``run`` spans are children of the task's ``submit`` span, whose context travels in the record's
meta; ``complete``/``fail`` are children of ``run``; lease renewals are ``heartbeat`` spans sampled
at most once per ``HEARTBEAT_SAMPLE`` seconds per worker. A re-run after a reclaim links its ``run``
span to the ``reclaim`` span and carries a ``corral.reclaimed`` event naming it. A task whose
trace was not sampled at submit (``traceparent`` flag off, e.g. 1% sampling) gets no spans here,
as a parent-based sampler would decide anyway; its context is still continued, so every publish
keeps carrying it. Metrics: claimed, succeeded, failed, dead, in-flight per queue, claim wait and
run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.client import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from pydantic import ValidationError

from coord import tracing
from coord.connection import Coord
from coord.deadletter import dead_letter
from coord.errors import Conflict, InvalidTransition, NotFound, PresenceLost, StaleClaim
from coord.ids import new_id, validate_id
from coord.metrics import instruments
from coord.presence import AgentInfo, Membership
from coord.tasks import Claim, Notification, TaskRecord, TaskStatus
from coord.wire import Result, Spec
from workers.context import Context
from workers.handlers import Handler

__all__ = ["HEARTBEAT_SAMPLE", "Worker", "WorkerStats", "queue_consumer"]

log = logging.getLogger("corral.worker")

NOTIFICATION_ACK_WAIT = 5.0
"""Seconds a fetched notification may stay unacked before redelivery. It only covers fetch -> claim
(milliseconds); a worker that dies in between delays the task by at most this much. A redelivered
notification whose task was claimed meanwhile is simply dropped."""
FETCH_WAIT = 1.0
"""Longest a pull request waits on the server; also the longest a stop waits for fetches to end."""
HEARTBEAT_SAMPLE = 30.0
"""Seconds between two sampled ``heartbeat`` spans of one worker (lease renewals are frequent)."""
_RECLAIM_EPOCH = tracing.RECLAIM_META_PREFIX + "epoch"  # written by dispatch.reclaimer.reclaim_claim
_RECLAIM_WORKER = tracing.RECLAIM_META_PREFIX + "worker_id"
_RECLAIM_TRACEPARENT = tracing.RECLAIM_META_PREFIX + "traceparent"
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)


@dataclass
class WorkerStats:
    """Counters of what one worker did."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    stale_rejected: int = 0
    """Completions refused because the claim was no longer current (reclaimed meanwhile)."""
    dropped_notifications: int = 0
    """Stale or duplicate notifications acked and dropped."""
    dead_lettered: int = 0
    released: int = 0


async def queue_consumer(coord: Coord, queue: str) -> JetStreamContext.PullSubscription:
    """The shared durable pull consumer of ``queue`` (created on first use, idempotent)."""
    validate_id(queue, "queue")
    durable = f"q-{queue}"
    config = js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=coord.names.dispatch_subject(queue),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=NOTIFICATION_ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=-1,
        max_waiting=4096,
    )
    await coord.js.add_consumer(coord.names.dispatch_stream, config)
    return await coord.js.pull_subscribe_bind(durable, stream=coord.names.dispatch_stream)


@dataclass
class _Running:
    claim: Claim
    ctx: Context
    started: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None


class Worker:
    """Runs tasks from ``queues`` with up to ``concurrency`` at once (see the module docstring)."""

    def __init__(
        self,
        coord: Coord,
        queues: Sequence[str],
        handler: Handler,
        *,
        concurrency: int = 1,
        worker_id: str | None = None,
        lease: float | None = None,
        presence_interval: float = 1.0,
        presence_ttl: float = 3.0,
        grace: float = 10.0,
        lost_grace: float = 2.0,
        max_batch: int = 256,
        role: str = "worker",
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.coord = coord
        self.queues = [validate_id(q, "queue") for q in queues]
        self.handler = handler
        self.concurrency = concurrency
        self.worker_id = validate_id(worker_id or new_id("w"), "worker_id")
        self.lease = lease
        self.presence_interval = presence_interval
        self.presence_ttl = presence_ttl
        self.grace = grace
        self.lost_grace = lost_grace
        self.max_batch = max_batch
        self.role = role
        self.stats = WorkerStats()
        """What this worker did so far."""
        self._free = concurrency
        self._slots = asyncio.Condition()
        self._running: dict[str, _Running] = {}
        self._stopping = asyncio.Event()
        self._lost: PresenceLost | None = None
        self._started = asyncio.Event()
        self._metrics = instruments()
        self._beat_sample = tracing.Throttle(HEARTBEAT_SAMPLE)

    @property
    def inflight(self) -> int:
        """Tasks being run right now."""
        return len(self._running)

    async def wait_started(self) -> None:
        """Wait until the worker is present and fetching."""
        await self._started.wait()

    def stop(self) -> None:
        """Ask for a graceful stop (returns at once; :meth:`run` finishes the shutdown)."""
        self._stopping.set()

    def _on_lost(self, err: PresenceLost) -> None:
        if self._lost is None:
            log.error("worker %s: presence lost (%s); failing closed", self.worker_id, err)
            self._lost = err
            self._stopping.set()

    def _join(self) -> Membership:
        info = AgentInfo(id=self.worker_id, role=self.role, queues=self.queues, capacity=self.concurrency)
        return self.coord.presence.join(
            info, interval=self.presence_interval, ttl=self.presence_ttl, on_lost=self._on_lost, rejoin=False
        )

    async def run_one(self, task_id: str) -> TaskRecord:
        """Join presence, claim ``task_id`` directly (no notification), run it, report, leave.

        Returns the task record afterwards. Raises what ``claim`` raises when the task is not
        claimable, and PresenceLost if presence was lost meanwhile.
        """
        validate_id(task_id, "task_id")
        async with self._join() as membership:
            if tracing.enabled():
                record = await self.coord.tasks.get(task_id)  # its meta holds the trace to continue
                if _sampled(record.meta):
                    claim = await self._claim_traced(task_id, record.revision, record, None)
                else:
                    claim = await self.coord.tasks.claim(task_id, self.worker_id, lease=self.lease, record=record)
            else:
                claim = await self.coord.tasks.claim(task_id, self.worker_id, lease=self.lease)
            self._start(claim, None)
            running = self._running.get(task_id)
            if running is not None and running.task is not None:
                await running.task
            if self._lost is None:
                await membership.leave()
        if self._lost is not None:
            raise self._lost
        return await self.coord.tasks.get(task_id)

    async def run(self) -> None:
        """Work until :meth:`stop` (graceful) or presence is lost (raises PresenceLost)."""
        if not self.queues:
            raise ValueError("queues: a worker needs at least one queue")
        async with self._join() as membership:
            subs = [await queue_consumer(self.coord, q) for q in self.queues]
            fetchers = [
                asyncio.create_task(self._fetch_loop(sub), name=f"fetch-{q}")
                for q, sub in zip(self.queues, subs, strict=True)
            ]
            self._started.set()
            log.info("worker %s present on %s (concurrency %d)", self.worker_id, self.queues, self.concurrency)
            try:
                await self._stopping.wait()
                async with self._slots:
                    self._slots.notify_all()  # wake fetch loops waiting for a free slot
            finally:
                # Let each fetch end by itself (<= FETCH_WAIT): a notification delivered into a
                # cancelled pull request would sit unacked until NOTIFICATION_ACK_WAIT.
                _, late = await asyncio.wait(fetchers, timeout=FETCH_WAIT + 2)
                for fetcher in late:
                    fetcher.cancel()
                await asyncio.gather(*fetchers, return_exceptions=True)
                await self._drain()
                for sub in subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            if self._lost is None:
                await membership.leave()
        if self._lost is not None:
            raise self._lost

    async def _drain(self) -> None:
        """Let running work finish within the grace; release (or, when lost, abandon) the rest."""
        grace = self.lost_grace if self._lost else self.grace
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            log.info("worker %s: waiting up to %.1fs for %d running task(s)", self.worker_id, grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for running in list(self._running.values()):
                if running.task in pending:
                    running.ctx.cancelled.set()
                    running.task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- fetching and claiming ---------------------------------------------------------------
    async def _reserve(self) -> int:
        async with self._slots:
            await self._slots.wait_for(lambda: self._free > 0 or self._stopping.is_set())
            n = min(self._free, self.max_batch)
            self._free -= n
            return n

    async def _give_back(self, n: int) -> None:
        if n:
            async with self._slots:
                self._free += n
                self._slots.notify_all()

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            n = await self._reserve()
            if self._stopping.is_set():
                await self._give_back(n)
                return
            try:
                msgs = await sub.fetch(n, timeout=FETCH_WAIT)
            except (nats.errors.TimeoutError, TimeoutError):
                await self._give_back(n)
                continue
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.Error,
            ) as err:
                await self._give_back(n)
                log.warning("worker %s: fetch failed (%s); retrying", self.worker_id, err)
                await asyncio.sleep(0.2)
                continue
            await self._give_back(n - len(msgs))
            if self._stopping.is_set():
                await self._give_back(len(msgs))
                await asyncio.gather(*(m.nak() for m in msgs), return_exceptions=True)
                return
            await self._claim_batch(msgs)

    async def _claim_batch(self, msgs: list[Msg]) -> None:
        notes: list[tuple[Msg, Notification]] = []
        for msg in msgs:
            try:
                note = Notification.model_validate_json(msg.data)
            except ValidationError as err:
                await self._give_back(1)
                await self._dead_letter_notification(msg, f"malformed notification: {_one_line(err)}")
                continue
            delay = _seconds_until(note.visible_at)
            if delay > 0:
                await self._give_back(1)
                await msg.nak(delay=delay)
                continue
            notes.append((msg, note))
        traced = tracing.enabled()
        claims = [
            self._claim_traced(n.task_id, n.revision, n.record, m.headers)
            if traced and (n.record is None or _sampled(n.record.meta))
            else self.coord.tasks.claim(
                n.task_id, self.worker_id, revision=n.revision, lease=self.lease, record=n.record
            )
            for m, n in notes
        ]
        outcomes = await asyncio.gather(*claims, return_exceptions=True)
        for (msg, note), outcome in zip(notes, outcomes, strict=True):
            if isinstance(outcome, Claim):
                await msg.ack()
                self._start(outcome, note.record)
                continue
            await self._give_back(1)
            if isinstance(outcome, Conflict | InvalidTransition | NotFound):
                # Someone else holds it, it is finished, or it is gone: this notification is stale.
                self.stats.dropped_notifications += 1
                await msg.ack()
            else:
                log.warning(
                    "worker %s: claim of %s failed (%s); notification will be redelivered",
                    self.worker_id,
                    note.task_id,
                    outcome,
                )
                await msg.nak(delay=0.5)

    async def _claim_traced(
        self, task_id: str, revision: int | None, record: TaskRecord | None, headers: dict[str, str] | None
    ) -> Claim:
        """The claim CAS inside a ``claim`` span: a child of the submit span in the record's meta (or of
        the notification's headers when the record was not inlined). A lost race is not an error."""
        if record is not None:
            parent = tracing.context_from_meta(record.meta)
            queue, attempt, epoch = record.queue, record.attempt + 1, record.epoch + 1  # what the CAS will write
        else:
            parent = tracing.extract(headers)
            queue, attempt, epoch = None, None, None
        lost: Exception | None = None
        with tracing.start_span(tracing.CLAIM, task_id, queue, attempt, epoch, self.worker_id, context=parent) as span:
            try:
                claim = await self.coord.tasks.claim(
                    task_id, self.worker_id, revision=revision, lease=self.lease, record=record
                )
            except (Conflict, InvalidTransition, NotFound) as err:
                span.set_attribute("corral.claim.outcome", "stale")
                lost = err
            else:
                if (claim.record.attempt, claim.epoch) != (attempt, epoch):  # claimed from a fresher read
                    span.set_attributes(_claim_attributes(claim, tracing.CLAIM))
        if lost is not None:
            raise lost
        return claim

    async def _dead_letter_notification(self, msg: Msg, reason: str) -> None:
        self.stats.dead_lettered += 1
        await msg.term()
        await dead_letter(
            self.coord, "dispatch", reason, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {})
        )

    # --- running -----------------------------------------------------------------------------
    def _start(self, claim: Claim, before: TaskRecord | None) -> None:
        """Run ``claim``; ``before`` is the pending record it was claimed from, when known (claim wait)."""
        self.stats.claimed += 1
        record = claim.record
        attrs = self._metrics.attrs(record.queue)
        self._metrics.claimed.add(1, attrs)
        self._metrics.in_flight.add(1, attrs)
        waited_from = _pending_since(before, record)
        if waited_from is not None and record.claim is not None:
            self._metrics.claim_wait.record(max(0.0, (record.claim.claimed_at - waited_from).total_seconds()), attrs)
        ctx = Context(
            task_id=claim.task_id,
            worker_id=self.worker_id,
            epoch=claim.epoch,
            attempt=claim.record.attempt,
            queue=claim.record.queue,
        )
        running = _Running(claim=claim, ctx=ctx)
        ctx._beat = lambda progress: self._heartbeat(running, progress)
        self._running[claim.task_id] = running
        running.task = asyncio.create_task(self._run(running), name=f"run-{claim.task_id}")

    async def _heartbeat(self, running: _Running, progress: Any) -> None:
        async with running.lock:
            if tracing.enabled() and trace.get_current_span().is_recording() and self._beat_sample.ready():
                claim = running.claim
                with tracing.start_span(
                    tracing.HEARTBEAT,
                    claim.task_id,
                    claim.record.queue,
                    claim.record.attempt,
                    claim.epoch,
                    self.worker_id,
                ):
                    running.claim = await self.coord.tasks.heartbeat(claim, progress=progress)
                return
            running.claim = await self.coord.tasks.heartbeat(running.claim, progress=progress)

    async def _keep_lease(self, running: _Running) -> None:
        """Extend the deadline at a third of the lease, until the run ends or presence is lost."""
        while self._lost is None:
            remaining = (running.claim.deadline - datetime.now(UTC)).total_seconds()
            lease = running.claim.record.timeout or 30.0
            await asyncio.sleep(max(0.05, min(lease / 3, remaining / 2)))
            if self._lost is not None:
                return
            try:
                await self._heartbeat(running, None)
            except StaleClaim:
                log.warning(
                    "worker %s: claim on %s was taken away; abandoning it", self.worker_id, running.claim.task_id
                )
                running.ctx.cancelled.set()
                return
            except Exception as err:  # transient: retry on the next beat
                log.warning("worker %s: lease extension for %s failed: %s", self.worker_id, running.claim.task_id, err)

    async def _run(self, running: _Running) -> None:
        try:
            if not tracing.enabled():
                await self._run_claim(running)
                return
            record = running.claim.record
            if not _sampled(record.meta):  # continue the unsampled trace without creating spans
                token = otel_context.attach(tracing.context_from_meta(record.meta))
                try:
                    await self._run_claim(running)
                finally:
                    otel_context.detach(token)
                return
            links, reclaimed = _reclaim_link(record)
            with tracing.start_span(
                tracing.RUN,
                record.task_id,
                record.queue,
                record.attempt,
                running.claim.epoch,
                self.worker_id,
                context=tracing.context_from_meta(record.meta),
                links=links,
            ) as span:
                if reclaimed is not None:
                    span.add_event(tracing.EVENT_RECLAIMED, reclaimed)
                await self._run_claim(running)
        finally:
            self._metrics.in_flight.add(-1, self._metrics.attrs(running.claim.record.queue))

    async def _run_claim(self, running: _Running) -> None:
        claim = running.claim
        keeper = asyncio.create_task(self._keep_lease(running))
        try:
            try:
                spec = Spec.model_validate(claim.record.payload)
            except ValidationError as err:
                reason = f"spec failed validation: {_one_line(err)}"
                await dead_letter(
                    self.coord,
                    "spec",
                    reason,
                    task_id=claim.task_id,
                    body=json.dumps(claim.record.payload, default=str),
                )
                self.stats.dead_lettered += 1
                await self._finish(running, Result.failure(reason, substrate_fault=True), retry=False)
                return
            try:
                result = await self.handler(spec, running.ctx)
            except asyncio.CancelledError:
                if self._lost is None and not self._stopping.is_set():
                    raise
                await self._release(running)
                raise
            except Exception as err:
                log.info("task %s failed in handler: %s", claim.task_id, err)
                await self._finish(running, Result.failure(f"{type(err).__name__}: {err}"), retry=True)
                return
            await self._finish(running, result, retry=False)
        finally:
            keeper.cancel()
            self._running.pop(claim.task_id, None)
            await self._give_back(1)

    async def _finish(self, running: _Running, result: Result, *, retry: bool) -> None:
        inst = self._metrics
        attrs = inst.attrs(running.claim.record.queue)
        inst.run_time.record(time.monotonic() - running.started, attrs)
        async with running.lock:
            claim = running.claim
            message = "" if result.ok else (result.error.message if result.error else result.summary)
            if not result.ok:
                trace.get_current_span().set_status(Status(StatusCode.ERROR, message[:256]))
            settle = (
                tracing.start_span(
                    tracing.COMPLETE if result.ok else tracing.FAIL,
                    claim.task_id,
                    claim.record.queue,
                    claim.record.attempt,
                    claim.epoch,
                    self.worker_id,
                )
                if trace.get_current_span().is_recording()  # a child of run, never a root of its own
                else _NO_SPAN
            )
            try:
                with settle as span:
                    try:
                        if result.ok:
                            await self.coord.tasks.complete(claim, result.model_dump(mode="json"))
                            self.stats.succeeded += 1
                            inst.succeeded.add(1, attrs)
                        else:
                            record = await self.coord.tasks.fail(
                                claim, message, retry=retry, result=result.model_dump(mode="json")
                            )
                            self.stats.failed += 1
                            inst.failed.add(1, attrs)
                            if record.status is TaskStatus.DEAD:
                                inst.dead.add(1, attrs)
                            span.set_attribute("corral.task.status", record.status.value)
                    except StaleClaim:
                        span.set_attribute("corral.settle.outcome", "stale")
                        raise
            except StaleClaim as err:
                self.stats.stale_rejected += 1
                log.warning(
                    "worker %s: late result for %s rejected (StaleClaim: %s)",
                    self.worker_id,
                    running.claim.task_id,
                    err,
                )

    async def _release(self, running: _Running) -> None:
        if self._lost is not None:
            return  # fail closed: the claim is presumed reclaimed; don't touch it
        with contextlib.suppress(StaleClaim):
            await asyncio.shield(self.coord.tasks.release(running.claim))
            self.stats.released += 1


def _claim_attributes(claim: Claim, operation: tracing.Operation) -> dict[str, AttributeValue]:
    record = claim.record
    return tracing.task_attributes(
        claim.task_id, record.queue, record.attempt, claim.epoch, claim.worker_id, operation=operation
    )


def _sampled(meta: Mapping[str, str]) -> bool:
    """False only when ``meta`` holds a W3C ``traceparent`` whose sampled flag is off (its trace is
    not recorded: spans under it would be non-recording, so the worker skips creating them)."""
    traceparent = meta.get("traceparent")
    if traceparent is None:
        return True
    parts = traceparent.split("-")
    try:
        return len(parts) < 4 or bool(int(parts[3][:2], 16) & 1)
    except ValueError:
        return True


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
    if _RECLAIM_TRACEPARENT not in meta or meta.get(_RECLAIM_EPOCH) != str(record.epoch - 1):
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
        "corral.reclaim.worker.id": meta.get(_RECLAIM_WORKER, ""),
        "corral.reclaim.reason": record.error or "",
    }
    return links, event


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _one_line(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
