"""Metrics: corral's instruments, and exporting them only when configured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint

from coord.metrics import DURATION_BUCKETS, Instruments
from tests.helpers_telemetry import OtlpReceiver, block_imports, clean_env, run_child

EXPECTED = {
    "corral.tasks.submitted": "{task}",
    "corral.tasks.claimed": "{task}",
    "corral.tasks.succeeded": "{task}",
    "corral.tasks.failed": "{task}",
    "corral.tasks.dead": "{task}",
    "corral.tasks.reclaimed": "{task}",
    "corral.tasks.in_flight": "{task}",
    "corral.cas.retries": "{retry}",
    "corral.queue.depth": "{task}",
    "corral.presence.size": "{agent}",
    "corral.task.claim_wait": "s",
    "corral.task.run_time": "s",
    "corral.reclaim.detection_latency": "s",
}


def collect(reader: InMemoryMetricReader) -> dict[str, tuple[str, list[Any]]]:
    """Metric name -> (unit, data points) from one collection."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: (m.unit or "", list(m.data.data_points))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture
def reader_and_instruments() -> tuple[InMemoryMetricReader, Instruments]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return reader, Instruments(provider.get_meter("corral"))


def test_every_instrument_reports_under_its_name_and_unit_with_the_queue_as_attribute(
    reader_and_instruments: tuple[InMemoryMetricReader, Instruments],
) -> None:
    reader, inst = reader_and_instruments
    q = inst.attrs("emails")
    for counter in (inst.submitted, inst.claimed, inst.succeeded, inst.failed, inst.dead, inst.reclaimed):
        counter.add(1, q)
    inst.submitted.add(2, q)
    inst.cas_retries.add(3, q)
    inst.in_flight.add(1, q)
    inst.in_flight.add(1, q)
    inst.in_flight.add(-1, q)
    inst.queue_depth.set(42, q)
    inst.presence_size.set(7, inst.attrs())
    inst.claim_wait.record(0.002, q)
    inst.run_time.record(1.5, q)
    inst.detection_latency.record(3.2, q)

    got = collect(reader)
    assert {name: unit for name, (unit, _) in got.items()} == EXPECTED
    values = {name: points[0].value for name, (_, points) in got.items() if isinstance(points[0], NumberDataPoint)}
    assert values["corral.tasks.submitted"] == 3
    assert values["corral.tasks.in_flight"] == 1
    assert values["corral.cas.retries"] == 3
    assert values["corral.queue.depth"] == 42
    assert values["corral.presence.size"] == 7
    (depth,) = got["corral.queue.depth"][1]
    assert dict(depth.attributes) == {"messaging.system": "nats", "messaging.destination.name": "emails"}
    (presence,) = got["corral.presence.size"][1]
    assert dict(presence.attributes) == {"messaging.system": "nats"}


def test_duration_histograms_use_second_buckets_from_sub_millisecond_up(
    reader_and_instruments: tuple[InMemoryMetricReader, Instruments],
) -> None:
    reader, inst = reader_and_instruments
    q = inst.attrs("q")
    for seconds in (0.0003, 0.004, 0.004, 2.0):
        inst.claim_wait.record(seconds, q)
    (point,) = collect(reader)["corral.task.claim_wait"][1]
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == tuple(DURATION_BUCKETS)
    assert point.count == 4
    assert point.bucket_counts[0] == 1  # <= 0.5 ms
    assert point.bucket_counts[DURATION_BUCKETS.index(0.005)] == 2  # (2.5 ms, 5 ms]
    assert point.bucket_counts[DURATION_BUCKETS.index(2.5)] == 1


def test_queue_attributes_are_built_once_per_queue(reader_and_instruments: tuple[Any, Instruments]) -> None:
    _, inst = reader_and_instruments
    assert inst.attrs("a") is inst.attrs("a")
    assert inst.attrs("a") is not inst.attrs("b")
    assert inst.attrs(None) == {"messaging.system": "nats"}


# --- child processes: exporting only when configured ----------------------------------------------

RECORD = """
import json
from opentelemetry import metrics
from coord import metrics as corral_metrics
inst = corral_metrics.instruments()  # created before configure(): must still export afterwards
{configure}
inst.submitted.add(5, inst.attrs("q1"))
inst.run_time.record(0.25, inst.attrs("q1"))
inst.presence_size.set(3, inst.attrs())
print(json.dumps({{"provider": type(metrics.get_meter_provider()).__name__, "mode": corral_metrics.configured_mode()}}))
"""


def test_nothing_is_installed_or_exported_without_configuration(
    subprocess_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    done = run_child(RECORD.format(configure='corral_metrics.configure("env")'), clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"provider": "_ProxyMeterProvider", "mode": "env"}
    assert (done.stderr, receiver.requests) == ("", [])


def test_standard_otlp_endpoint_variable_exports_metrics_over_http(
    subprocess_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    env = clean_env(subprocess_env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_SERVICE_NAME="metrics-test")
    done = run_child(RECORD.format(configure='corral_metrics.configure("env")'), env)
    assert done.returncode == 0, done.stderr
    receiver.wait_until(lambda: "corral.tasks.submitted" in receiver.metrics())  # exported at exit at the latest
    got = receiver.metrics()
    assert got["corral.tasks.submitted"] == [({"messaging.system": "nats", "messaging.destination.name": "q1"}, 5)]
    assert got["corral.task.run_time"] == [({"messaging.system": "nats", "messaging.destination.name": "q1"}, 1)]
    assert got["corral.presence.size"] == [({"messaging.system": "nats"}, 3)]


def test_console_metrics_go_to_stderr(subprocess_env: dict[str, str]) -> None:
    done = run_child(RECORD.format(configure='corral_metrics.configure("console")'), clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mode"] == "console"
    assert '"corral.tasks.submitted"' in done.stderr


def test_serve_prometheus_without_the_extra_is_a_clear_error_naming_it(subprocess_env: dict[str, str]) -> None:
    code = block_imports("opentelemetry.exporter.prometheus") + RECORD.format(
        configure="""
try:
    corral_metrics.serve_prometheus(0)
except Exception as err:
    print(type(err).__name__ + ": " + str(err))
"""
    )
    done = run_child(code, clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    error, state = done.stdout.strip().splitlines()
    assert error.startswith("CorralError: ") and "pip install 'corral[prometheus]'" in error
    assert json.loads(state) == {"provider": "_ProxyMeterProvider", "mode": None}  # nothing was installed


def test_metrics_are_configured_once_and_a_different_second_configuration_is_refused(
    subprocess_env: dict[str, str],
) -> None:
    code = RECORD.format(
        configure="""
corral_metrics.configure("console")
corral_metrics.configure("console")  # same arguments: a no-op
try:
    corral_metrics.configure("otlp")
except Exception as err:
    print(type(err).__name__ + ": " + str(err))
"""
    )
    done = run_child(code, clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    error, state = done.stdout.strip().splitlines()
    assert error.startswith("CorralError: metrics are already exported as 'console'")
    assert json.loads(state)["mode"] == "console"
