"""The consumer component's pure parts: the delivery policy and the capacity reservation (no server)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from coord.consumer import (
    FAILING,
    RENEW_AT,
    SERVER_MAX_DELIVER,
    WAIT_CAP,
    Reservation,
    Slots,
    deliveries,
    must_renew,
    waiting_delay,
)


@dataclass
class _Meta:
    num_delivered: Any


@dataclass
class _Msg:
    metadata: Any


class _Unreadable:
    @property
    def metadata(self) -> Any:
        raise ValueError("not a JetStream reply subject")


def test_a_readable_delivery_count_is_returned() -> None:
    assert deliveries(_Msg(_Meta(3))) == 3


@pytest.mark.parametrize("msg", [_Unreadable(), _Msg(_Meta(None)), _Msg(_Meta(0)), _Msg(_Meta("7")), object()])
def test_an_unreadable_delivery_count_is_unknown_never_one(msg: object) -> None:
    assert deliveries(msg) is None


def test_an_unknown_count_is_over_every_limit() -> None:
    assert FAILING.exhausted(None)
    assert must_renew(None)
    assert waiting_delay(None) == WAIT_CAP


def test_failing_messages_back_off_and_are_dead_lettered_at_the_limit() -> None:
    delays = [FAILING.delay(n) for n in range(1, FAILING.limit)]
    assert delays == sorted(delays) and delays[0] == 0.5 and max(delays) <= FAILING.cap
    assert not any(FAILING.exhausted(n) for n in range(1, FAILING.limit))
    assert FAILING.exhausted(FAILING.limit)


def test_waiting_messages_wait_longer_with_each_delivery_but_at_most_the_cap() -> None:
    delays = [waiting_delay(n) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert delays[0] > 0  # a NAK with delay 0 is never what a waiting message gets
    assert max(delays) == WAIT_CAP
    assert waiting_delay(1, at_least=30.0) == 30.0  # what the caller must wait is never shortened


def test_waiting_messages_are_renewed_before_the_server_would_strand_them() -> None:
    assert FAILING.limit < RENEW_AT < SERVER_MAX_DELIVER
    assert not must_renew(RENEW_AT - 1) and must_renew(RENEW_AT)


async def test_a_reservation_gives_back_what_it_did_not_hand_over_on_a_normal_exit() -> None:
    slots = Slots(8)
    with await slots.reserve(5, asyncio.Event()) as held:
        assert held.count == 5 and slots.free == 3
        held.keep(3)  # a partial batch: 3 messages came
        assert slots.free == 5
        held.hand_over(2)
    assert slots.free == 6  # the 2 handed over belong to their runs now
    slots.returned(2)
    assert slots.free == 8


async def test_a_reservation_gives_back_everything_on_an_exception() -> None:
    slots = Slots(4)
    with pytest.raises(RuntimeError), await slots.reserve(4, asyncio.Event()) as held:
        held.hand_over(1)
        raise RuntimeError("fetch failed")
    assert slots.free == 3


async def test_a_reservation_gives_back_everything_on_cancellation() -> None:
    slots = Slots(2)
    entered = asyncio.Event()

    async def fetcher() -> None:
        with await slots.reserve(2, asyncio.Event()):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(fetcher())
    await entered.wait()
    assert slots.free == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.free == 2


async def test_a_waiting_reservation_wakes_when_slots_come_back_and_holds_none_when_stopping() -> None:
    slots = Slots(1)
    stopping = asyncio.Event()
    first = await slots.reserve(1, stopping)
    first.hand_over(1)
    waiter = asyncio.create_task(slots.reserve(1, stopping))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    slots.returned(1)
    second = await asyncio.wait_for(waiter, 1)
    assert second.count == 1
    second.release()
    stopping.set()
    with await slots.reserve(1, stopping) as third:
        assert third.count == 0
    assert slots.free == 1


def test_a_reservation_cannot_hand_over_more_than_it_holds() -> None:
    slots = Slots(1)
    slots.free = 0
    held = Reservation(slots, 1)
    with pytest.raises(ValueError):
        held.hand_over(2)
