"""The Redis-based peers a user would pick instead of corral (saq, dramatiq, streaq) run end to end at tiny sizes.

They run as a user runs them: ``python3 dev.py bench peers``, which installs the ``bench`` extra
into the project's virtualenv first, against a real redis-server (the system's, one of
``dev.py``'s NEEDS) on loopback; each row must come back filled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers.common import REDIS_MISSING
from bench.peers.runner import PEERS, main

ROOT = Path(__file__).resolve().parent.parent.parent
NEW = ["saq", "saq-tuned", "dramatiq", "streaq"]
TASKS, ROUNDS, LATENCY = 100, 2, 3
BENCH_TIMEOUT = 540
"""Seconds one bench command may take: the first run pip-installs the bench extra."""


def run_bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str, str]:
    """``python3 dev.py bench peers ARGS --json``: the report, its stdout and stderr (killed as a group on timeout)."""
    out = tmp_path / "peers.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "dev.py"), "bench", "peers", "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its brokers and workers share its process group
    )
    try:
        stdout, stderr = proc.communicate(timeout=BENCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report, stdout, stderr


@pytest.mark.timeout(BENCH_TIMEOUT + 60)
def test_saq_dramatiq_and_streaq_rows_come_back_filled(tmp_path: Path) -> None:
    report, printed, _ = run_bench(
        tmp_path,
        *("--tasks", str(TASKS), "--rounds", str(ROUNDS), "--latency", str(LATENCY)),
        *("--systems", ",".join(NEW)),
    )
    rows = {r["system"]: r for r in report["results"]}
    assert list(rows) == NEW
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row["reason"])
        assert len(row["rates"]) == ROUNDS and all(rate > 0 for rate in row["rates"]), row
        assert row["last_vs_first"] == pytest.approx(row["rates"][-1] / row["rates"][0])
        assert row["latency_samples"] == LATENCY and 0 < row["p50_ms"] <= row["p99_ms"], row
        per_task = row["cpu_ms_per_task"]
        # CPU time is counted in 10 ms clock ticks: at this size one kind of process may read 0, not all
        assert per_task["total"] > 0 and min(per_task.values()) >= 0, (key, per_task)
        assert per_task["total"] == pytest.approx(per_task["producer"] + per_task["workers"] + per_task["broker"])
        assert row["versions"], key
    assert len(rows["streaq"]["executions"]) == ROUNDS and all(e > 0 for e in rows["streaq"]["executions"])
    assert rows["saq"]["p50_ms"] > rows["saq-tuned"]["p50_ms"], "0.5 s polling against 5 ms"
    assert {"saq", "dramatiq", "streaq"} <= set(report["machine"]["versions"])
    labels = {p.key: p.label for p in PEERS}
    for key in NEW:
        assert labels[key].split(",")[0] in printed
    assert "executions/s" in printed and "last / first round" in printed


@pytest.mark.timeout(BENCH_TIMEOUT + 60)
def test_ten_rounds_of_celery_through_one_producer_finish(tmp_path: Path) -> None:
    """Celery 5.6's result finalizer could wait forever inside its own pub/sub I/O (celery#10477): the
    rounds after the first hung in ``join_native`` (2 of 2 ten-round runs here) before the bench kept
    Python's cyclic collector out of Celery's calls."""
    rounds = 10
    report, printed, _ = run_bench(
        tmp_path, "--tasks", "200", "--rounds", str(rounds), "--latency", "3", "--systems", "celery-prefork"
    )
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert len(row["rates"]) == rounds and all(rate > 0 for rate in row["rates"])
    assert row["last_vs_first"] == pytest.approx(row["rates"][-1] / row["rates"][0])
    assert row["latency_samples"] == 3
    assert f"{row['last_vs_first']:.2f}x" in printed


@pytest.mark.timeout(BENCH_TIMEOUT + 60)
def test_without_redis_server_each_redis_peer_is_a_row_saying_so_in_one_line(tmp_path: Path) -> None:
    only_the_venv = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no redis-server on it
    report, printed, said = run_bench(tmp_path, "--tasks", "10", "--systems", ",".join(NEW), env=only_the_venv)
    assert "redis-server not found" in said and "apt-get install redis-server" in said
    for row in report["results"]:
        assert row["status"] == "unavailable", row
        assert row["reason"] == REDIS_MISSING
    lines = printed.splitlines()
    for key in NEW:
        assert f"{key}: unavailable: {REDIS_MISSING}" in lines
    assert "Traceback" not in printed + said


@pytest.mark.parametrize("bad", [["--rounds", "0"], ["--tasks", "-5"], ["--latency", "x"]])
def test_sizes_out_of_range_exit_2_with_one_line(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*bad, "--systems", "saq", "-q"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench peers: error: argument") and bad[0] in err[-1]
