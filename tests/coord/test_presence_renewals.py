"""A presence watcher tells when each present agent last renewed (renewals yield no event)."""

from __future__ import annotations

import asyncio

import coord
from coord.presence import AgentInfo


async def test_watcher_reports_when_each_present_agent_last_renewed(coord_conn: coord.Coord) -> None:
    async with asyncio.timeout(20), coord_conn.presence.watch() as watcher:
        async with coord_conn.presence.join(AgentInfo(id="a1"), interval=0.2, ttl=2):
            while "a1" not in watcher.renewed_at:
                await asyncio.sleep(0.02)
            first = watcher.renewed_at["a1"]
            await asyncio.sleep(0.8)
            later = watcher.renewed_at["a1"]
            assert later > first, "renewals move the time forward"
            assert (later - first).total_seconds() >= 0.4
        while "a1" in watcher.renewed_at:
            await asyncio.sleep(0.02)
    assert watcher.renewed_at == {}, "a departed agent has no renewal time"
