"""``corral --trace`` and ``--metrics-port``: where a CLI process sends its spans and metrics."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import PYTHON
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
app()
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
