"""One trace per task across real processes, and the fleet's metrics.

The parent (dispatcher with its embedded reclaimer) runs in the test process and records its spans
in memory; workers are real ``corral worker`` processes that only see standard ``OTEL_*``
variables and export over OTLP/HTTP to :class:`~tests.helpers_telemetry.OtlpReceiver`. The first worker is
SIGKILLed mid-task, so the trace also holds the reclaim and the re-run on the second worker.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import coord
import coord.metrics
from coord import tracing
from coord.metrics import Instruments
from coord.server import NatsServer
from coord.tasks import TaskStatus
from coord.wire import Result, Spec
from dispatch import Dispatcher
from tests.conftest import PYTHON
from tests.helpers_telemetry import OtlpReceiver, ReceivedSpan
from tests.helpers_wait import eventually
from workers import Context, Worker, as_handler

TTL = 1.5


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    """This process's spans, in memory; tracing is switched off again afterwards."""
    exporter = InMemorySpanExporter()
    tracing.configure("none", exporter=exporter)
    yield exporter
    tracing.configure("none")


@pytest.fixture
def meter() -> Iterator[InMemoryMetricReader]:
    """corral's instruments of this process, read in memory (the global meter provider stays untouched)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    saved = coord.metrics._instruments
    coord.metrics._instruments = Instruments(provider.get_meter("corral"))
    yield reader
    coord.metrics._instruments = saved
    provider.shutdown()


def traced_env(subprocess_env: dict[str, str], receiver: OtlpReceiver) -> dict[str, str]:
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export ended spans within 0.1 s (the first worker gets killed)
    return env


def spawn(url: str, namespace: str, worker_id: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    argv = [PYTHON, "-m", "corral", "--server", url, "--namespace", namespace, "worker", "-q", "q"]
    argv += ["--handler", "tests.e2e.helpers_handlers:sleepy", "-c", "1", "--id", worker_id]
    argv += ["--ttl", str(TTL), "--interval", "0.5", "-v"]
    with open(logs / f"{worker_id}.log", "wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def one(spans: list[ReceivedSpan], name: str, worker: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.attributes.get("corral.worker.id") == worker]
    assert len(found) == 1, f"expected one {name!r} span of {worker}, got {[(s.name, s.attributes) for s in spans]}"
    return found[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


async def test_submit_claim_run_reclaim_and_rerun_across_processes_form_one_trace(
    coord_conn: coord.Coord,
    nats_server: NatsServer,
    namespace: str,
    subprocess_env: dict[str, str],
    receiver: OtlpReceiver,
    memory: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    env = traced_env(subprocess_env, receiver)
    marks = tmp_path / "marks"
    marks.mkdir()
    w1 = spawn(nats_server.url, namespace, "w1", env, tmp_path)
    w2: subprocess.Popen[bytes] | None = None
    try:
        assert await coord_conn.presence.wait_present("w1", 20)
        async with Dispatcher(coord_conn) as dispatcher:
            assert dispatcher.reclaimer is not None
            # Lease 9 s: renewed every 3 s (one sampled heartbeat in the 4 s re-run), and far past the
            # presence TTL, so the reclaim is caused by w1's departure and not by its deadline.
            spec = Spec(task_id="t1", queue="q", timeout=9.0, payload={"seconds": 4.0, "marks": str(marks)})
            await dispatcher.submit(spec)
            await eventually(lambda: any(marks.glob("t1.1.w1.start")), 20, "w1 to start t1")
            w2 = spawn(nats_server.url, namespace, "w2", env, tmp_path)
            assert await coord_conn.presence.wait_present("w2", 20)
            await asyncio.to_thread(receiver.wait_until, lambda: any(s.name == "claim" for s in receiver.spans()), 15)
            w1.kill()
            event = await asyncio.wait_for(dispatcher.reclaimer.events.get(), TTL + 5)
            record = await dispatcher.wait("t1", 30)
        assert (event.worker_id, event.reason) == ("w1", "worker-left:expired")
        assert record.status is TaskStatus.SUCCEEDED and record.epoch == 2
        w2.send_signal(signal.SIGTERM)  # a graceful exit flushes its spans
        assert await asyncio.to_thread(w2.wait, 30) == 0
    finally:
        for proc in (w1, w2):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    local = {s.name: s for s in memory.get_finished_spans()}
    assert sorted(local) == ["reclaim", "submit"], [s.name for s in memory.get_finished_spans()]
    submit, reclaim = local["submit"], local["reclaim"]
    trace_id, submit_id = hex_ids(submit)
    _, reclaim_id = hex_ids(reclaim)
    assert submit.parent is None and submit.kind is SpanKind.PRODUCER
    assert reclaim.parent is not None and reclaim.parent.span_id == submit.context.span_id
    assert f"{reclaim.parent.trace_id:032x}" == trace_id
    assert reclaim.attributes is not None and reclaim.attributes["corral.worker.id"] == "w1"
    (left,) = reclaim.events
    assert left.name == "presence.left" and dict(left.attributes or {}) == {
        "reason": "expired",
        "corral.worker.id": "w1",
    }

    remote = [s for s in receiver.spans() if s.attributes.get("corral.task.id") == "t1"]
    assert {s.trace_id for s in remote} == {trace_id}, "every worker span belongs to the submit's trace"
    assert {s.service for s in remote} == {"corral-worker"}
    first_claim = one(remote, "claim", "w1")
    assert (first_claim.attributes["corral.task.attempt"], first_claim.attributes["corral.task.epoch"]) == (1, 1)
    assert [s.name for s in remote if s.name == "run" and s.attributes["corral.worker.id"] == "w1"] == []  # killed
    rerun = [s for s in remote if s.attributes.get("corral.worker.id") == "w2"]
    assert sorted(s.name for s in rerun) == ["claim", "complete", "heartbeat", "run"]
    claim, run = one(rerun, "claim", "w2"), one(rerun, "run", "w2")
    complete, heartbeat = one(rerun, "complete", "w2"), one(rerun, "heartbeat", "w2")
    assert first_claim.parent_span_id == claim.parent_span_id == run.parent_span_id == submit_id
    assert complete.parent_span_id == heartbeat.parent_span_id == run.span_id
    assert (run.attributes["corral.task.attempt"], run.attributes["corral.task.epoch"]) == (2, 2)
    assert run.kind == 5 and claim.kind == 5  # SPAN_KIND_CONSUMER
    assert run.links == [(trace_id, reclaim_id)]
    assert run.link_attributes == [{"corral.link": "reclaim"}]
    assert run.events == ["corral.reclaimed"]
    (named,) = run.event_attributes
    assert named["corral.reclaim.span_id"] == reclaim_id
    assert (named["corral.reclaim.worker.id"], named["corral.reclaim.epoch"]) == ("w1", 1)
    assert named["corral.reclaim.reason"] == "worker-left:expired"
    for span in remote:
        assert "payload" not in " ".join(span.attributes), "no payloads in span attributes"

    worker_metrics = receiver.metrics()  # w2 flushed its metrics at exit (w1 was killed before any export)
    assert worker_metrics["corral.tasks.claimed"] == [
        ({"messaging.system": "nats", "messaging.destination.name": "q"}, 1)
    ]
    assert [v for _, v in worker_metrics["corral.tasks.succeeded"]] == [1]
    assert [v for _, v in worker_metrics["corral.tasks.in_flight"]] == [0]
    assert [v for _, v in worker_metrics["corral.task.run_time"]] == [1]  # one observation


def points(reader: InMemoryMetricReader) -> dict[str, dict[str | None, Any]]:
    """Metric name -> queue (None for queue-less attributes) -> value (count for histograms)."""
    data = reader.get_metrics_data()
    out: dict[str, dict[str | None, Any]] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    queue = dict(p.attributes or {}).get("messaging.destination.name")
                    if isinstance(p, HistogramDataPoint):
                        out.setdefault(metric.name, {})[queue] = p.count  # type: ignore[index]
                    elif isinstance(p, NumberDataPoint):
                        out.setdefault(metric.name, {})[queue] = p.value  # type: ignore[index]
    return out


def _succeed_or_raise(spec: Spec, ctx: Context) -> Result:
    if spec.payload == {"fail": True}:
        raise RuntimeError("asked to fail")
    return Result.success()


async def test_fleet_metrics_count_claims_outcomes_reclaims_and_time_each_stage(
    coord_conn: coord.Coord, meter: InMemoryMetricReader
) -> None:
    worker = Worker(coord_conn, ["q"], as_handler(_succeed_or_raise), concurrency=2, worker_id="wm")
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.wait_started(), 20)
    try:
        async with Dispatcher(coord_conn) as dispatcher:
            assert dispatcher.reclaimer is not None
            # A claim held by a worker that is not present, on a queue nobody serves: the reclaimer's
            # sweep takes it back, and the task then waits in that queue.
            await dispatcher.submit(Spec(task_id="orphan", queue="idle"))
            await coord_conn.tasks.claim("orphan", "ghost")
            await dispatcher.submit(Spec(task_id="ok", queue="q"))
            await dispatcher.submit(Spec(task_id="bad", queue="q", max_attempts=1, payload={"fail": True}))
            await dispatcher.submit(Spec(task_id="ok", queue="q"))  # idempotent: not counted again
            assert (await dispatcher.wait("ok", 20)).status is TaskStatus.SUCCEEDED
            assert (await dispatcher.wait("bad", 20)).status is TaskStatus.DEAD
            reclaim = await asyncio.wait_for(dispatcher.reclaimer.events.get(), 10)
            assert (reclaim.task_id, reclaim.reason) == ("orphan", "worker-absent")
            await eventually(lambda: points(meter).get("corral.queue.depth", {}).get("idle") == 1, 10, "depth")
            got = points(meter)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)

    assert got["corral.tasks.submitted"] == {"idle": 1, "q": 2}
    assert got["corral.tasks.claimed"] == {"q": 2}  # the ghost's claim was not a worker's
    assert got["corral.tasks.succeeded"] == {"q": 1}
    assert got["corral.tasks.failed"] == {"q": 1}
    assert got["corral.tasks.dead"] == {"q": 1}
    assert got["corral.tasks.reclaimed"] == {"idle": 1}
    assert got["corral.tasks.in_flight"] == {"q": 0}
    assert got["corral.presence.size"] == {None: 1}  # the worker
    assert got["corral.queue.depth"] == {"idle": 1}
    assert got["corral.task.claim_wait"] == {"q": 2}
    assert got["corral.task.run_time"] == {"q": 2}
    assert got["corral.reclaim.detection_latency"] == {"idle": 1}


async def test_with_tracing_off_records_carry_no_trace_context(coord_conn: coord.Coord) -> None:
    assert not tracing.enabled()
    async with Dispatcher(coord_conn, reclaimer=False) as dispatcher:
        await dispatcher.submit(Spec(task_id="plain", queue="q"))
    assert (await coord_conn.tasks.get("plain")).meta == {}


async def test_a_task_whose_trace_was_not_sampled_gets_no_worker_spans_but_keeps_its_context(
    coord_conn: coord.Coord, memory: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    unsampled = f"00-{trace_id}-00f067aa0ba902b7-00"
    pushes: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def on_push(msg: Any) -> None:
        pushes.put_nowait(dict(msg.headers or {}))

    sub = await coord_conn.nc.subscribe(coord_conn.names.results_subject("p1"), cb=on_push)
    worker = Worker(coord_conn, ["q"], as_handler(_succeed_or_raise), worker_id="wu")
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_started(), 20)
        spec = Spec(task_id="quiet", queue="q", parent_agent_id="p1")
        await coord_conn.tasks.schedule(
            "quiet", queue="q", spec=spec.model_dump(mode="json"), parent="p1", meta={"traceparent": unsampled}
        )
        headers = await asyncio.wait_for(pushes.get(), 20)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)
        await sub.unsubscribe()
    assert (await coord_conn.tasks.get("quiet")).status is TaskStatus.SUCCEEDED
    assert memory.get_finished_spans() == ()
    assert headers["traceparent"].startswith(f"00-{trace_id}-") and headers["traceparent"].endswith("-00")
