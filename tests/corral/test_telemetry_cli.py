"""``corral --trace`` and ``--metrics-port``: where a CLI process sends its spans and metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request

from coord.server import NatsServer, free_port
from tests.conftest import PYTHON
from tests.corral.helpers_cli import corral
from tests.helpers_telemetry import block_imports, clean_env

# --- the CLI's --trace option -------------------------------------------------------------------------

CLI = """
import json
import typer
from coord import tracing
from corral.cli._telemetry import MetricsPortOption, TraceChoice, TraceOption, setup_telemetry
app = typer.Typer()
@app.command()
def main(trace: TraceOption = TraceChoice.env, metrics_port: MetricsPortOption = None) -> None:
    setup_telemetry(trace, service_name="cli-test", metrics_port=metrics_port)
    with tracing.start_span(tracing.SUBMIT, "task-9"):
        pass
    print(json.dumps({"mode": tracing.configured_mode(), "enabled": tracing.enabled()}))
import sys
from corral.cli._errors import run_cli
sys.exit(run_cli(typer.main.get_command(app), sys.argv[1:]))  # corral's own entry point
"""


def run_cli(args: list[str], env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-c", prelude + CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_trace_console_prints_spans_on_stderr(subprocess_env: dict[str, str]) -> None:
    done = run_cli(["--trace", "console"], clean_env(subprocess_env))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"mode": "console", "enabled": True}
    assert done.stderr.startswith("[trace] submit ")


def test_cli_trace_defaults_to_the_environment_and_reads_corral_trace(subprocess_env: dict[str, str]) -> None:
    quiet = run_cli([], clean_env(subprocess_env))
    assert quiet.returncode == 0, quiet.stderr
    assert (json.loads(quiet.stdout), quiet.stderr) == ({"mode": "env", "enabled": False}, "")
    chosen = run_cli([], clean_env(subprocess_env, CORRAL_TRACE="CONSOLE"))
    assert json.loads(chosen.stdout) == {"mode": "console", "enabled": True}


def test_cli_rejects_an_unknown_trace_mode_naming_the_choices(subprocess_env: dict[str, str]) -> None:
    done = run_cli(["--trace", "jaeger"], clean_env(subprocess_env))
    assert done.returncode == 2
    assert "--trace" in done.stderr and "console" in done.stderr and "otlp" in done.stderr


def test_cli_metrics_port_without_the_extra_is_a_clear_error_not_a_traceback(subprocess_env: dict[str, str]) -> None:
    done = run_cli(
        ["--metrics-port", "0"], clean_env(subprocess_env), block_imports("opentelemetry.exporter.prometheus")
    )
    assert done.returncode == 1
    assert "corral[prometheus]" in done.stderr and "Traceback" not in done.stderr


# --- --metrics-host: the Prometheus endpoint listens on loopback unless told otherwise ----------------

# Stand-ins for the Prometheus extra with the same two entry points corral uses
# (a real SDK MetricReader, and start_http_server(port, addr) that really binds the address).
PROMETHEUS_STANDIN = """
import sys, types, threading
from http.server import HTTPServer, BaseHTTPRequestHandler
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
exporter = types.ModuleType("opentelemetry.exporter.prometheus")
exporter.PrometheusMetricReader = InMemoryMetricReader
client = types.ModuleType("prometheus_client")
def start_http_server(port, addr="0.0.0.0"):
    server = HTTPServer((addr, port), BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stderr.write("BOUND %s %d\\n" % server.server_address[:2])
client.start_http_server = start_http_server
sys.modules["opentelemetry.exporter.prometheus"] = exporter
sys.modules["prometheus_client"] = client
from corral.cli import main
main()
"""


def _bound(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [PYTHON, "-c", PROMETHEUS_STANDIN, *args, "provision", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    bound = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("BOUND ")]
    assert len(bound) == 1, done.stderr
    return bound[0]


def test_cli_metrics_endpoint_binds_loopback_by_default(subprocess_env: dict[str, str]) -> None:
    assert _bound(["--metrics-port", "0"], clean_env(subprocess_env)) == "127.0.0.1"


def test_cli_metrics_host_chooses_the_address(subprocess_env: dict[str, str]) -> None:
    assert _bound(["--metrics-port", "0", "--metrics-host", "127.0.0.2"], clean_env(subprocess_env)) == "127.0.0.2"
    env = clean_env(subprocess_env, CORRAL_METRICS_HOST="127.0.0.3")
    assert _bound(["--metrics-port", "0"], env) == "127.0.0.3"


# --- the real CLI: help text and a real Prometheus scrape ------------------------------------------


def test_help_names_the_extras_that_trace_and_metrics_need(subprocess_env: dict[str, str]) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "corral", "--help"],
        env={**clean_env(subprocess_env), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "needs corral[otlp])." in done.stdout and "needs corral[prometheus])." in done.stdout
    assert "needs corral)." not in done.stdout


async def test_prometheus_scrapes_of_a_worker_show_its_metrics_and_log_nothing(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    port = free_port()
    env = clean_env(subprocess_env)
    worker = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "corral", "--server", nats_server.url, "--namespace", namespace, "--metrics-port", str(port),
        "worker", "-q", "scraped", "--", PYTHON, "-c", "print('done')",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert worker.stderr is not None
        await asyncio.wait_for(worker.stderr.readline(), 20)  # the start line: metrics are being served
        done = await corral(
            nats_server.url, namespace, env, "submit", "-q", "scraped", "--wait", "--wait-timeout", "20"
        )
        assert done.code == 0, done
        scrapes = [await asyncio.to_thread(_scrape, port) for _ in range(3)]
    finally:
        worker.send_signal(signal.SIGTERM)
        err = (await asyncio.wait_for(worker.stderr.read(), 30)).decode() if worker.stderr else ""
        await worker.wait()
    assert all('corral_tasks_claimed_total{messaging_destination_name="scraped"' in s for s in scrapes)
    assert "Cannot call collect" not in err and "opentelemetry" not in err and "Traceback" not in err, err


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body: bytes = resp.read()
    return body.decode()
