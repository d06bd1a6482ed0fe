"""A small real fleet, run in an event loop of its own so hypothesis can drive examples against it.

On a real nats-server, in its own namespace: two `corral worker` processes (handler
``tests.e2e.helpers_handlers:sleepy``, which marks each run in a directory) on a queue with a
concurrency and a rate limit, a Dispatcher (with its embedded Reclaimer) submitting a
steady trickle of honest tasks, a Scheduler ticking every second, an events listener and a mailbox
reader, and the adversary's own connection. :meth:`Fleet.write` makes hostile writes; :meth:`probe`
and :meth:`check` assert the invariants, each failure an :class:`InvariantBroken` subclass naming
the invariant (so a known failure can be marked precisely).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

import coord
from coord.events import Progress
from coord.events.models import ReceivedEvent
from coord.limits import Rate
from coord.limits.models import split_slot_key
from coord.limits.service import SLOT_GRACE, decode_slot
from coord.mailbox import Agent
from coord.naming import kv_subject_prefix
from coord.priority import Priority
from coord.schedules import Schedule, TaskTemplate
from coord.tasks import TaskRecord, TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher
from dispatch.scheduler import Scheduler
from tests.adversary.hostile import CHILD, HONEST, LISTENER, NS, PARENT, QUEUE, READER, WORKERS, Write
from tests.conftest import PYTHON
from tests.helpers_wait import Check, eventually

T = TypeVar("T")

SWEEP_INTERVAL = 0.5
"""The fleet's reclaimer sweeps this often."""
RENOTIFY_AFTER = 2.0
"""…and renotifies a pending task whose notification is gone after this long."""
PRESENCE_TTL = 2.0
"""Presence TTL of the fleet's agents."""
DELAY = 1.5
"""Every other honest task is submitted with this delay, so some are pending when the adversary names one."""
TOLERANCE = 3.0
"""Slack for a loaded 2-core machine on every bound below."""

PROBE_BOUND = RENOTIFY_AFTER + SWEEP_INTERVAL + 2 * TOLERANCE
"""An honest task submitted now finishes within this (a lost notification included), and an honest
event and mail message are delivered within it."""
SLOT_BOUND = SLOT_GRACE + SWEEP_INTERVAL + TOLERANCE
"""No slot is held by anything but a current claim for longer than this (docs/limits.md: 5 s)."""
RECLAIM_BOUND = PRESENCE_TTL + SWEEP_INTERVAL + PROBE_BOUND
"""A claim whose worker is absent is back in the queue and finished within this."""
TICK_BOUND = 2.0 + TOLERANCE
"""The every-second schedule submits a tick within this."""
RSS_GROWTH = 300 * 1024 * 1024
"""The test process (fleet and adversary) grows by less than this over one target's run."""
WORKER_RSS_GROWTH = 200 * 1024 * 1024
"""Each worker process grows by less than this over one target's run."""
HANDLER = "tests.e2e.helpers_handlers:sleepy"
"""The workers' handler: runs at once, marking each run as a file."""


class InvariantBroken(AssertionError):
    """An invariant of the fleet under attack does not hold."""


class LoopStalled(InvariantBroken):
    """A loop stopped: workers no longer claim, the reclaimer no longer reclaims, the listener no longer
    delivers, the mailbox reader no longer reads, or the scheduler no longer ticks."""


class NotExactlyOnce(InvariantBroken):
    """An honest task did not finish exactly once within its bound (it ran twice, did not succeed, or
    took longer)."""


class Stranded(InvariantBroken):
    """An honest task stayed pending past the sweep bound: it had no deliverable notification."""


class SlotHeld(InvariantBroken):
    """A concurrency slot was held past its bound by something other than a current claim."""


class Undeliverable(InvariantBroken):
    """The dispatch stream holds a message on a subject no queue consumer can ever deliver."""


class MemoryGrew(InvariantBroken):
    """The fleet's memory grew past the bound."""


class Fleet:
    """The fleet, its adversary and the invariants (see the module docstring)."""

    def __init__(self, url: str, namespace: str, env: dict[str, str]) -> None:
        self.url = url
        self.namespace = namespace
        self.env = env
        """Environment of the worker processes (``subprocess_env``: this checkout's code)."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="adversary-fleet", daemon=True)
        self.marks = Path(tempfile.mkdtemp(prefix="adversary-"))
        """Where the workers' handler marks its runs and the workers log."""
        self.honest: dict[str, float] = {}
        """Honest task id → when it was submitted (monotonic)."""
        self.submitted_at: dict[str, datetime] = {}
        self.delays: dict[str, float] = {}
        self.events_seen: set[str] = set()
        self.mail_seen: set[bytes] = set()
        self.refused: Counter[str] = Counter()
        """Hostile writes the server or client refused, by error type (a refusal is no finding)."""
        self.written = 0
        self._ids = itertools.count()
        self._background: list[asyncio.Task[None]] = []
        self._rss_workers: dict[str, int] = {}
        self._conns: list[coord.Coord] = []
        self._rss_start = 0

    # --- running ---------------------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` in the fleet's loop and wait for its outcome; :class:`LoopStalled` if it has none
        within ``timeout`` (every bound inside is far shorter: the loop itself is blocked)."""
        name = getattr(coro, "__qualname__", "a step")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LoopStalled(f"the fleet's event loop did not finish {name} within {timeout}s: blocked") from None

    def __enter__(self) -> Fleet:
        self._thread.start()
        try:
            self.run(self._start(), 60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.run(self._stop(), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
        shutil.rmtree(self.marks, ignore_errors=True)

    async def _connect(self) -> coord.Coord:
        settings = coord.Settings(
            sweep_interval=SWEEP_INTERVAL,
            renotify_after=RENOTIFY_AFTER,
            presence_ttl=PRESENCE_TTL,
            presence_interval=0.5,
        )
        conn = await coord.connect(self.url, namespace=self.namespace, settings=settings)
        self._conns.append(conn)
        return conn

    async def _start(self) -> None:
        self._rss_start = psutil.Process().memory_info().rss
        self.conn = await self._connect()
        self.adversary = await self._connect()
        self.names = self.conn.names
        await self.conn.limits.set(QUEUE, concurrency=2, rate=Rate(count=200, per="s"))
        self.workers = {worker_id: self._spawn(worker_id) for worker_id in WORKERS}
        for worker_id in WORKERS:
            if await self.conn.presence.wait_present(worker_id, 30) is None:
                raise LoopStalled(f"worker {worker_id} did not start: {self.log(worker_id)[-2000:]}")
        self._rss_workers = {w: psutil.Process(proc.pid).memory_info().rss for w, proc in self.workers.items()}
        self.dispatcher = await Dispatcher(self.conn, parent_id=PARENT, reconcile_interval=1.0).start()
        self.scheduler = await Scheduler(self.conn).start()
        await self.conn.schedules.add(Schedule(name="tick", cron="* * * * * *", task=TaskTemplate(queue=QUEUE)))
        self.listener = self.conn.events.listener(LISTENER, on_event=self._on_event)
        await self.listener.start()
        self._trickler = asyncio.create_task(self._trickle(), name="trickle")
        self._background = [asyncio.create_task(self._read_mail(), name="mail-reader"), self._trickler]

    async def _stop(self) -> None:
        for task in self._background:
            task.cancel()
        for part in ("listener", "scheduler", "dispatcher"):
            with contextlib.suppress(Exception):
                await getattr(self, part).stop()
        for proc in getattr(self, "workers", {}).values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            await asyncio.to_thread(proc.wait)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                await conn.close()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def _spawn(self, worker_id: str) -> subprocess.Popen[bytes]:
        argv = [PYTHON, "-m", "corral", "--server", self.url, "--namespace", self.namespace, "worker", "-q", QUEUE]
        argv += ["--handler", HANDLER, "-c", "2", "--id", worker_id, "--ttl", f"{PRESENCE_TTL:g}", "--interval", "0.5"]
        with open(self.marks / f"{worker_id}.log", "wb") as log:
            return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, worker_id: str) -> str:
        """What worker ``worker_id`` printed so far."""
        return (self.marks / f"{worker_id}.log").read_text(errors="replace")

    # --- the honest side -------------------------------------------------------------------------------
    def runs(self) -> Counter[str]:
        """Handler runs per task id, from the handler's marks (``{task}.{epoch}.{worker}.start``)."""
        return Counter(path.name.split(".", 1)[0] for path in self.marks.glob("*.start"))

    def _on_event(self, received: ReceivedEvent) -> None:
        if isinstance(received.event, Progress):
            self.events_seen.add(received.event.message)

    async def _read_mail(self) -> None:
        async for message in self.conn.mailbox.inbox(READER):
            self.mail_seen.add(message.body)

    async def _submit(self, prefix: str, *, delay: float = 0.0, priority: Priority = Priority.NORMAL) -> str:
        task_id = f"ok-{prefix}{next(self._ids)}"
        self.honest[task_id] = time.monotonic()
        self.submitted_at[task_id] = datetime.now(UTC)
        self.delays[task_id] = delay
        spec = Spec(
            task_id=task_id, queue=QUEUE, payload={"marks": str(self.marks)}, delay=delay or None, priority=priority
        )
        await self.dispatcher.submit(spec)
        return task_id

    async def _trickle(self) -> None:
        for n in itertools.count():
            with contextlib.suppress(coord.CorralError):
                await self._submit("t", delay=DELAY if n % 2 else 0.0, priority=list(Priority)[n % 3])
            await asyncio.sleep(0.25)

    def _recent_honest(self) -> str:
        """An honest task the adversary names: one still waiting for its delay when there is one."""
        now = time.monotonic()
        waiting = [t for t, at in self.honest.items() if self.delays.get(t) and now - at < DELAY]
        recent = waiting or list(self.honest)[-5:]
        return random.choice(recent) if recent else "ok-none"

    # --- the adversary ---------------------------------------------------------------------------------
    async def write(self, writes: Sequence[Write]) -> None:
        """Make ``writes`` on the adversary's connection (refusals are counted, not raised)."""
        honest = self._recent_honest()
        for write in writes:
            body = write.body.replace(HONEST.encode(), honest.encode())
            headers = dict(write.headers) or None
            try:
                if write.kind == "kv":
                    subject = kv_subject_prefix(getattr(self.names, write.bucket)) + write.subject
                    await self.adversary.js.publish(subject, body, headers=headers, timeout=2)
                elif write.kind == "obj":  # an object store's stream: $O.{bucket}.M.* and $O.{bucket}.C.*
                    subject = f"$O.{getattr(self.names, write.bucket)}.{write.subject}"
                    await self.adversary.js.publish(subject, body, headers=headers, timeout=2)
                else:
                    subject = _filled(write.subject, self.namespace, honest)
                    if write.kind == "stream":
                        await self.adversary.js.publish(subject, body, headers=headers, timeout=2)
                    else:
                        await self.adversary.nc.publish(subject, body, headers=headers)
                self.written += 1
            except Exception as err:
                self.refused[type(err).__name__] += 1
        with contextlib.suppress(Exception):
            await self.adversary.nc.flush(timeout=2)

    # --- invariants ------------------------------------------------------------------------------------
    def loops_alive(self) -> None:
        """Every long-lived loop is still running."""
        for worker_id, proc in self.workers.items():
            if proc.poll() is not None:
                raise LoopStalled(f"worker {worker_id} exited ({proc.returncode}): {self.log(worker_id)[-2000:]}")
        for task in self._background:
            if task.done():
                raise LoopStalled(f"{task.get_name()} stopped: {_outcome(task)}")

    async def _finished(self, task_id: str, bound: float) -> None:
        try:
            record = await self.dispatcher.wait(task_id, bound)
        except TimeoutError:
            record = await self.conn.tasks.get(task_id)
            if record.status is TaskStatus.PENDING:
                raise Stranded(
                    f"honest task {task_id} still pending {bound:.1f}s after it was submitted "
                    f"(attempt {record.attempt}, visible_at {record.visible_at}): no deliverable notification"
                ) from None
            raise LoopStalled(f"honest task {task_id} is {record.status} after {bound:.1f}s: {record.error}") from None
        if record.status is not TaskStatus.SUCCEEDED:
            raise NotExactlyOnce(f"honest task {task_id} ended {record.status}: {record.error}")

    async def probe(self) -> None:
        """Both workers present; one honest task, one event and one mail message each get through within
        :data:`PROBE_BOUND`."""
        self.loops_alive()
        for worker_id in WORKERS:
            if await self.conn.presence.get(worker_id) is None:
                raise LoopStalled(f"worker {worker_id} is not present (frozen?): {self.log(worker_id)[-2000:]}")
        n = next(self._ids)
        message = f"probe-{n}"

        async def event() -> None:
            await self.conn.events.emit(LISTENER, Progress(agent=CHILD, message=message))
            await _until(
                lambda: message in self.events_seen, PROBE_BOUND, LoopStalled, "the events listener to deliver"
            )

        async def mail() -> None:
            await self.conn.mailbox.send(Agent(id=READER), message, mode="enqueue", sender=CHILD)
            body = message.encode()
            await _until(lambda: body in self.mail_seen, PROBE_BOUND, LoopStalled, "the mailbox reader to read")

        async def task() -> None:
            await self._finished(await self._submit("p"), PROBE_BOUND)

        await asyncio.gather(event(), mail(), task())

    async def check(self) -> None:
        """The invariants at the end of an attack (each raises its :class:`InvariantBroken`)."""
        self.loops_alive()
        self._trickler.cancel()
        self._background.remove(self._trickler)
        await self.probe()
        await asyncio.gather(self._scheduler_ticks(), self._reclaimer_reclaims())
        await self._every_honest_task_once()
        await self._no_claimable_task_left()
        await self._no_slot_held()
        await self._dispatch_deliverable()
        self.loops_alive()
        grown = psutil.Process().memory_info().rss - self._rss_start
        if grown > RSS_GROWTH:
            raise MemoryGrew(f"the test process (fleet and adversary) grew by {grown / 2**20:.0f} MiB")
        for worker_id, proc in self.workers.items():
            grown = psutil.Process(proc.pid).memory_info().rss - self._rss_workers[worker_id]
            if grown > WORKER_RSS_GROWTH:
                raise MemoryGrew(f"worker {worker_id} grew by {grown / 2**20:.0f} MiB")

    async def _scheduler_ticks(self) -> None:
        before = self.scheduler.submitted
        await _until(lambda: self.scheduler.submitted > before, TICK_BOUND, LoopStalled, "the scheduler to tick")

    async def _reclaimer_reclaims(self) -> None:
        task_id = f"ok-g{next(self._ids)}"
        await self.conn.tasks.schedule(
            task_id, queue="ghostq", spec=Spec(task_id=task_id, queue=QUEUE).model_dump(mode="json")
        )
        await self.conn.tasks.claim(task_id, "ghost-worker")  # a worker that is not present

        async def back() -> bool:
            record = await self.conn.tasks.get(task_id)
            return record.status is TaskStatus.PENDING and record.claim is None

        await _until(back, RECLAIM_BOUND, LoopStalled, "the reclaimer to take back a claim of an absent worker")

    async def _every_honest_task_once(self) -> None:
        """Every honest task submitted so far succeeded within :data:`PROBE_BOUND` of its submission,
        and its handler ran once."""
        ids = list(self.honest)
        records: dict[str, TaskRecord] = {}

        async def all_ended() -> bool:
            nonlocal records
            records = await self.conn.tasks.read_many(ids)
            return all(r.terminal for r in records.values()) and len(records) == len(ids)

        with contextlib.suppress(AssertionError):
            await eventually(all_ended, PROBE_BOUND + DELAY, "every honest task to end", interval=0.1)
        for task_id in ids:
            record = records.get(task_id)
            if record is None or not record.terminal:
                status = record.status if record else "missing"
                error = Stranded if record is not None and record.status is TaskStatus.PENDING else LoopStalled
                raise error(f"honest task {task_id} still {status} {PROBE_BOUND + DELAY:.1f}s after the attack ended")
            if record.status is not TaskStatus.SUCCEEDED:
                raise NotExactlyOnce(f"honest task {task_id} ended {record.status}: {record.error}")
            took = (record.updated_at - self.submitted_at[task_id]).total_seconds() - self.delays[task_id]
            if took > PROBE_BOUND:
                raise NotExactlyOnce(
                    f"honest task {task_id} took {took:.1f}s after it was due (bound {PROBE_BOUND:.1f}s)"
                )
        twice = {task_id: n for task_id, n in self.runs().items() if task_id in self.honest and n != 1}
        if twice:
            raise NotExactlyOnce(f"honest tasks whose handler ran more than once: {twice}")

    async def _no_claimable_task_left(self) -> None:
        """Every task of the served queue that can be claimed (the adversary's valid records too) is
        claimed or finished within the sweep bound after the attack."""

        async def left() -> list[str]:
            now = datetime.now(UTC)
            found = []
            for entry in await self.conn.tasks.bucket.scan():
                try:
                    record = TaskRecord.model_validate_json(entry.value or b"")
                except ValueError:
                    continue
                claimable = (
                    record.task_id == entry.key
                    and record.queue == QUEUE
                    and record.status is TaskStatus.PENDING
                    and record.claim is None
                    and record.attempt < record.max_attempts
                    and (record.visible_at is None or record.visible_at <= now)
                )
                if claimable:
                    found.append(f"{entry.key} (attempt {record.attempt}, {len(entry.value or b'')} bytes)")
            return found

        last: list[str] = []

        async def none_left() -> bool:
            nonlocal last
            last = await left()
            return not last

        await _until(
            none_left, PROBE_BOUND, Stranded, "every claimable task of the queue to be taken", lambda: last[:5]
        )

    async def _dispatch_deliverable(self) -> None:
        info = await self.conn.js.stream_info(self.names.dispatch_stream, subjects_filter=">")
        stuck = []
        for subject in info.state.subjects or {}:
            tokens = subject.split(".")
            if self.names.notified_task(subject) is None or (len(tokens) == 5 and tokens[4] not in LEVEL_TOKENS):
                stuck.append(subject)
        if stuck:
            raise Undeliverable(f"the dispatch stream holds messages no consumer filters: {sorted(stuck)[:5]}")

    async def _no_slot_held(self) -> None:
        async def held() -> list[str]:
            bad = []
            for entry in await self.conn.limits.bucket.scan("slot."):
                if entry.deleted:
                    continue
                where, slot = split_slot_key(entry.key), decode_slot(entry)
                if where is None or slot is None or slot.holder is None or f"{where[0]}.{where[1]}" != entry.key[5:]:
                    bad.append(f"{entry.key}={(entry.value or b'')[:80]!r}")
                    continue
                record = None
                with contextlib.suppress(coord.NotFound, coord.InvalidRecord):
                    record = await self.conn.tasks.get(slot.holder.task_id)
                current = (
                    record is not None
                    and record.status is TaskStatus.CLAIMED
                    and record.claim is not None
                    and record.claim.worker_id == slot.holder.worker_id
                    and record.epoch == slot.holder.epoch
                )
                if not current:
                    bad.append(f"{entry.key}={(entry.value or b'')[:80]!r}")
            return bad

        last: list[str] = []

        async def none_held() -> bool:
            nonlocal last
            last = await held()
            return not last

        await _until(none_held, SLOT_BOUND, SlotHeld, "every slot to be free or held by a current claim", lambda: last)


LEVEL_TOKENS = {level.value for level in Priority if level is not Priority.NORMAL}
"""The level token a notification subject of a non-normal priority ends with."""


def _filled(subject: str, namespace: str, honest: str) -> str:
    """``subject`` with the placeholder namespace and honest task id filled in."""
    tokens = subject.split(".")
    filled = [namespace if i == 0 and t == NS else honest if t == HONEST else t for i, t in enumerate(tokens)]
    return ".".join(filled)


def _outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    err = task.exception()
    return "returned" if err is None else f"{type(err).__name__}: {err}"


async def _until(
    check: Check, bound: float, error: type[InvariantBroken], what: str, detail: Callable[[], object] | None = None
) -> None:
    """:func:`tests.helpers_wait.eventually`, failing with ``error`` (the invariant) instead."""
    try:
        await eventually(check, bound, what, interval=0.05)
    except AssertionError as err:
        raise error(f"{err}{f': {detail()}' if detail is not None else ''}") from None
