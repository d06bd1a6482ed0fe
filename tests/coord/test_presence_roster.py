"""The presence change feed: followers read the roster a keeper writes under the reclaimer's lease.

Real nats-server, real memberships and agent processes, a keeper exactly as the reclaimer runs it
(tests/coord/helpers_presence.py ``Keeper``): changes reach followers with the right reason, a
follower of hundreds of renewing agents receives about one message per change and per lease
renewal, and followers fall back to the presence bucket (and come back) without losing or
doubling an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import pytest

import coord
from coord.kv import MSG_TTL, Entry, ttl_header
from coord.lease import LEADER, LeaseRecord
from coord.presence import AgentInfo, Joined, Left, PresenceEvent, Updated
from coord.presence.roster import PREFIX, RosterKeeper, agent_key, decode_entry, encode_info
from coord.server import NatsServer
from tests.coord.helpers_presence import HoldProcess, Keeper, Recorder
from tests.helpers_wait import eventually

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def second(nats_server: NatsServer, namespace: str) -> AsyncIterator[coord.Coord]:
    """Another connection to this test's namespace (a follower's own, so its traffic can be counted)."""
    async with coord.connect(nats_server.url, namespace=namespace) as conn:
        yield conn


@pytest.fixture
async def keeper(coord_conn: coord.Coord) -> AsyncIterator[Keeper]:
    """A keeper holding the lease, its roster reconciled."""
    k = await Keeper(coord_conn).start()
    await asyncio.wait_for(k.ready.wait(), 5)
    yield k
    await k.stop()


@pytest.fixture
def procs() -> Iterator[list[HoldProcess]]:
    started: list[HoldProcess] = []
    yield started
    for proc in started:
        proc.kill()


def about(event: PresenceEvent) -> str:
    return event.agent_id if isinstance(event, Left) else event.agent.id


def kinds(recorder: Recorder, agent_id: str) -> list[str]:
    out = []
    for event in recorder.of(agent_id):
        out.append(f"left:{event.reason}" if isinstance(event, Left) else type(event).__name__.lower())
    return out


async def roster_of(conn: coord.Coord) -> dict[str, AgentInfo]:
    found: dict[str, AgentInfo] = {}
    for entry in await conn.roster.scan(PREFIX):
        agent_id, info, _ = decode_entry(entry)
        if agent_id is not None and isinstance(info, AgentInfo):
            found[agent_id] = info
    return found


async def test_changes_reach_a_roster_follower_with_the_right_reason(
    coord_conn: coord.Coord,
    second: coord.Coord,
    keeper: Keeper,
    nats_server: NatsServer,
    namespace: str,
    subprocess_env: dict[str, str],
    procs: list[HoldProcess],
) -> None:
    watcher = await second.presence.watch(updates=True).start()
    recorder = Recorder(watcher)
    try:
        await eventually(lambda: watcher.mode == "roster", 5, "the follower on the roster")
        member = await coord_conn.presence.join(AgentInfo(id="a1", capacity=2), interval=0.5, ttl=2)
        await recorder.joined("a1", 5)
        await member.update(inflight=1)
        await recorder.wait_for(lambda e: isinstance(e, Updated) and e.agent.inflight == 1, 5)
        absent = asyncio.ensure_future(second.presence.wait_absent("a1", 10))
        await member.leave()
        _, left = await recorder.left("a1", 5)
        assert left.reason == "graceful"
        assert await absent
        assert kinds(recorder, "a1") == ["joined", "updated", "left:graceful"]

        # A real agent process killed without a word: its key expires, the keeper deletes it as expired.
        proc = HoldProcess(nats_server.url, namespace, subprocess_env, "p1", "--interval", "0.5", "--ttl", "2")
        procs.append(proc)
        await proc.expect("joined", 15)
        await recorder.joined("p1", 5)
        killed = proc.signal(signal.SIGKILL)
        arrived, left = await recorder.left("p1", 10)
        assert left.reason == "expired"
        assert 1.0 <= arrived - killed <= 2 + 1.5, arrived - killed

        # A membership whose renewals stop (cancelled, as in a hang) expires the same way.
        hung = await coord_conn.presence.join(AgentInfo(id="h1"), interval=0.5, ttl=2)
        await recorder.joined("h1", 5)
        assert hung._task is not None
        hung._task.cancel()
        _, left = await recorder.left("h1", 10)
        assert left.reason == "expired"
        assert kinds(recorder, "p1") == ["joined", "left:expired"]
        assert kinds(recorder, "h1") == ["joined", "left:expired"]
        assert watcher.mode == "roster" and watcher.switches == 1, "from the bucket to the roster at the start, only"
    finally:
        await recorder.close()


async def test_a_follower_of_300_renewing_agents_receives_changes_not_renewals(
    nats_server: NatsServer, namespace: str, coord_conn: coord.Coord, second: coord.Coord
) -> None:
    """~300 renewals/s in the namespace; a roster follower gets a few messages/s, and falls back and
    returns across the keeper's hand-over and death without losing or doubling an event."""
    keeper = await Keeper(coord_conn, "k1").start()
    await asyncio.wait_for(keeper.ready.wait(), 5)
    async with contextlib.AsyncExitStack() as agents:
        members = {}
        for i in range(300):
            info = AgentInfo(id=f"w{i:03d}", role="worker")
            members[info.id] = await agents.enter_async_context(coord_conn.presence.join(info, interval=1, ttl=3))
        await eventually(lambda: keeper.roster.writes >= 300, 10, "the keeper to write the joins")
        watcher = await second.presence.watch(updates=True).start()
        recorder = Recorder(watcher)
        try:
            assert len(watcher.present) == 300
            await eventually(lambda: watcher.mode == "roster", 5, "the follower on the roster")

            async def received(seconds: float) -> int:
                before = second.nc.stats["in_msgs"]
                await asyncio.sleep(seconds)
                return int(second.nc.stats["in_msgs"] - before)

            await members["w000"].leave()
            roster_msgs = await received(5)
            renewals = 300 * 5
            print(f"roster mode: {roster_msgs} messages in 5 s ({renewals} renewals)")
            assert roster_msgs < renewals / 10

            # Hand-over with no standby: the lease is released, the follower reads the bucket again.
            await keeper.stop()
            await eventually(lambda: watcher.mode == "presence", 5, "the fall-back")
            await members["w001"].leave()
            late = await coord_conn.presence.join(AgentInfo(id="late-1"), interval=1, ttl=3)
            fallback_msgs = await received(3)
            print(f"fall-back: {fallback_msgs} messages in 3 s ({300 * 3} renewals)")
            assert fallback_msgs > 300 * 3 / 2, "the fall-back follows the renewals themselves"

            # A keeper returns: the follower switches back once the roster agrees with what it has seen.
            keeper = await Keeper(coord_conn, "k2").start()
            await asyncio.wait_for(keeper.ready.wait(), 5)
            await eventually(lambda: watcher.mode == "roster", 5, "the return to the roster")
            await members["w002"].leave()
            await late.leave()

            # The keeper dies without a word; meanwhile an agent leaves and one joins.
            await keeper.die()
            await members["w003"].leave()
            late2 = await coord_conn.presence.join(AgentInfo(id="late-2"), interval=1, ttl=3)
            await eventually(lambda: watcher.mode == "presence", 2 + 1 + 3, "the fall-back after the death")
            keeper = await Keeper(coord_conn, "k3").start()
            await asyncio.wait_for(keeper.ready.wait(), 5)
            await eventually(lambda: watcher.mode == "roster", 5, "the roster again")
            await late2.leave()
            await recorder.left("late-2", 5)
            assert watcher.switches == 5

            for gone in ("w000", "w001", "w002", "w003"):
                assert kinds(recorder, gone) == ["joined", "left:graceful"], gone
            assert kinds(recorder, "late-1") == ["joined", "left:graceful"]
            assert kinds(recorder, "late-2") == ["joined", "left:graceful"]
            others = [
                e for _, e in recorder.events if about(e) not in {"w000", "w001", "w002", "w003", "late-1", "late-2"}
            ]
            assert not [e for e in others if not isinstance(e, Joined)], others[:5]
            assert len(others) == 296, "a Joined for each present at the start, none after"
            assert set(watcher.present) == {f"w{i:03d}" for i in range(4, 300)}
        finally:
            await recorder.close()
            await keeper.stop()


async def test_wait_present_through_the_roster_latency(
    coord_conn: coord.Coord, second: coord.Coord, keeper: Keeper
) -> None:
    """Join → a one-agent watch (what wait_present uses) sees it, through the keeper's hop."""
    took = []
    for i in range(10):
        async with second.presence.watch_agent(f"lat-{i}") as watcher:
            await eventually(lambda w=watcher: w.mode == "roster", 5, "the watch on the roster")
            started = time.monotonic()
            member = await coord_conn.presence.join(AgentInfo(id=f"lat-{i}"), interval=1, ttl=3)
            event = await asyncio.wait_for(anext(watcher), 10)
            took.append(time.monotonic() - started)
            assert isinstance(event, Joined) and event.agent.id == f"lat-{i}"
            assert watcher.mode == "roster"
        await member.leave()
    p50, worst = statistics.median(took), max(took)
    print(f"join -> watch_agent Joined through the roster: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert p50 < 0.5 and worst < 2.0
    # wait_present itself, started before the join (its watch has settled on the roster by then).
    waited = []
    for i in range(10):
        waiting = asyncio.ensure_future(second.presence.wait_present(f"lat-w{i}", 10))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        member = await coord_conn.presence.join(AgentInfo(id=f"lat-w{i}"), interval=1, ttl=3)
        info = await waiting
        waited.append(time.monotonic() - started)
        assert info is not None and info.id == f"lat-w{i}"
        await member.leave()
    p50, worst = statistics.median(waited), max(waited)
    print(f"join -> wait_present returns: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert p50 < 0.5 and worst < 2.0
    member = await coord_conn.presence.join(AgentInfo(id="lat-w"), interval=1, ttl=3)
    info = await second.presence.wait_present("lat-w", 5)
    assert info is not None and info.id == "lat-w"
    assert await second.presence.wait_present("lat-w", 1) == info  # at once: it is present
    await member.leave()
    assert await second.presence.wait_absent("lat-w", 5)


async def test_reconcile_heals_stale_missing_and_hostile_entries(coord_conn: coord.Coord, second: coord.Coord) -> None:
    roster = coord_conn.roster
    present = [await coord_conn.presence.join(AgentInfo(id=f"r{i}"), interval=0.5, ttl=2) for i in range(3)]
    changed = present[1].info.model_copy(update={"capacity": 9})
    await roster.put(agent_key("r1"), encode_info(changed))  # stale info of a present agent
    await roster.put(agent_key("ghost"), encode_info(AgentInfo(id="ghost")))  # left long ago
    await roster.put(agent_key("r2"), encode_info(AgentInfo(id="someone-else")))  # key and id disagree
    await roster.put(agent_key("bad"), b"{not json")
    await roster.put("agent.a.b", encode_info(AgentInfo(id="a")))  # not an agent id
    keeper = RosterKeeper(roster)
    async with coord_conn.presence.watch(include_existing=False, direct=True) as direct:
        assert await keeper.reconcile(direct.present)
        expected = {a: m.info for a, m in zip(["r0", "r1", "r2"], present, strict=True)}
        assert await roster_of(coord_conn) == expected
        assert {e.key for e in await roster.scan(PREFIX)} == {agent_key(a) for a in expected}
        # Nothing changed: a second reconcile (and a renewal) writes nothing.
        writes = keeper.writes
        assert await keeper.reconcile(direct.present)
        await asyncio.sleep(1.2)
        for agent_id, info in direct.present.items():
            await keeper.apply(Joined(info, 0))
            await keeper.apply(Updated(info, 0))
            assert agent_id in expected
        assert keeper.writes == writes
    for member in present:
        await member.leave()


async def test_hostile_roster_values_are_skipped_by_followers(
    coord_conn: coord.Coord, second: coord.Coord, keeper: Keeper
) -> None:
    member = await coord_conn.presence.join(AgentInfo(id="v1"), interval=0.5, ttl=2)
    watcher = await second.presence.watch(updates=True).start()
    recorder = Recorder(watcher)
    try:
        await eventually(lambda: watcher.mode == "roster", 5, "the follower on the roster")
        roster = coord_conn.roster
        await roster.put(agent_key("v1"), b"\xff not json")
        await roster.put(agent_key("v1"), encode_info(AgentInfo(id="intruder")))
        await roster.put(agent_key("forged"), b'{"id": "forged", "capacity": -1}')
        await roster.put("agent.x.y", encode_info(AgentInfo(id="x")))
        await member.update(inflight=1)  # a real change after the junk still arrives
        await recorder.wait_for(lambda e: isinstance(e, Updated) and e.agent.inflight == 1, 5)
        assert set(watcher.present) == {"v1"} and watcher.mode == "roster"
        assert kinds(recorder, "v1") == ["joined", "updated"]
        assert recorder.of("forged") == [] and recorder.of("intruder") == []
    finally:
        await recorder.close()
        await member.leave()


async def test_a_forged_ready_lease_over_a_stale_roster_is_never_followed(
    coord_conn: coord.Coord, second: coord.Coord
) -> None:
    """A ready lease that no keeper renews (a TTL of an hour) and a roster that says nobody is here:
    followers keep reading the presence bucket, so nobody seems to leave."""
    members = [await coord_conn.presence.join(AgentInfo(id=f"g{i}"), interval=0.5, ttl=2) for i in range(3)]
    ghost = LeaseRecord(holder="ghost", instance="x", ready=True).model_dump_json().encode()
    await coord_conn.roster.put(LEADER, ghost, headers={MSG_TTL: ttl_header(3600)})
    await coord_conn.roster.put(agent_key("g0"), encode_info(members[0].info))
    watcher = await second.presence.watch().start()
    recorder = Recorder(watcher)
    try:
        await members[1].leave()
        await recorder.left("g1", 5)
        await asyncio.sleep(3.5)  # past the presence TTL: the ghost still counts as live (TTL + interval)
        assert watcher.mode == "presence" and watcher.switches == 0
        assert set(watcher.present) == {"g0", "g2"}
        assert [about(e) for _, e in recorder.events if isinstance(e, Left)] == ["g1"]
    finally:
        await recorder.close()
        for member in members:
            await member.leave()


def test_decode_entry_tells_values_departures_and_junk_apart() -> None:
    from datetime import UTC, datetime

    from coord.kv import Op

    info = AgentInfo(id="a1")

    def entry(key: str, value: bytes | None, op: Op = Op.PUT, headers: dict[str, str] | None = None) -> Entry:
        return Entry(key, 5, op, value, headers or {}, datetime.now(UTC))

    assert decode_entry(entry("agent.a1", encode_info(info))) == ("a1", info, "")
    assert decode_entry(entry("agent.a1", None, Op.DELETE, {"Corral-Left-Reason": "expired"}))[1] == "expired"
    assert decode_entry(entry("agent.a1", None, Op.DELETE, {"Corral-Left-Reason": "graceful"}))[1] == "graceful"
    assert decode_entry(entry("agent.a2", encode_info(info)))[1:] == (None, "id 'a1' does not match its key 'agent.a2'")
    assert decode_entry(entry("leader", b"{}"))[0] is None
    assert decode_entry(entry("agent.a.b", encode_info(info)))[0] is None
    assert decode_entry(entry("agent.a1", b"[]"))[1] is None


async def test_without_a_roster_bucket_watches_follow_the_presence_bucket(coord_conn: coord.Coord) -> None:
    """A namespace provisioned before the roster existed: watches and waits work as before."""
    await coord_conn.js.delete_stream(coord_conn.roster.stream)
    member = await coord_conn.presence.join(AgentInfo(id="n1"), interval=0.5, ttl=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with coord_conn.presence.watch() as watcher:
        assert set(watcher.present) == {"n1"} and watcher.mode == "presence"
    assert await coord_conn.presence.wait_present("n1", 5) == member.info
    assert loop.time() - started < 5
    await member.leave()
    assert await coord_conn.presence.wait_absent("n1", 5)


async def test_the_keeper_never_raises_while_the_server_is_away_and_reconcile_repairs(
    own_server: NatsServer, namespace: str
) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        keeper = RosterKeeper(conn.roster.tuned(patience=0.5, request_timeout=0.25))
        info = AgentInfo(id="s1")
        assert await keeper.reconcile({"s1": info})
        await asyncio.to_thread(own_server.stop)
        try:
            await keeper.apply(Updated(info.model_copy(update={"inflight": 1}), 0))  # logged, not raised
            await keeper.apply(Left("s1", "expired", 0, info.started_at))
            assert not await keeper.reconcile({})
        finally:
            await asyncio.to_thread(own_server.start)
        await eventually(lambda: conn.nc.is_connected, 10, "the reconnection")
        # Writes sent while away may or may not have landed (a client buffers them): reconcile settles it.
        later = info.model_copy(update={"inflight": 2})
        assert await keeper.reconcile({"s1": later})
        assert await roster_of(conn) == {"s1": later}
        assert await keeper.reconcile({})
        assert await roster_of(conn) == {}
        entry = await conn.roster.get(agent_key("s1"))
        assert entry is not None and decode_entry(entry)[1] == "expired"


def test_a_source_forgets_the_oldest_departures_under_churn() -> None:
    from datetime import UTC, datetime

    from coord.presence.sources import GONE_KEPT, Gone, Source

    source = Source(lambda _source, _agent: None)
    for i in range(GONE_KEPT + 5):
        source._drop(f"c{i}", Gone("graceful", i, datetime.now(UTC)))
    assert len(source.gone) == GONE_KEPT
    assert "c0" not in source.gone and f"c{GONE_KEPT + 4}" in source.gone


async def test_a_roster_follower_outlives_a_server_restart(own_server: NatsServer, namespace: str) -> None:
    async with (
        coord.connect(own_server.url, namespace=namespace) as conn,
        coord.connect(own_server.url, namespace=namespace) as other,
    ):
        keeper = await Keeper(conn).start()
        await asyncio.wait_for(keeper.ready.wait(), 5)
        stays = await conn.presence.join(AgentInfo(id="stays"), interval=0.5, ttl=3)
        goes = await conn.presence.join(AgentInfo(id="goes"), interval=0.5, ttl=3)
        watcher = await other.presence.watch().start()
        recorder = Recorder(watcher)
        try:
            await eventually(lambda: watcher.mode == "roster", 5, "the follower on the roster")
            await asyncio.to_thread(own_server.restart)
            await eventually(lambda: conn.nc.is_connected and other.nc.is_connected, 10, "the reconnections")
            await goes.leave()
            await recorder.left("goes", 15)
            await eventually(lambda: watcher.mode == "roster", 15, "the roster again")
            await asyncio.sleep(1.0)
            assert kinds(recorder, "goes") == ["joined", "left:graceful"]
            assert kinds(recorder, "stays") == ["joined"]
            assert set(watcher.present) == {"stays"}
        finally:
            await recorder.close()
            await stays.leave()
            await keeper.stop()


async def test_a_roster_follower_whose_connection_closes_stops_trying_to_switch(
    coord_conn: coord.Coord, second: coord.Coord, keeper: Keeper, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the follower's own connection is closed for good, the keeper's renewals stop reaching it and
    the switch to the presence bucket fails: it gives up at once instead of trying every second."""
    watcher = await second.presence.watch().start()
    try:
        await eventually(lambda: watcher.mode == "roster", 10, "the watch follows the roster")
        caplog.set_level("INFO", logger="corral.presence")
        await second.nc.close()
        await asyncio.sleep(2.0 + 0.5 + 3 * 1.0)  # the keeper's TTL and interval, then three pauses
        failed = [r for r in caplog.records if "switching the watch's source failed" in r.getMessage()]
        assert failed == []
    finally:
        await watcher.stop()
