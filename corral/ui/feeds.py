"""What feeds the dashboard's read model: one watch per source, each through corral's own services.

- presence: ``coord.presence.watch`` (joins, departures, info updates: the change feed, no renewals);
- tasks: ``coord.tasks.watch`` (every record, then every write: reclaims, dead tasks, rates);
- dead letters: ``coord.dead_letters.tail`` (rejected late results among them);
- lifecycle events: ``coord.events.tail`` (merged into trees by :mod:`coord.events.tree`);
- the registry: a :class:`coord.kv.KeyWatch` on its ``session.*`` and ``thread.*`` keys;
- queue limits: a :class:`coord.limits.LimitsView` (limits and slots held);
- recurring schedules: ``coord.schedules.watch``.

Every watch is read-only and started once, however many browsers look. A watch that fails (the
server is gone for longer than the services ride out) is logged and started again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError

from coord.connection import Coord
from coord.kv import Entry, KeyWatch
from coord.limits import LimitsView
from coord.presence import Joined, Left, Updated
from coord.registry import Session, ThreadReservation
from corral.ui.model import ReadModel

__all__ = ["Feeds"]

log = logging.getLogger("corral.ui")

RESTART_PAUSE = 2.0
"""Seconds before a failed watch is started again."""
HISTORY = 3600.0
"""Seconds of dead letters and lifecycle events read at start."""


class Feeds:
    """Runs every watch that feeds ``model`` from ``coord`` until :meth:`stop`."""

    def __init__(self, coord: Coord, model: ReadModel) -> None:
        self._coord = coord
        self._model = model
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every watch in the background (idempotent)."""
        if self._tasks:
            return
        for name, body in (
            ("presence", self._presence),
            ("tasks", self._task_records),
            ("dead letters", self._dead_letters),
            ("events", self._events),
            ("registry", self._registry),
            ("limits", self._limits),
            ("schedules", self._schedules),
        ):
            self._tasks.append(asyncio.create_task(self._supervise(name, body), name=f"corral-ui-{name}"))

    async def wait_ready(self, within: float = 30.0) -> bool:
        """Wait until the presence and task snapshots are in; False if not within ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not {"presence", "tasks"} <= self._model.ready:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        """Stop every watch."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # gather, not a suppressed await: a cancellation of the caller itself still reaches it
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("dashboard: the %s watch failed (%s: %s); starting it again", name, type(err).__name__, err)
            await asyncio.sleep(RESTART_PAUSE)

    async def _presence(self) -> None:
        model = self._model
        async with self._coord.presence.watch(include_existing=False, updates=True) as watcher:
            # Present before the dashboard looked: their start is the best bound on their join it has.
            present = watcher.present
            model.set_agents(present, {agent_id: info.started_at for agent_id, info in present.items()})
            async for change in watcher:
                if isinstance(change, Joined):
                    joined_at = watcher.since.get(change.agent.id)
                    model.on_joined(change.agent, joined_at.timestamp() if joined_at else None)
                elif isinstance(change, Left):
                    model.on_left(change.agent_id, change.reason, change.at)
                elif isinstance(change, Updated):
                    model.on_updated(change.agent)

    async def _task_records(self) -> None:
        model = self._model
        async with self._coord.tasks.watch() as updates:
            async for record in updates:
                if record is None:
                    model.tasks_ready()
                else:
                    model.apply_task(record, live=updates.snapshot_done.is_set())

    async def _dead_letters(self) -> None:
        async for letter in self._coord.dead_letters.tail(since=HISTORY):
            self._model.on_dead_letter(letter)

    async def _events(self) -> None:
        async for received in self._coord.events.tail(None, since=HISTORY, follow=True):
            self._model.on_event(received)

    async def _registry(self) -> None:
        model = self._model
        bucket = self._coord.registry.store.bucket

        def on_session(entry: Entry) -> None:
            model.on_session(entry.key, _parse(entry, Session))

        def on_thread(entry: Entry) -> None:
            model.on_thread(entry.key, _parse(entry, ThreadReservation))

        sessions = KeyWatch(bucket, on_session, keys="session.>")
        threads = KeyWatch(bucket, on_thread, keys="thread.>")
        try:
            await sessions.start()
            await threads.start()
            await asyncio.Event().wait()  # the watches run until cancelled
        finally:
            await sessions.stop()
            await threads.stop()

    async def _limits(self) -> None:
        view = await LimitsView(self._coord.limits).start()
        try:
            while True:
                changed = view.changed()  # taken before reading: no change between is missed
                limited = view.limited()
                self._model.set_limits(limited, {queue: view.held(queue) for queue in limited})
                await changed
        finally:
            await view.stop()

    async def _schedules(self) -> None:
        watch = self._coord.schedules.watch(self._model.on_schedule)
        try:
            await watch.start()
            await asyncio.Event().wait()  # the watch runs until cancelled
        finally:
            await watch.stop()


_M = TypeVar("_M", Session, ThreadReservation)


def _parse(entry: Entry, model: type[_M]) -> _M | None:
    if entry.deleted or not entry.value:
        return None
    try:
        return model.model_validate_json(entry.value)
    except ValidationError as err:
        log.warning("dashboard: skipping malformed registry key %s: %s", entry.key, err.errors()[0]["msg"])
        return None
