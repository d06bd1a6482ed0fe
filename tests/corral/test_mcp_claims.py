"""``task_claim`` claims through the worker intake: priorities, fleet-wide limits, nothing left unsettled."""

from __future__ import annotations

import asyncio
import time

import pytest

import coord
from coord.priority import LEVELS
from coord.wire import Result, Spec
from corral.mcp import AgentSession
from dispatch import Dispatcher
from tests.corral.helpers_mcp import agent, call
from workers import Context, Worker

pytestmark = pytest.mark.timeout(90)


class Runs:
    """Run intervals of a worker's handler and of an agent's claims, to check that none overlap."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.worker_runs = 0

    def began(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)

    def ended(self) -> None:
        self.running -= 1

    async def __call__(self, spec: Spec, ctx: Context) -> Result:
        self.began()
        self.worker_runs += 1
        try:
            await asyncio.sleep(0.3)
        finally:
            self.ended()
        return Result.success()


async def test_on_a_queue_limited_to_one_an_agent_and_a_worker_never_run_two_at_once(coord_conn: coord.Coord) -> None:
    runs = Runs()
    await coord_conn.limits.set("lim", concurrency=1)
    async with Dispatcher(coord_conn) as dispatcher, agent(coord_conn, "hand") as hand:
        first = await dispatcher.submit(Spec(task_id="agent-0", queue="lim", title="the agent's"))
        claim = await call(hand, "task_claim", queue="lim", wait=10)
        assert claim["task"]["task_id"] == first
        runs.began()
        slots = await coord_conn.limits.slots("lim")
        assert [(s.holder.worker_id, s.holder.task_id) for s in slots if s.holder] == [("hand", first)]
        worker = Worker(coord_conn, ["lim"], runs, concurrency=4, worker_id="py")
        running = asyncio.create_task(worker.run())
        try:
            others = await dispatcher.submit_many([Spec(task_id=f"w{i}", queue="lim") for i in range(4)])
            await asyncio.sleep(1.5)  # the worker is present, with free capacity and the tasks' notifications
            assert runs.worker_runs == 0, "the worker ran a task while the agent held the queue's one slot"
            await call(hand, "task_complete", task_id=first)
            runs.ended()
            # The worker takes the slot now; while it runs, the agent is refused by the limit, not by the queue.
            async with asyncio.timeout(10):
                while runs.worker_runs == 0:
                    await asyncio.sleep(0.01)
            later = await call(hand, "task_claim", queue="lim", wait=10)
            if later is not None:  # the agent got the slot between two of the worker's runs
                runs.began()
                await asyncio.sleep(0.3)
                runs.ended()
                await call(hand, "task_complete", task_id=later["task"]["task_id"])
            async with asyncio.timeout(30):
                async for _ in dispatcher.as_completed([first, *others]):
                    pass
        finally:
            worker.stop()
            await running
    assert runs.peak == 1
    async with asyncio.timeout(10):
        while await coord_conn.limits.slots("lim"):
            await asyncio.sleep(0.05)


async def test_a_high_task_is_claimed_before_a_normal_backlog(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "boss") as boss, agent(coord_conn, "hand") as hand:
        for i in range(20):
            await call(boss, "task_submit", queue="busy", title=f"n{i}")
        urgent = await call(boss, "task_submit", queue="busy", title="urgent", priority="high")
        claim = await call(hand, "task_claim", queue="busy", wait=10)
        assert claim["task"]["task_id"] == urgent["task_id"]
        nxt = await call(hand, "task_claim", queue="busy", wait=10)
        assert nxt["task"]["title"] == "n0"  # then the backlog, oldest first


async def test_a_claim_call_leaves_no_notification_unsettled(coord_conn: coord.Coord) -> None:
    names = coord_conn.names

    async def unacked() -> int:
        infos = [
            await coord_conn.js.consumer_info(names.dispatch_stream, names.queue_consumer("few", p)) for p in LEVELS
        ]
        return sum(i.num_ack_pending for i in infos)

    async with (
        agent(coord_conn, "boss") as boss,
        agent(coord_conn, "hand") as hand,
        agent(coord_conn, "other") as other,
    ):
        ids = [(await call(boss, "task_submit", queue="few", title=f"t{i}"))["task_id"] for i in range(3)]
        claim = await call(hand, "task_claim", queue="few", wait=5)
        assert claim["task"]["task_id"] == ids[0]
        async with asyncio.timeout(5):  # the claimed one acked; the others were never taken, or were put back
            while await unacked():
                await asyncio.sleep(0.05)
        for task_id in ids[1:]:
            assert (await call(other, "task_claim", queue="few", wait=5))["task"]["task_id"] == task_id
        # A call waiting on an empty queue waits on every level at once (an idle pull each); a normal
        # task ends it, while the other levels' idle pulls are still open on the server. An urgent task
        # submitted right then may be delivered into one of them: it is put back at once (not left
        # for its 5 s ack wait), so the next claimer has it at once.
        waiting = asyncio.create_task(call(hand, "task_claim", queue="few", wait=10))
        await asyncio.sleep(0.5)
        normal = await call(boss, "task_submit", queue="few", title="normal")
        assert (await waiting)["task"]["task_id"] == normal["task_id"]
        urgent = await call(boss, "task_submit", queue="few", title="urgent", priority="high")
        began = time.monotonic()
        taken = await call(other, "task_claim", queue="few", wait=10)
        took = time.monotonic() - began
        assert taken["task"]["task_id"] == urgent["task_id"]
        assert took < 3.0, f"the notification waited {took:.2f}s (an unsettled fetch waits its 5 s ack wait)"
        async with asyncio.timeout(5):
            while await unacked():
                await asyncio.sleep(0.05)


async def test_a_cancelled_claim_call_stops_fetching_and_holds_nothing(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "boss") as boss, AgentSession(coord_conn, agent_id="hand") as hand:
        first = await call(boss, "task_submit", queue="gone")  # the queue's consumers, made by its parent
        claim = await hand.claim("gone", 5)
        assert claim is not None and claim.task_id == first["task_id"]
        await coord_conn.tasks.complete(claim, {"kind": "success"})
        hand.drop(claim.task_id)
        calling = asyncio.create_task(hand.claim("gone", 30))
        await asyncio.sleep(1.0)  # waiting on every level
        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        second = await call(boss, "task_submit", queue="gone")
        taken = await call(boss, "task_claim", queue="gone", wait=10)
        assert taken["task"]["task_id"] == second["task_id"] and taken["epoch"] == 1
        assert hand.held == {}
