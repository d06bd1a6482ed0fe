"""The :class:`Schedules` service: recurring schedules in ``{ns}_schedules``, one key per schedule."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from coord.errors import Conflict, KeyExists, NotFound
from coord.ids import validate_id
from coord.kv import Entry, KeyWatch
from coord.records import RecordStore
from coord.schedules.cron import MAX_NAME_LENGTH
from coord.schedules.models import Schedule

__all__ = ["Schedules"]

log = logging.getLogger("corral.schedules")

OnChange = Callable[[str, Schedule | None], Awaitable[None] | None]
"""Called with a schedule's name and its new value (None: removed, or not readable as a schedule)."""


_REMOVE_ATTEMPTS = 8
"""Compare-and-set attempts of :meth:`Schedules.remove` against recorded ticks before it gives up."""


def _now() -> datetime:
    return datetime.now(UTC)


def _key(name: str) -> str:
    return validate_id(name, "schedule", max_length=MAX_NAME_LENGTH)


class Schedules:
    """Add, list, pause, resume and remove schedules; record the ticks schedulers submitted; watch them all.

    Every write is a compare-and-set on the schedule's key, so a definition written by an operator
    and a tick recorded by a scheduler never undo each other.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        """The compare-and-set layer over the schedules bucket."""

    async def add(self, schedule: Schedule, *, replace: bool = False) -> Schedule:
        """Store ``schedule`` (its ``since`` becomes now); return it as stored.

        An existing schedule of that name raises :class:`~coord.errors.Conflict` unless ``replace``:
        then its definition is replaced and its last submitted tick kept, so no tick is submitted twice.
        """
        key = _key(schedule.name)
        now = _now()
        if not replace:
            fresh = schedule.model_copy(update={"since": now, "updated_at": now, "last_tick": None, "last_task": None})
            try:
                revision = await self.store.bucket.create(key, fresh.model_dump_json().encode())
            except KeyExists:
                raise Conflict(f"schedule {schedule.name!r} already exists (replace it, or remove it first)") from None
            return fresh.model_copy(update={"revision": revision})

        def change(current: Schedule | None) -> Schedule:
            kept = {"last_tick": current.last_tick, "last_task": current.last_task} if current else {}
            return schedule.model_copy(update={"since": now, "updated_at": _now(), **kept})

        stored = await self.store.update(key, Schedule, change)
        assert stored is not None
        return stored

    async def get(self, name: str) -> Schedule:
        """The schedule ``name``; :class:`~coord.errors.NotFound` if there is none."""
        value, _ = await self.store.get(_key(name), Schedule)
        if value is None:
            raise NotFound(f"no schedule {name!r}")
        return value

    async def list(self) -> builtins.list[Schedule]:
        """Every schedule, by name (values that are not schedules are logged and skipped)."""
        found = await self.store.scan("", Schedule)
        return sorted((value for _, value in found), key=lambda s: s.name)

    async def remove(self, name: str) -> None:
        """Remove ``name`` (every scheduler stops its timer); :class:`~coord.errors.NotFound` if there is none.

        Only the schedule read is removed, by compare-and-set: a tick recorded or a pause meanwhile
        is removed with it, but a schedule re-added, replaced or resumed meanwhile (a new ``since``)
        is kept and :class:`~coord.errors.Conflict` raised; one removed meanwhile is simply gone.
        """
        key = _key(name)
        value, revision = await self.store.get(key, Schedule)
        if value is None:
            raise NotFound(f"no schedule {name!r}")
        since = value.since
        for _ in range(_REMOVE_ATTEMPTS):
            try:
                await self.store.write(key, None, last=revision, delete=True)
                return
            except Conflict:  # changed meanwhile: remove it only if it is still the schedule read
                value, revision = await self.store.get(key, Schedule)
            if value is None:
                return  # removed meanwhile
            if value.since != since:
                raise Conflict(f"schedule {name!r} was re-added, replaced or resumed meanwhile; not removed")
        raise Conflict(f"schedule {name!r} keeps changing; not removed")

    async def pause(self, name: str) -> Schedule:
        """Stop submitting ticks of ``name`` until :meth:`resume` (idempotent)."""
        return await self._change(name, lambda s: None if s.paused else {"paused": True})

    async def resume(self, name: str) -> Schedule:
        """Submit ticks of ``name`` again, from now on: ticks missed while paused are not made up (idempotent)."""
        return await self._change(name, lambda s: {"paused": False, "since": _now()} if s.paused else None)

    async def _change(self, name: str, fields: Callable[[Schedule], dict[str, object] | None]) -> Schedule:
        def change(current: Schedule | None) -> Schedule | None:
            update = None if current is None else fields(current)
            if current is None or update is None:
                return None  # nothing to write: missing, or already so
            return current.model_copy(update={**update, "updated_at": _now()})

        stored = await self.store.update(_key(name), Schedule, change)
        if stored is None:
            raise NotFound(f"no schedule {name!r}")
        return stored

    async def record_tick(self, name: str, tick: datetime, task_id: str) -> Schedule | None:
        """Record that ``tick`` of ``name`` was submitted as ``task_id``, unless a later tick already was.

        Moves ``last_tick`` forward only (compare-and-set, retried on conflict); returns the stored
        schedule, or None when it was removed meanwhile.
        """

        def change(current: Schedule | None) -> Schedule | None:
            if current is None or (current.last_tick is not None and current.last_tick >= tick):
                return None
            return current.model_copy(update={"last_tick": tick, "last_task": task_id, "updated_at": _now()})

        return await self.store.update(_key(name), Schedule, change)

    def watch(self, on_change: OnChange) -> KeyWatch:
        """A :class:`~coord.kv.KeyWatch` of every schedule: ``on_change(name, schedule or None)`` per change.

        Start it (``await watch.start()`` or ``async with``): it first delivers every existing
        schedule, then each change as it is written.
        """

        async def on_entry(entry: Entry) -> None:
            schedule: Schedule | None = None
            if not entry.deleted and entry.value is not None:
                try:
                    schedule = Schedule.model_validate_json(entry.value).model_copy(update={"revision": entry.revision})
                except ValidationError as err:
                    log.warning("schedule %s is not readable; ignoring it: %s", entry.key, err.errors()[0]["msg"])
            result = on_change(entry.key, schedule)
            if result is not None:
                await result

        return KeyWatch(self.store.bucket, on_entry)
