"""`DeadLetters.tail`: the dead letters recorded lately, then each new one as it is recorded."""

from __future__ import annotations

import asyncio

import coord
from coord.deadletter import DeadLetter


async def test_tail_gives_recent_dead_letters_then_new_ones_and_skips_what_is_not_one(coord_conn: coord.Coord) -> None:
    await coord_conn.dead_letters.record("dispatch", "malformed notification", task_id="t1")
    seen: list[DeadLetter] = []

    async def follow() -> None:
        async for letter in coord_conn.dead_letters.tail(since=60):
            seen.append(letter)

    follower = asyncio.create_task(follow())
    try:
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.02)
            await coord_conn.js.publish(coord_conn.names.deadletter_subject("events"), b"not a dead letter")
            await coord_conn.dead_letters.record("late-result", "result from w1 (epoch 1) refused", task_id="t2")
            while len(seen) < 2:
                await asyncio.sleep(0.02)
    finally:
        follower.cancel()
    assert [(d.source, d.task_id) for d in seen] == [("dispatch", "t1"), ("late-result", "t2")]
