"""Chaos: workers at a remote site, connected to a leaf node server whose link to the hub is cut and healed.

The hub holds the namespace (JetStream); the leaf runs none and extends the hub's (see
tests/helpers_topology.py). ``corral worker`` processes connect to the leaf only; the parent and its
reclaimer are at the hub. The link is a loopback TCP relay the test owns (tests/helpers_relay.py):
cutting it closes the leafnode connections and refuses new ones, which is what both servers see once
a real outage outlasts their ping interval. A relay needs no root, so this runs on every machine;
the silent black hole (a veth taken down) is tests/chaos/test_partition.py's.

Shown: (a) site workers take and finish work through the leaf, each task once, and a task's
submit → result takes ~4.5 round trips of the link; (b) after the cut their claims are reclaimed at
the hub within TTL + 0.5 s and they fail closed: site1's handler is stopped and none of its cut-off
runs ends, site2's handler (tests/chaos/helpers_stubborn.py) ignores the stop and returns after the
link is back, and each of its late results is refused and dead-lettered (``late-result``); (c) the
link heals at once, the site joins again, the reclaimed tasks are re-run under new claims, and the
site takes new work. Every task completes exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import coord
from coord.deadletter import LATE_RESULT
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher, result_of
from tests.chaos.helpers_fleet import Fleet, completions, specs, stop_within, wait_all
from tests.helpers_topology import LeafSite, leaf_site, one_at_a_time, percentile
from tests.helpers_wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TTL = 2.0
WAN = 0.010
"""One-way latency the relay adds on the leaf link (a 20 ms round trip to the remote site)."""
ROUNDS = 20
SITE = ("site1", "site2")
STUBBORN = "tests.chaos.helpers_stubborn:stubborn"
"""site2's handler: it does not stop when told, so its cut-off runs return late results."""
SLOW = 8.0
"""Seconds a task of the cut runs: longer than the cut-off workers take to fail closed (at most
TTL, then their 2 s grace), so a handler that still finished would be one that was not stopped."""


def _runs(marks: Path, pattern: str) -> list[tuple[str, str, str, str]]:
    """The runs marked in ``marks`` matching ``pattern``, as (task, epoch, worker, what)."""
    return [tuple(p.name.split(".")) for p in marks.glob(pattern)]  # type: ignore[misc]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[LeafSite]:
    with leaf_site(tmp_path / "site", delay=WAN) as s:
        yield s


async def test_leaf_site_workers_work_lose_their_claims_within_ttl_of_a_cut_fail_closed_and_rejoin(
    site: LeafSite, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    fleet = Fleet(site.hub.url, namespace, subprocess_env, tmp_path)
    extra = ["--ttl", str(TTL), "--interval", "0.5"]
    ids: list[str] = []
    try:
        async with coord.connect(site.hub.url, namespace=namespace) as conn:
            fleet.spawn("site1", concurrency=3, extra=extra, url=site.leaf.url)
            fleet.spawn("site2", concurrency=3, extra=extra, url=site.leaf.url, handler=STUBBORN)
            for worker in SITE:
                assert await conn.presence.wait_present(worker, 30), fleet.log(worker)[-2000:]
            dispatcher = await Dispatcher(conn).start()
            try:
                # (a) through the leaf, work is done.
                warmup = await dispatcher.submit_many(specs("a", 20))
                ids += warmup
                await wait_all(dispatcher, warmup, 30)
                assert {(await conn.tasks.get(t)).last_worker for t in warmup} <= set(SITE)
                latencies = await one_at_a_time(dispatcher, "q", "l", ROUNDS)
                ids += [f"l{i}" for i in range(ROUNDS)]
                p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
                print(
                    f"\nparent at the hub, worker at the leaf, link RTT {2 * WAN * 1000:g} ms: submit→result one at "
                    f"a time p50 {p50 * 1000:.1f} ms, p99 (the max of {ROUNDS}) {p99 * 1000:.1f} ms"
                )
                assert p50 < 1.0 and p99 < 3.0, (p50, p99)

                # (b) the cut: claims reclaimed at the hub within TTL + 0.5 s; the site fails closed.
                slow = [
                    Spec(task_id=f"s{i}", queue="q", payload={"seconds": SLOW, "marks": str(marks)}) for i in range(6)
                ]
                ids += await dispatcher.submit_many(slow)
                await eventually(lambda: len(list(marks.glob("s*.start"))) == 6, 20, "the site to start 6 tasks")
                first = {task: (int(epoch), worker) for task, epoch, worker, _ in _runs(marks, "s*.start")}
                assert {w for _, w in first.values()} == set(SITE), first  # 3 slots each: 3 runs each
                cut = time.monotonic()
                await asyncio.to_thread(site.relay.cut)
                reclaimed = [await asyncio.wait_for(dispatcher.reclaimer.events.get(), TTL + 5) for _ in slow]  # type: ignore[union-attr]
                took = time.monotonic() - cut
                print(f"site claims reclaimed at the hub {took:.2f}s after the leaf link was cut (TTL {TTL:g}s)")
                assert {e.task_id for e in reclaimed} == {t.task_id for t in slow}
                assert {e.worker_id for e in reclaimed} <= set(SITE)
                assert took <= TTL + 0.5, f"claims came back {took:.2f}s after the cut"
                fleet.spawn("hub", concurrency=6, extra=extra)  # at the hub: someone to re-run them

                # (c) heal at once, while the cut-off runs are still going: the site joins again, and
                # what the stubborn handler returns late meets a claim that is no longer its own.
                await asyncio.to_thread(site.relay.heal)
                healed = time.monotonic()
                await asyncio.to_thread(site.wait_linked)
                await eventually(
                    lambda: all(fleet.log(w).count(" re-joined ") >= 1 for w in SITE),
                    30,
                    "the site's workers to join again",
                )
                print(f"site workers joined again {time.monotonic() - healed:.2f}s after the link healed")
                await wait_all(dispatcher, [t.task_id for t in slow], 40)
                for worker in SITE:
                    assert "failing closed" in fleet.log(worker), fleet.log(worker)[-2000:]
                cooperative = {t for t, (_, w) in first.items() if w == "site1"}
                stubborn = {t for t, (_, w) in first.items() if w == "site2"}
                # Every cut-off run was told to stop: site2's mark the stop they ignore; site1's handler
                # obeyed, so none of its cut-off runs reached its end (the re-runs ended after it).
                await eventually(
                    lambda: all((marks / f"{t}.{first[t][0]}.site2.stopped").exists() for t in stubborn),
                    20,
                    "site2's runs to be told to stop",
                )
                assert [t for t in cooperative if (marks / f"{t}.{first[t][0]}.site1.done").exists()] == []

                # site2's handler ignored the stop and returned late: each result refused and dead-lettered.
                async def refused() -> set[str]:
                    return {letter.task_id or "" for letter in await conn.dead_letters.read(LATE_RESULT)}

                async def all_refused() -> bool:
                    return await refused() >= stubborn

                await eventually(all_refused, 30, "site2's late results to be dead-lettered", interval=0.2)
                letters = await conn.dead_letters.read(LATE_RESULT)
                assert {letter.task_id for letter in letters} == stubborn, letters
                for letter in letters:
                    assert letter.task_id is not None
                    assert json.loads(letter.body)["output"]["epoch"] == first[letter.task_id][0]
                assert cooperative | stubborn == {t.task_id for t in slow}

                # The site takes work again (the hub's worker leaves first).
                hub_worker = fleet.procs["hub"]
                hub_worker.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(hub_worker.wait, 30) == 0, fleet.log("hub")[-2000:]
                after = await dispatcher.submit_many(specs("c", 12, seconds=0.5))
                ids += after
                await wait_all(dispatcher, after, 30)
                assert {(await conn.tasks.get(t)).last_worker for t in after} == set(SITE)
            finally:
                await stop_within(dispatcher)
            assert {w: c for w, c in fleet.dead().items() if w != "hub"} == {}, {w: fleet.log(w)[-3000:] for w in SITE}
            for task in slow:  # the cut-off runs recorded nothing: each result is a later claim's
                record = await conn.tasks.get(task.task_id)
                assert record.status is TaskStatus.SUCCEEDED
                output = result_of(record).output
                assert isinstance(output, dict), output
                assert isinstance(epoch := output["epoch"], int) and epoch > first[task.task_id][0], (output, first)
            counts = await completions(conn, ids)
            assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
    finally:
        fleet.close()
