"""Helpers for telemetry tests: a real OTLP/HTTP receiver, and clean child processes.

Shared by the tracing, metrics, CLI and end-to-end tests. :class:`OtlpReceiver` decodes the
protobuf requests the standard OpenTelemetry exporters send (``OTEL_EXPORTER_OTLP_ENDPOINT=
receiver.endpoint``); :func:`run_child` runs code in a fresh interpreter with :func:`clean_env`.
"""

from __future__ import annotations

import gzip
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from tests.conftest import PYTHON

__all__ = ["OtlpReceiver", "ReceivedSpan"]


def _any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    """One span as decoded from an ``ExportTraceServiceRequest``."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    service: str
    attributes: dict[str, Any]
    events: list[str]
    links: list[tuple[str, str]]
    status_code: int
    event_attributes: list[dict[str, Any]] = field(default_factory=list)
    """Attributes of each event, in the order of ``events``."""
    link_attributes: list[dict[str, Any]] = field(default_factory=list)
    """Attributes of each link, in the order of ``links``."""


@dataclass
class OtlpReceiver:
    """A real OTLP/HTTP endpoint on loopback that keeps and decodes what exporters send it."""

    requests: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._cond:
                    receiver.requests.append((self.path, body))
                    receiver._cond.notify_all()
                if self.path.endswith("/v1/traces"):
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                else:
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, decoded."""
        out: list[ReceivedSpan] = []
        for path, body in list(self.requests):
            if not path.endswith("/v1/traces"):
                continue
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                service = str(_attributes(rs.resource.attributes).get("service.name", ""))
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            ReceivedSpan(
                                name=s.name,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                kind=s.kind,
                                service=service,
                                attributes=_attributes(s.attributes),
                                events=[e.name for e in s.events],
                                links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                status_code=s.status.code,
                                event_attributes=[_attributes(e.attributes) for e in s.events],
                                link_attributes=[_attributes(link.attributes) for link in s.links],
                            )
                        )
        return out

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        """Metric name -> [(attributes, value)] for sums/gauges, (attributes, count) for histograms."""
        out: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for path, body in list(self.requests):
            if not path.endswith("/v1/metrics"):
                continue
            request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        points = getattr(m, kind).data_points
                        for p in points:
                            value = p.count if kind == "histogram" else (p.as_int or p.as_double)
                            out.setdefault(m.name, []).append((_attributes(p.attributes), value))
        return out

    def wait_until(self, ready: Callable[[], bool], timeout: float = 15.0) -> None:
        """Block until ``ready()`` holds (checked after each request), or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver did not get what was expected within {timeout}s")
                self._cond.wait(left)


def clean_env(subprocess_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The child environment without any inherited ``OTEL_*`` variable, plus ``extra``."""
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def block_imports(prefix: str) -> str:
    """Child-process prelude that makes package ``prefix`` look uninstalled, whatever this venv holds."""
    return f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith({prefix!r}):
            raise ImportError("No module named " + repr(name))
        return None
sys.meta_path.insert(0, _Block())
"""


def run_child(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; return the finished process (stdout/stderr as text)."""
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
