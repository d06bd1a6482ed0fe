"""Schedules: when a cron expression fires, the id of each tick's task, and the schedules bucket on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

import coord
from coord.errors import Conflict, InvalidInput, NotFound
from coord.ids import MAX_ID_LENGTH, validate_id
from coord.schedules import (
    MAX_NAME_LENGTH,
    Schedule,
    Schedules,
    TaskTemplate,
    check_cron,
    check_timezone,
    next_tick,
    previous_tick,
    tick_task_id,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_a_five_field_expression_ticks_on_whole_minutes_and_six_fields_put_seconds_first() -> None:
    now = at("2026-05-04T10:07:31.250+00:00")
    assert previous_tick("*/5 * * * *", "UTC", now) == at("2026-05-04T10:05:00+00:00")
    assert next_tick("*/5 * * * *", "UTC", now) == at("2026-05-04T10:10:00+00:00")
    assert previous_tick("*/2 * * * * *", "UTC", now) == at("2026-05-04T10:07:30+00:00")
    assert next_tick("*/2 * * * * *", "UTC", now) == at("2026-05-04T10:07:32+00:00")
    # a tick exactly at `now` is the previous one, never the next one
    on_tick = at("2026-05-04T10:10:00+00:00")
    assert previous_tick("*/5 * * * *", "UTC", on_tick) == on_tick
    assert next_tick("*/5 * * * *", "UTC", on_tick) == at("2026-05-04T10:15:00+00:00")


def test_an_expression_is_read_in_its_time_zone_across_daylight_saving_changes() -> None:
    winter, summer = at("2026-01-10T12:00:00+00:00"), at("2026-07-10T12:00:00+00:00")
    assert next_tick("0 9 * * *", "Europe/Paris", winter) == at("2026-01-11T08:00:00+00:00")
    assert next_tick("0 9 * * *", "Europe/Paris", summer) == at("2026-07-11T07:00:00+00:00")
    # 02:30 does not exist in Paris on 2026-03-29 (clocks jump from 02:00 to 03:00): Debian's cron
    # runs such a job right after the jump, once.
    night = at("2026-03-29T00:30:00+00:00")
    assert next_tick("30 2 * * *", "Europe/Paris", night) == at("2026-03-29T01:00:00+00:00")
    assert next_tick("30 2 * * *", "Europe/Paris", at("2026-03-29T01:00:00+00:00")) == at("2026-03-30T00:30:00+00:00")


def test_a_bad_cron_expression_or_time_zone_is_refused_naming_what_is_wrong_and_the_rule() -> None:
    with pytest.raises(InvalidInput, match=r"'61 \* \* \* \*' is not a cron expression: bad minute \(5 fields"):
        check_cron("61 * * * *")
    with pytest.raises(InvalidInput, match=r"wrong number of fields .*6 with seconds first"):
        check_cron("* * *")
    with pytest.raises(InvalidInput, match="never fires"):
        check_cron("* * */20 * 1L")  # the 1st or 21st, if also the last Monday
    with pytest.raises(InvalidInput, match="'Mars/Olympus' is not an IANA time zone"):
        check_timezone("Mars/Olympus")
    assert check_cron("  */5   *  * * * ") == "*/5 * * * *"
    assert check_timezone("Europe/Paris") == "Europe/Paris"


def test_tick_task_ids_are_derived_from_name_and_time_and_fit_the_id_rules() -> None:
    tick = at("2026-05-04T10:05:00+00:00")
    assert tick_task_id("nightly", tick) == f"nightly-{int(tick.timestamp())}"
    longest = "n" * MAX_NAME_LENGTH
    far = at("2286-11-20T17:46:40+00:00")  # unix time grows an 11th digit here
    assert validate_id(tick_task_id(longest, far), "task_id")
    assert len(tick_task_id(longest, far)) <= MAX_ID_LENGTH
    with pytest.raises(ValueError, match=r"schedule name .* the limit is 100"):
        Schedule(name="n" * (MAX_NAME_LENGTH + 1), cron="* * * * *", task=TaskTemplate())


def test_a_task_template_makes_the_spec_of_each_tick_without_a_parent() -> None:
    template = TaskTemplate(queue="reports", title="daily", payload={"k": 1}, max_attempts=2, timeout=30)
    spec = template.spec("daily-1778000000")
    assert (spec.task_id, spec.queue, spec.title, spec.payload) == ("daily-1778000000", "reports", "daily", {"k": 1})
    assert (spec.max_attempts, spec.timeout, spec.parent_agent_id) == (2, 30, None)
    with pytest.raises(ValueError, match="absolute path"):
        TaskTemplate(files=("relative/path",))
    with pytest.raises(ValueError, match="Extra inputs"):
        TaskTemplate.model_validate({"queue": "q", "priority": 9})


async def test_schedules_are_added_listed_paused_resumed_and_removed(coord_conn: coord.Coord) -> None:
    schedules = coord_conn.schedules
    before = datetime.now(UTC)
    added = await schedules.add(Schedule(name="nightly", cron="0 3 * * *", task=TaskTemplate(queue="etl")))
    await schedules.add(Schedule(name="hourly", cron="0 * * * *", timezone="Asia/Tokyo", task=TaskTemplate()))
    assert added.since >= before and added.last_tick is None and added.revision > 0
    assert [s.name for s in await schedules.list()] == ["hourly", "nightly"]
    assert (await schedules.get("hourly")).timezone == "Asia/Tokyo"

    paused = await schedules.pause("nightly")
    assert paused.paused and (await schedules.get("nightly")).paused
    assert (await schedules.pause("nightly")).revision == paused.revision  # already paused: nothing written
    resumed = await schedules.resume("nightly")
    assert not resumed.paused and resumed.since > paused.since  # ticks missed while paused are not made up

    await schedules.remove("nightly")
    assert [s.name for s in await schedules.list()] == ["hourly"]
    for call in (schedules.get("nightly"), schedules.remove("nightly"), schedules.pause("nightly")):
        with pytest.raises(NotFound, match="no schedule 'nightly'"):
            await call


async def test_adding_an_existing_name_conflicts_and_replacing_keeps_the_last_tick(coord_conn: coord.Coord) -> None:
    schedules = coord_conn.schedules
    await schedules.add(Schedule(name="sync", cron="*/5 * * * *", task=TaskTemplate(queue="a")))
    tick = at("2026-05-04T10:05:00+00:00")
    await schedules.record_tick("sync", tick, tick_task_id("sync", tick))
    with pytest.raises(Conflict, match="schedule 'sync' already exists"):
        await schedules.add(Schedule(name="sync", cron="* * * * *", task=TaskTemplate(queue="b")))
    replaced = await schedules.add(Schedule(name="sync", cron="* * * * *", task=TaskTemplate(queue="b")), replace=True)
    assert (replaced.cron, replaced.task.queue) == ("* * * * *", "b")
    assert (replaced.last_tick, replaced.last_task) == (tick, tick_task_id("sync", tick))


async def test_the_recorded_tick_only_moves_forward_whatever_order_concurrent_schedulers_write_in(
    coord_conn: coord.Coord, nats_server: coord.NatsServer
) -> None:
    await coord_conn.schedules.add(Schedule(name="race", cron="* * * * * *", task=TaskTemplate()))
    base = at("2026-05-04T10:00:00+00:00")
    ticks = [base + timedelta(seconds=s) for s in (3, 9, 1, 7, 9, 2, 8, 5, 4, 6)]
    async with coord.connect(nats_server.url, namespace=coord_conn.namespace) as other:
        writers = [coord_conn.schedules, other.schedules]
        await asyncio.gather(
            *(writers[i % 2].record_tick("race", t, tick_task_id("race", t)) for i, t in enumerate(ticks))
        )
    stored = await coord_conn.schedules.get("race")
    assert stored.last_tick == base + timedelta(seconds=9)
    assert stored.last_task == tick_task_id("race", base + timedelta(seconds=9))
    assert await coord_conn.schedules.record_tick("gone", base, "gone-1") is None


async def test_a_watch_delivers_existing_schedules_then_changes_and_removals(coord_conn: coord.Coord) -> None:
    schedules = coord_conn.schedules
    await schedules.add(Schedule(name="first", cron="* * * * *", task=TaskTemplate()))
    seen: asyncio.Queue[tuple[str, bool | None]] = asyncio.Queue()
    async with schedules.watch(lambda name, s: seen.put_nowait((name, None if s is None else s.paused))):
        assert await asyncio.wait_for(seen.get(), 5) == ("first", False)
        await schedules.add(Schedule(name="second", cron="* * * * *", task=TaskTemplate()))
        await schedules.pause("first")
        await schedules.remove("second")
        changes = [await asyncio.wait_for(seen.get(), 5) for _ in range(3)]
    assert changes == [("second", False), ("first", True), ("second", None)]


def between_read_and_write(
    schedules: Schedules, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[int], Awaitable[object]]
) -> None:
    """Make ``meanwhile(revision read)`` run once, right after the next read of the store (a concurrent writer)."""
    read = schedules.store.get
    pending = [meanwhile]

    async def get(key: str, model: type[Schedule]) -> tuple[Schedule | None, int]:
        value, revision = await read(key, model)
        if pending:
            await pending.pop()(revision)
        return value, revision

    monkeypatch.setattr(schedules.store, "get", get)


async def test_removing_never_deletes_a_schedule_re_added_while_it_was_being_removed(
    coord_conn: coord.Coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 21: the conflict fallback deleted whatever was there, so a schedule re-added concurrently vanished.
    schedules = coord_conn.schedules
    await schedules.add(Schedule(name="r", cron="*/5 * * * *", task=TaskTemplate(queue="old")))

    async def re_add(revision: int) -> None:  # another operator removes it and adds a new one
        await schedules.store.write("r", None, last=revision, delete=True)
        await schedules.add(Schedule(name="r", cron="0 * * * *", task=TaskTemplate(queue="new")))

    between_read_and_write(schedules, monkeypatch, re_add)
    with pytest.raises(Conflict, match="'r' was re-added, replaced or resumed meanwhile; not removed"):
        await schedules.remove("r")
    kept = await schedules.get("r")
    assert (kept.cron, kept.task.queue) == ("0 * * * *", "new")


async def test_removing_a_schedule_whose_tick_was_recorded_meanwhile_removes_it(
    coord_conn: coord.Coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedules = coord_conn.schedules
    await schedules.add(Schedule(name="t", cron="* * * * * *", task=TaskTemplate(queue="q")))
    tick = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

    async def record(revision: int) -> None:  # a scheduler records a tick between the read and the delete
        await schedules.record_tick("t", tick, tick_task_id("t", tick))

    between_read_and_write(schedules, monkeypatch, record)
    await schedules.remove("t")
    with pytest.raises(NotFound):
        await schedules.get("t")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_payload_with_nan_or_an_infinity_is_refused_not_stored_as_null(number: float) -> None:
    # issue 21: pydantic wrote them as null, so every tick's task silently got another payload
    with pytest.raises(ValueError, match="payload must be a JSON value"):
        TaskTemplate(payload={"x": [1, number]})
    assert TaskTemplate(payload={"x": [1, 2.5]}).payload == {"x": [1, 2.5]}
