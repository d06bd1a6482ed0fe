"""Hostile writes into the limits bucket while real workers run (real server): work continues under
the limit, no slot is held past its bound, and a holder SIGKILLed between slot and claim with a clock
an hour ahead does not keep its slot."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import coord
from coord.limits import SLOT_GRACE, LimitsView, parse_rate
from coord.limits.models import limit_key, rate_key
from coord.server import NatsServer
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher, Reclaimer
from tests.conftest import ROOT
from tests.workers.test_limits import Probe, run_all, workers

SWEEP = 0.5
SLOT_BOUND = SLOT_GRACE + SWEEP + 1.5
"""docs/security.md: 5 s after the write plus a sweep; 1.5 s for a loaded machine."""

_DIE_HOLDING = """
import asyncio, os, signal, sys
from datetime import UTC, datetime, timedelta
import coord
from coord.limits import SlotHolder

async def main() -> None:
    async with coord.connect(sys.argv[1], namespace=sys.argv[2]) as conn:
        ahead = datetime.now(UTC) + timedelta(hours=1)  # this host's clock runs an hour ahead
        holder = SlotHolder(task_id="victim", epoch=1, worker_id="ghost", at=ahead)
        await conn.limits.take_slot("q", 0, over=0, holder=holder)
        print("taken", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # dies between the slot and the claim

asyncio.run(main())
"""


async def _slots_free(conn: coord.Coord, within: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(within):
        while await conn.limits.slots("q"):
            await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_hostile_limit_rate_and_slot_values_neither_stop_the_workers_nor_loosen_the_limit(
    nats_server: NatsServer, coord_conn: coord.Coord
) -> None:
    limits, bucket = coord_conn.limits, coord_conn.limits.bucket
    probe = Probe(0.1)
    await limits.set("q", concurrency=2, rate=parse_rate("50/s"))
    async with (
        workers(nats_server.url, coord_conn.namespace, probe, 2, 4),
        Reclaimer(coord_conn, sweep_interval=SWEEP),
        Dispatcher(coord_conn, reclaimer=False) as dispatcher,
    ):
        await run_all(dispatcher, [Spec(task_id=f"a{i}", queue="q") for i in range(6)])
        stamp = datetime.now(UTC).isoformat()
        await bucket.put(rate_key("q"), b'{"tat": NaN}')
        await bucket.put(rate_key("q"), json.dumps({"tat": 1e15}).encode())
        await bucket.put(
            "slot.q.00", json.dumps({"task_id": "a0", "epoch": 1, "worker_id": "w0", "at": stamp}).encode()
        )
        future = {"task_id": "nosuch", "epoch": 1, "worker_id": "w9", "at": "2999-01-01T00:00:00+00:00"}
        await bucket.put("slot.q.1", json.dumps(future).encode())
        await bucket.put("slot.q.999", b"not json")
        await bucket.put(limit_key("q"), b'{"queue": "q", "concurrency": 2, "rate": {"count": Infinity}}')
        await limits.set("q", concurrency=2, rate=parse_rate("50/s"))  # the operator repairs it at once
        await asyncio.sleep(0.5)
        await run_all(dispatcher, [Spec(task_id=f"b{i}", queue="q") for i in range(12)])
        assert probe.peak <= 2  # never more than the limit, whatever was written
        await _slots_free(coord_conn, SLOT_BOUND)  # the hostile slots too, within the bound
        assert not [e.key for e in await bucket.scan("slot.") if not e.deleted]  # slot.q.00 removed as well
        await run_all(dispatcher, [Spec(task_id=f"c{i}", queue="q") for i in range(6)])  # still working
    assert len(probe.starts) == 24


async def test_a_holder_sigkilled_between_slot_and_claim_with_its_clock_an_hour_ahead_loses_the_slot(
    nats_server: NatsServer, coord_conn: coord.Coord, subprocess_env: dict[str, str]
) -> None:
    await coord_conn.limits.set("q", concurrency=1)
    spec = Spec(task_id="victim", queue="q").model_dump(mode="json")
    await coord_conn.tasks.schedule("victim", queue="q", spec=spec)
    view = await LimitsView(coord_conn.limits, ["q"]).start()
    try:
        async with Reclaimer(coord_conn, sweep_interval=SWEEP):
            dying = subprocess.run(
                [sys.executable, "-c", _DIE_HOLDING, nats_server.url, coord_conn.namespace],
                env=subprocess_env,
                cwd=ROOT,
                capture_output=True,
                timeout=60,
            )
            assert dying.returncode == -9 and b"taken" in dying.stdout, dying.stderr.decode()
            (slot,) = await coord_conn.limits.slots("q")
            assert slot.holder is not None and slot.holder.at > datetime.now(UTC)
            await _slots_free(coord_conn, SLOT_BOUND + 5)
            assert slot.written_at is not None
            held_for = (datetime.now(UTC) - slot.written_at).total_seconds()  # by the server's stamp
            assert SLOT_GRACE <= held_for <= SLOT_BOUND, held_for
            async with workers(nats_server.url, coord_conn.namespace, Probe(0.05), 1, 1):
                async with asyncio.timeout(30):
                    while (await coord_conn.tasks.get("victim")).status is not TaskStatus.SUCCEEDED:
                        await asyncio.sleep(0.1)
    finally:
        await view.stop()
