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

Telemetry goes through the connection's observer (``coord.observer``): the task store reports each
claim, lease extension and settle; the worker wraps each handler run in ``observer.running`` (the
``run`` span and the in-flight gauge of :class:`coord.telemetry.observer.OtelObserver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from coord.connection import Coord
from coord.errors import Conflict, InvalidInput, InvalidTransition, NotFound, PresenceLost, StaleClaim
from coord.ids import new_id, validate_id
from coord.presence import AgentInfo, Membership
from coord.tasks import Claim, Notification, TaskRecord
from coord.validation import describe
from coord.wire import Result, Spec
from workers.context import Context
from workers.handlers import Handler

__all__ = ["Worker", "WorkerStats", "queue_consumer"]

log = logging.getLogger("corral.worker")

NOTIFICATION_ACK_WAIT = 5.0
"""Seconds a fetched notification may stay unacked before redelivery. It only covers fetch -> claim
(milliseconds); a worker that dies in between delays the task by at most this much. A redelivered
notification whose task was claimed meanwhile is simply dropped."""
FETCH_WAIT = 1.0
"""Longest a pull request waits on the server; also the longest a stop waits for fetches to end."""


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
    durable = coord.names.queue_consumer(queue)
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
    lock: asyncio.Lock
    task: asyncio.Task[None] | None = None


class Worker:
    """Runs tasks from ``queues`` with up to ``concurrency`` at once (see the module docstring).

    ``lease`` overrides the task's own timeout and the store's default; ``presence_interval`` and
    ``presence_ttl`` default to the connection's settings.
    """

    def __init__(
        self,
        coord: Coord,
        queues: Sequence[str],
        handler: Handler,
        *,
        concurrency: int = 1,
        worker_id: str | None = None,
        lease: float | None = None,
        presence_interval: float | None = None,
        presence_ttl: float | None = None,
        grace: float = 10.0,
        lost_grace: float = 2.0,
        max_batch: int = 256,
        role: str = "worker",
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInput(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self.coord = coord
        self.queues = [validate_id(q, "queue") for q in queues]
        self.handler = handler
        self.concurrency = concurrency
        self.worker_id = validate_id(worker_id or new_id("w"), "worker_id")
        self.lease = lease
        self.presence_interval = coord.settings.presence_interval if presence_interval is None else presence_interval
        self.presence_ttl = coord.settings.presence_ttl if presence_ttl is None else presence_ttl
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
            record = await self.coord.tasks.get(task_id)  # its meta holds the trace to continue
            claim = await self.coord.tasks.claim(task_id, self.worker_id, lease=self.lease, record=record)
            self._start(claim)
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
            raise InvalidInput("queues: a worker needs at least one queue")
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
                await self._dead_letter_notification(msg, f"malformed notification: {describe(err)}")
                continue
            delay = _seconds_until(note.visible_at)
            if delay > 0:
                await self._give_back(1)
                await msg.nak(delay=delay)
                continue
            notes.append((msg, note))
        claims = [
            self.coord.tasks.claim(
                n.task_id, self.worker_id, revision=n.revision, lease=self.lease, record=n.record, headers=m.headers
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

    async def _dead_letter_notification(self, msg: Msg, reason: str) -> None:
        self.stats.dead_lettered += 1
        await msg.term()
        await self.coord.dead_letters.record(
            "dispatch", reason, subject=msg.subject, body=msg.data, headers=dict(msg.headers or {})
        )

    # --- running -----------------------------------------------------------------------------
    def _start(self, claim: Claim, pending: TaskRecord | None = None) -> None:
        """Run ``claim`` in a task of its own (``pending``: the record it was claimed from, if known)."""
        self.stats.claimed += 1
        ctx = Context(
            task_id=claim.task_id,
            worker_id=self.worker_id,
            epoch=claim.epoch,
            attempt=claim.record.attempt,
            queue=claim.record.queue,
        )
        running = _Running(claim=claim, ctx=ctx, lock=asyncio.Lock())
        ctx._beat = lambda progress: self._heartbeat(running, progress)
        self._running[claim.task_id] = running
        running.task = asyncio.create_task(self._run(running, pending), name=f"run-{claim.task_id}")

    async def _heartbeat(self, running: _Running, progress: Any) -> None:
        async with running.lock:
            running.claim = await self.coord.tasks.heartbeat(running.claim, progress=progress)

    async def _keep_lease(self, running: _Running) -> None:
        """Extend the deadline at a third of the lease, until the run ends or presence is lost."""
        while self._lost is None:
            remaining = (running.claim.deadline - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(0.05, min(running.claim.lease / 3, remaining / 2)))
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

    async def _run(self, running: _Running, pending: TaskRecord | None) -> None:
        with self.coord.observer.running(running.claim, pending):
            await self._run_claim(running)

    async def _run_claim(self, running: _Running) -> None:
        claim = running.claim
        keeper = asyncio.create_task(self._keep_lease(running))
        try:
            try:
                spec = Spec.model_validate(claim.record.spec)
            except ValidationError as err:
                reason = f"spec failed validation: {describe(err)}"
                await self.coord.dead_letters.record(
                    "spec", reason, task_id=claim.task_id, body=json.dumps(claim.record.spec, default=str)
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
        async with running.lock:
            claim = running.claim
            try:
                if result.ok:
                    await self.coord.tasks.complete(claim, result.model_dump(mode="json"))
                    self.stats.succeeded += 1
                else:
                    message = result.error.message if result.error else result.summary
                    await self.coord.tasks.fail(claim, message, retry=retry, result=result.model_dump(mode="json"))
                    self.stats.failed += 1
            except StaleClaim as err:
                self.stats.stale_rejected += 1
                log.warning(
                    "worker %s: late result for %s rejected (StaleClaim: %s)", self.worker_id, claim.task_id, err
                )

    async def _release(self, running: _Running) -> None:
        if self._lost is not None:
            return  # fail closed: the claim is presumed reclaimed; don't touch it
        with contextlib.suppress(StaleClaim):
            await asyncio.shield(self.coord.tasks.release(running.claim))
            self.stats.released += 1


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
