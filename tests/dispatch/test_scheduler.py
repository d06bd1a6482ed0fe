"""The scheduler in one process: one task per tick from the template, pause and resume, changes picked up from
the watch, and the missed-tick policy (only the most recent missed tick is made up)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

import coord
import dispatch.scheduler
from coord.schedules import Schedule, TaskTemplate, previous_tick
from dispatch.scheduler import Scheduler, Submitted


def tick_of(task_id: str) -> int:
    return int(task_id.rsplit("-", 1)[1])


async def ticks(conn: coord.Coord, queue: str) -> list[int]:
    return sorted(tick_of(r.task_id) for r in await conn.tasks.list(queue=queue))


async def next_events(scheduler: Scheduler, count: int, within: float = 10) -> list[Submitted]:
    return [await asyncio.wait_for(scheduler.events.get(), within) for _ in range(count)]


async def test_every_tick_submits_one_task_from_the_template_without_a_parent_and_records_the_tick(
    coord_conn: coord.Coord,
) -> None:
    template = TaskTemplate(queue="beats", title="beat", payload={"n": 1}, max_attempts=2)
    await coord_conn.schedules.add(Schedule(name="beat", cron="* * * * * *", task=template))
    async with Scheduler(coord_conn) as scheduler:
        events = await next_events(scheduler, 3)
    assert [e.task_id for e in events] == [f"beat-{int(e.tick.timestamp())}" for e in events]
    assert [int(e.tick.timestamp()) for e in events] == list(
        range(tick_of(events[0].task_id), tick_of(events[0].task_id) + 3)
    )
    assert all(e.late < 1 for e in events[1:])  # on time (the first may be the tick just before the start)
    record = await coord_conn.tasks.get(events[-1].task_id)
    assert (record.queue, record.parent, record.max_attempts) == ("beats", None, 2)
    assert isinstance(record.spec, dict)
    assert (record.spec["payload"], record.spec["title"], record.spec["parent_agent_id"]) == ({"n": 1}, "beat", None)
    assert record.meta["schedule"] == "beat"
    stored = await coord_conn.schedules.get("beat")
    assert (stored.last_tick, stored.last_task) == (events[-1].tick, events[-1].task_id)


async def test_a_paused_schedule_submits_nothing_and_resuming_skips_the_ticks_it_missed(
    coord_conn: coord.Coord,
) -> None:
    schedules = coord_conn.schedules
    await schedules.add(Schedule(name="p", cron="* * * * * *", task=TaskTemplate(queue="pq")))
    async with Scheduler(coord_conn) as scheduler:
        await next_events(scheduler, 2)
        await schedules.pause("p")
        paused_at = datetime.now(UTC).timestamp()
        await asyncio.sleep(3)
        resumed_at = (await schedules.resume("p")).since.timestamp()
        after = await next_events(scheduler, 2)
    submitted = await ticks(coord_conn, "pq")
    # a timer already awake when the pause landed may still submit the tick it woke for, no later one
    assert not [t for t in submitted if paused_at + 1 < t <= resumed_at], submitted
    assert [e for e in after if e.tick.timestamp() <= resumed_at] == []
    assert tick_of(after[0].task_id) == int(resumed_at) + 1  # the first tick after the resume


async def test_changes_and_removals_take_effect_without_restarting_the_scheduler(coord_conn: coord.Coord) -> None:
    schedules = coord_conn.schedules
    await schedules.add(Schedule(name="c", cron="* * * * * *", task=TaskTemplate(queue="old")))
    async with Scheduler(coord_conn) as scheduler:
        await next_events(scheduler, 1)
        await schedules.add(Schedule(name="c", cron="*/2 * * * * *", task=TaskTemplate(queue="new")), replace=True)
        changed = datetime.now(UTC).timestamp()
        events = await next_events(scheduler, 5)
        moved = [e for e in events if e.tick.timestamp() > changed + 1]
        assert moved and {(await coord_conn.tasks.get(e.task_id)).queue for e in moved} == {"new"}
        assert {int(e.tick.timestamp()) % 2 for e in moved} == {0}
        await schedules.remove("c")
        removed = datetime.now(UTC).timestamp()
        await asyncio.sleep(2.5)
        assert "c" not in scheduler.schedules
    late = [t for t in await ticks(coord_conn, "new") if t > removed + 1]
    assert late == []


async def test_a_scheduler_makes_up_only_the_most_recent_of_the_ticks_it_missed(coord_conn: coord.Coord) -> None:
    # An hourly schedule whose last tick was five hours ago: four ticks were missed (every scheduler down).
    now = datetime.now(UTC)
    five_hours_ago = previous_tick("0 * * * *", "UTC", now - timedelta(hours=5))
    assert five_hours_ago is not None
    stale = Schedule(
        name="hourly",
        cron="0 * * * *",
        task=TaskTemplate(queue="hq"),
        since=five_hours_ago - timedelta(minutes=1),
        last_tick=five_hours_ago,
        last_task=f"hourly-{int(five_hours_ago.timestamp())}",
    )
    await coord_conn.schedules.store.write("hourly", stale, last=0)
    async with Scheduler(coord_conn) as scheduler:
        made_up = await asyncio.wait_for(scheduler.events.get(), 10)
        await asyncio.sleep(1)
    latest = {previous_tick("0 * * * *", "UTC", t) for t in (now, datetime.now(UTC))}  # an hour may begin meanwhile
    assert made_up.tick in latest and made_up.late > 0
    submitted = await ticks(coord_conn, "hq")
    assert submitted[0] == int(made_up.tick.timestamp()) and len(submitted) <= 2, submitted  # no earlier missed tick
    assert (await coord_conn.schedules.get("hourly")).last_tick == made_up.tick


async def test_a_second_scheduler_started_after_the_first_submits_no_tick_twice(coord_conn: coord.Coord) -> None:
    await coord_conn.schedules.add(Schedule(name="s", cron="* * * * * *", task=TaskTemplate(queue="sq")))
    async with Scheduler(coord_conn) as first:
        before = await next_events(first, 2)
    async with Scheduler(coord_conn) as second:
        after = await next_events(second, 2)
    assert after[0].tick > before[-1].tick
    for task_id in [e.task_id for e in before + after]:
        journal = await coord_conn.tasks.journal(task_id)
        assert [e.transition.value for e in journal].count("scheduled") == 1


class CountingClock:
    """A fake wall clock from ``start``, moving with real time; counts how often a timer reads it."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.began = time.monotonic()
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        return self.start + timedelta(seconds=time.monotonic() - self.began)


async def test_in_the_repeated_hour_of_autumn_a_fixed_time_schedule_sleeps_instead_of_spinning(
    coord_conn: coord.Coord, caplog: pytest.LogCaptureFixture
) -> None:
    # issue 21: at 01:05 UTC on 2025-10-26 (02:05 CET, the second pass) the timer computed a next tick
    # already past and looped without sleeping (10,827 iterations in 2 s).
    clock = CountingClock(datetime(2025, 10, 26, 1, 5, tzinfo=UTC))
    await coord_conn.schedules.add(
        Schedule(name="night", cron="30 2 * * *", timezone="Europe/Paris", task=TaskTemplate(queue="nq"))
    )
    with caplog.at_level(logging.ERROR, logger="corral.scheduler"):
        async with Scheduler(coord_conn, clock=clock):
            await asyncio.sleep(2)
    assert clock.reads < 20, clock.reads  # a read or two, then a sleep of max_sleep
    assert not [r.getMessage() for r in caplog.records]  # the next tick computed was in the future
    assert await ticks(coord_conn, "nq") == []


async def test_a_next_tick_not_after_now_is_logged_and_looked_at_again_after_a_pause_never_in_a_tight_loop(
    coord_conn: coord.Coord, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    computed: list[datetime] = []

    def stuck(expression: str, timezone: str, after: datetime) -> datetime:
        computed.append(after)
        return after - timedelta(minutes=30)  # a tick source gone wrong: always in the past

    monkeypatch.setattr(dispatch.scheduler, "next_tick", stuck)
    await coord_conn.schedules.add(Schedule(name="stuck", cron="0 0 1 1 *", task=TaskTemplate(queue="xq")))
    with caplog.at_level(logging.ERROR, logger="corral.scheduler"):
        async with Scheduler(coord_conn):
            await asyncio.sleep(2.5)
    assert 1 <= len(computed) <= 4, len(computed)  # once per RETRY_PAUSE (1 s)
    assert any("is not after now" in r.getMessage() for r in caplog.records)


async def test_a_scheduler_started_in_the_repeated_hour_makes_up_that_nights_missed_tick_at_once(
    coord_conn: coord.Coord,
) -> None:
    # issue 21: previous_tick missed the first pass's 02:30 from the second pass, so a scheduler started
    # at 02:05 CET (01:05Z) made up the 02:30 CEST (00:30Z) tick only at 02:30 CET, an hour late.
    yesterday = datetime(2025, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST the day before
    stale = Schedule(
        name="night",
        cron="30 2 * * *",
        timezone="Europe/Paris",
        task=TaskTemplate(queue="nq"),
        since=yesterday - timedelta(minutes=1),
        last_tick=yesterday,
        last_task=f"night-{int(yesterday.timestamp())}",
    )
    await coord_conn.schedules.store.write("night", stale, last=0)
    clock = CountingClock(datetime(2025, 10, 26, 1, 5, tzinfo=UTC))
    async with Scheduler(coord_conn, clock=clock) as scheduler:
        made_up = await asyncio.wait_for(scheduler.events.get(), 5)
    assert made_up.tick == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first pass
    assert 35 * 60 <= made_up.late < 36 * 60
