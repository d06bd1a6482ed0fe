"""The compare-and-set retry rhythm (``coord.kv.conflicts``), direct reads, what a write leaves the loop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import coord
from coord.errors import Conflict
from coord.kv import conflicts


@contextmanager
def async_generators_started() -> Iterator[list[Any]]:
    """Every async generator first iterated inside the block (each one left unfinished costs the loop a
    thread-safe callback, a wake-up and a task to close it)."""
    hooks = sys.get_asyncgen_hooks()
    started: list[Any] = []

    def firstiter(agen: Any) -> None:
        started.append(agen)
        if hooks.firstiter is not None:
            hooks.firstiter(agen)

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)
    try:
        yield started
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=hooks.finalizer)


async def test_the_rhythm_counts_attempts_then_raises_a_conflict_naming_what() -> None:
    seen = []
    with pytest.raises(Conflict, match="key 'k': gave up after 3 conflicting writes"):
        async for attempt in conflicts("key 'k'", 3):
            seen.append(attempt)
    assert seen == [0, 1, 2]


async def test_a_loop_left_at_its_first_attempt_starts_no_async_generator() -> None:
    with async_generators_started() as started:
        async for attempt in conflicts("key 'k'", 3):
            assert attempt == 0
            break
    assert started == []


async def test_a_task_claimed_and_completed_starts_no_async_generator(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    await tasks.schedule("agen-1", queue="q")
    with async_generators_started() as started:
        claim = await tasks.claim("agen-1", "w1", record=await tasks.get("agen-1"))
        await tasks.complete(claim, {"ok": True})
    assert started == []


async def test_a_direct_read_tells_a_value_a_tombstone_and_no_message_apart(coord_conn: coord.Coord) -> None:
    bucket = coord_conn.tasks.bucket
    revision = await bucket.put("direct-1", b'{"v":1}')
    entry = await bucket.get("direct-1")
    assert entry is not None and (entry.revision, entry.value, entry.deleted) == (revision, b'{"v":1}', False)
    deleted = await bucket.delete("direct-1")
    tombstone = await bucket.get("direct-1")
    assert tombstone is not None and (tombstone.revision, tombstone.deleted) == (deleted, True)
    assert await bucket.get("direct-never-written") is None
    leader = await bucket.get("direct-1", leader=True)
    assert leader is not None and (leader.revision, leader.op, leader.time) == (deleted, tombstone.op, tombstone.time)
