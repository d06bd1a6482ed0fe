"""Mailbox in one process: keyed latest-wins, acknowledgement rules, tags, dead letters, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Literal

import pytest

import coord
from coord.errors import Conflict, InvalidInput, PayloadTooLarge
from coord.mailbox import Agent, Chunk, Delivered, End, Enqueued, Error, Expired, Id, InboxMessage, Tag
from coord.presence import AgentInfo
from coord.server import NatsServer
from tests.coord.helpers_mailbox import dead_letters


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def _present(stack: AsyncExitStack, conn: coord.Coord, agent: str) -> None:
    await stack.enter_async_context(conn.presence.join(AgentInfo(id=agent), interval=0.3, ttl=1.0))


async def test_a_hundred_keyed_sends_leave_exactly_one_pending_message_the_last(coord_conn: coord.Coord) -> None:
    for i in range(100):
        result = await coord_conn.mailbox.send(Agent(id="bob"), f"status {i}", key="status")
        assert isinstance(result, Enqueued)
    await coord_conn.mailbox.send(Agent(id="bob"), "unkeyed stays too")
    pending = await coord_conn.mailbox.read_pending("bob")
    assert [(m.key, m.text) for m in pending] == [("status", "status 99"), (None, "unkeyed stays too")]
    assert pending[0].id == result.id


async def test_keyed_send_to_a_live_agent_is_enqueued_without_waiting(
    coord_conn: coord.Coord, stack: AsyncExitStack
) -> None:
    await _present(stack, coord_conn, "bob")  # present, but nobody reads: auto mode would wait
    started = asyncio.get_running_loop().time()
    keyed = await coord_conn.mailbox.send(Agent(id="bob"), "x", key="k")
    forced = await coord_conn.mailbox.send(Agent(id="bob"), "y", mode="enqueue")
    assert isinstance(keyed, Enqueued) and isinstance(forced, Enqueued)
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_live_agent_that_never_reads_leaves_the_message_enqueued_after_the_timeout(
    coord_conn: coord.Coord, stack: AsyncExitStack
) -> None:
    await _present(stack, coord_conn, "idle")
    result = await coord_conn.mailbox.send(Agent(id="idle"), "anyone?", timeout=0.5)
    assert isinstance(result, Enqueued)
    assert [m.id for m in await coord_conn.mailbox.read_pending("idle")] == [result.id]


async def test_inbox_acknowledges_after_the_handler_returns_and_keeps_a_message_whose_handler_raised(
    coord_conn: coord.Coord,
) -> None:
    mb = coord_conn.mailbox
    for text in ("one", "two", "boom", "three"):
        await mb.send(Agent(id="w"), text)
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with mb.inbox("w") as inbox:
            async for msg in inbox:
                seen.append(msg.text)
                assert (await mb.read_pending("w"))[0].text == msg.text, "acked before the handler ran"
                if msg.text == "boom":
                    raise RuntimeError("boom")
    assert seen == ["one", "two", "boom"]
    assert [m.text for m in await mb.read_pending("w")] == ["boom", "three"]

    async with mb.inbox("w") as inbox:
        async for msg in inbox:
            if msg.text == "three":
                break  # leaving the block normally acknowledges the current message
    assert await mb.read_pending("w") == []


async def test_live_messages_reach_a_reading_agent_in_send_order(
    coord_conn: coord.Coord, stack: AsyncExitStack
) -> None:
    await _present(stack, coord_conn, "r")
    got: list[str] = []

    async def reader() -> None:
        async with coord_conn.mailbox.inbox("r") as inbox:
            async for msg in inbox:
                got.append(msg.text)
                if len(got) == 10:
                    return

    task = asyncio.create_task(reader())
    results = [await coord_conn.mailbox.send(Agent(id="r"), str(i)) for i in range(9)]
    assert all(isinstance(r, Delivered) for r in results)
    await coord_conn.mailbox.send(Agent(id="r"), "9", mode="enqueue")
    await asyncio.wait_for(task, 10)
    assert got == [str(i) for i in range(10)]


async def test_read_pending_can_consume(coord_conn: coord.Coord) -> None:
    await coord_conn.mailbox.send(Agent(id="p"), "a", sender="s")
    first = await coord_conn.mailbox.read_pending("p", consume=True)
    assert [(m.text, m.sender, m.acked) for m in first] == [("a", "s", True)]
    assert await coord_conn.mailbox.read_pending("p") == []


async def test_handle_pending_acknowledges_each_message_only_after_its_handler_returned(
    coord_conn: coord.Coord,
) -> None:
    mb = coord_conn.mailbox
    sent = [await mb.send(Agent(id="h"), f"m{i}") for i in range(3)]
    seen: list[str] = []

    async def handler(msg: InboxMessage) -> None:
        # while the handler runs, its message is still queued
        assert msg.id in [m.id for m in await mb.read_pending("h")]
        seen.append(msg.text)
        if msg.text == "m1":
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await mb.handle_pending("h", handler)
    assert seen == ["m0", "m1"]
    assert [m.id for m in await mb.read_pending("h")] == [sent[1].id, sent[2].id]  # the failed one stays
    assert await mb.handle_pending("h", lambda m: seen.append(m.text)) == 2
    assert seen[2:] == ["m1", "m2"] and await mb.read_pending("h") == []


async def test_binding_a_tag_held_by_a_live_agent_conflicts_but_a_dead_holders_tag_moves_with_its_mail(
    coord_conn: coord.Coord, stack: AsyncExitStack
) -> None:
    mb = coord_conn.mailbox
    await _present(stack, coord_conn, "live")
    assert await mb.bind_tag("ops", "live") == 0
    with pytest.raises(Conflict, match="live"):
        await mb.bind_tag("ops", "other")
    assert await mb.unbind_tag("ops", "live")
    assert not await mb.unbind_tag("ops", "live")
    assert await mb.resolve(Tag(name="ops")) == ("PENDING", None)

    # "gone" binds the tag, receives mail through it, and dies without reading it.
    await mb.bind_tag("ops", "gone")
    direct = await mb.send(Agent(id="gone"), "for gone only")
    via_tag = await mb.send(Tag(name="ops"), "for whoever does ops")
    assert via_tag == Enqueued(id=via_tag.id, queue="agent:gone")
    assert await mb.bind_tag("ops", "heir") == 1
    assert [m.id for m in await mb.read_pending("heir")] == [via_tag.id]
    assert [m.id for m in await mb.read_pending("gone")] == [direct.id]


async def test_binding_a_tag_keeps_the_latest_keyed_message_by_send_time_whichever_way_it_came(
    coord_conn: coord.Coord,
) -> None:
    mb = coord_conn.mailbox
    await mb.send(Tag(name="build"), "status: 10% (old)", key="status", sender="ci")
    await mb.send(Agent(id="A"), "status: 90% (new)", key="status", sender="ci")
    assert await mb.bind_tag("build", "A") == 0  # superseded: nothing moved
    assert [m.text for m in await mb.read_pending("A")] == ["status: 90% (new)"]
    assert await mb.pending_tag("build") == []

    await mb.send(Agent(id="B"), "phase: lint (old)", key="phase", sender="ci")
    await mb.send(Tag(name="test"), "phase: deploy (new)", key="phase", sender="ci")
    assert await mb.bind_tag("test", "B") == 1
    assert [m.text for m in await mb.read_pending("B")] == ["phase: deploy (new)"]


async def test_a_message_enqueued_under_a_tag_just_as_it_is_bound_still_reaches_the_binder(
    coord_conn: coord.Coord,
) -> None:
    mb = coord_conn.mailbox
    real_resolve = mb.resolve

    async def stale_resolve(target: Agent | Tag) -> tuple[Literal["DIRECT", "BOUND", "PENDING", "ABSENT"], str | None]:
        answer = await real_resolve(target)
        await coord_conn.registry.bind_tag("late", "binder")  # the bind lands after our lookup
        return answer

    mb.resolve = stale_resolve  # type: ignore[method-assign]
    result = await mb.send(Tag(name="late"), "racing")
    assert result == Enqueued(id=result.id, queue="agent:binder")
    assert [m.text for m in await mb.read_pending("binder")] == ["racing"]
    assert await mb.pending_tag("late") == []


async def test_streaming_with_an_in_process_handler(coord_conn: coord.Coord, stack: AsyncExitStack) -> None:
    await _present(stack, coord_conn, "s")

    async def serve() -> None:
        async with coord_conn.mailbox.inbox("s") as inbox:
            async for msg in inbox:
                if msg.text == "fail":
                    await msg.chunk("partial")
                    await msg.fail("cannot do that")
                    continue
                for word in msg.text.split():
                    await msg.chunk(word)

    server = asyncio.create_task(serve())
    try:
        ok = [i async for i in coord_conn.mailbox.send_streaming(Agent(id="s"), "a b c")]
        assert isinstance(ok[0], Id)
        assert ok[1:] == [Chunk(seq=1, data="a"), Chunk(seq=2, data="b"), Chunk(seq=3, data="c"), End()]
        bad = [i async for i in coord_conn.mailbox.send_streaming(Agent(id="s"), "fail")]
        assert bad[1:] == [Chunk(seq=1, data="partial"), Error(message="cannot do that")]
    finally:
        server.cancel()


async def test_streaming_to_nobody_is_just_enqueued(coord_conn: coord.Coord) -> None:
    items = [i async for i in coord_conn.mailbox.send_streaming(Agent(id="nobody"), "hi")]
    assert len(items) == 1 and isinstance(items[0], Enqueued)
    pending = await coord_conn.mailbox.read_pending("nobody")
    assert [m.id for m in pending] == [items[0].id] and pending[0].streaming


async def test_malformed_inbox_messages_are_dead_lettered_and_skipped(coord_conn: coord.Coord) -> None:
    ns = coord_conn.namespace
    await coord_conn.js.publish(f"{ns}.inbox.m1.m._.abc", b"no headers at all")
    await coord_conn.js.publish(f"{ns}.inbox.m1.m._.abc2", b"wrong id", headers={"Corral-Id": "other"})
    # the sender in the subject is what permissions bind to a credential: a header claiming another is forged
    await coord_conn.js.publish(
        f"{ns}.inbox.m1.m.mallory.abc3", b"hi, it's alice", headers={"Corral-Id": "abc3", "Corral-From": "alice"}
    )
    good = await coord_conn.mailbox.send(Agent(id="m1"), "fine", sender="bob")
    async with coord_conn.mailbox.inbox("m1") as inbox:
        msg: InboxMessage = await anext(inbox)
    assert msg.id == good.id and msg.sender == "bob"
    reasons = [d.reason for d in await dead_letters(coord_conn, "inbox")]
    assert len(reasons) == 3 and any("Corral-Id" in r for r in reasons)
    assert any("does not match the subject's sender 'mallory'" in r for r in reasons)
    assert await coord_conn.mailbox.read_pending("m1") == []


async def test_bad_input_is_rejected_before_sending(coord_conn: coord.Coord) -> None:
    mb = coord_conn.mailbox
    with pytest.raises(ValueError, match="id"):
        Agent(id="a.b")
    with pytest.raises(ValueError, match="name"):
        Tag(name="*")
    with pytest.raises(ValueError, match="key"):
        await mb.send(Agent(id="a"), "x", key="bad key")
    with pytest.raises(ValueError, match="mode"):
        await mb.send(Agent(id="a"), "x", mode="shout")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="target"):
        await mb.send("a", "x")  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge, match="body"):
        await mb.send(Agent(id="a"), b"x" * (coord_conn.nc.max_payload + 1))
    assert await mb.read_pending("a") == []


async def test_a_message_with_a_ttl_is_dropped_if_nobody_reads_it_in_time(coord_conn: coord.Coord) -> None:
    await coord_conn.mailbox.send(Agent(id="t"), "short-lived", ttl=1.0)
    await coord_conn.mailbox.send(Agent(id="t"), "stays")
    assert len(await coord_conn.mailbox.read_pending("t")) == 2
    await asyncio.sleep(2.5)
    assert [m.text for m in await coord_conn.mailbox.read_pending("t")] == ["stays"]
    with pytest.raises(ValueError, match="ttl"):
        await coord_conn.mailbox.send(Agent(id="t"), "x", ttl=0)


async def test_mail_that_expired_unread_is_reported_expired_not_delivered(
    coord_conn: coord.Coord, stack: AsyncExitStack
) -> None:
    mb = coord_conn.mailbox
    await _present(stack, coord_conn, "sleepy")  # present, but never reads its inbox
    result = await mb.send(Agent(id="sleepy"), "read me within a second", ttl=1.0, timeout=3.0)
    assert isinstance(result, Expired), result
    assert await mb.read_pending("sleepy") == []
    # still queued when the wait ends, before the ttl ran out: Enqueued, not Expired
    waiting = await mb.send(Agent(id="sleepy"), "read me within a minute", ttl=60.0, timeout=1.0)
    assert waiting == Enqueued(id=waiting.id, queue="agent:sleepy")

    # a reader that acknowledges in time: Delivered, ttl or not
    await _present(stack, coord_conn, "quick")
    handled: list[str] = []

    async def read() -> None:
        async with mb.inbox("quick") as inbox:
            async for msg in inbox:
                handled.append(msg.text)

    reader = asyncio.create_task(read())
    try:
        assert isinstance(await mb.send(Agent(id="quick"), "fast", ttl=2.0, timeout=5.0), Delivered)
        assert handled == ["fast"]
    finally:
        reader.cancel()


async def test_reader_and_senders_carry_on_across_a_server_restart(own_server: NatsServer, namespace: str) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        got: list[str] = []

        async def reader() -> None:
            async with conn.mailbox.inbox("r") as inbox:
                async for msg in inbox:
                    got.append(msg.text)
                    if len(got) == 2:
                        return

        task = asyncio.create_task(reader())
        await conn.mailbox.send(Agent(id="r"), "before")
        await asyncio.to_thread(own_server.restart)
        for _ in range(100):  # the client reconnects on its own; publishes fail until it has
            try:
                await conn.mailbox.send(Agent(id="r"), "after", mode="enqueue")
                break
            except Exception:
                await asyncio.sleep(0.1)
        await asyncio.wait_for(task, 20)
        assert got == ["before", "after"]
        for _ in range(50):
            if not await conn.mailbox.read_pending("r"):
                break
            await asyncio.sleep(0.1)
        assert await conn.mailbox.read_pending("r") == []


async def test_a_slow_handler_is_waited_for_and_reported_delivered_as_soon_as_it_acks(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, stack: AsyncExitStack
) -> None:
    await _present(stack, coord_conn, "slow")

    async def serve() -> None:
        async with coord_conn.mailbox.inbox("slow") as inbox:
            async for msg in inbox:
                await asyncio.sleep(float(msg.text))

    server = asyncio.create_task(serve())
    try:
        async with coord.connect(nats_server.url, namespace=namespace) as sender:
            for handler_seconds in (0.0, 1.2):
                started = asyncio.get_running_loop().time()
                result = await sender.mailbox.send(Agent(id="slow"), str(handler_seconds), timeout=10)
                took = asyncio.get_running_loop().time() - started
                assert isinstance(result, Delivered)
                assert handler_seconds <= took < handler_seconds + 1.0
    finally:
        server.cancel()


async def test_spawn_hooks_start_a_streamer_or_a_tag_holder_when_nobody_is_live(coord_conn: coord.Coord) -> None:
    tasks: list[asyncio.Task[None]] = []

    def start_agent(agent: str, tag: str | None = None) -> None:
        async def run() -> None:
            async with coord_conn.presence.join(AgentInfo(id=agent), interval=0.3, ttl=1.0):
                if tag is not None:
                    await coord_conn.mailbox.bind_tag(tag, agent)
                async with coord_conn.mailbox.inbox(agent) as inbox:
                    async for msg in inbox:
                        await msg.chunk(f"{agent} got {msg.text}")

        tasks.append(asyncio.create_task(run()))

    try:
        spawned: list[Agent | Tag] = []

        def spawn(target: Agent | Tag) -> None:
            spawned.append(target)
            if isinstance(target, Agent):
                start_agent(target.id)
            else:
                start_agent("taker", tag=target.name)

        items = [i async for i in coord_conn.mailbox.send_streaming(Agent(id="helper"), "hi", spawn=spawn)]
        assert isinstance(items[0], Id) and items[1:] == [Chunk(seq=1, data="helper got hi"), End()]
        result = await coord_conn.mailbox.send(Tag(name="builders"), "build it", spawn=spawn, timeout=10)
        assert isinstance(result, Delivered)
        assert spawned == [Agent(id="helper"), Tag(name="builders")]
        assert await coord_conn.mailbox.resolve(Tag(name="builders")) == ("BOUND", "taker")
    finally:
        for task in tasks:
            task.cancel()


async def test_spawn_for_a_tag_bound_to_a_dead_agent_waits_for_whoever_binds_it(coord_conn: coord.Coord) -> None:
    mb = coord_conn.mailbox
    await mb.bind_tag("oncall", "ghost")  # "ghost" holds the tags but is not present: dead
    await mb.bind_tag("relay", "ghost")
    tasks: list[asyncio.Task[None]] = []

    def spawn(target: Agent | Tag) -> None:
        assert isinstance(target, Tag)
        heir_id = f"heir-{target.name}"

        async def heir() -> None:  # a new agent, with its own id, takes the tag over
            async with coord_conn.presence.join(AgentInfo(id=heir_id), interval=0.3, ttl=1.0):
                await mb.bind_tag(target.name, heir_id)
                async with mb.inbox(heir_id) as inbox:
                    async for msg in inbox:
                        await msg.chunk(f"{heir_id} got {msg.text}")

        tasks.append(asyncio.create_task(heir()))

    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await mb.send(Tag(name="oncall"), "page", spawn=spawn, timeout=10)
        assert result == Delivered(id=result.id)
        assert loop.time() - started < 5, "delivered when the heir acknowledged, not after waiting out the timeout"
        assert await mb.resolve(Tag(name="oncall")) == ("BOUND", "heir-oncall")
        assert await mb.read_pending("ghost") == [] and await mb.read_pending("heir-oncall") == []
        items = [i async for i in mb.send_streaming(Tag(name="relay"), "stream", spawn=spawn, timeout=5)]
        assert isinstance(items[0], Id) and items[1:] == [Chunk(seq=1, data="heir-relay got stream"), End()]
        assert len(tasks) == 2
    finally:
        for task in tasks:
            task.cancel()
