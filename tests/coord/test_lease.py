"""The elected lease (coord.lease): one holder, hand-over on release and on expiry, hostile values healed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import coord
from coord.kv import MSG_TTL, Entry, Op, ttl_header
from coord.lease import LEADER, Candidate, Lease, LeaseRecord, Term, asks_for, hands_to, is_live, read_term
from tests.helpers_wait import eventually

TTL, INTERVAL = 2.0, 0.5


def lease(conn: coord.Coord, holder: str, *, preferred: bool = False) -> Lease:
    return Lease(conn.roster, LEADER, holder, ttl=TTL, interval=INTERVAL, preferred=preferred)


def _entry(value: bytes, headers: dict[str, str], op: Op = Op.PUT) -> Entry:
    return Entry(LEADER, 7, op, value if op is Op.PUT else None, headers, datetime.now(UTC))


def test_read_term_tells_a_holder_from_nobodys_values() -> None:
    good = LeaseRecord(holder="r-1", instance="abc").model_dump_json().encode()
    term, why = read_term(_entry(good, {MSG_TTL: "2s"}))
    assert term is not None and term.record.holder == "r-1" and why == ""
    assert read_term(None) == (None, "")
    assert read_term(_entry(b"", {}, Op.DELETE)) == (None, "")
    assert "Nats-TTL" in read_term(_entry(good, {}))[1]
    assert read_term(_entry(b'{"holder": "bad id!"}', {MSG_TTL: "2s"}))[0] is None
    assert read_term(_entry(b"\xff", {MSG_TTL: "2s"}))[0] is None


def test_a_value_unchanged_past_ttl_and_an_interval_is_a_dead_holders() -> None:
    assert is_live(100.0, 102.4, ttl=2.0, interval=0.5)
    assert not is_live(100.0, 102.6, ttl=2.0, interval=0.5)
    assert not is_live(100.0, 102.6, ttl=2.9, interval=0.5)  # the server applies whole seconds


async def test_one_of_several_candidates_holds_the_lease(coord_conn: coord.Coord) -> None:
    candidates = [lease(coord_conn, f"r-{i}") for i in range(3)]
    await asyncio.gather(*(c.start() for c in candidates))
    try:
        await eventually(lambda: sum(c.held for c in candidates) == 1, 3, "one holder")
        await asyncio.sleep(2 * TTL)  # renewals keep it where it is
        holders = [c for c in candidates if c.held]
        assert len(holders) == 1 and holders[0].terms == 1 and holders[0].valid()
        for c in candidates:
            assert c.current is not None and c.current.record.holder == holders[0].record.holder
    finally:
        await asyncio.gather(*(c.stop() for c in candidates))


async def test_a_released_lease_is_taken_at_once(coord_conn: coord.Coord) -> None:
    first, second = lease(coord_conn, "r-a"), lease(coord_conn, "r-b")
    await first.start()
    await second.start()
    assert first.held and not second.held
    loop = asyncio.get_running_loop()
    started = loop.time()
    await first.stop()
    await asyncio.wait_for(second.until(held=True), 2)
    assert loop.time() - started < 1.0
    await second.stop()


async def test_a_holder_that_stops_renewing_is_replaced_within_the_ttl(coord_conn: coord.Coord) -> None:
    first, second = lease(coord_conn, "r-a"), lease(coord_conn, "r-b")
    await first.start()
    await second.start()
    assert first.held
    # The holder dies without a word: its renewals stop, its key expires on the server.
    assert first._runner is not None
    first._runner.cancel()
    loop = asyncio.get_running_loop()
    died = loop.time()
    await asyncio.wait_for(second.until(held=True), TTL + 2)
    assert loop.time() - died <= TTL + 1.5
    assert not first.valid()  # fail closed: the old holder's own clock has ended its term
    await second.stop()
    first._held.clear()
    await first.stop()


async def test_a_holder_whose_key_is_overwritten_steps_down(coord_conn: coord.Coord) -> None:
    holder = lease(coord_conn, "r-a")
    await holder.start()
    assert holder.held
    forged = LeaseRecord(holder="intruder", instance="x").model_dump_json().encode()
    await coord_conn.roster.put(LEADER, forged, ttl=TTL)
    await asyncio.wait_for(holder.until(held=False), 2)
    assert not holder.valid()
    await holder.stop()


@pytest.mark.parametrize(
    ("value", "ttl"),
    [(b"not json", TTL), (LeaseRecord(holder="ghost", instance="x").model_dump_json().encode(), None)],
    ids=["malformed", "no-ttl"],
)
async def test_nobodys_value_is_written_over(coord_conn: coord.Coord, value: bytes, ttl: float | None) -> None:
    await coord_conn.roster.put(LEADER, value, ttl=ttl)
    candidate = lease(coord_conn, "r-a")
    await candidate.start()
    await asyncio.wait_for(candidate.until(held=True), 2)
    await candidate.stop()


async def test_a_dead_holders_value_without_expiry_is_taken_over(coord_conn: coord.Coord) -> None:
    """A well-formed value that never changes (a TTL of years) is a dead holder's after TTL + interval."""
    record = LeaseRecord(holder="ghost", instance="x", since=datetime.now(UTC) - timedelta(days=1))
    await coord_conn.roster.put(LEADER, record.model_dump_json().encode(), headers={MSG_TTL: ttl_header(3600)})
    candidate = lease(coord_conn, "r-a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await candidate.start()
    assert not candidate.held
    await asyncio.wait_for(candidate.until(held=True), TTL + 3)
    assert TTL <= loop.time() - started <= TTL + INTERVAL + 1.5
    await candidate.stop()


async def test_mark_ready_is_seen_by_followers(coord_conn: coord.Coord) -> None:
    holder, follower = lease(coord_conn, "r-a"), lease(coord_conn, "r-b")
    await holder.start()
    await follower.start()
    assert follower.current is not None and not follower.current.record.ready
    assert await holder.mark_ready()
    await eventually(lambda: follower.current is not None and follower.current.record.ready, 2, "the ready flag")
    await asyncio.sleep(2 * INTERVAL)
    assert holder.held and holder.record.ready  # renewals keep the flag
    await asyncio.gather(holder.stop(), follower.stop())


def _term(record: LeaseRecord) -> Term:
    return Term(record, 9, None)


def test_only_a_preferred_candidate_asks_and_only_a_non_preferred_holder_hands_over() -> None:
    parent = LeaseRecord(holder="parent", instance="p1")
    standalone = LeaseRecord(holder="standalone", instance="s1", preferred=True)
    other_standalone = LeaseRecord(holder="standalone-2", instance="s2", preferred=True)
    assert asks_for(_term(parent), standalone)
    assert not asks_for(_term(parent), LeaseRecord(holder="parent-2", instance="p2"))  # not preferred
    assert not asks_for(_term(other_standalone), standalone)  # no ping-pong between standalones
    assert not asks_for(None, standalone)
    asked = parent.model_copy(update={"wanted_by": standalone.candidate()})
    assert not asks_for(_term(asked), other_standalone)  # one ask at a time
    assert hands_to(_term(asked), parent) == standalone.candidate()
    assert hands_to(_term(asked), LeaseRecord(holder="parent", instance="other")) is None  # not its term
    assert hands_to(_term(parent), parent) is None  # nobody asks
    hostile = standalone.model_copy(update={"wanted_by": Candidate(holder="x", instance="x1")})
    assert hands_to(_term(hostile), standalone) is None  # a preferred holder keeps it


async def test_a_preferred_candidate_is_handed_the_lease_by_a_live_holder_that_is_not(coord_conn: coord.Coord) -> None:
    parent, standby = lease(coord_conn, "parent"), lease(coord_conn, "parent-2")
    await parent.start()
    await standby.start()
    assert parent.held and await parent.mark_ready()
    standalone = lease(coord_conn, "standalone", preferred=True)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await standalone.start()
    try:
        await asyncio.wait_for(standalone.until(held=True), 2)
        took = loop.time() - asked
        # asked at once, or after the holder's next renewal if that raced the ask; then two writes
        assert took < INTERVAL + 1.0, f"hand-over took {took:.2f}s"
        assert not parent.held and not parent.valid() and not standby.held
        await asyncio.sleep(2 * TTL)  # it stays there: nobody asks a preferred holder, renewals go on
        assert standalone.held and standalone.valid() and standalone.terms == 1 and parent.terms == 1
        assert parent.current is not None and parent.current.record.holder == "standalone"
        assert parent.current.record.preferred and parent.current.record.wanted_by is None
    finally:
        await asyncio.gather(standalone.stop(), parent.stop(), standby.stop())


async def test_an_ask_nobody_answers_ends_in_the_asker_holding_within_the_ttl(coord_conn: coord.Coord) -> None:
    """A holder that cannot answer (dead, or a corral without hand-over) is waited out: the ask carries
    the TTL, so the server expires the key and the asker takes it."""
    mute = LeaseRecord(holder="old-parent", instance="o1", ready=True).model_dump_json().encode()
    await coord_conn.roster.put(LEADER, mute, ttl=TTL)
    standalone = lease(coord_conn, "standalone", preferred=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await standalone.start()
    try:
        await asyncio.wait_for(standalone.until(held=True), TTL + 3)
        assert loop.time() - started <= TTL + INTERVAL + 1.5
    finally:
        await standalone.stop()


async def test_a_forged_ask_over_a_preferred_holder_is_taken_back_at_once(coord_conn: coord.Coord) -> None:
    holder = lease(coord_conn, "standalone", preferred=True)
    await holder.start()
    assert holder.held
    seen = await coord_conn.roster.get(LEADER)
    assert seen is not None
    term, _ = read_term(seen)
    assert term is not None
    forged = term.record.model_copy(update={"wanted_by": Candidate(holder="phantom", instance="ph")})
    await coord_conn.roster.update(LEADER, forged.model_dump_json().encode(), last=seen.revision, ttl=TTL)
    try:
        await eventually(lambda: holder.terms == 2 and holder.held, 2, "the holder's key taken back")
        again = read_term(await coord_conn.roster.get(LEADER))[0]
        assert again is not None and again.record.holder == "standalone" and again.record.wanted_by is None
    finally:
        await holder.stop()


async def test_a_holder_asked_by_a_phantom_is_replaced_within_the_ttl(coord_conn: coord.Coord) -> None:
    """A forged ask (only parents and reclaimers may write the roster) costs at most one TTL without a
    holder: the phantom never takes the lease it was handed, the key expires, a candidate takes it."""
    holder, standby = lease(coord_conn, "parent"), lease(coord_conn, "parent-2")
    await holder.start()
    await standby.start()
    seen = await coord_conn.roster.get(LEADER)
    term = read_term(seen)[0]
    assert seen is not None and term is not None
    forged = term.record.model_copy(update={"wanted_by": Candidate(holder="phantom", instance="ph")})
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await coord_conn.roster.update(LEADER, forged.model_dump_json().encode(), last=seen.revision, ttl=TTL)
    try:
        await eventually(lambda: holder.current is not None and holder.current.record.holder == "phantom", 2, "handed")
        await eventually(lambda: holder.held or standby.held, TTL + 3, "a candidate holding again")
        assert loop.time() - asked <= TTL + INTERVAL + 1.5
    finally:
        await asyncio.gather(holder.stop(), standby.stop())
