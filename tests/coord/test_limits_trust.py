"""Limits behind the trust boundary (real server): hostile values written into the limits bucket are
never believed — non-finite or unbounded numbers, non-canonical slot keys, future holder times, slots
naming someone else's claim — and a repaired key takes effect at once."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

import coord
from coord.errors import InvalidInput
from coord.limits import LimitsView, Rate, RateState, SlotHolder, parse_rate
from coord.limits.models import limit_key, rate_key, slot_key, split_slot_key
from coord.presence import AgentInfo
from dispatch import Reclaimer


def _holder(task: str, epoch: int = 1, worker: str = "w1", ahead: float = 0.0) -> SlotHolder:
    return SlotHolder(task_id=task, epoch=epoch, worker_id=worker, at=datetime.now(UTC) + timedelta(seconds=ahead))


def test_only_canonical_slot_keys_are_slots() -> None:
    assert split_slot_key("slot.q.0") == ("q", 0)
    assert split_slot_key("slot.q-1_x.999") == ("q-1_x", 999)
    for key in ("slot.q.0", "slot.q.7", "slot.q.999"):
        where = split_slot_key(key)
        assert where is not None and slot_key(*where) == key  # a slot is released at its own key
    for bad in ("slot.q.00", "slot.q.01", "slot.q.1000", "slot.q.-1", "slot.q.+1", "slot.q.1e2", "slot.q.\u0663"):
        assert split_slot_key(bad) is None, bad
    for bad in ("slot.q", "slot.q.1.2", "slot..1", "limit.q.1", "slot.q!.1"):
        assert split_slot_key(bad) is None, bad


def test_rates_and_rate_states_must_be_finite_and_bounded() -> None:
    for count in (float("nan"), float("inf"), -1.0, 0.0, 1e300, 1e-9):
        with pytest.raises(ValidationError):
            Rate(count=count)
    assert parse_rate("1/m") == Rate(count=1, per="m")
    with pytest.raises(InvalidInput, match="at least one start a day"):
        parse_rate("0.0001/m")
    for raw in (
        b'{"tat": NaN}',
        b'{"tat": Infinity}',
        b'{"tat": 1e400}',
        b'{"tat": -1}',
        b'{"tat": "soon"}',
        b'{"tat": 1, "recent": -1}',
        b'{"tat": 1, "recent": 1e300}',
        b'{"tat": 1, "at": NaN}',
        b"[]",
    ):
        with pytest.raises(ValidationError):
            RateState.model_validate_json(raw)


@pytest.mark.parametrize(
    "value",
    [b'{"tat": NaN}', b'{"tat": 1e300}', b'{"tat": 1e12}', b'{"tat": "soon"}', b'{"tat": -5}', b"\xff", b"null"],
)
async def test_a_hostile_rate_state_is_written_over_and_reservations_go_on(
    coord_conn: coord.Coord, value: bytes
) -> None:
    limits, rate = coord_conn.limits, Rate(count=20, per="s")
    await limits.reserve("q", rate, want=1, horizon=2.0)  # this process now holds the state it wrote
    await limits.bucket.put(rate_key("q"), value)
    for _ in range(3):
        plan = await limits.reserve("q", rate, want=1, horizon=2.0)
        assert plan.times and plan.times[0] <= time.time() + 2.0 + 1e-6
    stored = await limits.bucket.get(rate_key("q"))
    assert stored is not None and RateState.model_validate_json(stored.value or b"").tat <= time.time() + 3.0
    known = limits.known_rate("q")
    assert known is not None and known.tat <= time.time() + 3.0


@pytest.mark.parametrize(
    "value",
    [
        {"rate": {"count": float("nan")}},
        {"rate": {"count": float("inf")}},
        {"rate": {"count": 1e300}},
        {"rate": {"count": "many"}},
        {"concurrency": -1},
        {"concurrency": 10**12},
        {"concurrency": float("nan")},
        {"queue": "other", "concurrency": 1},
    ],
)
async def test_a_limit_that_is_not_corrals_reads_as_no_limit_and_its_repair_applies_at_once(
    coord_conn: coord.Coord, value: dict[str, object]
) -> None:
    limits = coord_conn.limits
    view = await LimitsView(limits, ["q"]).start()
    try:
        await limits.set("q", concurrency=1)
        async with asyncio.timeout(5):
            while view.limits("q") is None:
                await view.changed()
        raw = {"queue": "q", "updated_at": datetime.now(UTC).isoformat(), **value}
        await limits.bucket.put(limit_key("q"), json.dumps(raw).encode())  # NaN/Infinity as JSON allows them
        async with asyncio.timeout(5):
            while view.limits("q") is not None:
                await view.changed()
        assert view.limited() == {}
        await limits.set("q", concurrency=3)
        async with asyncio.timeout(5):
            while view.limits("q") is None:
                await view.changed()
        assert view.limits("q").concurrency == 3  # type: ignore[union-attr]
    finally:
        await view.stop()


async def test_a_slot_with_a_future_holder_time_is_taken_back_after_the_grace(coord_conn: coord.Coord) -> None:
    limits = coord_conn.limits
    await coord_conn.tasks.schedule("t", queue="q", spec=None)  # pending: the claim never comes
    taken = await limits.take_slot("q", 0, over=0, holder=_holder("t", ahead=3600))
    assert await limits.heal([taken], grace=0.5) == []  # just written: its holder may be claiming
    await asyncio.sleep(0.7)
    assert await limits.heal([taken], grace=0.5) == [taken]  # counted by this healer's clock, not the holder's
    again = await limits.take_slot("q", 1, over=0, holder=_holder("t", ahead=3600))
    await asyncio.sleep(0.7)
    (read,) = await limits.slots("q")
    assert read.written_at is not None
    assert await limits.heal([read], grace=0.5) == [read]  # the server's time of the write counts too
    assert again.revision == read.revision and await limits.slots("q") == []


async def test_a_slot_naming_a_claim_of_another_queue_or_a_claim_with_a_slot_already_is_taken_back(
    coord_conn: coord.Coord,
) -> None:
    limits, tasks = coord_conn.limits, coord_conn.tasks
    await tasks.schedule("x", queue="other", spec=None)
    await tasks.claim("x", "w1")
    foreign = await limits.take_slot("q", 0, over=0, holder=_holder("x"))
    first = await limits.take_slot("other", 0, over=0, holder=_holder("x"))
    second = await limits.take_slot("other", 1, over=0, holder=_holder("x"))
    assert await limits.heal([foreign, first, second]) == [foreign, second]
    assert [s.index for s in await limits.slots()] == [0] and (await limits.slots())[0].queue == "other"


async def test_keys_under_slot_that_are_no_slot_and_second_slots_of_a_claim_are_removed_by_the_reclaimer(
    coord_conn: coord.Coord,
) -> None:
    limits, tasks = coord_conn.limits, coord_conn.tasks
    await tasks.schedule("t", queue="q", spec=None)
    await tasks.claim("t", "w1")
    kept = await limits.take_slot("q", 0, over=0, holder=_holder("t"))
    await limits.take_slot("q", 5, over=0, holder=_holder("t"))  # a second slot for the same running claim
    junk = ["slot.q.00", "slot.q.1000", "slot.q.1.2"]
    for key in junk:
        await limits.bucket.put(key, _holder("t").model_dump_json().encode())
    async with (
        coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2),
        Reclaimer(coord_conn, sweep_interval=0.2),
    ):
        async with asyncio.timeout(5):
            while [e for e in await limits.bucket.scan("slot.") if not e.deleted and e.key in junk]:
                await asyncio.sleep(0.1)
            while len(await limits.slots("q")) > 1:  # the live index shows the claim current: one slot kept
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # and the real slot 0, whose claim is current, stays
        assert [(s.index, s.revision) for s in await limits.slots("q")] == [(0, kept.revision)]
