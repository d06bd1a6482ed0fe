"""The dashboard's read model: what a fleet looks like, kept in memory from NATS and never written back.

:class:`ReadModel` is fed by :mod:`corral.ui.feeds` (presence, task records, dead letters, lifecycle
events, the registry) and read by the HTTP app. It is pure state, no I/O: every feed calls one
``apply_*``/``on_*`` method, and each change marks the sections it touched as dirty, so the
broadcaster (:mod:`corral.ui.hub`) sends browsers only what changed.

Memory is bounded: at most ``max_tasks`` task summaries (the oldest finished ones are forgotten
first), and ring buffers for the timeline, departures, dead letters and events.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from coord.deadletter import LATE_RESULT, DeadLetter
from coord.events import Descendant, ReceivedEvent, render_event
from coord.events.tree import event_changes
from coord.limits import QueueLimits
from coord.presence import AgentInfo, LeftReason
from coord.registry import Session, ThreadReservation
from coord.schedules import Schedule
from coord.tasks import TaskRecord, TaskStatus, Transition
from corral.ui.rows import AgentRow, Departure, QueueRow, TaskPage, TaskRow, TimelineItem, timestamp, trace_id_of

__all__ = ["SECTIONS", "ReadModel", "Section", "trace_id_of"]

Section = Literal["agents", "queues", "tasks", "timeline", "dead_letters", "events", "registry"]
"""A part of the dashboard that changes on its own (what a delta names)."""
SECTIONS: tuple[Section, ...] = ("agents", "queues", "tasks", "timeline", "dead_letters", "events", "registry")


class ReadModel:
    """Everything the dashboard shows, built from NATS state by the feeds; see the module docstring.

    Not thread-safe: the feeds and the HTTP app share one event loop.
    """

    def __init__(
        self,
        namespace: str,
        *,
        max_tasks: int = 50_000,
        timeline: int = 500,
        departures: int = 100,
        dead_letters: int = 200,
        events: int = 300,
        max_trees: int = 200,
        max_descendants: int = 500,
        max_registry: int = 5_000,
    ) -> None:
        self.namespace = namespace
        """The namespace shown."""
        self.max_tasks = max_tasks
        """Most task rows kept; beyond it the oldest finished ones are forgotten."""
        self.tasks: dict[str, TaskRow] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._claims: dict[str, set[str]] = {}
        self._pending: dict[str, set[str]] = {}
        self.queues: dict[str, QueueRow] = {}
        self.limits: dict[str, dict[str, Any]] = {}
        """Each limited queue's limits and slots held: ``{"concurrency", "rate", "held"}``."""
        self.schedules: dict[str, Schedule] = {}
        self.agents: dict[str, AgentRow] = {}
        self._agent_changed: set[str] = set()
        self._agent_removed: set[str] = set()
        self.departures: deque[Departure] = deque(maxlen=departures)
        self._departed = False
        self.timeline: deque[TimelineItem] = deque(maxlen=timeline)
        self._seq = 0
        self.dead_letters: deque[tuple[int, DeadLetter]] = deque(maxlen=dead_letters)
        self.events: deque[tuple[int, ReceivedEvent]] = deque(maxlen=events)
        self.trees: OrderedDict[str, dict[str, Descendant]] = OrderedDict()
        self._max_trees = max_trees
        self._max_descendants = max_descendants
        self.sessions: dict[str, Session] = {}
        self.threads: dict[str, ThreadReservation] = {}
        self._max_registry = max_registry
        self._session_ages: list[tuple[datetime, str]] = []
        self._thread_ages: list[tuple[datetime, str]] = []
        self.ready: set[str] = set()
        """Feeds whose initial snapshot is in (``presence``, ``tasks``)."""
        self.dirty: set[Section] = set()
        """Sections changed since the broadcaster last took them."""
        self.versions: dict[Section, int] = dict.fromkeys(SECTIONS, 0)
        """How many times each section changed (browsers refetch a listing when its version moves)."""

    # --- bookkeeping -----------------------------------------------------------------------------
    def _touch(self, *sections: Section) -> None:
        for section in sections:
            self.dirty.add(section)
            self.versions[section] += 1

    def _note(
        self, kind: str, text: str, *, at: float | None = None, task_id: str | None = None, agent_id: str | None = None
    ) -> TimelineItem:
        item = TimelineItem(self._next_seq(), time.time() if at is None else at, kind, text, task_id, agent_id)
        self.timeline.append(item)
        self._touch("timeline")
        return item

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def timeline_since(self, seq: int) -> list[TimelineItem]:
        """Timeline items newer than ``seq`` (oldest first)."""
        return [item for item in self.timeline if item.seq > seq]

    @property
    def seq(self) -> int:
        """Sequence of the newest timeline item, dead letter or event (0 before any)."""
        return self._seq

    # --- presence ----------------------------------------------------------------------------------
    def set_agents(self, present: Mapping[str, AgentInfo], since: Mapping[str, datetime]) -> None:
        """Replace the present agents (a presence watch's initial snapshot, or after it was re-started).

        ``since`` says since when each is present, as far as the caller knows.
        """
        now = time.time()
        self._agent_removed |= set(self.agents) - set(present)
        self.agents = {
            agent_id: AgentRow(info, timestamp(since.get(agent_id)) or now) for agent_id, info in present.items()
        }
        self._agent_changed = set(self.agents)
        self.ready.add("presence")
        self._touch("agents")

    def on_joined(self, info: AgentInfo, at: float | None = None) -> None:
        """``info.id`` became present."""
        self.agents[info.id] = AgentRow(info, at or time.time())
        self._agent_changed.add(info.id)
        self._agent_removed.discard(info.id)
        role = f" ({info.role})" if info.role else ""
        self._note("joined", f"{info.id}{role} joined on {info.host}", agent_id=info.id)
        self._touch("agents")

    def on_updated(self, info: AgentInfo) -> None:
        """A present agent rewrote its info (queues, capacity, inflight)."""
        row = self.agents.get(info.id)
        if row is None:
            self.agents[info.id] = AgentRow(info, time.time())
        else:
            row.info = info
        self._agent_changed.add(info.id)
        self._touch("agents")

    def on_left(self, agent_id: str, reason: LeftReason, at: datetime) -> None:
        """``agent_id`` left: deleted its key (graceful) or its TTL ran out (expired)."""
        row = self.agents.pop(agent_id, None)
        self._agent_changed.discard(agent_id)
        self._agent_removed.add(agent_id)
        self.departures.append(Departure(agent_id, reason, at.timestamp(), row.info.role if row else None))
        self._departed = True
        held = len(self._claims.get(agent_id, ()))
        holding = f" holding {held} claim(s)" if held else ""
        how = "left gracefully" if reason == "graceful" else "expired (its presence TTL ran out)"
        self._note("left", f"{agent_id} {how}{holding}", at=at.timestamp(), agent_id=agent_id)
        self._touch("agents")

    def claims_of(self, agent_id: str) -> int:
        """How many tasks the records say ``agent_id`` holds a claim on."""
        return len(self._claims.get(agent_id, ()))

    def agents_json(self) -> list[dict[str, Any]]:
        """Every present agent as JSON, sorted by id."""
        return [self.agents[a].json(self.claims_of(a)) for a in sorted(self.agents)]

    def take_agent_delta(self) -> dict[str, Any]:
        """Agents changed or gone since the last call, and the departures when there was a new one.

        Renewals change nothing here: the presence change feed does not even deliver them."""
        changed = [self.agents[a].json(self.claims_of(a)) for a in sorted(self._agent_changed) if a in self.agents]
        delta: dict[str, Any] = {
            "upsert": changed,
            "remove": sorted(self._agent_removed),
        }
        if self._departed:
            delta["departures"] = [d.json() for d in self.departures]
        self._agent_changed.clear()
        self._agent_removed.clear()
        self._departed = False
        return delta

    # --- tasks -------------------------------------------------------------------------------------
    def _queue(self, name: str) -> QueueRow:
        row = self.queues.get(name)
        if row is None:
            row = self.queues[name] = QueueRow(name)
        return row

    def _unindex(self, row: TaskRow) -> None:
        queue = self._queue(row.queue)
        queue.counts[row.status] = queue.counts.get(row.status, 1) - 1
        if row.status is TaskStatus.CLAIMED and row.worker is not None:
            held = self._claims.get(row.worker)
            if held is not None:
                held.discard(row.task_id)
                if not held:
                    del self._claims[row.worker]
                    self._agent_changed.add(row.worker)
        elif row.status is TaskStatus.PENDING:
            self._pending.get(row.queue, set()).discard(row.task_id)
        self._finished.pop(row.task_id, None)

    def _index(self, row: TaskRow) -> None:
        queue = self._queue(row.queue)
        queue.counts[row.status] = queue.counts.get(row.status, 0) + 1
        if row.status is TaskStatus.CLAIMED and row.worker is not None:
            self._claims.setdefault(row.worker, set()).add(row.task_id)
        elif row.status is TaskStatus.PENDING:
            self._pending.setdefault(row.queue, set()).add(row.task_id)
        elif row.status.terminal:
            self._finished[row.task_id] = None
        if row.worker is not None and row.worker in self.agents:
            self._agent_changed.add(row.worker)

    def apply_task(self, record: TaskRecord, *, live: bool = True) -> None:
        """Take a task record in (ignored if older than the row held); ``live`` writes (after the
        snapshot) also put reclaims, dead tasks, retries and cancels on the timeline and count toward rates."""
        old = self.tasks.get(record.task_id)
        if old is not None:
            if old.revision >= record.revision:
                return
            self._unindex(old)
        row = TaskRow.of(record)
        self.tasks[row.task_id] = row
        self._index(row)
        if live:
            self._on_transition(old, row)
        self._evict()
        self._touch("tasks", "queues")

    def tasks_ready(self) -> None:
        """The task records that existed when the watch started are all in."""
        self.ready.add("tasks")
        self._touch("tasks", "queues")

    def _on_transition(self, old: TaskRow | None, row: TaskRow) -> None:
        now = time.time()
        queue = self._queue(row.queue)
        if old is None and row.status is TaskStatus.PENDING:
            QueueRow._bump(queue.submitted, now)
        if row.status.terminal and (old is None or not old.status.terminal):
            QueueRow._bump(queue.finished, now)
        match row.transition:
            case Transition.RECLAIMED:
                who = old.worker if old is not None and old.worker else row.worker or "?"
                then = "dead: attempts spent" if row.status is TaskStatus.DEAD else "pending again"
                why = f" ({row.error})" if row.error else ""
                self._note(
                    "reclaimed", f"{row.task_id} reclaimed from {who}{why}: {then}", task_id=row.task_id, agent_id=who
                )
            case Transition.RETRIED:
                self._note(
                    "retried", f"{row.task_id} retried by hand: pending with fresh attempts", task_id=row.task_id
                )
            case Transition.CANCELLED:
                self._note("cancelled", f"{row.task_id} cancelled", task_id=row.task_id)
            case Transition.FAILED if row.status is TaskStatus.DEAD:
                self._note(
                    "dead", f"{row.task_id} is dead after {row.attempt} attempt(s): {row.error}", task_id=row.task_id
                )
            case _:
                pass

    def _evict(self) -> None:
        while len(self.tasks) > self.max_tasks and self._finished:
            task_id, _ = self._finished.popitem(last=False)
            row = self.tasks.pop(task_id)
            queue = self._queue(row.queue)
            queue.counts[row.status] = queue.counts.get(row.status, 1) - 1

    def task_page(
        self,
        *,
        status: TaskStatus | None = None,
        queue: str | None = None,
        worker: str | None = None,
        search: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> TaskPage:
        """The tasks matching every filter given, newest update first, ``limit`` of them from ``offset``."""
        rows: Iterable[TaskRow] = self.tasks.values()
        if status is TaskStatus.PENDING and queue is not None:
            rows = (self.tasks[t] for t in self._pending.get(queue, ()))
        elif status is TaskStatus.CLAIMED and worker is not None:
            rows = (self.tasks[t] for t in self._claims.get(worker, ()))
        needle = search.lower() if search else None
        matching = [
            r
            for r in rows
            if (status is None or r.status is status)
            and (queue is None or r.queue == queue)
            and (worker is None or r.worker == worker)
            and (needle is None or needle in r.task_id.lower() or needle in r.title.lower())
        ]
        matching.sort(key=lambda r: (r.updated_at, r.task_id), reverse=True)
        return TaskPage(len(matching), offset, limit, matching[offset : offset + limit])

    def counts(self) -> dict[str, int]:
        """Tasks held by status, over every queue."""
        totals = dict.fromkeys((s.value for s in TaskStatus), 0)
        for queue in self.queues.values():
            for status, n in queue.counts.items():
                totals[status.value] += n
        return totals

    def set_limits(self, limits: Mapping[str, QueueLimits], held: Mapping[str, int]) -> None:
        """The queues' fleet-wide limits and the concurrency slots each holds, as now."""
        self.limits = {
            queue: {
                "concurrency": limit.concurrency,
                "rate": None if limit.rate is None else str(limit.rate),
                "held": held.get(queue, 0),
            }
            for queue, limit in limits.items()
        }
        self._touch("queues")

    def on_schedule(self, name: str, schedule: Schedule | None) -> None:
        """A recurring schedule was written (None: removed, or not readable)."""
        if schedule is None:
            self.schedules.pop(name, None)
        else:
            self.schedules[name] = schedule
        self._touch("queues")

    def schedules_json(self) -> list[dict[str, Any]]:
        """Every schedule: its cron, queue, whether paused, the next tick and the last one submitted."""
        now = datetime.now(UTC)
        return [
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "queue": s.task.queue,
                "paused": s.paused,
                "next_tick": timestamp(s.upcoming(now)),
                "last_tick": timestamp(s.last_tick),
                "last_task": s.last_task,
            }
            for _, s in sorted(self.schedules.items())
        ]

    def queues_json(self) -> list[dict[str, Any]]:
        """Every queue's depth (pending; ``delayed``: those not startable yet), in flight (claimed),
        counts, rates, oldest pending task and fleet-wide limits (None: none)."""
        now = time.time()
        out = []
        for name in sorted(self.queues.keys() | self.limits.keys()):
            row = self.queues.get(name) or QueueRow(name)
            pending = self._pending.get(name, set())
            oldest = min((self.tasks[t].created_at for t in pending), default=None)
            delayed = sum(1 for t in pending if (at := self.tasks[t].visible_at) is not None and at > now)
            out.append(
                {
                    "name": name,
                    "depth": row.counts.get(TaskStatus.PENDING, 0),
                    "delayed": delayed,
                    "in_flight": row.counts.get(TaskStatus.CLAIMED, 0),
                    "counts": {s.value: row.counts.get(s, 0) for s in TaskStatus},
                    "finished_per_s": round(QueueRow._rate(row.finished, now), 3),
                    "submitted_per_s": round(QueueRow._rate(row.submitted, now), 3),
                    "oldest_pending_age": None if oldest is None else round(now - oldest, 1),
                    "workers": sorted(a for a, r in self.agents.items() if name in r.info.queues),
                    "limits": self.limits.get(name),
                }
            )
        return out

    # --- dead letters --------------------------------------------------------------------------------
    def on_dead_letter(self, letter: DeadLetter, *, live: bool = True) -> None:
        """A dead letter was recorded; a rejected late result also goes on the timeline. One already
        held (a restarted feed reads the last hour again) is ignored."""
        if any(held == letter for _, held in self.dead_letters):
            return
        self.dead_letters.append((self._next_seq(), letter))
        if letter.source == LATE_RESULT:
            self._note("late_result", letter.reason, at=letter.at.timestamp(), task_id=letter.task_id)
        elif live:
            self._note(
                "dead_letter", f"dead letter from {letter.source}: {letter.reason}", at=letter.at.timestamp(),
                task_id=letter.task_id,
            )  # fmt: skip
        self._touch("dead_letters")

    def dead_letters_json(self) -> list[dict[str, Any]]:
        """The recent dead letters, newest first, each with the current status of its task (if known)."""
        out = []
        for seq, letter in reversed(self.dead_letters):
            row = self.tasks.get(letter.task_id) if letter.task_id else None
            status = row.status.value if row is not None else None
            out.append({**letter.model_dump(mode="json", exclude={"headers"}), "seq": seq, "task_status": status})
        return out

    # --- lifecycle events ----------------------------------------------------------------------------
    def on_event(self, received: ReceivedEvent) -> None:
        """A lifecycle event was stored: kept in the feed and merged into its recipient's tree (one
        already held, e.g. read again by a restarted feed, is ignored)."""
        if any(held.event.id == received.event.id and held.to == received.to for _, held in self.events):
            return
        self.events.append((self._next_seq(), received))
        tree = self.trees.get(received.to)
        if tree is None:
            if len(self.trees) >= self._max_trees:
                self.trees.popitem(last=False)
            tree = self.trees[received.to] = {}
        self.trees.move_to_end(received.to)
        for agent, changes in event_changes(received.to, received).items():
            node = tree.get(agent)
            if node is None:
                if len(tree) >= self._max_descendants:
                    continue
                node = Descendant(agent=agent)
            for change in changes:
                node = change(node)
            tree[agent] = node
        self._touch("events")

    def events_json(self) -> list[dict[str, Any]]:
        """The recent events, newest first, each with its one-line rendering."""
        return [
            {
                "seq": seq,
                "id": r.event.id,
                "kind": r.event.kind,
                "to": r.to,
                "sender": r.sender,
                "agent": r.event.agent,
                "at": r.event.at.timestamp(),
                "text": render_event(r.event).replace("`", ""),
            }
            for seq, r in reversed(self.events)
        ]

    def trees_json(self) -> list[dict[str, Any]]:
        """Every recipient's descendant tree: nodes with their parent as far as the recipient knows."""
        return [
            {
                "root": root,
                "nodes": [{**d.model_dump(mode="json"), "parent": d.parent(root)} for _, d in sorted(tree.items())],
            }
            for root, tree in sorted(self.trees.items())
        ]

    # --- registry --------------------------------------------------------------------------------------
    def on_session(self, key: str, session: Session | None) -> None:
        """``session.{id}`` was written (None: deleted or expired)."""
        session_id = key.removeprefix("session.")
        if session is None:
            self.sessions.pop(session_id, None)
        else:
            _keep_newest(self.sessions, self._session_ages, session_id, session, _started, self._max_registry)
        self._touch("registry")

    def on_thread(self, key: str, reservation: ThreadReservation | None) -> None:
        """``thread.{name}`` was written (None: released or reaped)."""
        thread = key.removeprefix("thread.")
        if reservation is None:
            self.threads.pop(thread, None)
        else:
            _keep_newest(self.threads, self._thread_ages, thread, reservation, _reserved, self._max_registry)
        self._touch("registry")

    def registry_json(self) -> dict[str, Any]:
        """Thread reservations (with whether their owner is present) and sessions, newest first."""
        sessions = sorted(self.sessions.values(), key=lambda s: s.started_at, reverse=True)
        return {
            "threads": [
                {**t.model_dump(mode="json"), "alive": t.agent_id in self.agents}
                for _, t in sorted(self.threads.items())
            ],
            "sessions": [
                {**s.model_dump(mode="json"), "alive": s.status == "active" and s.agent_id in self.agents}
                for s in sessions
            ],
        }

    # --- what browsers get ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything a browser needs on connecting (task listings and details are fetched by page)."""
        return {
            "namespace": self.namespace,
            "ready": sorted(self.ready),
            "agents": self.agents_json(),
            "departures": [d.json() for d in self.departures],
            "queues": self.queues_json(),
            "schedules": self.schedules_json(),
            "counts": self.counts(),
            "timeline": [item.json() for item in self.timeline],
            "dead_letters": len(self.dead_letters),
            "versions": dict(self.versions),
        }


_T = TypeVar("_T")


def _started(session: Session) -> datetime:
    return session.started_at


def _reserved(reservation: ThreadReservation) -> datetime:
    return reservation.reserved_at


def _keep_newest(
    items: dict[str, _T],
    ages: list[tuple[datetime, str]],
    key: str,
    value: _T,
    age: Callable[[_T], datetime],
    limit: int,
) -> None:
    """Store ``items[key] = value``, then forget the oldest entries (by ``age``) beyond ``limit``.

    ``ages`` is a min-heap of ``(age, key)`` kept beside ``items``; an entry whose key was removed or
    re-aged since is stale and skipped, and the heap is rebuilt once stale entries outnumber live ones.
    """
    items[key] = value
    heapq.heappush(ages, (age(value), key))
    while len(items) > limit:
        at, oldest = heapq.heappop(ages)
        if oldest in items and age(items[oldest]) == at:
            del items[oldest]
    if len(ages) > 2 * len(items) + 64:
        ages[:] = [(age(v), k) for k, v in items.items()]
        heapq.heapify(ages)
