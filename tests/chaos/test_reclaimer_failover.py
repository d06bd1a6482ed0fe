"""Chaos: on a 3-node cluster, the active ``corral reclaimer`` and a worker holding claims are SIGKILLed
at the same moment. The standby takes over and the dead worker's claims are back in the queue within
the presence TTL + 2 s of the kill; every task completes exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import coord
from coord.lease import LEADER, read_term
from coord.server import NatsCluster
from coord.settings import Settings
from coord.tasks.models import Transition
from dispatch import Dispatcher
from tests.chaos.helpers_fleet import Fleet, completions, specs, stop_within, wait_all, worker_env
from tests.conftest import PYTHON
from tests.helpers_wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TTL, INTERVAL = 4.0, 1.0
"""Presence (and so lease) timing of every process: short, so the test measures fail-over, not waiting."""
BOUND = TTL + 2.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(3, store_root=tmp_path / "cluster") as c:
        yield c


def _reclaimer(fleet: Fleet, name: str) -> subprocess.Popen[bytes]:
    argv = [PYTHON, "-m", "corral", "--server", fleet.url, "--namespace", fleet.namespace, "--replicas", "3"]
    log = open(fleet.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*argv, "reclaimer", "--json", "--sweep", "0.5"], env=fleet.env, stdout=log, stderr=log)
    fleet.procs[name] = proc  # killed with the fleet
    return proc


def _roles(fleet: Fleet, name: str) -> list[str]:
    lines = (fleet.logs / f"{name}.log").read_text(errors="replace").splitlines()
    return [json.loads(line)["role"] for line in lines if line.startswith('{"role"')]


async def _holder_pid(conn: coord.Coord) -> int | None:
    term, _ = read_term(await conn.roster.get(LEADER))
    return term.record.pid if term is not None and term.record.ready else None


async def test_killing_the_active_reclaimer_with_a_worker_leaves_no_claim_behind(
    cluster: NatsCluster, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = worker_env(subprocess_env, CORRAL_PRESENCE_TTL=f"{TTL:g}", CORRAL_PRESENCE_INTERVAL=f"{INTERVAL:g}")
    fleet = Fleet(cluster.url, namespace, env, tmp_path, replicas=3)
    settings = Settings.load(presence_ttl=TTL, presence_interval=INTERVAL)
    try:
        async with coord.connect(cluster.url, namespace=namespace, replicas=3, settings=settings) as conn:
            first = _reclaimer(fleet, "r1")
            await eventually(lambda: _holder_pid_is(conn, first.pid), 30, "the first reclaimer active")
            second = _reclaimer(fleet, "r2")
            await eventually(lambda: _roles(fleet, "r2") == ["standby"], 30, "the second one a standby")
            for worker_id in ("w1", "w2", "w3"):
                fleet.spawn(worker_id, concurrency=4)
            for worker_id in ("w1", "w2", "w3"):
                assert await conn.presence.wait_present(worker_id, 30)
            dispatcher = await Dispatcher(conn, reclaimer=False).start()
            try:
                ids = await dispatcher.submit_many(specs("f", 60, seconds=1.5))

                async def victim_claims() -> dict[str, str]:
                    records = await conn.tasks.list()
                    return {
                        r.task_id: r.claim.claim_id
                        for r in records
                        if r.claim is not None and r.claim.worker_id == "w1" and r.task_id in ids
                    }

                async def victim_busy() -> bool:
                    return len(await victim_claims()) >= 2

                await eventually(victim_busy, 30, "w1 holding claims")
                held = await victim_claims()
                killed = time.monotonic()
                os.kill(first.pid, signal.SIGKILL)
                os.kill(fleet.procs["w1"].pid, signal.SIGKILL)

                async def all_back() -> bool:
                    for task_id, claim_id in held.items():
                        record = await conn.tasks.get(task_id)
                        if record.claim is not None and record.claim.claim_id == claim_id:
                            return False
                    return True

                await eventually(all_back, BOUND + 10, "the dead worker's claims back in the queue")
                took = time.monotonic() - killed
                print(f"{len(held)} claims of the killed worker back {took:.2f}s after the kill (TTL {TTL:g}s)")
                assert took <= BOUND, f"claims back after {took:.2f}s, over presence TTL + 2 s"
                # the standby reclaims while it rebuilds, before it marks the lease ready and says so
                await eventually(lambda: _roles(fleet, "r2")[-1:] == ["active"], 5, "the standby saying it is active")
                assert await _holder_pid(conn) == second.pid
                for task_id in held:
                    journal = await conn.tasks.journal(task_id)
                    assert [e.transition for e in journal].count(Transition.RECLAIMED) == 1, task_id
                await wait_all(dispatcher, ids, 120)
                counts = await completions(conn, ids)
                assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
            finally:
                await stop_within(dispatcher)
            assert second.poll() is None and fleet.procs["w2"].poll() is None and fleet.procs["w3"].poll() is None
    finally:
        fleet.close()


async def _holder_pid_is(conn: coord.Coord, pid: int) -> bool:
    return await _holder_pid(conn) == pid
