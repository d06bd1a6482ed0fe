"""Load over time: one parent runs 10 rounds of 10,000 tasks; the last is as fast as the first and the
parent's memory does not grow with the number of tasks it has ever submitted."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import DEVNULL, PIPE

import pytest

from coord.server import NatsServer
from tests.chaos.helpers_fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 10
TASKS = 10_000


@pytest.fixture
def fleet(own_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(own_server.url, namespace, subprocess_env, tmp_path)
    yield f
    f.close()


async def test_ten_rounds_of_ten_thousand_tasks_stay_as_fast_and_the_parent_stays_as_small(
    own_server: NatsServer, namespace: str, fleet: Fleet, subprocess_env: dict[str, str]
) -> None:
    fleet.spawn("w1", concurrency=256)
    fleet.spawn("w2", concurrency=256)
    # The parent runs in a process of its own, as a real one does: the test process's own heap
    # (every module and object the suite left behind) must not be what is measured.
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.chaos.helpers_long_run_parent", own_server.url, namespace, str(ROUNDS),
        str(TASKS), env=subprocess_env, stdout=PIPE, stderr=PIPE, stdin=DEVNULL,
    )  # fmt: skip
    out, err = await asyncio.wait_for(parent.communicate(), 540)
    assert parent.returncode == 0, err.decode()[-4000:]
    run = json.loads(out.decode().splitlines()[-1])
    rates, rss = run["rates"], run["rss"]
    print("tasks/s per round:", [round(r) for r in rates], "parent RSS MB:", [r >> 20 for r in rss])
    assert run["kept"] == [0] * ROUNDS, "nothing is kept of a finished task"
    assert run["stop_s"] < 5.0
    assert fleet.dead() == {}
    # Rounds vary by ±20% on a shared 2-core machine; a slowdown with history is a trend, so the last
    # three rounds (median) are held to within 15% of the first three.
    first, last = statistics.median(rates[:3]), statistics.median(rates[-3:])
    assert last >= 0.85 * first, f"the last rounds ran at {last:.0f}/s, the first at {first:.0f}/s"
    # ~5 KB per task ever submitted before; 80,000 tasks after round 2 must not show.
    grown = (rss[-1] - rss[1]) >> 20
    assert grown < 40, f"the parent grew by {grown} MB over {ROUNDS - 2} rounds of {TASKS} tasks"
