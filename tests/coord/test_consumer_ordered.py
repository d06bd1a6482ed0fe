"""The component's ordered reader (what mailbox readers consume with), against a real nats-server."""

from __future__ import annotations

import asyncio

import nats

from coord.consumer import OrderedReader
from coord.ids import new_id
from coord.server import NatsServer


async def test_the_reader_gives_what_is_stored_then_what_arrives_and_ends_when_the_connection_closes(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = new_id("R").replace("-", "")[:16].upper()
    await js.add_stream(name=stream, subjects=[f"ord.{stream}.>"])
    await js.publish(f"ord.{stream}.a", b"1")
    await js.publish(f"ord.{stream}.b", b"skip")  # another subject: not read
    reader = await OrderedReader(js, stream, f"ord.{stream}.a").open()
    first = await asyncio.wait_for(reader.next(), 5)
    assert first is not None and first.data == b"1"
    await js.publish(f"ord.{stream}.a", b"2")
    second = await asyncio.wait_for(reader.next(), 5)
    assert second is not None and second.data == b"2"
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0.1)
    await nc.close()
    assert await asyncio.wait_for(waiting, 5) is None
    await reader.close()
    assert await reader.next() is None
