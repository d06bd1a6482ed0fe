"""Chaos: a Python worker and a TypeScript worker on one queue, each SIGKILLed once while tasks flow
and started again under a new id. Every task succeeds exactly once (one ``completed`` transition in
its journal), both languages did work, and the parent stops within 5 s."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

import coord
from coord.tasks import Transition
from coord.wire import Spec
from dispatch import Dispatcher
from dispatch.reclaimer import Reclaimer
from tests.chaos.helpers_fleet import completions, stop_within, wait_all
from tests.conftest import PYTHON
from tests.helpers_node import typescript_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 150
TTL = "2"
"""Presence TTL of both workers: a killed worker's claims go back within about this."""


def _spawn(argv: list[str], worker_id: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = open(logs / f"{worker_id}.log", "ab")  # noqa: SIM115 - closed with the process
    child_env = {**env, "CORRAL_WORKER_ID": worker_id, "CORRAL_PRESENCE_TTL": TTL, "CORRAL_PRESENCE_INTERVAL": "0.5"}
    return subprocess.Popen(argv, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def test_python_and_typescript_workers_on_one_queue_under_kills_run_every_task_once(
    nats_server: coord.NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **subprocess_env,
        "CORRAL_URL": nats_server.url,
        "CORRAL_NAMESPACE": namespace,
        "CORRAL_QUEUE": "q",
        "CORRAL_CONCURRENCY": "3",
    }
    python = [PYTHON, "-m", "corral", "worker", "-q", "q", "-c", "3", "--handler", "corral.conformance.handler:handle"]
    node = typescript_worker()
    procs: list[subprocess.Popen[bytes]] = []

    def start(kind: str, n: int) -> subprocess.Popen[bytes]:
        worker_id = f"{kind}{n}"
        argv = [*python, "--id", worker_id] if kind == "py" else node
        procs.append(_spawn(argv, worker_id, env, tmp_path))
        return procs[-1]

    try:
        async with coord.connect(nats_server.url, namespace=namespace) as conn, Reclaimer(conn, sweep_interval=0.25):
            py = start("py", 1)
            assert await conn.presence.wait_present("py1", 30)
            ts = start("ts", 1)
            assert await conn.presence.wait_present("ts1", 30)
            dispatcher = await Dispatcher(conn).start()
            specs = [
                Spec(task_id=f"m{i}", queue="q", payload={"sleep": 0.3, "echo": i}, timeout=30) for i in range(TASKS)
            ]
            ids = await dispatcher.submit_many(specs)
            await asyncio.sleep(1.5)  # both are running tasks when the kills land
            ts.send_signal(signal.SIGKILL)
            await asyncio.sleep(1.0)
            start("ts", 2)
            await asyncio.sleep(1.5)
            py.send_signal(signal.SIGKILL)
            await asyncio.sleep(1.0)
            start("py", 2)
            await wait_all(dispatcher, ids, within=90)
            counts = await completions(conn, ids)
            assert [t for t, n in counts.items() if n != 1] == [], counts
            records = [await conn.tasks.get(t) for t in ids]
            outputs = sorted(r.result["output"] for r in records)
            assert outputs == list(range(TASKS))
            workers = {e.worker_id for r in records for e in r.journal if e.transition is Transition.COMPLETED}
            assert any(w and w.startswith("py") for w in workers) and any(w and w.startswith("ts") for w in workers), (
                workers
            )
            killed = {e.worker_id for r in records for e in r.journal if e.transition is Transition.RECLAIMED}
            assert killed == {"ts1", "py1"}, f"each kill must land while its worker runs tasks: {killed}"
            await stop_within(dispatcher)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
