"""Chaos: a worker under a systemd-like restart loop on a 3-node cluster (replicated namespace, presence
TTL 20 s): SIGKILLed while tasks flow and restarted 2 s later with the same id, several times. Each
restart takes its id back from its dead predecessor and serves within 3 s — it does not exit because
the id is "held", nor wait out the 20 s TTL — and no task is recorded twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import coord
from coord.priority import Priority
from coord.server import NatsCluster
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher
from tests.chaos.helpers_fleet import Fleet, completions, specs, stop_within, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RESTARTS = 4
RESTART_AFTER = 2.0
"""Seconds between the SIGKILL and the restart (systemd's ``RestartSec=2``)."""
SERVES_WITHIN = 3.0


async def test_a_worker_restarted_2s_after_each_sigkill_serves_again_within_3s_and_records_nothing_twice(
    namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    with NatsCluster(3, store_root=tmp_path / "cluster") as cluster:
        fleet = Fleet(cluster.url, namespace, subprocess_env, tmp_path, replicas=3)
        try:
            async with coord.connect(cluster.url, namespace=namespace, replicas=3) as conn:
                assert conn.settings.presence_ttl == 20  # what a restart must not wait out
                worker = fleet.spawn("sw1")
                assert await conn.presence.wait_present("sw1", 30)
                dispatcher = await Dispatcher(conn).start()
                ids: list[str] = []
                flowing = True

                async def flow() -> None:
                    batch = 0
                    while flowing:
                        ids.extend(await dispatcher.submit_many(specs(f"f{batch}-", 4, seconds=0.2)))
                        batch += 1
                        await asyncio.sleep(0.25)

                submitter = asyncio.create_task(flow())
                served: list[float] = []
                try:
                    for restart in range(RESTARTS):
                        await asyncio.sleep(1.5)  # tasks flow; some are running when the kill lands
                        worker.kill()
                        await asyncio.to_thread(worker.wait)
                        await asyncio.sleep(RESTART_AFTER)
                        restarted = time.monotonic()
                        worker = fleet.spawn("sw1")
                        probe = await dispatcher.submit(
                            Spec(task_id=f"probe{restart}", queue="q", payload={"seconds": 0}, priority=Priority.HIGH)
                        )
                        try:
                            record = await dispatcher.wait(probe, timeout=15)
                        except TimeoutError:
                            tail = fleet.log("sw1")[-1500:]
                            pytest.fail(f"restart {restart} not served in 15 s (exit code {worker.poll()}): {tail}")
                        served.append(time.monotonic() - restarted)
                        assert record.status is TaskStatus.SUCCEEDED, (record.status, record.error)
                        assert record.result["output"]["pid"] == worker.pid, record.result  # the new incarnation ran it
                        assert worker.poll() is None, fleet.log("sw1")[-3000:]
                        ids.append(probe)
                finally:
                    flowing = False
                    await asyncio.gather(submitter, return_exceptions=True)
                await wait_all(dispatcher, ids, 90)
                await stop_within(dispatcher)
                print("served again after each restart (s):", [round(s, 2) for s in served])
                assert fleet.dead() == {}, fleet.log("sw1")[-3000:]
                assert all(s < SERVES_WITHIN for s in served), served
                counts = await completions(conn, ids)
                assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
                assert fleet.log("sw1").count("took the id over from its previous holder") == RESTARTS
        finally:
            fleet.close()
