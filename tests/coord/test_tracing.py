"""Tracing plumbing: trace context through real NATS headers and task meta, spans, opt-in export.

In-process tests use an in-memory exporter; the export tests run real child processes that only
see standard ``OTEL_*`` variables and send OTLP/HTTP to :class:`~tests.helpers_telemetry.OtlpReceiver`, a
receiver living in the test process that decodes the protobuf requests.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import coord
from coord import tracing
from tests.conftest import PYTHON
from tests.helpers_telemetry import OtlpReceiver, block_imports, clean_env, run_child


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


# --- in-process: context through real NATS --------------------------------------------------------


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, kept in memory; tracing is switched off again afterwards."""
    exporter = InMemorySpanExporter()
    tracing.configure("none", exporter=exporter)
    yield exporter
    tracing.configure("none")


def finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    matches = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(matches) == 1, f"expected one {name!r} span, got {[s.name for s in exporter.get_finished_spans()]}"
    return matches[0]


async def test_consumer_span_is_a_child_of_the_submit_span_across_a_jetstream_hop(
    coord_conn: coord.Coord, memory: InMemorySpanExporter
) -> None:
    subject = coord_conn.names.notification_subject("q1", "t0")
    with tracing.start_span(tracing.SUBMIT, "task-1", "q1", attempt=1):
        headers = tracing.inject({"Nats-Msg-Id": "task-1:1"})
        await coord_conn.js.publish(subject, b"ready", headers=headers)

    sub = await coord_conn.js.pull_subscribe(subject, durable="w")
    (msg,) = await sub.fetch(1, timeout=5)
    with tracing.start_span(
        tracing.RUN, "task-1", "q1", 1, epoch=1, worker_id="w1", context=tracing.extract(msg.headers)
    ):
        await msg.ack()

    submit, run = finished(memory, "submit"), finished(memory, "run")
    assert run.context.trace_id == submit.context.trace_id
    assert run.parent is not None and run.parent.span_id == submit.context.span_id
    assert run.parent.is_remote
    assert submit.kind is SpanKind.PRODUCER and run.kind is SpanKind.CONSUMER
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "task-1:1"


async def test_baggage_travels_with_the_trace_context(coord_conn: coord.Coord, memory: InMemorySpanExporter) -> None:
    subject = coord_conn.names.event_subject("parent", "child", "progress")
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracing.start_span(tracing.SUBMIT, "task-2"):
            await coord_conn.js.publish(subject, b"{}", headers=tracing.inject())
    finally:
        otel_context.detach(token)

    sub = await coord_conn.js.pull_subscribe(subject, durable="p")
    (msg,) = await sub.fetch(1, timeout=5)
    received = tracing.extract(msg.headers)
    assert baggage.get_baggage("tenant", received) == "acme"
    assert trace.get_current_span(received).get_span_context().trace_id == finished(memory, "submit").context.trace_id


async def test_rerun_after_reclaim_is_a_child_of_submit_with_a_link_to_the_reclaim(
    coord_conn: coord.Coord, memory: InMemorySpanExporter
) -> None:
    tasks = await coord_conn.kv(coord_conn.names.tasks_bucket)
    subject = coord_conn.names.notification_subject("q2", "t0")
    # Parent: the submit span's context goes into the record's meta.
    with tracing.start_span(tracing.SUBMIT, "task-3", "q2", 1):
        revision = await tasks.create("task-3", json.dumps({"meta": tracing.context_to_meta()}).encode())
    # Reclaimer: continues the record's trace, stores its own context next to it, republishes.
    record = json.loads((await tasks.get("task-3")).value or b"{}")
    with tracing.start_span(
        tracing.RECLAIM, "task-3", "q2", 1, epoch=1, context=tracing.context_from_meta(record["meta"])
    ) as span:
        span.add_event(tracing.EVENT_PRESENCE_LEFT, {"reason": "expired", "corral.worker.id": "w1"})
        record["meta"].update(tracing.context_to_meta(prefix=tracing.RECLAIM_META_PREFIX))
        await tasks.update("task-3", json.dumps(record).encode(), last=revision)
        await coord_conn.js.publish(subject, b"ready", headers=tracing.inject({"Nats-Msg-Id": "task-3:2"}))
    # Worker on the re-run: parent from meta, link to the reclaim that put the task back.
    sub = await coord_conn.js.pull_subscribe(subject, durable="w")
    (msg,) = await sub.fetch(1, timeout=5)
    record = json.loads((await tasks.get("task-3")).value or b"{}")
    parent = tracing.context_from_meta(record["meta"])
    reclaim_ctx = tracing.context_from_meta(record["meta"], prefix=tracing.RECLAIM_META_PREFIX)
    links = tracing.links_to(tracing.extract(msg.headers), attributes={"corral.link": "reclaim"})
    with tracing.start_span(
        tracing.RUN, "task-3", "q2", 2, epoch=2, worker_id="w2", context=parent, links=links
    ) as run:
        run.add_event(tracing.EVENT_RECLAIMED, {"corral.task.epoch": 1})
    await msg.ack()

    submit, reclaim, rerun = finished(memory, "submit"), finished(memory, "reclaim"), finished(memory, "run")
    assert submit.context.trace_id == reclaim.context.trace_id == rerun.context.trace_id
    assert reclaim.parent is not None and reclaim.parent.span_id == submit.context.span_id
    assert rerun.parent is not None and rerun.parent.span_id == submit.context.span_id
    assert [link.context.span_id for link in rerun.links] == [reclaim.context.span_id]
    assert trace.get_current_span(reclaim_ctx).get_span_context().span_id == reclaim.context.span_id
    assert [e.name for e in reclaim.events] == ["presence.left"]
    assert [e.name for e in rerun.events] == ["corral.reclaimed"]


async def test_trace_headers_from_other_clients_are_read_in_any_case(
    coord_conn: coord.Coord, memory: InMemorySpanExporter
) -> None:
    subject = coord_conn.names.notification_subject("q3", "t0")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await coord_conn.js.publish(subject, b"x", headers={"Traceparent": traceparent, "Baggage": "k=v"})
    sub = await coord_conn.js.pull_subscribe(subject, durable="w")
    (msg,) = await sub.fetch(1, timeout=5)
    ctx = tracing.extract(msg.headers)
    span_context = trace.get_current_span(ctx).get_span_context()
    assert f"{span_context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span_context.span_id:016x}" == "b7ad6b7169203331"
    assert baggage.get_baggage("k", ctx) == "v"


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Nats-Msg-Id": "t:1"},
        {"traceparent": "garbage"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
    ],
)
def test_missing_or_malformed_trace_headers_start_a_fresh_trace(
    headers: dict[str, str] | None, memory: InMemorySpanExporter
) -> None:
    ctx = tracing.extract(headers)
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    with tracing.start_span(tracing.RUN, "task-4", context=ctx):
        pass
    assert finished(memory, "run").parent is None


def test_task_attributes_follow_messaging_conventions_and_skip_unknowns() -> None:
    attrs = tracing.task_attributes("task-5", "emails", 2, 7, "worker-9", operation=tracing.CLAIM)
    assert attrs == {
        "messaging.system": "nats",
        "messaging.operation.name": "claim",
        "messaging.operation.type": "receive",
        "messaging.destination.name": "emails",
        "messaging.message.id": "task-5:2",
        "messaging.client.id": "worker-9",
        "corral.task.id": "task-5",
        "corral.task.queue": "emails",
        "corral.task.attempt": 2,
        "corral.task.epoch": 7,
        "corral.worker.id": "worker-9",
    }
    assert tracing.task_attributes("task-5") == {"messaging.system": "nats", "corral.task.id": "task-5"}
    assert "messaging.operation.type" not in tracing.task_attributes("t", operation=tracing.HEARTBEAT)


def test_an_exception_in_a_span_is_recorded_with_error_status(memory: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError, match="handler broke"), tracing.start_span(tracing.RUN, "task-6", "q"):
        raise RuntimeError("handler broke")
    run = finished(memory, "run")
    assert run.status.status_code is StatusCode.ERROR
    assert [e.name for e in run.events] == ["exception"]


def test_configure_is_idempotent_and_a_new_exporter_replaces_the_old(memory: InMemorySpanExporter) -> None:
    tracing.configure("none", exporter=memory)
    with tracing.start_span(tracing.SUBMIT, "a"):
        pass
    assert len(memory.get_finished_spans()) == 1  # not doubled by the second configure

    other = InMemorySpanExporter()
    tracing.configure("none", exporter=other)
    with tracing.start_span(tracing.SUBMIT, "b"):
        pass
    assert len(memory.get_finished_spans()) == 1
    assert [s.attributes["corral.task.id"] for s in other.get_finished_spans() if s.attributes] == ["b"]
    assert tracing.configured_mode() == "none"


def test_when_tracing_is_off_spans_are_a_shared_noop_and_nothing_is_injected(memory: InMemorySpanExporter) -> None:
    tracing.configure("none")
    assert not tracing.enabled()
    first = tracing.start_span(tracing.RUN, "t", "q", 1)
    assert first is tracing.start_span(tracing.SUBMIT, "u")
    with first as span:
        assert not span.is_recording()
        assert tracing.inject() == {}
        assert tracing.context_to_meta() == {}
    assert memory.get_finished_spans() == ()


def test_a_remote_context_still_passes_through_a_process_that_does_not_record(memory: InMemorySpanExporter) -> None:
    tracing.configure("none")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.start_span(tracing.RUN, "t", context=tracing.extract({"traceparent": traceparent})):
        assert tracing.inject()["traceparent"] == traceparent


def test_heartbeat_throttle_lets_one_span_through_per_interval() -> None:
    throttle = tracing.Throttle(30.0)
    beats = [throttle.ready(now=float(t)) for t in range(0, 95)]
    assert [t for t, due in enumerate(beats) if due] == [0, 30, 60, 90]
    with pytest.raises(ValueError, match="interval"):
        tracing.Throttle(-1)


# --- child processes: configuration through standard OTEL_* variables -----------------------------

EMIT = """
import json, sys
from opentelemetry import trace
from coord import tracing
tracing.configure({mode!r}, service_name="corral-test")
with tracing.start_span(tracing.SUBMIT, "task-7", "q7", 1):
    pass
print(json.dumps({{"enabled": tracing.enabled(), "provider": type(trace.get_tracer_provider()).__name__}}))
"""


def test_nothing_is_installed_or_exported_without_configuration(
    subprocess_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    done = run_child(EMIT.format(mode="env"), clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"enabled": False, "provider": "ProxyTracerProvider"}
    assert done.stderr == ""
    assert receiver.requests == []


def test_standard_otlp_endpoint_variable_exports_spans_over_http(
    subprocess_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    env = clean_env(subprocess_env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    done = run_child(EMIT.format(mode="env"), env)
    assert done.returncode == 0, done.stderr
    (span,) = receiver.spans()  # the SDK flushes at exit
    assert (span.name, span.service) == ("submit", "corral-test")
    assert span.kind == 4  # SPAN_KIND_PRODUCER
    assert span.attributes["corral.task.id"] == "task-7"
    assert span.attributes["messaging.destination.name"] == "q7"
    assert span.attributes["messaging.system"] == "nats"


def test_otel_service_name_wins_over_corrals_default(subprocess_env: dict[str, str], receiver: OtlpReceiver) -> None:
    env = clean_env(
        subprocess_env,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint + "/v1/traces",
        OTEL_SERVICE_NAME="billing-workers",
    )
    done = run_child(EMIT.format(mode="env"), env)
    assert done.returncode == 0, done.stderr
    assert [s.service for s in receiver.spans()] == ["billing-workers"]


def test_console_mode_prints_one_line_per_span_on_stderr_and_keeps_stdout_clean(
    subprocess_env: dict[str, str],
) -> None:
    done = run_child(EMIT.format(mode="console"), clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["enabled"] is True
    (line,) = done.stderr.splitlines()
    assert line.startswith("[trace] submit ")
    assert "corral.task.id=task-7" in line and "trace=" in line and "parent=-" in line


def test_grpc_protocol_without_the_extra_is_a_clear_error_naming_it(subprocess_env: dict[str, str]) -> None:
    code = block_imports("opentelemetry.exporter.otlp.proto.grpc") + EMIT.format(mode="otlp")
    done = run_child(code, clean_env(subprocess_env, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "CorralError" in last and "corral[otlp]" in last and "grpc" in last


def test_unknown_exporter_variable_is_a_clear_error(subprocess_env: dict[str, str]) -> None:
    done = run_child(EMIT.format(mode="env"), clean_env(subprocess_env, OTEL_TRACES_EXPORTER="zipkin"))
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in done.stderr


SUBMITTER = """
import asyncio, sys
from opentelemetry import baggage, context
import coord
from coord import tracing
tracing.configure("env", service_name="submitter")
async def main():
    async with coord.connect(sys.argv[1], namespace=sys.argv[2]) as conn:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        with tracing.start_span(tracing.SUBMIT, "task-8", "q8", 1):
            headers = tracing.inject({"Nats-Msg-Id": "task-8:1"})
            await conn.js.publish(conn.names.notification_subject("q8", "t0"), b"ready", headers=headers)
        context.detach(token)
asyncio.run(main())
"""

WORKER = """
import asyncio, sys
from opentelemetry import baggage, trace
import coord
from coord import tracing
tracing.configure("env", service_name="worker")
async def main():
    async with coord.connect(sys.argv[1], namespace=sys.argv[2]) as conn:
        sub = await conn.js.pull_subscribe(conn.names.notification_subject("q8", "t0"), durable="workers")
        (msg,) = await sub.fetch(1, timeout=10)
        parent = tracing.extract(msg.headers)
        with tracing.start_span(tracing.RUN, "task-8", "q8", 1, epoch=1, worker_id="w-8", context=parent) as span:
            span.set_attribute("tenant", str(baggage.get_baggage("tenant", parent)))
            await msg.ack()
asyncio.run(main())
"""


def test_spans_of_a_submitter_and_a_worker_process_form_one_trace_over_nats(
    subprocess_env: dict[str, str], receiver: OtlpReceiver, nats_server: coord.NatsServer, namespace: str
) -> None:
    env = clean_env(subprocess_env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    args = [nats_server.url, namespace]
    worker = subprocess.Popen([PYTHON, "-c", WORKER, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        submitter = subprocess.run(
            [PYTHON, "-c", SUBMITTER, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert submitter.returncode == 0, submitter.stderr
        assert worker.wait(timeout=60) == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
        if worker.stderr:
            worker.stderr.close()

    receiver.wait_until(lambda: len(receiver.spans()) >= 2)
    by_name = {s.name: s for s in receiver.spans()}
    submit, run = by_name["submit"], by_name["run"]
    assert (submit.service, run.service) == ("submitter", "worker")
    assert run.trace_id == submit.trace_id
    assert run.parent_span_id == submit.span_id
    assert run.attributes["tenant"] == "acme"
    assert run.attributes["corral.worker.id"] == "w-8"
    assert run.attributes["messaging.operation.type"] == "process"


APP_PROVIDER = """
import json, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from coord import tracing
from coord.telemetry.setup import APP_PROVIDER_RECHECK
before = tracing.enabled()
trace.set_tracer_provider(TracerProvider())
time.sleep(APP_PROVIDER_RECHECK + 0.1)
print(json.dumps({"before": before, "after": tracing.enabled()}))
"""


def test_a_provider_the_application_installs_later_is_seen_within_the_recheck(
    subprocess_env: dict[str, str],
) -> None:
    done = run_child(APP_PROVIDER, clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"before": False, "after": True}
