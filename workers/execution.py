"""Running one claim: the handler, its lease, and an outcome that is always recorded or handed back.

An :class:`Execution` guarantees:

* the lease is extended at a third of its length while the handler runs, until the claim is taken
  away (then the handler is stopped at once: ``ctx.cancelled``, asyncio cancellation, and for a
  command SIGTERM, then SIGKILL after its grace) or the worker fails closed (then it stops
  extending, and the reclaimer gives the task to someone else);
* a claim is written to (settled or released) only after its handler has really stopped, so no
  two runs of a task overlap through this worker;
* every outcome ends in the record: a result the store refuses (too large, not JSON) is replaced,
  once, by a failure with that reason (cut to fit; the store makes the task ``dead`` rather than
  refuse it); a write that keeps failing (server away) is retried (:func:`coord.retry.retry_transient`)
  while the lease is kept, and only then left to the reclaimer, with an error in the log saying so;
  never a loop without a pause or a bound;
* a spec kept in a blob is read before the handler runs; one that cannot be read (missing,
  corrupt) fails the task for good with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Literal

from pydantic import ValidationError

from coord.connection import Coord
from coord.deadletter import LATE_RESULT
from coord.errors import Conflict, InvalidInput, InvalidRecord, StaleClaim, Unavailable
from coord.retry import is_transient, retry_transient
from coord.tasks import Claim, TaskRecord
from coord.tasks.size import cut
from coord.validation import describe
from coord.wire import Result, Spec
from workers.context import Context
from workers.handlers import Handler
from workers.stats import WorkerStats

__all__ = ["Execution", "ExecutionStats", "StopReason"]

log = logging.getLogger("corral.worker")

StopReason = Literal["shutdown", "lost", "taken"]
"""Why a run is stopped early: the worker stops (release), failed closed (abandon), or the claim ended."""

SETTLE_PATIENCE_MIN = 60.0
"""Seconds an outcome keeps being retried at least (more for longer leases)."""


ExecutionStats = WorkerStats
"""What a worker's runs count (the worker's one stats model)."""


class Execution:
    """One claim being run by ``handler`` (see the module docstring)."""

    def __init__(
        self,
        coord: Coord,
        claim: Claim,
        handler: Handler,
        *,
        stats: ExecutionStats,
        on_done: Callable[[Execution], None],
    ) -> None:
        self.claim = claim
        """The claim, as of its latest write."""
        self.ctx = Context(
            task_id=claim.task_id,
            worker_id=claim.worker_id,
            epoch=claim.epoch,
            attempt=claim.record.attempt,
            queue=claim.record.queue,
        )
        """What the handler sees."""
        self.task: asyncio.Task[None] | None = None
        """The task running this execution."""
        self.stop_reason: StopReason | None = None
        """Set when the run is stopped early, and why."""
        self._coord = coord
        self._handler = handler
        self._stats = stats
        self._on_done = on_done
        self._lock = asyncio.Lock()
        self.ctx._beat = self._heartbeat

    @property
    def keeps_lease(self) -> bool:
        """True while the lease is extended (not after the worker failed closed or the claim ended)."""
        return self.stop_reason not in ("lost", "taken")

    def start(self, pending: TaskRecord | None) -> asyncio.Task[None]:
        """Run in a task of its own (``pending``: the record the claim was made from, when known)."""
        self._stats.claimed += 1
        self.task = asyncio.create_task(self._run(pending), name=f"run-{self.claim.task_id}")
        return self.task

    def stop(self, reason: StopReason) -> None:
        """Stop the handler now: ``shutdown`` releases the claim after it stopped, ``lost`` abandons
        it (fail closed), ``taken`` leaves it alone (it is someone else's)."""
        if reason == "taken" and self.stop_reason != "taken":
            self._stats.taken_away += 1
        if self.stop_reason is None or reason != "shutdown":
            self.stop_reason = reason
        self.ctx.cancelled.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def fail_closed(self) -> None:
        """Stop extending the lease (presence was lost); the handler may still finish in its grace."""
        if self.stop_reason is None:
            self.stop_reason = "lost"

    # --- running -----------------------------------------------------------------------------
    async def _run(self, pending: TaskRecord | None) -> None:
        try:
            with self._coord.observer.running(self.claim, pending):
                await self._execute()
        except asyncio.CancelledError:
            pass  # stopped on purpose; what that means for the claim was handled in _execute
        except Exception:
            log.exception("worker %s: run of %s failed unexpectedly", self.claim.worker_id, self.claim.task_id)
        finally:
            self._on_done(self)

    async def _execute(self) -> None:
        # The lease keeper's task is started only when its first extension is due: most runs end before.
        keeper: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        due = loop.call_later(
            self._next_beat(),
            lambda: keeper.append(loop.create_task(self._keep_lease(), name=f"lease-{self.claim.task_id}")),
        )
        try:
            try:
                value = await self._coord.tasks.values.spec_of(self.claim.record)
            except InvalidRecord as err:
                reason = f"the spec could not be read: {err}"
                await self._settle(Result.failure(reason, substrate_fault=True), retry=False)
                return
            try:
                spec = Spec.model_validate(value)
            except ValidationError as err:
                reason = f"spec failed validation: {describe(err)}"
                await self._coord.dead_letters.record(
                    "spec", reason, task_id=self.claim.task_id, body=json.dumps(value, default=str)[:65536]
                )
                self._stats.dead_lettered += 1
                await self._settle(Result.failure(reason, substrate_fault=True), retry=False)
                return
            try:
                result = await self._handler(spec, self.ctx)
            except asyncio.CancelledError:
                await self._after_stop()
                raise
            except Exception as err:
                log.warning(
                    "task %s failed in its handler: %s: %s", self.claim.task_id, type(err).__name__, err, exc_info=True
                )
                await self._settle(Result.failure(f"{type(err).__name__}: {err}"), retry=True)
                return
            if self.stop_reason == "taken":
                return  # the claim ended meanwhile: nothing of ours to write
            await self._settle(result, retry=False)
        finally:
            due.cancel()
            for task in keeper:
                task.cancel()

    async def _after_stop(self) -> None:
        """The handler has stopped (cancelled): release the claim if the worker is shutting down."""
        if self.stop_reason != "shutdown":
            return  # lost: fail closed, leave it to the reclaimer; taken: not ours any more
        try:
            async with self._lock:
                await asyncio.shield(self._coord.tasks.release(self.claim))
            self._stats.released += 1
        except StaleClaim:
            pass
        except Exception as err:
            log.warning(
                "worker %s: could not release %s (%s); it is reclaimed after its lease",
                self.claim.worker_id,
                self.claim.task_id,
                err,
            )

    # --- the lease -----------------------------------------------------------------------------
    async def _heartbeat(self, progress: object) -> None:
        async with self._lock:
            self.claim = await self._coord.tasks.heartbeat(self.claim, progress=progress)

    def _next_beat(self) -> float:
        """Seconds until the lease is next extended: a third of the lease, sooner if the deadline is near."""
        remaining = (self.claim.deadline - datetime.now(UTC)).total_seconds()
        return max(0.05, min(self.claim.lease / 3, remaining / 2))

    async def _keep_lease(self) -> None:
        """Extend the deadline at a third of the lease, until the run ends or the claim is not kept
        (started when the first extension is due)."""
        while self.keeps_lease:
            try:
                await self._heartbeat(None)
            except StaleClaim:
                log.warning(
                    "worker %s: claim on %s was taken away; stopping its handler",
                    self.claim.worker_id,
                    self.claim.task_id,
                )
                self.stop("taken")
                return
            except Exception as err:  # transient: retry on the next beat
                log.warning(
                    "worker %s: lease extension for %s failed: %s", self.claim.worker_id, self.claim.task_id, err
                )
            await asyncio.sleep(self._next_beat())

    # --- the outcome ---------------------------------------------------------------------------
    async def _settle(self, result: Result, *, retry: bool) -> None:
        """Record ``result``; a result the store refuses is replaced once by a failure saying why."""
        task = self.claim.task_id
        for replaced in (False, True):
            try:
                await retry_transient(
                    partial(self._write_outcome, result, retry=retry),
                    nc=self._coord.nc,
                    within=max(SETTLE_PATIENCE_MIN, self.claim.lease),
                    what=f"recording the outcome of {task}",
                    retry_on=self._worth_retrying,
                )
                return
            except StaleClaim as err:
                self._stats.stale_rejected += 1
                log.warning("worker %s: late result for %s rejected (StaleClaim: %s)", self.claim.worker_id, task, err)
                # On the record (NATS), not only in this process's log: dashboards show it.
                await self._coord.dead_letters.record(
                    LATE_RESULT,
                    f"result from {self.claim.worker_id} (epoch {self.claim.epoch}) refused: {err}",
                    body=result.model_dump_json()[:65536],
                    task_id=task,
                )
                return
            except InvalidInput as err:  # the store refuses this outcome (too large, not JSON)
                if replaced:  # even the failure saying so: nothing more to try (the store never refuses one)
                    self._unrecorded(err)
                    return
                log.warning("worker %s: the result of %s was refused: %s", self.claim.worker_id, task, err)
                reason = cut(f"the result could not be recorded: {err}")
                result, retry = Result.failure(reason, substrate_fault=True), False
            except Exception as err:
                self._unrecorded(err)
                return

    def _worth_retrying(self, err: BaseException) -> bool:
        """A write worth trying again: the server was away (or a race was lost) and the lease is still kept."""
        return self.keeps_lease and (is_transient(err) or isinstance(err, Unavailable | Conflict | OSError))

    def _unrecorded(self, err: BaseException) -> None:
        self._stats.unrecorded += 1
        log.error(
            "worker %s: could not record the outcome of %s (%s: %s); it is re-run after its lease",
            self.claim.worker_id,
            self.claim.task_id,
            type(err).__name__,
            err,
        )

    async def _write_outcome(self, result: Result, *, retry: bool) -> None:
        async with self._lock:
            if result.ok:
                await self._coord.tasks.complete(self.claim, result.model_dump(mode="json"))
                self._stats.succeeded += 1
            else:
                message = result.error.message if result.error else result.summary
                await self._coord.tasks.fail(self.claim, message, retry=retry, result=result.model_dump(mode="json"))
                self._stats.failed += 1
