"""Per-queue limits in the limits bucket (real server): setting them, slots taken with compare-and-set,
slots taken back once their claim is over, and start times reserved under a rate."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

import coord
from coord.errors import Conflict, InvalidInput
from coord.limits import KEEP, LimitsView, Rate, RateState, SlotHolder, parse_rate, recent_rate, reserve
from coord.server import NatsServer
from coord.tasks import TaskStatus


def test_a_rate_is_read_per_second_or_per_minute_and_none_or_zero_removes_it() -> None:
    assert parse_rate("20/s") == Rate(count=20, per="s")
    assert parse_rate(" 90 / m ").per_second == pytest.approx(1.5)  # type: ignore[union-attr]
    assert parse_rate("0.5/s").interval == pytest.approx(2.0)  # type: ignore[union-attr]
    assert parse_rate("none") is None and parse_rate("0") is None and parse_rate("0/m") is None
    for bad in ("abc", "20", "20/h", "-1/s", "/s", ""):
        with pytest.raises(InvalidInput, match=r"e\.g\. 20/s or 90/m"):
            parse_rate(bad)
    with pytest.raises(InvalidInput, match="at most 10000/s"):
        parse_rate("20000/s")


def test_reservations_are_spaced_by_the_interval_and_never_beyond_the_horizon() -> None:
    rate = Rate(count=10, per="s")
    first = reserve(None, rate, want=3, now=100.0, horizon=2.0)
    assert first.times == pytest.approx((100.0, 100.1, 100.2))
    assert first.state is not None and first.state.tat == pytest.approx(100.3)
    later = reserve(first.state, rate, want=100, now=100.05, horizon=2.0)
    assert later.times[0] == pytest.approx(100.3) and later.times[-1] <= 102.05 + 1e-9
    assert len(later.times) == 18
    assert later.state is not None
    full = reserve(later.state, rate, want=1, now=100.05, horizon=2.0)
    assert full.times == () and full.state is None
    assert full.retry_at == pytest.approx(later.state.tat - 2.0)
    idle = reserve(RateState(tat=50.0), rate, want=1, now=100.0, horizon=2.0)
    assert idle.times == (100.0,)  # an idle queue starts at once: no credit saved up for a burst


def test_the_recent_rate_follows_a_steady_rate() -> None:
    rate, state, now = Rate(count=20, per="s"), None, 0.0
    for _ in range(2000):  # 100 s at 20/s
        plan = reserve(state, rate, want=1, now=now, horizon=2.0)
        state, now = plan.state, now + rate.interval
    assert recent_rate(state, now) == pytest.approx(20, rel=0.1)
    assert recent_rate(state, now + 60) < 0.1


async def test_limits_are_set_kept_and_removed_one_at_a_time(coord_conn: coord.Coord) -> None:
    limits = coord_conn.limits
    assert await limits.get("q") is None
    both = await limits.set("q", concurrency=2, rate=Rate(count=20, per="s"))
    assert both is not None and (both.concurrency, str(both.rate)) == (2, "20/s")
    kept = await limits.set("q", concurrency=KEEP, rate=None)
    assert kept is not None and (kept.concurrency, kept.rate) == (2, None)
    assert (await limits.all()).keys() == {"q"}
    assert await limits.set("q", concurrency=None) is None
    assert await limits.get("q") is None and await limits.all() == {}
    for bad in (0, -1, 1001, True):
        with pytest.raises(InvalidInput, match="concurrency"):
            await limits.set("q", concurrency=bad)


def _holder(task: str, epoch: int, worker: str = "w1", age: float = 0.0) -> SlotHolder:
    return SlotHolder(task_id=task, epoch=epoch, worker_id=worker, at=datetime.now(UTC) - timedelta(seconds=age))


async def test_a_slot_goes_to_one_of_two_takers_and_back_with_its_release(coord_conn: coord.Coord) -> None:
    limits = coord_conn.limits
    outcomes = await asyncio.gather(
        limits.take_slot("q", 0, over=0, holder=_holder("a", 1, "w1")),
        limits.take_slot("q", 0, over=0, holder=_holder("b", 1, "w2")),
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(won) == 1 and sum(isinstance(o, Conflict) for o in outcomes) == 1
    assert [s.holder for s in await limits.slots("q")] == [won[0].holder]
    freed = await limits.release(won[0])
    assert freed is not None and await limits.slots("q") == []
    assert await limits.release(won[0]) is None  # already given back: nothing happens
    again = await limits.take_slot("q", 0, over=freed, holder=_holder("c", 1))
    assert again.holder is not None and again.holder.task_id == "c"


async def test_a_slot_is_taken_back_once_its_claim_is_over_and_not_before(coord_conn: coord.Coord) -> None:
    limits, tasks = coord_conn.limits, coord_conn.tasks
    await tasks.schedule("run", queue="q", spec=None)
    await tasks.schedule("late", queue="q", spec=None)
    await limits.take_slot("q", 2, over=0, holder=_holder("nosuchtask", 1))
    await asyncio.sleep(1.2)  # the grace of this one is counted by the server's time of its write
    running = await limits.take_slot("q", 0, over=0, holder=_holder("run", 1))
    claim = await tasks.claim("run", "w1")
    await limits.take_slot("q", 1, over=0, holder=_holder("late", 1))  # its claim is being made
    running, not_yet, gone = await limits.slots("q")
    assert await limits.heal([running, not_yet, gone], grace=1.0) == [gone]
    assert await limits.heal([running, not_yet], grace=0.0) == [not_yet]  # the claim never came
    await tasks.complete(claim, {"ok": True})
    assert await limits.heal([running]) == [running]
    assert await limits.slots("q") == []


async def test_a_reclaimed_claim_frees_its_slot_even_if_its_holder_never_released_it(coord_conn: coord.Coord) -> None:
    limits, tasks = coord_conn.limits, coord_conn.tasks
    await tasks.schedule("t", queue="q", spec=None, max_attempts=3)
    slot = await limits.take_slot("q", 0, over=0, holder=_holder("t", 1))
    claim = await tasks.claim("t", "w1")
    assert await limits.heal([slot]) == []
    record = await tasks.reclaim("t", claim.claim_id, reason="worker-left:expired")
    assert record.status is TaskStatus.PENDING
    assert await limits.heal([slot]) == [slot]


async def test_the_view_sees_limits_and_slots_change_without_asking(coord_conn: coord.Coord) -> None:
    limits = coord_conn.limits
    view = await LimitsView(limits, ["q"]).start()
    try:
        change = view.changed()
        await limits.set("q", concurrency=2)
        await asyncio.wait_for(change, 5)
        assert view.limits("q") is not None and view.free("q", 2) == [(0, 0), (1, 0)]
        slot = await limits.take_slot("q", 1, over=0, holder=_holder("a", 1))
        async with asyncio.timeout(5):
            while view.held("q") != 1:
                await view.changed()
        assert [s.index for s in view.held_slots()] == [1]
        freed = await limits.release(slot)
        async with asyncio.timeout(5):
            while view.held("q"):
                await view.changed()
        assert view.free("q", 2) == [(0, 0), (1, freed)]
        await limits.set("other", concurrency=1)  # a queue it does not follow
        await asyncio.sleep(0.2)
        assert view.limits("other") is None
    finally:
        await view.stop()


async def test_reservations_from_two_connections_never_share_a_start_time(
    nats_server: NatsServer, coord_conn: coord.Coord
) -> None:
    rate = Rate(count=50, per="s")
    async with coord.connect(nats_server.url, namespace=coord_conn.namespace) as other:

        async def take(conn: coord.Coord) -> list[float]:
            times: list[float] = []
            while len(times) < 20:
                plan = await conn.limits.reserve("q", rate, want=1, horizon=2.0)
                times.extend(plan.times)
            return times

        started = time.time()
        ours, theirs = await asyncio.gather(take(coord_conn), take(other))
    every = sorted(ours + theirs)
    gaps = [b - a for a, b in itertools.pairwise(every)]
    assert min(gaps) == pytest.approx(rate.interval, abs=1e-6)
    assert every[-1] - started == pytest.approx(39 * rate.interval, abs=0.2)
