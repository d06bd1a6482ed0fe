"""The scheduler: submits the task of every tick of every schedule in ``{ns}_schedules``.

It follows the bucket with a watch (a schedule added, changed, paused, resumed or removed takes
effect at once, without a restart) and keeps one timer per active schedule, sleeping until its next
tick (at most :data:`MAX_SLEEP` at a time, so a wall-clock step or a suspended host is noticed).

**Exactly one task per tick, with any number of schedulers.** The task of a tick has an id derived
from the schedule's name and the tick's time (``{name}-{unix seconds}``), and submitting is the task
store's create, idempotent by task id: every scheduler may submit every tick and one task exists.
After submitting, a scheduler records the tick as the schedule's ``last_tick`` (a compare-and-set
that only moves forward); a scheduler that sees a tick recorded does not submit it again.

**Missed ticks.** Ticks at or before the schedule's floor (the later of its ``last_tick`` and the
time it was defined or resumed) are never submitted. When a timer finds that ticks after the floor
have passed (every scheduler was down, or the server was unreachable), it submits only the most
recent of them, once, then goes on with the next: no storm of catch-up tasks. Ticks that fall
while a schedule is paused are skipped, not made up on resume.

**Results.** The tasks have no parent: the definition of a task must be the same in every
scheduler for the create to be idempotent, and nobody waits for a tick's result. A tick's outcome
is its task record (``corral tasks ls``, ``corral tasks show {name}-{unix seconds}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from coord.aio import stop_tasks
from coord.connection import Coord
from coord.errors import CorralError, InvalidInput, TaskExists
from coord.kv import KeyWatch
from coord.schedules import Schedule, next_tick, previous_tick
from coord.tasks import ScheduleRequest
from coord.validation import TIMEOUT, check_number

__all__ = ["MAX_SLEEP", "RETRY_PAUSE", "Scheduler", "Submitted"]

log = logging.getLogger("corral.scheduler")

MAX_SLEEP = 60.0
"""Longest a timer sleeps before it looks at the wall clock again."""
RETRY_PAUSE = 1.0
"""Seconds before a timer tries again a submission that failed (the server unreachable, say)."""
EVENTS_KEPT = 1024
"""Submissions kept for :attr:`Scheduler.events` readers; older ones are dropped when nobody reads."""
STOP_WITHIN = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Submitted:
    """One tick submitted and recorded (by this scheduler; another may have submitted the same task)."""

    schedule: str
    """The schedule's name."""
    tick: datetime
    """The tick (aware UTC, whole seconds)."""
    task_id: str
    """The tick's task: ``{schedule}-{unix seconds}``."""
    late: float
    """Seconds between the tick and its submission (large for a missed tick made up)."""


class _Events(asyncio.Queue[Submitted]):
    """A queue that keeps only the newest :data:`EVENTS_KEPT` submissions when nobody reads it."""

    def put_nowait(self, item: Submitted) -> None:
        if self.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.get_nowait()
        super().put_nowait(item)


class Scheduler:
    """Submits every tick of every active schedule (see the module docstring); several may run at once.

    Use ``async with Scheduler(coord):`` or :meth:`start` / :meth:`stop`. ``events`` receives each
    submission (the newest 1,024 when nobody reads them), for progress displays and tests.
    """

    def __init__(self, coord: Coord, *, max_sleep: float = MAX_SLEEP, clock: Callable[[], datetime] = _now) -> None:
        check_number("max_sleep", max_sleep, TIMEOUT)
        self.coord = coord
        self.max_sleep = max_sleep
        """Longest a timer sleeps before it looks at the wall clock again."""
        self.clock = clock
        """The wall clock (aware UTC) the timers read: a fake one in tests."""
        self.events: asyncio.Queue[Submitted] = _Events(EVENTS_KEPT)
        """The ticks this scheduler submitted, in order."""
        self.submitted = 0
        """How many ticks it submitted."""
        self._known: dict[str, Schedule] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, datetime] = {}
        self._watch: KeyWatch | None = None

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The schedules as this scheduler last saw them, by name."""
        return dict(self._known)

    async def start(self) -> Scheduler:
        """Watch the schedules; returns once every existing schedule has its timer."""
        self._watch = await self.coord.schedules.watch(self._on_change).start()
        return self

    async def stop(self) -> None:
        """Stop the watch and every timer; returns within a few seconds and never raises."""
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.stop()  # never raises
        timers = list(self._timers.values())
        self._timers.clear()
        await stop_tasks(timers, within=STOP_WITHIN, what="scheduler")

    async def __aenter__(self) -> Scheduler:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_change(self, name: str, schedule: Schedule | None) -> None:
        old = self._known.get(name)
        if schedule is None:
            self._known.pop(name, None)
            self._done.pop(name, None)
            self._disarm(name)
            return
        self._known[name] = schedule  # a recorded tick only updates the floor the timer reads
        running = name in self._timers and not self._timers[name].done()
        if old is not None and old.definition() == schedule.definition() and (running or schedule.paused):
            return
        self._disarm(name)
        if not schedule.paused:
            self._timers[name] = asyncio.create_task(self._run(name), name=f"schedule-{name}")

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def _run(self, name: str) -> None:
        """One schedule's timer: submit the latest due tick above the floor, then sleep until the next."""
        while True:
            schedule = self._known.get(name)
            if schedule is None or schedule.paused:
                return
            try:
                now = self.clock()
                floor = max(schedule.floor, self._done.get(name, schedule.floor))
                due = previous_tick(schedule.cron, schedule.timezone, now)
                if due is not None and due > floor and not await self._submit(schedule, due, now):
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                upcoming = next_tick(schedule.cron, schedule.timezone, now)
            except Exception:  # a bug must not silence the schedule: log it and look again
                log.exception("schedule %s: timer failed; trying again", name)
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if upcoming is None:
                log.info("schedule %s has no tick in the next 50 years; its timer stops", name)
                return
            if upcoming <= now:  # never busy-loop on a tick already past: a bug, logged, looked at again later
                log.error(
                    "schedule %s: next tick %s is not after now (%s); looking again in %gs",
                    name,
                    upcoming,
                    now,
                    RETRY_PAUSE,
                )
                await asyncio.sleep(RETRY_PAUSE)
                continue
            await asyncio.sleep(min(self.max_sleep, max(0.0, (upcoming - self.clock()).total_seconds())))

    async def _submit(self, schedule: Schedule, tick: datetime, now: datetime) -> bool:
        """Submit ``tick``'s task and record the tick; False when it should be tried again."""
        task_id = schedule.task_id(tick)
        spec = schedule.task.spec(task_id)
        request = ScheduleRequest(
            task_id=task_id,
            queue=spec.queue,
            spec=spec.model_dump(mode="json"),
            max_attempts=spec.max_attempts,
            timeout=spec.timeout,
            parent=None,
            meta={"schedule": schedule.name, "tick": tick.isoformat()},
        )
        try:
            await self.coord.tasks.schedule_many([request])
        except TaskExists:
            # Another scheduler submitted this tick with the definition it knew (it changed meanwhile).
            log.info("schedule %s: tick %s already submitted as %s", schedule.name, tick.isoformat(), task_id)
        except InvalidInput as err:  # this definition can never be submitted (a payload too large, say)
            log.error("schedule %s: tick %s cannot be submitted (%s); skipping it", schedule.name, tick, err)
            self._done[schedule.name] = tick
            return True
        except CorralError as err:
            log.warning("schedule %s: submitting tick %s failed (%s); trying again", schedule.name, tick, err)
            return False
        self._done[schedule.name] = tick
        try:
            await self.coord.schedules.record_tick(schedule.name, tick, task_id)
        except CorralError as err:  # the task exists; only the recorded tick lags
            log.warning("schedule %s: recording tick %s failed (%s)", schedule.name, tick, err)
        self.submitted += 1
        self.events.put_nowait(Submitted(schedule.name, tick, task_id, (now - tick).total_seconds()))
        return True
