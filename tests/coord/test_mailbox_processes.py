"""Mailbox against real agent processes: delivered vs enqueued, kills between receive and ack, tags, streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import coord
from coord.mailbox import Agent, Chunk, Delivered, End, Enqueued, Error, Id, StreamItem, Tag
from coord.server import NatsServer
from tests.coord.helpers_mailbox import AgentProcess


@pytest.fixture
async def agents(nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]) -> AsyncIterator[Starter]:
    starter = Starter(nats_server.url, namespace, subprocess_env)
    yield starter
    for proc in starter.started:
        await proc.kill()


class Starter:
    """Starts agent processes in the test's namespace and kills them at teardown."""

    def __init__(self, url: str, namespace: str, env: dict[str, str]) -> None:
        self.url, self.namespace, self.env = url, namespace, env
        self.started: list[AgentProcess] = []

    async def __call__(self, agent: str, mode: str, tag: str | None = None) -> AgentProcess:
        proc = await AgentProcess.start(self.url, self.namespace, agent, mode, self.env, tag)
        self.started.append(proc)
        return proc


async def test_a_live_agent_receives_and_acknowledges_so_the_sender_sees_delivered(
    coord_conn: coord.Coord, agents: Starter
) -> None:
    bob = await agents("bob", "ack")
    result = await coord_conn.mailbox.send(Agent(id="bob"), "hello bob", sender="alice")
    assert isinstance(result, Delivered)
    assert await bob.line() == {"got": result.id, "text": "hello bob"}
    assert await coord_conn.mailbox.read_pending("bob") == []


async def test_messages_to_an_absent_agent_are_enqueued_and_drained_in_order_when_it_starts(
    coord_conn: coord.Coord, agents: Starter
) -> None:
    results = [await coord_conn.mailbox.send(Agent(id="carol"), f"note {i}") for i in range(3)]
    assert all(isinstance(r, Enqueued) and r.queue == "agent:carol" for r in results)
    assert [m.text for m in await coord_conn.mailbox.read_pending("carol")] == ["note 0", "note 1", "note 2"]

    carol = await agents("carol", "ack")
    assert [(await carol.line())["got"] for _ in results] == [r.id for r in results]
    await _eventually_empty(coord_conn, "carol")


async def test_an_agent_killed_between_receive_and_ack_leaves_the_message_enqueued_and_not_lost(
    coord_conn: coord.Coord, agents: Starter
) -> None:
    dave = await agents("dave", "hang")
    sending = asyncio.create_task(coord_conn.mailbox.send(Agent(id="dave"), "do it", timeout=20))
    got = await dave.line()
    assert got["text"] == "do it"
    killed_at = time.monotonic()
    await dave.kill()

    result = await sending
    assert result == Enqueued(id=got["got"], queue="agent:dave")
    assert time.monotonic() - killed_at < 1.0 + 2.5, "the sender should notice the death within the presence TTL"
    assert [m.id for m in await coord_conn.mailbox.read_pending("dave")] == [result.id]

    again = await agents("dave", "ack")
    assert await again.line() == {"got": result.id, "text": "do it"}
    await _eventually_empty(coord_conn, "dave")
    await again.kill()
    assert await coord_conn.presence.wait_absent("dave", 5)

    # It was acknowledged by that handler: a restart must not see it again.
    third = await agents("dave", "ack")
    await third.no_line(1.0)


async def test_tag_messages_wait_while_pending_and_drain_in_order_when_an_agent_binds_the_tag(
    coord_conn: coord.Coord, agents: Starter
) -> None:
    await coord_conn.registry.declare_tag("reviewer")
    assert await coord_conn.mailbox.resolve(Tag(name="reviewer")) == ("PENDING", None)
    queued = [await coord_conn.mailbox.send(Tag(name="reviewer"), f"review {i}") for i in range(4)]
    assert all(isinstance(r, Enqueued) and r.queue == "tag:reviewer" for r in queued)
    assert len(await coord_conn.mailbox.pending_tag("reviewer")) == 4

    erin = await agents("erin", "ack", tag="reviewer")
    assert erin.before_ready == [{"bound": "reviewer", "moved": 4}]
    assert [(await erin.line())["text"] for _ in queued] == [f"review {i}" for i in range(4)]
    assert await coord_conn.mailbox.pending_tag("reviewer") == []

    assert await coord_conn.mailbox.resolve(Tag(name="reviewer")) == ("BOUND", "erin")
    live = await coord_conn.mailbox.send(Tag(name="reviewer"), "one more")
    assert isinstance(live, Delivered)
    assert (await erin.line())["got"] == live.id


async def test_streamed_chunks_arrive_in_order_then_end(coord_conn: coord.Coord, agents: Starter) -> None:
    await agents("streamer", "stream")
    items = [item async for item in coord_conn.mailbox.send_streaming(Agent(id="streamer"), "20")]
    assert isinstance(items[0], Id)
    assert items[1:-1] == [Chunk(seq=i, data=f"piece {i}") for i in range(1, 21)]
    assert items[-1] == End()
    await _eventually_empty(coord_conn, "streamer")


async def test_the_stream_sender_sees_error_when_the_streaming_agent_dies(
    coord_conn: coord.Coord, agents: Starter
) -> None:
    streamer = await agents("streamer", "stream")
    items: list[StreamItem] = []
    stream = coord_conn.mailbox.send_streaming(Agent(id="streamer"), "hang-after-2")
    async for item in stream:
        items.append(item)
        if len(items) == 3:
            assert "got" in await streamer.line()
            assert "hanging" in await streamer.line(), "agent should be mid-stream"
            await streamer.kill()
    assert isinstance(items[0], Id)
    assert items[1:3] == [Chunk(seq=1, data="piece 1"), Chunk(seq=2, data="piece 2")]
    assert isinstance(items[-1], Error) and "streamer" in items[-1].message
    assert len(items) == 4


async def test_spawn_hook_starts_an_agent_when_none_is_live(coord_conn: coord.Coord, agents: Starter) -> None:
    spawned: list[Agent | Tag] = []

    async def spawn(target: Agent | Tag) -> None:
        spawned.append(target)
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(agents("frank", "ack")))

    result = await coord_conn.mailbox.send(Agent(id="frank"), "wake up", spawn=spawn, timeout=20)
    assert spawned == [Agent(id="frank")]
    assert isinstance(result, Delivered)
    assert await coord_conn.mailbox.read_pending("frank") == []


async def _eventually_empty(conn: coord.Coord, agent: str) -> None:
    """The acknowledgement lands right after the handler's output: poll briefly for it."""
    for _ in range(200):
        if not await conn.mailbox.read_pending(agent):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{agent}'s inbox never emptied")
