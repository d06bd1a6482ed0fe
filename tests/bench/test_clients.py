"""The client benchmark runs end to end at tiny sizes: every client is a row, measured or saying why not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.clients import OPS, find_python313

ROOT = Path(__file__).resolve().parent.parent.parent
CLIENTS_313 = ["nats-py (3.13)", "nats-core+jetstream (3.13)", "nats-core+jetstream (3.13, flush 0)"]


def run_quick(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "clients.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.clients", "--quick", "--json", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # the first run builds the 3.13 venv with pip
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return report, done.stdout


def assert_measured(row: dict[str, Any]) -> None:
    assert [r["op"] for r in row["results"]] == [name for name, _ in OPS], row["client"]
    for r in row["results"]:
        assert r["status"] == "ok", (row["client"], r)
        assert r["rate"] > 0 and r["cpu_us_per_op"] > 0, (row["client"], r)
        if dict(OPS)[r["op"]] == "latency":
            assert 0 < r["p50_ms"] <= r["p99_ms"], (row["client"], r)


def test_every_client_is_a_row_with_every_operation_measured_or_the_reason(tmp_path: Path) -> None:
    report, printed = run_quick(tmp_path)
    rows = report["rows"]
    assert rows[0]["client"].startswith("nats-py (") and rows[0]["status"] == "ok"
    assert_measured(rows[0])
    assert [r["client"] for r in rows[1:]] == CLIENTS_313
    for row in rows[1:]:
        if row["status"] == "ok":
            assert_measured(row)
            assert row["python"].startswith("3.13")
        else:
            assert row["status"] == "unavailable" and row["reason"], row
    for row in rows:
        assert row["client"] in printed


def test_missing_python313_makes_each_313_client_a_row_saying_so(tmp_path: Path) -> None:
    venv = tmp_path / "venv313"
    report, printed = run_quick(tmp_path, "--python313", str(tmp_path / "no-such-python3.13"), "--venv", str(venv))
    rows = report["rows"]
    assert_measured(rows[0])
    assert [r["client"] for r in rows[1:]] == CLIENTS_313
    for row in rows[1:]:
        assert row["status"] == "unavailable"
        assert "Python 3.13 interpreter not found" in row["reason"]
        assert row["results"] == []
    assert printed.count("Python 3.13 interpreter not found") == len(CLIENTS_313)
    assert not venv.exists()


def test_client_that_cannot_be_installed_is_a_row_with_pips_reason(tmp_path: Path) -> None:
    python313 = find_python313()
    venv = tmp_path / "venv313"
    if python313 is not None:  # a real venv without pip: every install fails for a real reason
        subprocess.run([python313, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    report, _ = run_quick(tmp_path, "--python313", python313 or "", "--venv", str(venv))
    rows = report["rows"]
    assert_measured(rows[0])
    assert [r["client"] for r in rows[1:]] == CLIENTS_313
    for row in rows[1:]:
        assert row["status"] == "unavailable" and row["results"] == []
        if python313 is None:
            assert "Python 3.13 interpreter not found" in row["reason"]
        elif row["driver"] == "nats-py":
            assert row["reason"].startswith("pip install nats-py failed: ") and "No module named pip" in row["reason"]
        else:
            assert "pip install nats-core[nkeys] failed: " in row["reason"]
            assert "pip install nats-jetstream failed: " in row["reason"]
