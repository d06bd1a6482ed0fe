"""A 64 MiB spec payload and a 64 MiB result through a real `corral worker` process and `corral submit --wait`."""

from __future__ import annotations

import json
from pathlib import Path

import coord
from coord.server import NatsServer
from coord.tasks import TaskStatus
from dispatch import Dispatcher
from tests.corral.helpers_cli import corral
from tests.e2e.conftest import WorkerFactory, log_of

MIB = 1 << 20


async def test_a_64_mib_payload_and_result_through_a_worker_process_and_submit_wait(
    nats_server: NatsServer,
    namespace: str,
    subprocess_env: dict[str, str],
    spawn_worker: WorkerFactory,
    coord_conn: coord.Coord,
    tmp_path: Path,
) -> None:
    # An embedded reclaimer watches: had the worker's loop stalled past its presence TTL or its lease,
    # the claim would be taken back (a second epoch in the journal).
    async with Dispatcher(coord_conn, reclaimer=True):
        worker = spawn_worker("big-1", handler="tests.e2e.helpers_handlers:large", ttl=1.5, interval=0.5)
        payload = tmp_path / "payload.json"
        payload.write_text(json.dumps({"data": "d" * (64 * MIB), "mib": 64, "seconds": 2}))
        out = tmp_path / "result.json"
        ran = await corral(
            nats_server.url,
            namespace,
            subprocess_env,
            "submit",
            "--queue",
            "q",
            "--id",
            "big",
            "--timeout",
            "2",
            "--payload",
            f"@{payload}",
            "--wait",
            "--output",
            str(out),
            "--json",
            within=180,
        )
    assert ran.code == 0, (ran.out[-2000:], ran.err[-2000:], log_of(worker)[-4000:])
    shown = json.loads(ran.out)
    assert shown["status"] == "succeeded" and shown["result"] == str(out) and shown["epoch"] == 1
    result = json.loads(out.read_text())
    assert result["summary"] == f"given {64 * MIB} characters"
    assert result["output"] == "o" * (64 * MIB)
    record = await coord_conn.tasks.get("big")
    assert record.status is TaskStatus.SUCCEEDED and record.spec_blob is not None and record.result_blob is not None
    assert record.spec_blob.size > 64 * MIB and record.result_blob.size > 64 * MIB
    journal = await coord_conn.tasks.journal("big")
    kinds = [e.transition.value for e in journal]
    assert kinds.count("claimed") == 1 and "reclaimed" not in kinds, kinds
    assert kinds.count("heartbeat") >= 2, f"the lease was kept while the handler ran: {kinds}"
    show = await corral(nats_server.url, namespace, subprocess_env, "tasks", "show", "big", within=120)
    assert show.code == 0 and "result blob" in show.out and "spec blob" in show.out, (show.out, show.err)
