"""One active reclaimer per namespace: elected through the roster's ``leader`` key, standbys cost next to
nothing, fail-over leaves no gap and no claim is reclaimed twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator

import coord
from coord.kv import MSG_TTL, ttl_header
from coord.lease import LEADER, LeaseRecord
from coord.presence import AgentInfo, Membership
from coord.presence.timing import enforced_ttl
from coord.server import NatsServer
from coord.tasks import TaskStatus
from dispatch import Reclaimer
from dispatch.reclaimer import ReclaimEvent
from tests.coord.helpers_presence import HoldProcess
from tests.corral.helpers_cli import corral
from tests.helpers_wait import eventually

AGENTS = 200
WINDOW = 5.0


@contextlib.asynccontextmanager
async def reclaimers(
    url: str, namespace: str, n: int, sweep_interval: float | None = None
) -> AsyncIterator[list[Reclaimer]]:
    """``n`` reclaimers, each on its own connection (so each connection's traffic is its own), started at once."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(coord.connect(url, namespace=namespace)) for _ in range(n)]
        found = [Reclaimer(c, candidate_id=f"r-{i}", sweep_interval=sweep_interval) for i, c in enumerate(conns)]
        await asyncio.gather(*(r.start() for r in found))
        try:
            yield found
        finally:
            await asyncio.gather(*(r.stop() for r in found))


def drain(reclaimer: Reclaimer) -> list[ReclaimEvent]:
    events = []
    while not reclaimer.events.empty():
        events.append(reclaimer.events.get_nowait())
    return events


async def claimed_by(conn: coord.Coord, worker_id: str, ids: list[str]) -> dict[str, str]:
    """Schedule ``ids`` and claim each for ``worker_id``: task id → claim id."""
    for task_id in ids:
        await conn.tasks.schedule(task_id, queue="q", spec=None)
    return {t: (await conn.tasks.claim(t, worker_id)).claim_id for t in ids}


def the_active(found: list[Reclaimer]) -> Reclaimer:
    active = [r for r in found if r.active]
    assert len(active) == 1, f"{len(active)} active reclaimers"
    return active[0]


async def test_one_of_three_reclaimers_is_active_and_only_it_follows_the_fleet(
    coord_conn: coord.Coord, nats_server: NatsServer
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(coord.connect(nats_server.url, namespace=coord_conn.namespace))
        members: list[Membership] = await asyncio.gather(
            *(fleet.presence.join(AgentInfo(id=f"a{i:03d}"), interval=1.0, ttl=3) for i in range(AGENTS))
        )
        for member in members:
            stack.push_async_callback(member.leave)
        found = await stack.enter_async_context(reclaimers(nats_server.url, coord_conn.namespace, 3))
        await eventually(lambda: sum(r.active for r in found) == 1, 5, "one active reclaimer")
        active = the_active(found)
        standbys = [r for r in found if r is not active]
        for r in found:
            assert r.holder is not None and r.holder.record.holder == active.id
        await eventually(lambda: all(r.holder and r.holder.record.ready for r in found), 3, "the lease marked ready")

        before = [r.coord.nc.stats["in_msgs"] for r in found]
        await asyncio.sleep(WINDOW)
        rates = {r.id: (r.coord.nc.stats["in_msgs"] - b) / WINDOW for r, b in zip(found, before, strict=True)}
        print(f"messages received per second: {rates} (active {active.id})")
        assert the_active(found) is active, "the lease stayed where it was"
        assert rates[active.id] >= 100, "the active reclaimer follows every renewal"
        for standby in standbys:
            assert rates[standby.id] <= 3, f"standby {standby.id} receives {rates[standby.id]:.1f} msgs/s"
            assert standby.claims_of("a000") == {} and standby.terms == 0


async def test_a_gracefully_stopped_active_reclaimer_is_replaced_within_a_second(
    coord_conn: coord.Coord, nats_server: NatsServer
) -> None:
    async with reclaimers(nats_server.url, coord_conn.namespace, 3) as found:
        await eventually(lambda: sum(r.active for r in found) == 1, 5, "one active reclaimer")
        active = the_active(found)
        standbys = [r for r in found if r is not active]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await active.stop()
        assert not active.active
        waits = [asyncio.ensure_future(r.until_active()) for r in standbys]
        await asyncio.wait(waits, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        took = loop.time() - started
        for wait in waits:
            wait.cancel()
        print(f"the next reclaimer was active {took:.3f}s after the stop began")
        assert took < 1.0
        assert sum(r.active for r in standbys) == 1
        # it can be elected again later: the first candidate comes back as a standby, then takes over
        await active.start()
        assert not active.active and active.holder is not None and active.holder.record.holder != active.id
        second = the_active(standbys)
        await second.stop()
        await eventually(lambda: sum(r.active for r in found) == 1, 1.0, "a third term")
        assert not second.active and sum(r.terms for r in found) == 3
        await second.start()  # a second term for a reclaimer that was active before
        third = the_active(found)
        await third.stop()
        await eventually(lambda: sum(r.active for r in found) == 1, 1.0, "a fourth term")
        assert max(r.terms for r in found) == 2, "one candidate was active twice"


async def test_a_worker_killed_with_the_active_reclaimer_has_its_claims_reclaimed_after_fail_over_once(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    """No gap: the worker's key expires while nobody is active; the next holder's rebuild (or watch) takes
    its claims back, and the ReclaimEvents of all reclaimers together name each claim once."""
    tasks = coord_conn.tasks
    ttl = coord_conn.settings.presence_ttl
    worker = HoldProcess(nats_server.url, coord_conn.namespace, subprocess_env, "w-dead")
    try:
        await worker.expect("joined")
        claims = await claimed_by(coord_conn, "w-dead", [f"t{i}" for i in range(5)])
        ids = list(claims)
        async with reclaimers(nats_server.url, coord_conn.namespace, 2, sweep_interval=60) as found:
            await eventually(lambda: sum(r.active for r in found) == 1, 5, "one active reclaimer")
            active = the_active(found)
            (standby,) = [r for r in found if r is not active]
            assert active.claims_of("w-dead") == claims
            # both die at once: the worker by SIGKILL, the active reclaimer's connection cut without a word
            loop = asyncio.get_running_loop()
            killed = loop.time()
            worker.signal(signal.SIGKILL)
            await active.coord.nc.close()

            async def all_pending() -> bool:
                records = [await tasks.get(t) for t in ids]
                return all(r.status is TaskStatus.PENDING and r.claim is None for r in records)

            await eventually(all_pending, ttl + 4, "the dead worker's claims back in the queue")
            took = loop.time() - killed
            print(f"claims pending again {took:.2f}s after the kill (presence TTL {ttl:g}s)")
            assert took <= ttl + 2.0
            assert standby.active
            events = drain(active) + drain(standby)
            assert sorted(e.claim_id for e in events) == sorted(claims.values()), "each claim reclaimed once"
            assert {e.worker_id for e in events} == {"w-dead"}
            assert standby.reclaimed == len(ids) and active.reclaimed == 0
    finally:
        worker.kill()


async def test_reclaimers_acting_at_once_reclaim_each_claim_once(
    coord_conn: coord.Coord, nats_server: NatsServer
) -> None:
    """A fail-over overlap (two processes that both believe they are active): the CAS keeps it safe."""
    tasks = coord_conn.tasks
    ids = [f"o{i:02d}" for i in range(40)]
    for task_id in ids:
        await tasks.schedule(task_id, queue="q", spec=None)
    leaving = await coord_conn.presence.join(AgentInfo(id="wx"), interval=0.3, ttl=2)
    for task_id in ids:
        await tasks.claim(task_id, "wx")
    async with contextlib.AsyncExitStack() as stack:
        conns = [
            await stack.enter_async_context(coord.connect(nats_server.url, namespace=coord_conn.namespace))
            for _ in range(3)
        ]
        overlap = [await stack.enter_async_context(Reclaimer(c, candidate=False, sweep_interval=60)) for c in conns]
        assert all(r.active for r in overlap) and all(len(r.claims_of("wx")) == len(ids) for r in overlap)
        await leaving.leave()
        await eventually(lambda: sum(r.reclaimed for r in overlap) >= len(ids), 5, "every claim reclaimed")
        await asyncio.sleep(0.5)
        events = [e for r in overlap for e in drain(r)]
        assert sorted(e.task_id for e in events) == ids, "each claim reclaimed exactly once"
        assert sum(r.reclaimed for r in overlap) == len(ids)
    records = [await tasks.get(t) for t in ids]
    assert all(r.status is TaskStatus.PENDING and r.attempt == 1 for r in records)


async def test_a_term_ended_by_a_foreign_write_stops_everything_and_fences_reclaims(
    coord_conn: coord.Coord, nats_server: NatsServer
) -> None:
    """A holder whose key another writer took is a standby at once: its watches are stopped and it
    starts no reclaim until it holds the lease again."""
    tasks = coord_conn.tasks
    async with reclaimers(nats_server.url, coord_conn.namespace, 2, sweep_interval=0.1) as found:
        await eventually(lambda: sum(r.active for r in found) == 1, 5, "one active reclaimer")
        active = the_active(found)
        assert active.lease is not None
        forged = LeaseRecord(holder="intruder", instance="x").model_dump_json().encode()
        await coord_conn.roster.put(LEADER, forged, ttl=coord_conn.settings.presence_ttl)
        await eventually(lambda: not any(r.active for r in found), 2, "every reclaimer a standby")
        assert active.claims_of("anyone") == {}
        await tasks.schedule("ghosted", queue="q", spec=None)
        await tasks.claim("ghosted", "ghost")
        await asyncio.sleep(0.5)
        assert (await tasks.get("ghosted")).status is TaskStatus.CLAIMED, "no reclaim while nobody holds the lease"
        # the intruder never renews: after its TTL one of the candidates is active again and catches up
        await eventually(lambda: sum(r.active for r in found) == 1, coord_conn.settings.presence_ttl + 3, "a holder")
        await eventually(
            lambda: _status_is(coord_conn, "ghosted", TaskStatus.PENDING), 3, "the ghost's claim reclaimed"
        )


async def _status_is(conn: coord.Coord, task_id: str, want: TaskStatus) -> bool:
    return (await conn.tasks.get(task_id)).status is want


async def test_reclaimer_status_names_the_holder_since_when_and_ready_or_says_vacant(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    url, ns = nats_server.url, coord_conn.namespace
    vacant = await corral(url, ns, subprocess_env, "reclaimer", "--status")
    assert (vacant.code, vacant.out.strip()) == (0, f"no active reclaimer in {ns}: the lease is vacant")
    async with Reclaimer(coord_conn, candidate_id="r-status") as reclaimer:
        assert reclaimer.active
        shown = await corral(url, ns, subprocess_env, "reclaimer", "--status", "--json")
        assert shown.code == 0 and len(shown.out.splitlines()) == 1
        status = json.loads(shown.out)
        assert status["state"] == "held" and status["active"]["holder"] == "r-status"
        assert status["active"]["ready"] is True and status["active"]["pid"] == os.getpid()
        assert status["active"]["standalone"] is False and status["active"]["asked_by"] is None
        assert 0 <= status["renewed_ago_s"] < 5
        text = await corral(url, ns, subprocess_env, "reclaimer", "--status")
        assert text.code == 0 and len(text.out.splitlines()) == 1
        assert text.out.startswith(f"active reclaimer in {ns}: r-status on ") and ", ready, renewed" in text.out
        assert ", in a parent), since " in text.out
    await coord_conn.roster.put(LEADER, b"garbage")
    odd = await corral(url, ns, subprocess_env, "reclaimer", "--status", "--json")
    assert odd.code == 0 and json.loads(odd.out)["state"] == "nobody's"


async def test_reclaimer_status_without_a_server_is_one_line(subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "CORRAL_CONNECT_TIMEOUT": "1"}
    gone = await corral("nats://127.0.0.1:1", "nowhere", env, "reclaimer", "--status", within=60)
    assert gone.code == 1 and gone.out == ""
    assert gone.err.startswith("error: ") and "127.0.0.1:1" in gone.err and "Traceback" not in gone.err, gone.err


class _FailsOnce(Reclaimer):
    """A reclaimer whose first take-over fails (as when its watches cannot start)."""

    failures = 0

    async def _activate(self) -> None:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("the task index did not start")
        await super()._activate()


async def test_a_holder_that_cannot_take_over_releases_the_lease_and_campaigns_again(
    coord_conn: coord.Coord, nats_server: NatsServer
) -> None:
    failing = _FailsOnce(coord_conn, candidate_id="r-fails")
    await failing.start()
    assert failing.failures == 1 and not failing.active
    async with coord.connect(nats_server.url, namespace=coord_conn.namespace) as other_conn:
        other = await Reclaimer(other_conn, candidate_id="r-other").start()
        await asyncio.wait_for(other.until_active(), 3)  # the lease was released, not held by a failed term
        await asyncio.sleep(1.5)  # the failed one campaigns again, as a standby
        assert failing.lease is not None and failing.lease._watch is not None and not failing.active
        await other.stop()
        await asyncio.wait_for(failing.until_active(), 2)
        assert failing.terms == 1
    await failing.stop()


async def test_a_ghost_lease_holder_stops_reclaiming_for_at_most_the_ttl_and_an_interval(
    coord_conn: coord.Coord,
) -> None:
    """A well-formed lease value that nobody renews and the server never expires (a TTL of an hour)."""
    settings = coord_conn.settings
    await coord_conn.tasks.schedule("haunted", queue="q", spec=None)
    await coord_conn.tasks.claim("haunted", "ghost-worker")  # a worker that is not present
    ghost = LeaseRecord(holder="ghost", instance="x", ready=True).model_dump_json().encode()
    loop = asyncio.get_running_loop()
    written = loop.time()
    await coord_conn.roster.put(LEADER, ghost, headers={MSG_TTL: ttl_header(3600)})
    async with Reclaimer(coord_conn, sweep_interval=60) as reclaimer:
        assert not reclaimer.active and reclaimer.holder is not None and reclaimer.holder.record.holder == "ghost"
        event = await asyncio.wait_for(reclaimer.events.get(), settings.presence_ttl + 5)
        took = loop.time() - written
    print(f"the ghost's hold ended and its worker's claim was reclaimed {took:.2f}s after it was written")
    assert event.task_id == "haunted" and event.reason == "worker-absent"
    assert took <= enforced_ttl(settings.presence_ttl) + settings.presence_interval + 1.5


async def test_a_standalone_reclaimer_started_after_a_parent_takes_over_and_reclaims_each_claim_once(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    """Whichever starts first, a parent stays a standby once a standalone reclaimer runs: the parent's
    embedded reclaimer hands the lease over when asked, and a worker that dies right after has each of
    its claims reclaimed once, by the standalone one."""
    tasks = coord_conn.tasks
    worker = HoldProcess(nats_server.url, coord_conn.namespace, subprocess_env, "w-hand")
    try:
        await worker.expect("joined")
        claims = await claimed_by(coord_conn, "w-hand", [f"h{i}" for i in range(5)])
        ids = list(claims)
        async with contextlib.AsyncExitStack() as stack:
            conns = [
                await stack.enter_async_context(coord.connect(nats_server.url, namespace=coord_conn.namespace))
                for _ in range(2)
            ]
            parent = await stack.enter_async_context(Reclaimer(conns[0], candidate_id="parent-r", sweep_interval=60))
            assert parent.active and parent.claims_of("w-hand") == claims
            loop = asyncio.get_running_loop()
            started = loop.time()
            standalone = await stack.enter_async_context(
                Reclaimer(conns[1], candidate_id="standalone-r", sweep_interval=60, preferred=True)
            )
            await asyncio.wait_for(standalone.until_active(), 5)
            print(f"standalone active {loop.time() - started:.2f}s after it started")
            assert loop.time() - started < 2.0
            assert not parent.active and parent.claims_of("w-hand") == {}
            assert standalone.claims_of("w-hand") == claims
            worker.signal(signal.SIGKILL)

            async def all_pending() -> bool:
                records = [await tasks.get(t) for t in ids]
                return all(r.status is TaskStatus.PENDING for r in records)

            await eventually(all_pending, coord_conn.settings.presence_ttl + 4, "the dead worker's claims back")
            await asyncio.sleep(0.5)
            events = drain(parent) + drain(standalone)
            assert sorted(e.claim_id for e in events) == sorted(claims.values()), "each claim reclaimed once"
            assert standalone.reclaimed == len(ids) and parent.reclaimed == 0
            assert standalone.active and not parent.active  # no ping-pong
    finally:
        worker.kill()
