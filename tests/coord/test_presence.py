"""Presence against real nats-servers and real agent processes: joins, departures, fail-closed."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from nats.js.errors import KeyWrongLastSequenceError

import coord
from coord.errors import InvalidId, PresenceConflict, PresenceLost
from coord.presence import AgentInfo, HolderWait, Joined, Left, MembershipLost, Updated
from coord.presence.membership import silence_cause
from coord.server import NatsServer
from tests.coord.helpers_presence import HoldProcess, Recorder

pytestmark = pytest.mark.timeout(60)

Spawn = Callable[..., HoldProcess]


@pytest.fixture
async def recorder(coord_conn: coord.Coord) -> AsyncIterator[Recorder]:
    """Every presence event of this test's namespace, recorded from before the test acts."""
    watcher = await coord_conn.presence.watch().start()
    rec = Recorder(watcher)
    yield rec
    await rec.close()


@pytest.fixture
def spawn(nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]) -> Iterator[Spawn]:
    """Start ``corral presence hold`` agent processes; all are killed at teardown."""
    procs: list[HoldProcess] = []

    def start(agent_id: str, *extra: str, url: str | None = None) -> HoldProcess:
        proc = HoldProcess(url or nats_server.url, namespace, subprocess_env, agent_id, *extra)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


async def expire_raw(conn: coord.Coord, agent_id: str) -> None:
    """Leave an expiry marker as the latest message of ``agent_id``'s key (write with TTL 1 s, let it lapse)."""
    store = conn.presence._store
    await store.write(AgentInfo(id=agent_id), "gone", last=0, ttl=1)
    async with asyncio.timeout(5):
        while True:
            msg = await conn.js.get_msg(store.stream, subject=store.subject(agent_id), direct=True)
            if msg.headers and msg.headers.get("Nats-Marker-Reason") == "MaxAge":
                return
            await asyncio.sleep(0.1)


# --- joining and leaving -------------------------------------------------------------------


async def test_join_and_leave_are_seen_by_a_watcher(coord_conn: coord.Coord, recorder: Recorder) -> None:
    info = AgentInfo(id="w1", role="worker", queues=["default"], capacity=4, tags=["gpu"])
    async with coord_conn.presence.join(info, interval=0.3, ttl=2) as membership:
        _, joined = await recorder.joined("w1", within=5)
        assert joined.agent == info
        assert 0 < joined.revision <= membership.revision
        assert await coord_conn.presence.present_ids() == {"w1"}
        assert await coord_conn.presence.get("w1") == info
    _, left = await recorder.left("w1", within=2)
    assert left.reason == "graceful"
    assert await coord_conn.presence.present_ids() == set()
    assert await coord_conn.presence.get("w1") is None


async def test_renewals_yield_no_new_joined_and_updates_are_opt_in(coord_conn: coord.Coord, recorder: Recorder) -> None:
    updates = await coord_conn.presence.watch(updates=True).start()
    with_updates = Recorder(updates)
    try:
        async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.2, ttl=2) as membership:
            first = membership.revision
            await asyncio.sleep(1.2)  # ~6 renewals
            assert membership.revision > first + 3
            await membership.update(inflight=1)
            _, updated = await with_updates.wait_for(lambda e: isinstance(e, Updated), within=3)
            assert updated.agent.inflight == 1
        await recorder.left("w1", within=2)
        await with_updates.left("w1", within=2)
        assert [type(e) for e in recorder.of("w1")] == [Joined, Left]
        assert [type(e) for e in with_updates.of("w1")] == [Joined, Updated, Left]
    finally:
        await with_updates.close()


async def test_update_is_written_at_once_and_validated(coord_conn: coord.Coord) -> None:
    async with coord_conn.presence.join(AgentInfo(id="w1", capacity=4), interval=0.9, ttl=3) as membership:
        await membership.update(inflight=3)
        await asyncio.sleep(0.4)  # well before the next beat at 0.9 s
        got = await coord_conn.presence.get("w1")
        assert got is not None and got.inflight == 3 and got.capacity == 4
        with pytest.raises(ValueError, match="inflight"):
            await membership.update(inflight=-1)
        with pytest.raises(ValueError, match="unknown AgentInfo field"):
            await membership.update(infligth=2)
        with pytest.raises(ValueError, match="id cannot change"):
            await membership.update(id="other")
        assert membership.info.inflight == 3


async def test_leave_is_idempotent_and_never_deletes_a_later_holder(coord_conn: coord.Coord) -> None:
    first = await coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2)
    await first.leave()
    await first.leave()
    assert first.ended.is_set() and not first.present.is_set()
    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2) as second:
        await first.leave()
        assert await coord_conn.presence.get("w1") is not None
        assert not second.is_lost


async def test_a_renewal_whose_ack_was_lost_is_adopted_not_taken_for_a_loss(coord_conn: coord.Coord) -> None:
    losses: list[PresenceLost] = []
    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.2, ttl=2, on_lost=losses.append) as member:
        store = coord_conn.presence._store
        # our own renewal landed but its ack never arrived: the key is one revision ahead of us
        landed = await store.write(member.info, member.instance, last=member.revision, ttl=2)
        await asyncio.sleep(0.6)
        assert losses == [] and not member.is_lost and member.revision > landed


async def test_leave_deletes_a_renewal_that_landed_unacknowledged(coord_conn: coord.Coord, recorder: Recorder) -> None:
    member = await coord_conn.presence.join(AgentInfo(id="w1"), interval=0.9, ttl=3)
    await recorder.joined("w1")
    await coord_conn.presence._store.write(member.info, member.instance, last=member.revision, ttl=3)
    await member.leave()
    _, left = await recorder.left("w1", within=1.5)
    assert left.reason == "graceful"


async def test_existing_agents_come_first_and_stale_markers_are_skipped(coord_conn: coord.Coord) -> None:
    await expire_raw(coord_conn, "gone")
    async with coord_conn.presence.join(AgentInfo(id="here"), interval=0.3, ttl=2):
        async with coord_conn.presence.watch() as watcher:
            assert set(watcher.present) == {"here"}
            first = await asyncio.wait_for(anext(watcher), 2)
            assert isinstance(first, Joined) and first.agent.id == "here"
        async with coord_conn.presence.watch(include_existing=False) as quiet:
            assert set(quiet.present) == {"here"}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(quiet), 1.2)  # renewals are not news
        assert [a.id for a in await coord_conn.presence.list()] == ["here"]


async def test_wait_present_and_wait_absent_follow_the_watch(coord_conn: coord.Coord) -> None:
    presence = coord_conn.presence
    assert await presence.wait_absent("w1", 0.5) is True
    assert await presence.wait_present("w1", 0.5) is None

    async def join_later() -> None:
        await asyncio.sleep(0.3)
        async with presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2):
            await asyncio.sleep(0.6)

    later = asyncio.create_task(join_later())
    started = time.monotonic()
    info = await presence.wait_present("w1", 5)
    assert info is not None and info.id == "w1"
    assert await presence.wait_absent("w1", 0.2) is False
    assert await presence.wait_absent("w1", 5) is True
    assert time.monotonic() - started < 3
    await later


async def test_join_rejects_timing_the_server_cannot_honour(coord_conn: coord.Coord) -> None:
    with pytest.raises(ValueError, match="ttl must be at least 1s"):
        coord_conn.presence.join(AgentInfo(id="w1"), ttl=0.5, interval=0.1)
    with pytest.raises(ValueError, match=r"interval \(1s\) must be shorter than the TTL the server enforces"):
        coord_conn.presence.join(AgentInfo(id="w1"), ttl=1.5, interval=1.0)
    with pytest.raises(ValueError, match="interval must be > 0"):
        coord_conn.presence.join(AgentInfo(id="w1"), interval=0)


# --- one id, one holder --------------------------------------------------------------------


async def test_second_join_with_the_same_id_is_refused(nats_server: NatsServer, coord_conn: coord.Coord) -> None:
    async with coord.connect(nats_server.url, namespace=coord_conn.namespace) as other:
        async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2) as first:
            with pytest.raises(PresenceConflict, match="held by another live process"):
                await other.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2)
            await asyncio.sleep(0.7)
            assert not first.is_lost
        # once the first has left, the id is free again
        async with other.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2) as second:
            assert not second.is_lost


async def test_second_process_with_the_same_id_exits_3_and_is_never_present_alongside(
    spawn: Spawn, recorder: Recorder
) -> None:
    first = spawn("shared", "--interval", "0.5", "--ttl", "2")
    await first.expect("joined")
    second = spawn("shared", "--interval", "0.5", "--ttl", "2")
    assert await second.wait_exit() == 3
    assert "held by another live process" in second.stderr_text
    await asyncio.sleep(1.0)
    assert [type(e) for e in recorder.of("shared")] == [Joined]
    assert first.proc.poll() is None


async def test_a_second_writer_makes_the_first_fail_closed_for_good(coord_conn: coord.Coord) -> None:
    losses: list[PresenceLost] = []
    membership = await coord_conn.presence.join(AgentInfo(id="w1"), interval=0.2, ttl=2, on_lost=losses.append)
    store = coord_conn.presence._store
    # Another process somehow wrote the key (a CAS on our revision, with its own instance nonce).
    usurper = await store.write(AgentInfo(id="w1", host="elsewhere"), "usurper", last=membership.revision, ttl=2)
    await asyncio.wait_for(membership.ended.wait(), 3)
    assert membership.is_lost
    assert len(losses) == 1 and isinstance(losses[0], MembershipLost)
    assert losses[0].reason == "taken" and not losses[0].rejoining
    await membership.leave()  # must not delete the usurper's key
    latest = await store.latest("w1")
    assert latest is not None and latest.seq == usurper and latest.record is not None
    assert latest.record.instance == "usurper"


async def test_own_key_deleted_by_someone_else_fails_closed_then_rejoins_fresh(
    coord_conn: coord.Coord, recorder: Recorder
) -> None:
    losses: list[PresenceLost] = []

    async def on_lost(err: PresenceLost) -> None:
        losses.append(err)

    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.2, ttl=2, on_lost=on_lost) as membership:
        instance = membership.instance
        kv = await coord_conn.kv(coord_conn.names.presence_bucket)
        await kv.delete("w1")
        await recorder.left("w1", within=2)
        await recorder.wait_for(lambda e: isinstance(e, Joined) and len(recorder.of("w1")) >= 3, within=3)
        assert [type(e) for e in recorder.of("w1")] == [Joined, Left, Joined]
        assert [(getattr(e, "reason", None), getattr(e, "rejoining", None)) for e in losses] == [("deleted", True)]
        assert not membership.is_lost and membership.generation == 1 and membership.instance != instance


# --- a restarted process takes its id back -------------------------------------------------------


async def test_a_process_killed_and_restarted_with_its_id_takes_it_back_at_once(
    spawn: Spawn, recorder: Recorder, coord_conn: coord.Coord
) -> None:
    # A systemd-like restart: SIGKILL, reaped, the same id again 0.5 s later. Its key lives 20 s.
    timing = ("--interval", "1", "--ttl", "20")
    first = spawn("sw1", *timing)
    await first.expect("joined")
    first.proc.kill()
    first.proc.wait()
    await asyncio.sleep(0.5)
    restarted = time.monotonic()
    second = spawn("sw1", *timing)
    await second.expect("joined", within=15)
    took = time.monotonic() - restarted
    assert took < 8, f"took {took:.1f}s: it waited for the old key to expire"
    holder = await coord_conn.presence.get("sw1")
    assert holder is not None and holder.pid == second.proc.pid
    latest = await coord_conn.presence._store.latest("sw1")
    assert latest is not None and latest.ttl == 20, "the takeover is a presence write like any other: with its TTL"
    # Watchers see the old holder leave and the new one join.
    await recorder.left("sw1", after=restarted)
    await recorder.joined("sw1", after=restarted)
    # A second live process with that id is still refused, and the holder stays.
    third = spawn("sw1", *timing)
    assert await third.wait_exit() == 3
    assert "held by another live process" in third.stderr_text
    assert second.proc.poll() is None


async def test_a_holder_that_cannot_be_proved_gone_is_waited_for_until_its_key_expires(
    coord_conn: coord.Coord, caplog: pytest.LogCaptureFixture
) -> None:
    store = coord_conn.presence._store
    await store.write(AgentInfo(id="moved", host="another-node", pid=4321), "old-pod", last=0, ttl=3)
    waits: list[HolderWait] = []
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="corral.presence"):
        async with coord_conn.presence.join(AgentInfo(id="moved"), interval=0.3, ttl=2, on_wait=waits.append) as m:
            waited = time.monotonic() - started
            assert not m.is_lost
    assert 1.5 < waited < 3 + 2.5, f"joined after {waited:.1f}s, not once the 3 s key expired"
    [wait] = waits
    assert (wait.agent_id, wait.holder.host, wait.holder.pid) == ("moved", "another-node", 4321)
    assert "another host" in wait.why and 0 < wait.seconds <= 3 and wait.ended.is_set()
    told = [r.getMessage() for r in caplog.records if "cannot be proved gone" in r.getMessage()]
    assert len(told) == 1 and "waiting up to" in told[0], told


async def test_a_holder_that_cannot_be_proved_gone_but_renews_its_key_is_refused(coord_conn: coord.Coord) -> None:
    store = coord_conn.presence._store
    elsewhere = AgentInfo(id="busy", host="another-node", pid=4321)
    revision = await store.write(elsewhere, "live-pod", last=0, ttl=2)

    async def renew() -> None:
        nonlocal revision
        while True:
            await asyncio.sleep(0.5)
            revision = await store.write(elsewhere, "live-pod", last=revision, ttl=2)

    renewing = asyncio.create_task(renew())
    try:
        started = time.monotonic()
        with pytest.raises(PresenceConflict, match=r"host another-node, pid 4321.*renewed its key while we waited"):
            await coord_conn.presence.join(AgentInfo(id="busy"), interval=0.3, ttl=2)
        assert time.monotonic() - started < 2
        info = await coord_conn.presence.get("busy")
        assert info is not None and info.host == "another-node"
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)


# --- departures of real processes ------------------------------------------------------------


async def test_sigkilled_agent_is_reported_expired_within_ttl(spawn: Spawn, recorder: Recorder) -> None:
    agent = spawn("victim", "--interval", "0.5", "--ttl", "2")
    await agent.expect("joined")
    await recorder.joined("victim")
    killed = agent.signal(signal.SIGKILL)
    arrived, left = await recorder.left("victim", within=5)
    assert left.reason == "expired"
    assert arrived - killed <= 2 + 1.0


async def test_sigterm_to_hold_is_reported_graceful_at_once(spawn: Spawn, recorder: Recorder) -> None:
    agent = spawn("polite", "--interval", "0.5", "--ttl", "3")
    await agent.expect("joined")
    await recorder.joined("polite")
    stopped = agent.signal(signal.SIGTERM)
    arrived, left = await recorder.left("polite", within=3)
    assert left.reason == "graceful"
    assert arrived - stopped < 1.0
    assert await agent.wait_exit() == 0


async def test_agent_paused_past_its_ttl_fails_closed_and_rejoins(spawn: Spawn, recorder: Recorder) -> None:
    agent = spawn("sleepy", "--interval", "0.5", "--ttl", "2")
    await agent.expect("joined")
    await recorder.joined("sleepy")
    paused = agent.signal(signal.SIGSTOP)
    _, left = await recorder.left("sleepy", within=5)
    assert left.reason == "expired"
    await asyncio.sleep(max(0.0, paused + 3.0 - time.monotonic()))
    resumed = agent.signal(signal.SIGCONT)
    await agent.expect("lost", within=3)  # the fail-closed callback fired
    await agent.expect("rejoined", within=5)
    await recorder.joined("sleepy", after=resumed)
    assert [type(e) for e in recorder.of("sleepy")] == [Joined, Left, Joined]
    assert "lost (expired)" in agent.stderr_text


async def test_sub_second_ttl_form_is_sent_and_honoured(
    spawn: Spawn, coord_conn: coord.Coord, recorder: Recorder
) -> None:
    agent = spawn("quick", "--interval", "0.3", "--ttl", "1.5")
    await agent.expect("joined")
    store = coord_conn.presence._store
    msg = await coord_conn.js.get_msg(store.stream, subject=store.subject("quick"), direct=True)
    assert msg.headers is not None and msg.headers["Nats-TTL"] == "1500ms"
    await asyncio.sleep(2.0)  # longer than the TTL: renewals keep it present
    assert await coord_conn.presence.present_ids() == {"quick"}
    assert [type(e) for e in recorder.of("quick")] == [Joined]
    killed = agent.signal(signal.SIGKILL)
    arrived, left = await recorder.left("quick", within=4)
    assert left.reason == "expired" and arrived - killed <= 1.5 + 1.0


# --- server restarts ---------------------------------------------------------------------------


async def test_presence_survives_a_server_restart(
    own_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    losses: list[PresenceLost] = []
    agent = HoldProcess(own_server.url, namespace, subprocess_env, "remote", "--interval", "0.5", "--ttl", "3")
    try:
        async with coord.connect(own_server.url, namespace=namespace) as conn:
            await agent.expect("joined")
            async with conn.presence.join(AgentInfo(id="local"), interval=0.5, ttl=3, on_lost=losses.append) as member:
                watcher = await conn.presence.watch().start()
                rec = Recorder(watcher)
                try:
                    await rec.joined("local")
                    await rec.joined("remote")
                    await asyncio.to_thread(own_server.restart)
                    await asyncio.sleep(2.5)  # renewals resume on the same store: no loss
                    assert await conn.presence.present_ids() == {"local", "remote"}
                    assert losses == [] and not member.is_lost
                    # the watch survived too: a departure after the restart is still reported
                    agent.signal(signal.SIGTERM)
                    _, left = await rec.left("remote", within=8)
                    assert left.reason == "graceful"
                finally:
                    await rec.close()
    finally:
        agent.kill()


async def test_agent_cut_off_past_its_ttl_fails_closed_then_rejoins_by_itself(
    own_server: NatsServer, namespace: str
) -> None:
    losses: list[PresenceLost] = []
    async with (
        coord.connect(own_server.url, namespace=namespace) as conn,
        conn.presence.join(AgentInfo(id="w1"), interval=0.4, ttl=2, on_lost=losses.append) as member,
    ):
        await asyncio.to_thread(own_server.stop, remove_store=False)
        await asyncio.wait_for(member.lost.wait(), 4)  # fails closed while still cut off
        assert [getattr(e, "reason", None) for e in losses] == ["expired"]
        assert "was not acknowledged" in str(losses[0]), str(losses[0])  # the server, not this process
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_server.start)
        await asyncio.wait_for(member.present.wait(), 10)
        assert not member.is_lost and member.generation == 1
        assert await conn.presence.present_ids() == {"w1"}


async def test_a_loss_after_a_blocked_event_loop_says_no_renewal_was_sent(coord_conn: coord.Coord) -> None:
    losses: list[PresenceLost] = []
    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=1, on_lost=losses.append) as member:
        time.sleep(1.5)  # the loop is blocked past the TTL: no renewal can even be sent
        await asyncio.wait_for(member.lost.wait(), 2)
    assert [getattr(e, "reason", None) for e in losses] == ["expired"]
    assert "none was sent since" in str(losses[0]) and "event loop" in str(losses[0]), str(losses[0])


def test_the_cause_of_a_silence_is_told_apart_without_a_server() -> None:
    # a renewal sent at 10.0 after the acknowledged one of 9.5: the server did not answer it
    assert "sent 1.0s ago was not acknowledged" in silence_cause(11.0, sent=10.0, ok_sent=9.5, acked=9.6, interval=0.5)
    # the latest renewal (sent 9.5) was acknowledged at 10.4: the server was slow, not this process
    assert "acknowledged only 0.9s after" in silence_cause(10.7, sent=9.5, ok_sent=9.5, acked=10.4, interval=0.5)
    # acknowledged at once, and nothing sent since: this process's loop did not run the renewal
    assert "none was sent since" in silence_cause(10.7, sent=9.5, ok_sent=9.5, acked=9.6, interval=0.5)


# --- the nats-py 2.16 expiry-marker quirks ----------------------------------------------------


async def test_get_returns_none_while_an_expiry_marker_is_the_latest(
    coord_conn: coord.Coord, caplog: pytest.LogCaptureFixture
) -> None:
    await expire_raw(coord_conn, "w1")
    kv = await coord_conn.kv(coord_conn.names.presence_bucket)
    raw = await kv.get("w1")  # the quirk: no KeyNotFoundError, an entry without a value
    assert not raw.value
    with caplog.at_level(logging.WARNING, logger="corral.presence"):
        assert await coord_conn.presence.get("w1") is None
        assert await coord_conn.presence.present_ids() == set()
    assert not [r for r in caplog.records if "malformed" in r.getMessage()]


async def test_join_succeeds_while_an_expiry_marker_is_the_latest(coord_conn: coord.Coord, recorder: Recorder) -> None:
    await expire_raw(coord_conn, "w1")
    kv = await coord_conn.kv(coord_conn.names.presence_bucket)
    with pytest.raises(KeyWrongLastSequenceError):  # the quirk: create refuses to replace the marker
        await kv.create("w1", b"{}")
    async with coord_conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=2):
        assert (await coord_conn.presence.get("w1")) is not None
        await recorder.joined("w1", within=2)


# --- bad input -------------------------------------------------------------------------------


async def test_bad_ids_raise_invalid_id_before_any_nats_call(coord_conn: coord.Coord) -> None:
    presence = coord_conn.presence
    await coord_conn.nc.close()  # any NATS call would now fail with a connection error
    for bad in ("a.b", "a b", "", "x" * 200, "naïve", "*", ">"):
        with pytest.raises(InvalidId, match="agent_id"):
            await presence.get(bad)
        with pytest.raises(InvalidId, match="agent_id"):
            await presence.wait_absent(bad, 1)
        with pytest.raises(InvalidId, match="agent_id"):
            await presence.wait_present(bad, 1)
        with pytest.raises(ValueError, match="id"):
            AgentInfo(id=bad)
    with pytest.raises(ValueError, match="queues"):
        AgentInfo(id="ok", queues=["a.b"])
    with pytest.raises(ValueError, match="capacity"):
        AgentInfo(id="ok", capacity=-1)


async def test_malformed_values_do_not_crash_watch_or_list(
    coord_conn: coord.Coord, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await coord_conn.kv(coord_conn.names.presence_bucket)
    with caplog.at_level(logging.WARNING, logger="corral.presence"):
        await kv.put("junk", b"not json at all")
        await kv.put("wrongid", json.dumps({"id": "someone-else", "instance": "x"}).encode())
        await kv.put("badfield", json.dumps({"id": "badfield", "instance": "x", "capacity": "lots"}).encode())
        await kv.put("a.b", b"{}")
        async with coord_conn.presence.join(AgentInfo(id="good"), interval=0.3, ttl=2):
            await recorder.joined("good", within=3)
            assert [a.id for a in await coord_conn.presence.list()] == ["good"]
            assert await coord_conn.presence.present_ids() == {"good"}
            assert await coord_conn.presence.get("junk") is None
    assert {e.agent.id for _, e in recorder.events if isinstance(e, Joined)} == {"good"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "junk" in messages and "does not match its key" in messages and "capacity" in messages


async def test_membership_fails_closed_and_ends_when_its_connection_is_closed(
    nats_server: NatsServer, namespace: str
) -> None:
    losses: list[PresenceLost] = []
    conn = await coord.connect(nats_server.url, namespace=namespace)
    member = await conn.presence.join(AgentInfo(id="w1"), interval=0.3, ttl=1, on_lost=losses.append)
    await conn.nc.close()  # closed without leaving: the key expires, and we must not believe we are present
    await asyncio.wait_for(member.ended.wait(), 4)
    assert member.is_lost and [getattr(e, "reason", None) for e in losses] == ["expired"]
    await member.leave()  # still safe to call
