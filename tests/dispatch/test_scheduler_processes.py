"""Schedulers as real processes (`corral scheduler`): two of them submit exactly one task per tick and miss
none, also while one is SIGKILLed and restarted; one that was down makes up only the most recent missed tick."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import coord
from coord.schedules import Schedule, TaskTemplate
from tests.corral.helpers_cli import start_corral


class SchedulerProcess:
    """One ``corral scheduler --json``: its JSON lines (the ready line, then one per tick it submitted)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ticks: list[int] = []
        self._lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, namespace: str, env: dict[str, str]) -> SchedulerProcess:
        started = cls(await start_corral(url, namespace, env, "scheduler", "--json"))
        ready = await started.next(within=30)
        assert ready.get("ready") is True, ready
        return started

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            if "task_id" in event:
                self.ticks.append(int(event["task_id"].rsplit("-", 1)[1]))
            self._lines.put_nowait(event)

    async def next(self, within: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self._lines.get(), within)

    async def end(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), 20)
        await self._reader
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


async def submitted_ticks(conn: coord.Coord, queue: str) -> list[int]:
    return sorted(int(r.task_id.rsplit("-", 1)[1]) for r in await conn.tasks.list(queue=queue))


async def test_two_scheduler_processes_submit_exactly_one_task_per_tick_and_miss_none_across_a_sigkill_restart(
    coord_conn: coord.Coord, nats_server: coord.NatsServer, subprocess_env: dict[str, str]
) -> None:
    url, ns = nats_server.url, coord_conn.namespace
    await coord_conn.schedules.add(Schedule(name="beat", cron="* * * * * *", task=TaskTemplate(queue="beats")))
    a, b = await asyncio.gather(*(SchedulerProcess.start(url, ns, subprocess_env) for _ in range(2)))
    both_ready = int(time.time())
    restarted: SchedulerProcess | None = None
    try:
        await asyncio.sleep(4)
        killed_at = time.time()
        await a.end(signal.SIGKILL)  # possibly between a submission and its recorded tick
        restarted = await SchedulerProcess.start(url, ns, subprocess_env)
        await asyncio.sleep(4)
        last_due = int(time.time()) - 1  # every tick up to here has had a second to be submitted
        await asyncio.sleep(1)
    finally:
        errors = [await p.end() for p in (b, restarted) if p is not None]
    ticks = await submitted_ticks(coord_conn, "beats")
    assert set(range(both_ready + 1, last_due + 1)) <= set(ticks), f"missed ticks: {ticks}"
    assert ticks == list(range(ticks[0], ticks[-1] + 1)), f"a gap: {ticks}"
    # one task per tick: every id is its tick's, and none was created twice (one `scheduled` entry each)
    for tick in ticks:
        journal = await coord_conn.tasks.journal(f"beat-{tick}")
        assert [e.transition.value for e in journal].count("scheduled") == 1, (tick, journal)
    # both schedulers competed for the ticks while both ran, and every task was submitted by one of them
    assert [t for t in a.ticks if t <= killed_at] and [t for t in b.ticks if t <= killed_at], (a.ticks, b.ticks)
    assert restarted is not None
    assert set(ticks) == set(a.ticks) | set(b.ticks) | set(restarted.ticks)
    assert (await coord_conn.schedules.get("beat")).last_tick is not None
    for err in errors:
        assert "Traceback" not in err, err


async def test_a_scheduler_back_after_missing_ticks_submits_only_the_most_recent_one_then_goes_on(
    coord_conn: coord.Coord, nats_server: coord.NatsServer, subprocess_env: dict[str, str]
) -> None:
    url, ns = nats_server.url, coord_conn.namespace
    await coord_conn.schedules.add(Schedule(name="gap", cron="* * * * * *", task=TaskTemplate(queue="gaps")))
    first = await SchedulerProcess.start(url, ns, subprocess_env)
    for _ in range(3):
        await first.next()
    await first.end(signal.SIGKILL)
    killed_at = time.time()
    recorded = (await coord_conn.schedules.get("gap")).last_tick
    assert recorded is not None
    last = int(recorded.timestamp())
    await asyncio.sleep(3.5)  # at least three ticks pass with no scheduler
    second = await SchedulerProcess.start(url, ns, subprocess_env)
    try:
        made_up = await second.next()
        following = [await second.next() for _ in range(2)]
    finally:
        await second.end()
    made_up_tick = int(made_up["task_id"].rsplit("-", 1)[1])
    assert made_up_tick >= last + 3 and made_up["late"] >= 0
    ticks = await submitted_ticks(coord_conn, "gaps")
    # (the killed scheduler may have submitted one more tick without recording it: that one is no make-up)
    between = [await coord_conn.tasks.get(f"gap-{t}") for t in ticks if last < t < made_up_tick]
    assert [r.task_id for r in between if r.created_at.timestamp() > killed_at] == [], f"made up more: {ticks}"
    assert [int(e["task_id"].rsplit("-", 1)[1]) for e in following] == [made_up_tick + 1, made_up_tick + 2]
