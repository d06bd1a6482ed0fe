"""What one task costs in messages through the server, counted from its own statistics (/varz), so
that a change which adds a round trip or an index message per task cannot land unnoticed."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import coord
from coord.server import NatsServer
from coord.wire import Result, Spec
from dispatch import Dispatcher
from workers import Context, Worker

TASKS = 1000

MESSAGES_PER_TASK = {True: 21.0, False: 18.0}
"""The budget, embedded reclaimer on/off: messages in + out of the server per task, for a whole
submit → claim → complete → result cycle with batched submits and fetches. Measured 19.1 and 16.0
once the journal moved into the record (22.1 and 19.0-19.1 before: bench/RESULTS.md, "Messages per
task"); the budget leaves ~10% for batching that varies from run to run. Lower it with every change
that saves messages; raise it only with a measurement that says why."""


ONE_AT_A_TIME = 100

MESSAGES_ONE_AT_A_TIME = {True: 22.0, False: 19.0}
"""The budget, embedded reclaimer on/off, for tasks submitted one at a time (each awaited before the
next: nothing is batched). Measured 21.1 and 18.0 once a worker that keeps up waits on its levels
without a no-wait probe first (23.1 and 20.0 before: the probe and its empty answer, per task)."""


def server_messages(server: NatsServer) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=2) as resp:
        varz = json.loads(resp.read())
    return int(varz["in_msgs"]) + int(varz["out_msgs"])


async def ok(spec: Spec, ctx: Context) -> Result:
    return Result.success()


async def messages_per_task(
    server: NatsServer, namespace: str, *, reclaimer: bool, one_at_a_time: bool = False
) -> float:
    async with coord.connect(server.url, namespace=namespace) as conn:
        worker = Worker(conn, ["q"], ok, concurrency=256, worker_id="budget-w")
        running = asyncio.create_task(worker.run())
        try:
            async with Dispatcher(conn, reclaimer=reclaimer) as dispatcher:
                assert await conn.presence.wait_present("budget-w", 10)
                warm = await dispatcher.submit_many([Spec(task_id=f"warm{i}", queue="q") for i in range(50)])
                for task_id in warm:
                    await dispatcher.wait(task_id, 30)
                before = server_messages(server)
                if one_at_a_time:
                    for i in range(ONE_AT_A_TIME):
                        await dispatcher.wait(await dispatcher.submit(Spec(task_id=f"o{i}", queue="q")), 10)
                else:
                    ids = await dispatcher.submit_many([Spec(task_id=f"t{i}", queue="q") for i in range(TASKS)])
                    for task_id in ids:
                        await dispatcher.wait(task_id, 60)
                after = server_messages(server)
        finally:
            worker.stop()
            await running
    return (after - before) / (ONE_AT_A_TIME if one_at_a_time else TASKS)


async def test_a_task_costs_no_more_messages_than_its_budget(own_server: NatsServer, namespace: str) -> None:
    costs = {on: await messages_per_task(own_server, f"{namespace}{int(on)}", reclaimer=on) for on in (True, False)}
    print("messages per task (reclaimer on, off):", {k: round(v, 1) for k, v in costs.items()})
    for on, cost in costs.items():
        assert cost <= MESSAGES_PER_TASK[on], (
            f"one task now costs {cost:.1f} messages through the server (reclaimer {'on' if on else 'off'}), "
            f"budget {MESSAGES_PER_TASK[on]}"
        )


async def test_a_task_submitted_alone_costs_no_more_messages_than_its_budget(
    own_server: NatsServer, namespace: str
) -> None:
    costs = {
        on: await messages_per_task(own_server, f"{namespace}a{int(on)}", reclaimer=on, one_at_a_time=True)
        for on in (True, False)
    }
    print("messages per task one at a time (reclaimer on, off):", {k: round(v, 1) for k, v in costs.items()})
    for on, cost in costs.items():
        assert cost <= MESSAGES_ONE_AT_A_TIME[on], (
            f"one task submitted alone now costs {cost:.1f} messages through the server (reclaimer "
            f"{'on' if on else 'off'}), budget {MESSAGES_ONE_AT_A_TIME[on]}"
        )
