"""Run the real ``corral`` CLI and look at its stderr exactly as written (no re-joining of wrapped lines)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any

from coord.server import NatsServer
from tests.conftest import PYTHON


@dataclass
class Raw:
    """Exit code, stdout and the untouched stderr of one CLI run."""

    code: int
    out: str
    err: str


def corral_raw(env: dict[str, str], *args: str, stdin: str | None = None, within: float = 60) -> Raw:
    """Run ``python -m corral ARGS`` with stderr a pipe (not a terminal) and an 80-column environment."""
    done = subprocess.run(
        [PYTHON, "-m", "corral", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "80"},
        timeout=within,
    )
    return Raw(done.returncode, done.stdout, done.stderr)


def one_line(done: Raw) -> str:
    """The one line ``done`` wrote on stderr; fails unless it is one line without traceback or pydantic text."""
    lines = done.err.splitlines()
    assert len(lines) == 1 and done.err.endswith("\n"), f"expected one line on stderr, got {done.err!r}"
    line = lines[0]
    for leak in ("Traceback", "pydantic", "http", "Input should", "validation error"):
        assert leak not in line, f"{leak!r} leaked into {line!r}"
    return line


def json_error(done: Raw) -> dict[str, Any]:
    """The one JSON object ``done`` wrote on stderr (the error of a ``--json`` run)."""
    data = json.loads(one_line(done))
    assert isinstance(data, dict) and set(data) == {"error", "field", "code"}, data
    return data


def connections_made(server: NatsServer) -> int:
    """How many client connections ``server`` has accepted since it started (its ``/varz``)."""
    with urllib.request.urlopen(f"http://{server.host}:{server.monitor_port}/varz", timeout=5) as resp:
        return int(json.loads(resp.read())["total_connections"])
