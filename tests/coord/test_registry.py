"""Registry: sessions, atomic thread reservation with reaping, actor chains, lookups, terminal TTL."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

import coord
from coord.errors import Conflict, InvalidTransition, NotFound, Unavailable
from coord.presence import AgentInfo
from coord.registry import LiveOwner, Registry, Reserved, Session
from coord.server import NatsServer
from tests.coord.helpers_presence import HoldProcess


@pytest.fixture
async def present(coord_conn: coord.Coord) -> AsyncIterator[AsyncExitStack]:
    """An exit stack to join agents into presence for the test's duration."""
    async with AsyncExitStack() as stack:
        yield stack


async def _join(stack: AsyncExitStack, conn: coord.Coord, agent: str, ttl: float = 3.0) -> None:
    await stack.enter_async_context(conn.presence.join(AgentInfo(id=agent), interval=0.5, ttl=ttl))


async def test_ten_concurrent_reservers_of_one_thread_get_exactly_one_reserved(
    nats_server: NatsServer, namespace: str
) -> None:
    async with AsyncExitStack() as stack:
        conns = [
            await stack.enter_async_context(coord.connect(nats_server.url, namespace=namespace)) for _ in range(10)
        ]
        for i, conn in enumerate(conns):
            await _join(stack, conn, f"agent{i}")
        results = await asyncio.gather(
            *(conn.registry.reserve_thread("t1", agent_id=f"agent{i}") for i, conn in enumerate(conns))
        )
        winners = [r for r in results if isinstance(r, Reserved)]
        assert len(winners) == 1
        owner = winners[0].session
        assert all(isinstance(r, LiveOwner) and r.session.id == owner.id for r in results if r is not winners[0])
        assert (await conns[0].registry.thread_owner("t1")).session_id == owner.id  # type: ignore[union-attr]
        active = await conns[0].registry.list_sessions(status="active")
        assert [s.id for s in active] == [owner.id], "losers must not leave sessions behind"


async def test_sigkilled_owner_is_reaped_by_the_next_reserve_after_the_presence_ttl_never_before(
    coord_conn: coord.Coord,
    nats_server: NatsServer,
    namespace: str,
    subprocess_env: dict[str, str],
    present: AsyncExitStack,
) -> None:
    ttl, interval = 2.0, 0.5
    holder = HoldProcess(nats_server.url, namespace, subprocess_env, "owner", "--ttl", str(ttl), "--interval", "0.5")
    try:
        await holder.expect("joined")
        first = await coord_conn.registry.reserve_thread("work", agent_id="owner", path="/repo")
        assert isinstance(first, Reserved)
        await _join(present, coord_conn, "next")
        assert isinstance(await coord_conn.registry.reserve_thread("work", agent_id="next"), LiveOwner)

        killed_at = holder.signal(signal.SIGKILL)
        while True:
            result = await coord_conn.registry.reserve_thread("work", agent_id="next")
            elapsed = time.monotonic() - killed_at
            if isinstance(result, Reserved):
                break
            assert result.session.id == first.session.id
            assert elapsed < ttl + 2.0, "the dead owner was never reaped"
            await asyncio.sleep(0.05)
    finally:
        holder.kill()
    # The key was last renewed at most one interval before the kill, so it expires no earlier than this.
    assert elapsed >= ttl - interval - 0.1
    assert result.reaped is not None and result.reaped.id == first.session.id
    old = await coord_conn.registry.get_session(first.session.id)
    assert old.status == "abandoned" and old.ended_at is not None
    assert (await coord_conn.registry.thread_owner("work")).agent_id == "next"  # type: ignore[union-attr]


async def test_a_presence_read_error_is_no_verdict_the_reservation_is_refused_with_a_clear_error(
    coord_conn: coord.Coord,
) -> None:
    reg = coord_conn.registry
    first = await reg.reserve_thread("t", agent_id="ghost")  # ghost was never present
    assert isinstance(first, Reserved)

    async def broken(agent_id: str) -> bool:
        raise ConnectionError("presence down")

    coord_conn.presence.held = broken  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="cannot tell whether agent 'ghost' is present"):
        await reg.agent_alive("ghost")
    with pytest.raises(Unavailable, match="ghost"):
        await reg.reserve_thread("t", agent_id="other")  # neither stolen on a guess nor a made-up LiveOwner
    with pytest.raises(Unavailable, match="ghost"):
        await reg.reap_dead("t")
    owner = await reg.thread_owner("t")
    assert owner is not None and owner.session_id == first.session.id
    assert (await reg.get_session(first.session.id)).status == "active"


async def test_one_plain_publish_to_a_live_owners_presence_key_does_not_hand_its_thread_to_anyone(
    coord_conn: coord.Coord, present: AsyncExitStack
) -> None:
    reg = coord_conn.registry
    # renewals every 2 s: the forged value below stays on the key while we try to take the thread
    await present.enter_async_context(coord_conn.presence.join(AgentInfo(id="owner"), interval=2.0, ttl=6.0))
    mine = await reg.reserve_thread("work", agent_id="owner")
    assert isinstance(mine, Reserved)
    forged = json.dumps({"id": "owner", "instance": "x", "host": "evil", "pid": 1}).encode()
    await coord_conn.js.publish(coord_conn.presence._store.subject("owner"), forged)  # no Nats-TTL, no CAS
    assert await coord_conn.presence.get("owner") is None  # malformed: not readable as the owner's info ...
    assert await reg.agent_alive("owner")  # ... but the key is still held
    taken = await reg.reserve_thread("work", agent_id="thief")
    assert isinstance(taken, LiveOwner) and taken.session.id == mine.session.id
    assert await reg.reap_dead("work") == 0
    assert (await reg.get_session(mine.session.id)).status == "active"
    owner = await reg.thread_owner("work")
    assert owner is not None and owner.session_id == mine.session.id


async def test_completing_a_session_releases_its_thread(coord_conn: coord.Coord, present: AsyncExitStack) -> None:
    await _join(present, coord_conn, "a")
    reserved = await coord_conn.registry.reserve_thread("t", agent_id="a")
    assert isinstance(reserved, Reserved)
    done = await coord_conn.registry.complete(reserved.session.id)
    assert done.status == "complete"
    assert await coord_conn.registry.thread_owner("t") is None
    again = await coord_conn.registry.reserve_thread("t", agent_id="a")
    assert isinstance(again, Reserved) and again.reaped is None
    with pytest.raises(InvalidTransition, match="already complete"):
        await coord_conn.registry.abandon(reserved.session.id)
    assert (await coord_conn.registry.complete(reserved.session.id)).status == "complete"  # idempotent


async def test_reap_dead_abandons_dead_owners_and_spares_live_ones(
    coord_conn: coord.Coord, present: AsyncExitStack
) -> None:
    reg = coord_conn.registry
    assert isinstance(await reg.reserve_thread("dead-thread", agent_id="gone"), Reserved)
    stray = await reg.create_session("gone2", thread="dead-thread")
    await _join(present, coord_conn, "alive")
    live = await reg.reserve_thread("live-thread", agent_id="alive")
    assert isinstance(live, Reserved)

    assert await reg.reap_dead("dead-thread") == 2
    assert await reg.thread_owner("dead-thread") is None
    assert (await reg.get_session(stray.id)).status == "abandoned"
    assert await reg.reap_dead("live-thread") == 0
    assert (await reg.get_session(live.session.id)).status == "active"
    alive = await reg.list_sessions(alive_only=True)
    assert [s.id for s in alive] == [live.session.id]


async def test_actor_chain_runs_root_to_leaf_and_stops_at_cycles(coord_conn: coord.Coord) -> None:
    reg = coord_conn.registry
    root = await reg.create_session("r")
    mid = await reg.create_session("m", parent_session=root.id)
    leaf = await reg.create_session("l", parent_session=mid.id)
    assert [s.id for s in await reg.actor_chain(leaf.id)] == [root.id, mid.id, leaf.id]

    # A corrupted record pointing back down the tree must not loop forever.
    looped = root.model_copy(update={"parent_session": leaf.id})
    await reg.store.write(f"session.{root.id}", looped, last=None)
    chain = await reg.actor_chain(leaf.id)
    assert [s.id for s in chain] == [root.id, mid.id, leaf.id]
    with pytest.raises(NotFound):
        await reg.actor_chain("nope")


async def test_find_active_by_lookup_keys_ignores_ended_sessions(coord_conn: coord.Coord) -> None:
    reg = coord_conn.registry
    old = await reg.create_session("a", path="/w/repo/", client_instance_id="cli-1", native_actor_key="nk-1")
    await reg.complete(old.id)
    new = await reg.create_session("a", path="/w/repo", client_instance_id="cli-1", native_actor_key="nk-1")
    assert (await reg.find_active_by_path("/w/./repo")).id == new.id  # type: ignore[union-attr]
    assert (await reg.find_active_by_client_instance_id("cli-1")).id == new.id  # type: ignore[union-attr]
    assert (await reg.find_active_by_native_actor_key("nk-1")).id == new.id  # type: ignore[union-attr]
    assert await reg.find_active_by_native_actor_key("nk-2") is None


async def test_terminal_sessions_expire_after_their_ttl(coord_conn: coord.Coord) -> None:
    reg = Registry(coord_conn.registry.store, coord_conn.presence, terminal_ttl=1.5)
    ending = await reg.create_session("a")
    staying = await reg.create_session("b")
    await reg.abandon(ending.id)
    assert (await reg.get_session(ending.id)).status == "abandoned"
    await asyncio.sleep(2.5)
    with pytest.raises(NotFound):
        await reg.get_session(ending.id)
    assert (await reg.get_session(staying.id)).status == "active"


async def test_bad_input_is_rejected_with_the_field_named(coord_conn: coord.Coord) -> None:
    reg = coord_conn.registry
    with pytest.raises(ValueError, match="thread"):
        await reg.reserve_thread("bad thread", agent_id="a")
    with pytest.raises(ValueError, match="agent_id"):
        await reg.reserve_thread("t", agent_id="a.b")
    with pytest.raises(ValueError, match="client_instance_id"):
        await reg.create_session("a", client_instance_id="")
    existing = await reg.create_session("a", session_id="s1")
    with pytest.raises(Conflict, match="s1"):
        await reg.create_session("a", session_id=existing.id)


async def test_malformed_records_are_skipped_not_fatal(coord_conn: coord.Coord) -> None:
    reg = coord_conn.registry
    good = await reg.create_session("a")
    await reg.store.write("session.junk", b"{not json", last=None)
    assert [s.id for s in await reg.list_sessions()] == [good.id]
    assert await reg.find_session("junk") is None
    assert isinstance(good, Session)


async def test_re_reserving_a_thread_with_its_own_session_keeps_that_session_active(
    coord_conn: coord.Coord, present: AsyncExitStack
) -> None:
    registry = coord_conn.registry
    first = await registry.reserve_thread("t1", agent_id="gone", session_id="s1")
    assert isinstance(first, Reserved)
    # "gone" is absent from presence: its reservation is dead. It comes back and reserves again with
    # the same session: the reservation is its own, so nothing is reaped or abandoned.
    again = await registry.reserve_thread("t1", agent_id="gone", session_id="s1")
    assert isinstance(again, Reserved) and again.reaped is None and again.session.id == "s1"
    assert (await registry.get_session("s1")).status == "active"
    assert (await registry.thread_owner("t1")).session_id == "s1"  # type: ignore[union-attr]


async def test_a_session_id_of_another_agent_is_refused_and_nothing_is_overwritten(
    coord_conn: coord.Coord, present: AsyncExitStack
) -> None:
    registry = coord_conn.registry
    await _join(present, coord_conn, "alice")
    mine = await registry.create_session("alice", session_id="shared")
    with pytest.raises(Conflict, match="belongs to agent 'alice'"):
        await registry.reserve_thread("t2", agent_id="mallory", session_id="shared")
    after = await registry.get_session("shared")
    assert (after.agent_id, after.revision) == ("alice", mine.revision)
    assert await registry.thread_owner("t2") is None


async def test_an_ended_session_cannot_reserve_a_thread_again(coord_conn: coord.Coord, present: AsyncExitStack) -> None:
    registry = coord_conn.registry
    await registry.create_session("bob", session_id="done")
    await registry.complete("done")
    with pytest.raises(Conflict, match="has already ended"):
        await registry.reserve_thread("t3", agent_id="bob", session_id="done")
    assert await registry.thread_owner("t3") is None
