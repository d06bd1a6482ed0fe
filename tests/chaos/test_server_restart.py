"""Chaos: the one server is stopped for 5 s while a fleet works; afterwards it all goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import coord
from coord.server import NatsServer
from dispatch import Dispatcher
from tests.chaos.helpers_fleet import Fleet, completions, specs, stop_within, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def fleet(own_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(own_server.url, namespace, subprocess_env, tmp_path)
    yield f
    f.close()


async def test_a_server_restarted_for_5s_under_load_is_a_pause_every_task_succeeds_once(
    own_server: NatsServer, namespace: str, fleet: Fleet
) -> None:
    fleet.spawn("w1")
    fleet.spawn("w2")
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        assert await conn.presence.wait_present("w1", 20) and await conn.presence.wait_present("w2", 20)
        dispatcher = await Dispatcher(conn).start()
        try:
            tasks = specs("t", 600, seconds=0.05)
            ids = await dispatcher.submit_many(tasks)
            finished = asyncio.create_task(wait_all(dispatcher, ids, 120))
            await _until_succeeded(conn, ids, 100)
            await asyncio.to_thread(own_server.stop, remove_store=False)
            await asyncio.sleep(5)
            await asyncio.to_thread(own_server.start)
            await finished
            late = specs("after", 20)  # the fleet takes new work once the server is back
            await wait_all(dispatcher, await dispatcher.submit_many(late), 60)
        finally:
            await stop_within(dispatcher)
        assert fleet.dead() == {}, {w: fleet.log(w)[-2000:] for w in fleet.dead()}
        counts = await completions(conn, ids)
        assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}


async def _until_succeeded(conn: coord.Coord, ids: list[str], n: int) -> None:
    async with asyncio.timeout(60):
        while True:
            done = sum(r.status == "succeeded" for r in await conn.tasks.list(queue="q"))
            if done >= n:
                return
            await asyncio.sleep(0.2)
