"""The events listener on the one consumer component: it ends when its connection is closed for
good, a stop closes its pull subscription (a restart gets new events at once), and a graceful stop
never replays a callback. Each test fails on the listener before the component (issue 21)."""

from __future__ import annotations

import asyncio
import time

import pytest

import coord
from coord.errors import Unavailable
from coord.events import ReceivedEvent, TurnEnded
from coord.events.listener import ACK_WAIT
from coord.server import NatsServer


async def test_a_listener_whose_connection_is_closed_for_good_ends_saying_so(
    nats_server: NatsServer, namespace: str
) -> None:
    """Before: it retried every 2 s for ever."""
    conn = await coord.connect(nats_server.url, namespace=namespace)
    listener = conn.events.listener("closed")
    await listener.start()
    await conn.nc.close()
    with pytest.raises(Unavailable, match="closed for good"):
        await asyncio.wait_for(listener.wait(), 10)
    await listener.stop()  # returns at once: it has ended


async def test_a_listener_started_again_gets_new_events_at_once(coord_conn: coord.Coord) -> None:
    """Before: stop() left its pull request open, so an event emitted in between went to the stopped
    listener and a restart waited out the ack wait for it."""
    got: list[str] = []
    first = coord_conn.events.listener("again", on_event=lambda r: got.append(r.event.id))
    await first.start()
    await asyncio.sleep(0.5)  # idle: its pull waits on the server
    await first.stop()
    assert await coord_conn.events.emit("again", TurnEnded(agent="kid", turn=1))
    started = time.monotonic()
    async with coord_conn.events.listener("again", on_event=lambda r: got.append(r.event.id)):
        async with asyncio.timeout(ACK_WAIT + 5):
            while not got:
                await asyncio.sleep(0.02)
    assert time.monotonic() - started < ACK_WAIT / 2, "the restart waited out the ack wait"


async def test_a_graceful_stop_right_after_the_callback_does_not_replay_it(coord_conn: coord.Coord) -> None:
    """Before: a stop between on_event returning and the seen-marker cancelled the marker's write, and
    the restarted listener called on_event again for the same event."""
    calls: list[str] = []
    stops: list[asyncio.Task[None]] = []
    listener = None

    async def on_event(received: ReceivedEvent) -> None:
        calls.append(received.event.id)
        assert listener is not None
        stops.append(asyncio.create_task(listener.stop()))  # the stop lands while the marker is written
        await asyncio.sleep(0)

    assert await coord_conn.events.emit("graceful", TurnEnded(agent="kid", turn=1))
    listener = coord_conn.events.listener("graceful", on_event=on_event)
    await listener.start()
    async with asyncio.timeout(10):
        while not stops:
            await asyncio.sleep(0.02)
    await stops[0]
    again = coord_conn.events.listener("graceful", on_event=lambda r: calls.append(r.event.id))
    async with again:
        await again.catch_up()
    assert len(calls) == 1, f"on_event ran {len(calls)} times"
