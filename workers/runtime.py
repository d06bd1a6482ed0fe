"""The worker runtime: claim, run, keep the lease, report — and ride out outages.

A :class:`Worker` joins presence (with its queues, capacity and in-flight count), pulls "task ready"
notifications from one durable consumer per queue in batches sized to its free slots
(:mod:`workers.intake`), claims them with one compare-and-set each (pipelined per batch), runs the
handler and records the outcome (:mod:`workers.execution`).

Failure behaviour:

- every notification ends in a bounded outcome and never stops the intake (see
  :mod:`workers.intake`); a consumer deleted under the worker is re-created;
- a server restart, a leader election or a partition is a pause: fetches, claims and writes are
  retried while it lasts. If no presence renewal reaches the server for the TTL, the worker fails
  closed — it stops fetching and stops extending its claims, gives running handlers ``lost_grace``
  seconds and then stops them (their claims are left for the reclaimer; a late result is rejected
  with ``StaleClaim`` if the task was reclaimed meanwhile) — and once the server answers it joins
  again with a fresh instance and takes work again. Only ``exit_on_loss=True`` (``--exit-on-loss``)
  or another process taking its id makes :meth:`Worker.run` raise :class:`~coord.errors.PresenceLost`;
- a claim cancelled or reclaimed elsewhere stops its handler at once (the store tells the worker on
  ``{ns}.control.{worker}``, and the worker checks the record before acting);
- if the intake itself ends unexpectedly, the worker fails closed visibly: it leaves presence and
  :meth:`Worker.run` raises :class:`~coord.errors.CorralError` (the CLI exits non-zero);
- :meth:`Worker.stop` (SIGTERM/SIGINT in the CLI) stops fetching, lets in-flight work finish within
  ``grace`` seconds, stops what remains and releases it back to pending once its handler has really
  stopped, and leaves presence;
- a blocked event loop is reported with what was running (:mod:`workers.watchdog`).

Telemetry goes through the connection's observer (``coord.observer``): the task store reports each
claim, lease extension and settle; each handler run is wrapped in ``observer.running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import replace

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coord.aio import first_of, stop_tasks
from coord.connection import Coord
from coord.errors import CorralError, InvalidInput, PresenceLost
from coord.ids import new_id, validate_id
from coord.presence import AgentInfo, Membership, MembershipLost
from coord.tasks import Claim, TaskRecord, TaskStatus
from coord.validation import IN_FLIGHT, TIMEOUT, TTL, WAIT, WORKERS, check_number
from workers.execution import Execution
from workers.gate import Gate
from workers.handlers import Handler
from workers.intake import FETCH_WAIT, Intake, Slots, queue_consumer
from workers.stats import WorkerStats
from workers.watchdog import LoopWatchdog

__all__ = ["Worker", "WorkerStats", "queue_consumer"]

log = logging.getLogger("corral.worker")

INFLIGHT_COALESCE = 0.05
"""Seconds within which task starts and ends are published as one inflight update (presence writes
it at most four times a second anyway; validating a new AgentInfo per start and end cost ~3% of a
busy worker's CPU)."""


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
        exit_on_loss: bool = False,
    ) -> None:
        check_number("concurrency", concurrency, WORKERS)
        check_number("grace", grace, WAIT)
        check_number("lost_grace", lost_grace, WAIT)
        check_number("lease", lease, TIMEOUT, optional=True)
        check_number("presence_interval", presence_interval, TIMEOUT, optional=True)
        check_number("presence_ttl", presence_ttl, TTL, optional=True)
        check_number("max_batch", max_batch, IN_FLIGHT)
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
        self.exit_on_loss = exit_on_loss
        """Exit (raise :class:`PresenceLost`) when presence is lost instead of joining again."""
        self._stats = WorkerStats()
        self._slots = Slots(concurrency)
        self._gate = Gate(coord, self.queues, self.worker_id)
        self._running: dict[str, Execution] = {}
        self._stopping = asyncio.Event()
        self._fatal: CorralError | None = None
        self._started = asyncio.Event()
        self._intakes: list[Intake] = []
        self._membership: Membership | None = None
        self._inflight_due: asyncio.TimerHandle | None = None
        self._watchdog = LoopWatchdog(self._describe_running, on_block=self._blocked)

    @property
    def stats(self) -> WorkerStats:
        """What this worker did so far (a copy: later counts do not change it)."""
        return replace(self._stats)

    @property
    def inflight(self) -> int:
        """Tasks being run right now."""
        return len(self._running)

    async def wait_started(self) -> None:
        """Wait until the worker is present and fetching: joined, and every queue's consumers found as
        configured (or created, where this credential may) with pulls ready to be made. A queue whose
        consumers are missing or re-pointed keeps this waiting until they are set right."""
        await first_of(self._started.wait(), self._stopping.wait())
        if not self._stopping.is_set():
            await first_of(asyncio.gather(*(intake.fetching.wait() for intake in self._intakes)), self._stopping.wait())

    def stop(self) -> None:
        """Ask for a graceful stop (returns at once; :meth:`run` finishes the shutdown)."""
        self._stopping.set()

    # --- presence ------------------------------------------------------------------------------
    def _join(self, *, rejoin: bool) -> Membership:
        info = AgentInfo(id=self.worker_id, role=self.role, queues=self.queues, capacity=self.concurrency)
        membership = self.coord.presence.join(
            info, interval=self.presence_interval, ttl=self.presence_ttl, on_lost=self._on_lost, rejoin=rejoin
        )
        self._membership = membership
        return membership

    def _on_lost(self, err: PresenceLost) -> None:
        self._stats.presence_losses += 1
        rejoining = isinstance(err, MembershipLost) and err.rejoining
        if not rejoining or self.exit_on_loss:
            log.error("worker %s: presence lost (%s); failing closed and stopping", self.worker_id, err)
            self._fatal = self._fatal or err
            self._stopping.set()
        else:
            log.warning(
                "worker %s: presence lost (%s); failing closed (%d claim(s) left to the reclaimer) until it rejoins",
                self.worker_id,
                err,
                len(self._running),
            )
        for execution in list(self._running.values()):
            execution.fail_closed()
        asyncio.get_running_loop().call_later(self.lost_grace, self._stop_abandoned)

    def _stop_abandoned(self) -> None:
        for execution in list(self._running.values()):
            if execution.stop_reason == "lost":
                execution.stop("lost")

    def _publish_inflight(self) -> None:
        """Publish the number of running tasks within :data:`INFLIGHT_COALESCE` (one update for many)."""
        if self._inflight_due is None:
            self._inflight_due = asyncio.get_running_loop().call_later(INFLIGHT_COALESCE, self._write_inflight)

    def _write_inflight(self) -> None:
        self._inflight_due = None
        membership = self._membership
        if membership is not None and not membership.ended.is_set() and membership.info.inflight != len(self._running):
            with contextlib.suppress(CorralError):
                membership.change(inflight=len(self._running))

    # --- running -------------------------------------------------------------------------------
    def _start(self, claim: Claim, pending: TaskRecord | None) -> None:
        execution = Execution(self.coord, claim, self.handler, stats=self._stats, on_done=self._finished)
        self._running[claim.task_id] = execution
        self._watchdog.refresh()
        execution.start(pending)
        self._publish_inflight()

    def _finished(self, execution: Execution) -> None:
        if self._running.get(execution.claim.task_id) is execution:
            del self._running[execution.claim.task_id]
        self._slots.returned(1)
        self._gate.release(execution.claim.task_id)
        self._watchdog.refresh()
        self._publish_inflight()

    async def _on_control(self, msg: Msg) -> None:
        """A hint that a claim of ours ended elsewhere: checked against the record before acting."""
        try:
            task_id = json.loads(msg.data)["task_id"]
        except Exception:
            return
        execution = self._running.get(task_id) if isinstance(task_id, str) else None
        if execution is None:
            return
        try:
            record = await self.coord.tasks.get(task_id)
        except CorralError as err:
            log.debug("worker %s: could not check %s: %s", self.worker_id, task_id, err)
            return
        held = record.claim
        if record.status is not TaskStatus.CLAIMED or held is None or held.claim_id != execution.claim.claim_id:
            log.warning("worker %s: %s was %s elsewhere; stopping its handler", self.worker_id, task_id, record.status)
            execution.stop("taken")

    def _describe_running(self) -> str:
        # called at every start and end of a run: names the first five without copying every id
        count = len(self._running)
        first = ", ".join(itertools.islice(self._running, 5))
        return first + (f" and {count - 5} more" if count > 5 else "")

    def _blocked(self, seconds: float) -> None:
        self._stats.loop_blocks += 1

    async def run_one(self, task_id: str) -> TaskRecord:
        """Join presence, claim ``task_id`` directly (no notification), run it, report, leave.

        Returns the task record afterwards. Raises what ``claim`` raises when the task is not
        claimable, and PresenceLost if presence was lost meanwhile.
        """
        validate_id(task_id, "task_id")
        async with self._join(rejoin=False) as membership:
            record = await self.coord.tasks.get(task_id)  # its meta holds the trace to continue
            claim = await self.coord.tasks.claim(task_id, self.worker_id, lease=self.lease, record=record)
            self._start(claim, None)
            execution = self._running.get(task_id)
            if execution is not None and execution.task is not None:
                await asyncio.gather(execution.task, return_exceptions=True)
            if self._fatal is None:
                await membership.leave()
        if self._fatal is not None:
            raise self._fatal
        return await self.coord.tasks.get(task_id)

    async def run(self) -> None:
        """Work until :meth:`stop`, or until presence is lost for good (raises :class:`PresenceLost`)."""
        if not self.queues:
            raise InvalidInput("queues: a worker needs at least one queue")
        watchdog = self._watchdog
        control: Subscription | None = None
        async with self._join(rejoin=not self.exit_on_loss) as membership:
            control = await self.coord.nc.subscribe(
                self.coord.names.control_subject(self.worker_id), cb=self._on_control
            )
            await self._gate.start()
            self._intakes = intakes = [
                Intake(
                    self.coord,
                    queue,
                    worker_id=self.worker_id,
                    lease=self.lease,
                    slots=self._slots,
                    max_batch=self.max_batch,
                    on_claim=self._start,
                    present=membership.present,
                    stopping=self._stopping,
                    stats=self._stats,
                    gate=self._gate,
                )
                for queue in self.queues
            ]
            fetchers = [asyncio.create_task(i.run(), name=f"intake-{i.queue}") for i in intakes]
            watchdog.start()
            self._started.set()
            log.info("worker %s present on %s (concurrency %d)", self.worker_id, self.queues, self.concurrency)
            try:
                await self._supervise(fetchers)
            finally:
                watchdog.stop()
                self._slots.wake()
                # Let each fetch end by itself (<= FETCH_WAIT): a notification delivered into a
                # cancelled pull request would sit unacked until its ack wait.
                _, late = await asyncio.wait(fetchers, timeout=FETCH_WAIT + 2)
                await stop_tasks(late, within=2.0, what=f"worker {self.worker_id} intake")
                await self._drain()
                await self._gate.close()
                with contextlib.suppress(Exception):
                    await control.unsubscribe()
            if self._fatal is None:
                await membership.leave()
        if self._fatal is not None:
            raise self._fatal

    async def _supervise(self, fetchers: list[asyncio.Task[None]]) -> None:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({stopping, *fetchers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        ended = [t for t in done if t is not stopping]
        if ended and not self._stopping.is_set():
            failure = ended[0].exception() if not ended[0].cancelled() else None
            log.error("worker %s: an intake ended unexpectedly (%r); failing closed", self.worker_id, failure)
            self._fatal = CorralError(f"worker {self.worker_id}: intake of {ended[0].get_name()} ended: {failure!r}")
            self._stopping.set()

    async def _drain(self) -> None:
        """Let running work finish within the grace; stop the rest (released on a graceful stop)."""
        lost = self._fatal is not None or (self._membership is not None and self._membership.is_lost)
        grace = self.lost_grace if lost else self.grace
        tasks = [e.task for e in self._running.values() if e.task is not None]
        if not tasks:
            return
        log.info("worker %s: waiting up to %.1fs for %d running task(s)", self.worker_id, grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for execution in list(self._running.values()):
            if execution.task in pending:
                execution.stop("lost" if lost else "shutdown")
        # Wait for the handlers to have really stopped (a sync handler's thread runs to its end).
        await asyncio.gather(*pending, return_exceptions=True)
