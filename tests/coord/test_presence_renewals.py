"""A presence watcher says since when each agent is present; renewals move nothing (they are no change)."""

from __future__ import annotations

import asyncio

import coord
from coord.presence import AgentInfo


async def test_watcher_reports_since_when_each_agent_is_present_and_renewals_do_not_move_it(
    coord_conn: coord.Coord,
) -> None:
    async with asyncio.timeout(20), coord_conn.presence.watch(updates=True) as watcher:
        async with coord_conn.presence.join(AgentInfo(id="a1"), interval=0.2, ttl=2) as member:
            while "a1" not in watcher.since:
                await asyncio.sleep(0.02)
            first = watcher.since["a1"]
            await asyncio.sleep(0.8)  # four renewals
            assert watcher.since["a1"] == first, "a renewal is no change"
            await member.update(inflight=1)
            while watcher.present["a1"].inflight != 1:
                await asyncio.sleep(0.02)
            assert watcher.since["a1"] > first, "an info change is announced by its own value"
        while "a1" in watcher.since:
            await asyncio.sleep(0.02)
    assert watcher.since == {}, "a departed agent has no time"
